"""One tenant abuses the service while another does steady upserts: the victim's
latency under abuse against a quiet run, in the same server process.

    python bench/isolation.py [--seconds 20] [--victim-rate 20] [--quick]

A throwaway database is created from DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end; the
service runs in a subprocess with its default limits (rate limits, workspace
share of the pool, statement timeout, body cap, template limits). The victim
workspace sends `POST /v1/contacts` at --victim-rate requests per second from
4 clients, first alone (quiet), then while the attacker workspace, at once:

- deploys 5,000 one-line segments (`PUT /v1/rules`) and waits for the backfill;
- sends 14 slow `where=` queries at a time over 200,000 events, over and over;
- subscribes contacts to a list whose confirmation template loops over a
  field the attacker filled with a huge value (the render bomb of issue #11);
- posts bodies that declare 1 GB.

It prints the victim's p50/p99 in both phases and the ratio (aim: p99 at most
2x quiet), and what the attacker got (status counts).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import time
from typing import Any

import httpx
import psycopg
from api_upsert import DEFAULT_URL, percentile, served, throwaway_database
from nudgel.api.keys.store import IssuedKey, create_key
from nudgel.schema.migrate import apply_migrations

VICTIM_CLIENTS = 4
SLOW_WHERE = 'count(event * where (props.x != "y") within 3650d) >= 1000000'
BOMB_BODY = (
    "{{ confirm_url }} {% for a in fields.blob %}{% for b in fields.blob %}{{ a }}{{ b }}"
    "{% endfor %}{% endfor %}"
)


def bearer(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


async def victim(base: str, key: IssuedKey, rate: float, seconds: float) -> list[float]:
    """Steady upserts at ``rate`` per second; the latency of each, in ms."""
    latencies: list[float] = []
    interval = VICTIM_CLIENTS / rate
    deadline = time.monotonic() + seconds

    async def client(n: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            i = 0
            while time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    answer = await http.post(
                        "/v1/contacts",
                        json={"email": f"v{n}-{i}@example.com", "tags": ["steady"]},
                        headers=bearer(key),
                    )
                except httpx.TimeoutException:
                    answer = None  # counted at the timeout: the worst a client saw
                latencies.append((time.perf_counter() - began) * 1000)
                if answer is not None and answer.status_code not in (200, 201):
                    raise SystemExit(f"victim got {answer.status_code}: {answer.text}")
                i += 1
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - began)))

    await asyncio.gather(*(client(n) for n in range(VICTIM_CLIENTS)))
    return latencies


def seed_attacker(url: str, key: IssuedKey, contacts: int, events_each: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO contacts (workspace_id, id, email)"
            " SELECT %s, 'con_abuse' || g, 'abuse' || g || '@example.com'"
            " FROM generate_series(1, %s) g",
            (key.workspace_id, contacts),
        )
        conn.execute(
            "INSERT INTO events (contact_pk, name, at)"
            " SELECT c.pk, 'view', now() - (g || ' minutes')::interval"
            " FROM contacts c, generate_series(1, %s) g WHERE c.workspace_id = %s",
            (events_each, key.workspace_id),
        )


ABUSES = ("deploy", "where", "templates", "body")


async def attacker(
    base: str, key: IssuedKey, seconds: float, only: tuple[str, ...] = ABUSES
) -> dict[str, collections.Counter[int | str]]:
    outcomes: dict[str, collections.Counter[int | str]] = collections.defaultdict(
        collections.Counter
    )
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:

        async def deploy() -> None:
            files = {"many.rules": "\n".join(f'segment s{i} {{ tag "t{i}" }}' for i in range(5000))}
            answer = await http.put("/v1/rules", json={"files": files}, headers=bearer(key))
            outcomes["deploy 5,000 segments"][answer.status_code] += 1

        async def slow_queries() -> None:
            async def one() -> None:
                while time.monotonic() < deadline:
                    answer = await http.get(
                        "/v1/contacts", params={"where": SLOW_WHERE}, headers=bearer(key)
                    )
                    outcomes["slow where="][answer.status_code] += 1

            await asyncio.gather(*(one() for _ in range(14)))

        async def template_bombs() -> None:
            await http.post(
                "/v1/fields", json={"name": "blob", "type": "json"}, headers=bearer(key)
            )
            answer = await http.post(
                "/v1/lists",
                json={
                    "name": "bomb",
                    "title": "Bomb",
                    "double_opt_in": True,
                    "confirmation_subject": "Hi",
                    "confirmation_body": BOMB_BODY,
                },
                headers=bearer(key),
            )
            outcomes["list with a heavy template"][answer.status_code] += 1
            if answer.status_code != 201:
                print(f"the bomb list was refused: {answer.text}")
            i = 0
            while time.monotonic() < deadline:
                answer = await http.post(
                    "/v1/contacts",
                    json={
                        "email": f"bomb{i}@example.com",
                        "fields": {"blob": list(range(3000))},
                        "subscriptions": {"bomb": "subscribed"},
                    },
                    headers=bearer(key),
                )
                outcomes["subscribe with a render bomb"][answer.status_code] += 1
                i += 1

        async def oversized() -> None:
            port = int(base.rsplit(":", 1)[1])
            while time.monotonic() < deadline:
                status = await asyncio.to_thread(_declare_huge_body, port)
                outcomes["1 GB body"][status] += 1
                await asyncio.sleep(0.5)

        abuses = {
            "deploy": deploy,
            "where": slow_queries,
            "templates": template_bombs,
            "body": oversized,
        }
        await asyncio.gather(*(abuses[name]() for name in only))
    return outcomes


def _declare_huge_body(port: int) -> int | str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/contacts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n{"
        )
        try:
            return int(sock.recv(64).split()[1])
        except TimeoutError:
            return "no answer in 10 s"


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return (
        f"{len(ordered)} upserts, p50 {percentile(ordered, 0.5):.1f} ms,"
        f" p99 {percentile(ordered, 0.99):.1f} ms"
    )


async def phases(base: str, victim_key: IssuedKey, attacker_key: IssuedKey, args: Any) -> None:
    quiet = await victim(base, victim_key, args.victim_rate, args.seconds)
    print(f"quiet:   {summary(quiet)}")
    abused, outcomes = await asyncio.gather(
        victim(base, victim_key, args.victim_rate, args.seconds),
        attacker(base, attacker_key, args.seconds, tuple(args.only)),
    )
    print(f"abused:  {summary(abused)}")
    q99, a99 = percentile(quiet, 0.99), percentile(abused, 0.99)
    q50, a50 = percentile(quiet, 0.5), percentile(abused, 0.5)
    print(f"victim ratio abused/quiet: p50 {a50 / q50:.2f}, p99 {a99 / q99:.2f} (aim: p99 <= 2)")
    for what, counts in outcomes.items():
        print(f"attacker {what}: {dict(counts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--victim-rate", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="8 s phases, less attacker data")
    parser.add_argument(
        "--only", nargs="+", choices=ABUSES, default=list(ABUSES), help="these abuses alone"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds = 8.0
    server_url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    with throwaway_database(server_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            apply_migrations(conn)
            victim_key = create_key(conn, "victim", "live")
            attacker_key = create_key(conn, "attacker", "live")
        seed_attacker(url, attacker_key, 2000 if args.quick else 5000, 40)
        with served(url, 10, limits=True) as (base, _pid):
            asyncio.run(phases(base, victim_key, attacker_key, args))


if __name__ == "__main__":
    main()
