"""Throughput and latency of `POST /v1/contacts` upserts from concurrent
clients against a served instance, beside a bare SQL upsert loop of the same
rows, measured in the same run.

    python bench/api_upsert.py [--requests 4000] [--clients 16] [--quick]

A throwaway database is created from DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end. The
service runs in a subprocess (uvicorn, one worker, no webhook worker, a pool
of --clients connections) on a free port; --clients httpx.AsyncClient tasks
send the requests: about half create a contact, the others update one seen
before (by its email, or email and phone), and about 1 in 100 names one
person's email with another's phone, which merges two contacts when both
exist. The baseline sends the same rows as one
`INSERT ... ON CONFLICT (workspace_id, email) DO UPDATE` each from --clients
psycopg async connections (autocommit) into a plain table with a unique
email. It prints requests/s, p50 and p99 latency for both and the ratios
API / bare SQL; --quick runs 800 requests.

The client and the server share the machine, so the figures are for
comparing runs of this script on one machine, not absolute capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from nudgel.api.keys.store import create_key
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED = 20261126

SERVER = """
import sys, uvicorn
from nudgel.api.app import create_app
from nudgel.api.settings import Settings
url, port, pool, limits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
# Throughput benches are one client: no rate limit or workspace share, unless
# the bench is about those limits (bench/isolation.py).
unlimited = {} if limits else dict(
    rate_limit_per_second=1e9, rate_limit_burst=10**9, workspace_max_connections=pool
)
settings = Settings(database_url=url, run_worker=False, pool_min_size=pool, pool_max_size=pool,
                    **unlimited)
uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
            access_log=False)
"""


def with_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


@contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    name = f"nudgel_bench_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served(url: str, pool: int, *, limits: bool = False) -> Iterator[tuple[str, int]]:
    """The service on a free port (migrations applied at startup): its base URL and pid.
    With ``limits``, the service's default rate limits and workspace share apply."""
    port = free_port()
    # Not the repository root as the working directory: the editable install
    # maps nudgel.* to the sources, and `python -c` puts the cwd first.
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, url, str(port), str(pool), "1" if limits else "0"],
        cwd=os.path.dirname(__file__),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def workload(requests: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Upsert bodies: about half new people, the rest updates, ~1% linking two people."""
    rng = random.Random(seed)
    bodies: list[dict[str, Any]] = []
    seen: list[int] = []
    for n in range(requests):
        if not seen or rng.random() < 0.5:
            person = len(seen)
            seen.append(person)
        else:
            person = rng.choice(seen)
        body: dict[str, Any] = {
            "email": f"person{person}@bench.example",
            "name": f"Person {person} #{n}",
        }
        if rng.random() < 0.5:
            body["phone"] = f"+2547{10_000_000 + person:08d}"
        if len(seen) > 1 and rng.random() < 0.01:
            other = rng.choice(seen)
            if other != person:
                body["phone"] = f"+2547{10_000_000 + other:08d}"
        bodies.append(body)
    return bodies


async def drive(
    bodies: list[dict[str, Any]],
    clients: int,
    send: Callable[[int, dict[str, Any]], Awaitable[None]],
) -> tuple[float, list[float]]:
    """Send every body from ``clients`` tasks; (wall seconds, per-request seconds)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []

    async def worker(index: int) -> None:
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            await send(index, body)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return time.perf_counter() - start, latencies


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_api(
    base: str, pid: int, secret: str, bodies: list[dict[str, Any]], clients: int
) -> tuple[float, list[float], dict[int, int], float | None, float]:
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=base, limits=limits, headers=headers, timeout=60) as http:

        async def send(_: int, body: dict[str, Any]) -> None:
            response = await http.post("/v1/contacts", json=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        # Warm-up (connections, the pool, plans): other people, not counted.
        warm = [{"email": f"warm{i}@bench.example"} for i in range(4 * clients)]
        await drive(warm, clients, send)
        statuses.clear()
        cpu_before, client_before = cpu_seconds(pid), time.process_time()
        wall, latencies = await drive(bodies, clients, send)
        cpu_after, client_cpu = cpu_seconds(pid), time.process_time() - client_before
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return wall, latencies, statuses, cpu, client_cpu


BASELINE_TABLE = """
CREATE TABLE bench_contacts (
    pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL,
    email text NOT NULL,
    phone text,
    name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, email)
)
"""
BASELINE_UPSERT = (
    "INSERT INTO bench_contacts (workspace_id, email, phone, name) VALUES (1, %s, %s, %s)"
    " ON CONFLICT (workspace_id, email) DO UPDATE SET"
    " phone = coalesce(excluded.phone, bench_contacts.phone), name = excluded.name,"
    " updated_at = now()"
)


async def run_baseline(
    url: str, bodies: list[dict[str, Any]], clients: int
) -> tuple[float, list[float]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BASELINE_TABLE)
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(clients)]
    try:

        async def send(index: int, body: dict[str, Any]) -> None:
            await conns[index].execute(
                BASELINE_UPSERT, (body["email"], body.get("phone"), body.get("name"))
            )

        warm = [{"email": f"warm{i}@bench.example"} for i in range(4 * clients)]
        await drive(warm, clients, send)
        return await drive(bodies, clients, send)
    finally:
        for aconn in conns:
            await aconn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="800 requests")
    args = parser.parse_args()
    requests = 800 if args.quick else args.requests
    bodies = workload(requests)
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_URL

    with throwaway_database(server_url) as url:
        baseline_wall, baseline_lat = asyncio.run(run_baseline(url, bodies, args.clients))
        with served(url, args.clients) as (base, pid):
            # The service migrated the database at startup: the key goes in now.
            with psycopg.connect(url, autocommit=True) as conn:
                key = create_key(conn, "bench", "live")
            api_wall, api_lat, statuses, server_cpu, client_cpu = asyncio.run(
                run_api(base, pid, key.secret, bodies, args.clients)
            )
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM contacts WHERE workspace_id = %s),"
                " (SELECT count(*) FROM outbox WHERE workspace_id = %s"
                "  AND event_type = 'contact.merged')",
                (key.workspace_id, key.workspace_id),
            ).fetchone()
            assert row is not None
            contacts, merges = row

    failed = {s: n for s, n in statuses.items() if s not in (200, 201)}
    print(
        f"{requests} upserts from {args.clients} concurrent clients"
        f" ({statuses.get(201, 0)} created, {statuses.get(200, 0)} updated,"
        f" {merges} merges, {contacts} contacts at the end"
        + (f"; other statuses {failed}" if failed else "")
        + ")"
    )
    rows = [
        ("bare SQL upsert", requests / baseline_wall, baseline_lat),
        ("POST /v1/contacts", requests / api_wall, api_lat),
    ]
    print(f"{'':20} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for label, rate, lat in rows:
        print(
            f"{label:20} {rate:9.0f} {1000 * percentile(lat, 0.5):9.2f}"
            f" {1000 * percentile(lat, 0.99):9.2f} {1000 * statistics.fmean(lat):9.2f}"
        )
    print(
        f"{'API / bare SQL':20} {rows[1][1] / rows[0][1]:9.3f}"
        f" {percentile(api_lat, 0.5) / percentile(baseline_lat, 0.5):9.1f}"
        f" {percentile(api_lat, 0.99) / percentile(baseline_lat, 0.99):9.1f}"
        f" {statistics.fmean(api_lat) / statistics.fmean(baseline_lat):9.1f}"
    )
    # CPU per request is less sensitive to other load on the machine than
    # the wall-clock figures; near 100% of a core, that process is the limit.
    if server_cpu is not None:
        print(
            f"server CPU: {1000 * server_cpu / requests:.2f} ms per upsert"
            f" ({server_cpu / api_wall:.0%} of one core during the run)"
        )
    print(
        f"client CPU: {1000 * client_cpu / requests:.2f} ms per request"
        f" ({client_cpu / api_wall:.0%} of one core)"
    )
    if failed:
        raise SystemExit(f"requests failed: {failed}")


if __name__ == "__main__":
    main()
