"""`nudgel serve` as a real process on a free port, for tests that need one
(kills, several processes, raw sockets, the server's own memory)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)


def start(
    database_url: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> Served:
    port = port or free_port()
    full_env = {**os.environ, "DATABASE_URL": database_url, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "nudgel.cli.nudgel", "serve", "--port", str(port)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(process, port)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "nudgel serve did not answer in 60 s"
        time.sleep(0.2)


def stop(served: Served) -> str:
    if served.process.poll() is None:
        served.process.terminate()
    try:
        return served.process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        served.process.kill()
        return served.process.communicate()[0]


@contextmanager
def serving(database_url: str, env: Mapping[str, str] | None = None) -> Iterator[Served]:
    served = start(database_url, env)
    try:
        yield served
    finally:
        stop(served)
