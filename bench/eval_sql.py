"""Compiled SQL against the fastest hand-written SQL for the same rules, on the
same generated data, in the same run.

    python bench/eval_sql.py [--scale 1.0] [--repeat 3] [--keep | --reuse SCHEMA]
                             [--only hot_leads|engagement] [--jit on|off]

--scale 1.0 is 1,000,000 contacts and about 20,000,000 events, loaded with
COPY into a fresh schema of DATABASE_URL (default: the embedded PostgreSQL).
For each rule (the `hot_leads` segment and the `engagement` score of spec §1)
it prints the best time of each hand-written variant, the compiled query's
time, the ratio compiled / fastest hand-written, and both plans' shapes. The
results of every query are compared: a benchmark of a wrong answer is void.
Compiled and hand-written queries run in the same session, so under the same
settings (--jit sets `jit` for all of them; the server's default otherwise).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_memory import spec_rules
from nudgel.api.db.embedded import database_url_from_env
from nudgel.compiler.sql import SqlCompiler
from nudgel.dsl.checker import check_sources
from nudgel.dsl.timeparse import parse_timestamp
from nudgel.schema.migrate import apply_migrations

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
NOW_MICROS = parse_timestamp("2026-06-01T12:00:00Z") or 0
EVENT_NAMES = ["purchase", "email_open", "page_view", "visit"]

HAND_HOT_LEADS = {
    "correlated subqueries": """
SELECT c.id FROM contacts c
WHERE c.workspace_id = %(ws)s
  AND EXISTS (SELECT 1 FROM contact_tags t WHERE t.contact_pk = c.pk AND t.tag = 'premium')
  AND c.fields ->> 'plan' IN ('pro', 'enterprise')
  AND (right(lower(c.email), 9) = '@acme.com' OR left(lower(c.phone), 4) = '+254')
  AND (SELECT count(*) FROM events e WHERE e.contact_pk = c.pk AND e.name = 'purchase'
         AND e.at > %(now)s - interval '30 days' AND e.at <= %(now)s) >= 2
  AND least(greatest(
        least(10 * (SELECT count(*) FROM events e WHERE e.contact_pk = c.pk AND e.name = 'email_open'
                      AND e.at > %(now)s - interval '90 days' AND e.at <= %(now)s), 50)
      + 25 * (SELECT count(*) FROM events e WHERE e.contact_pk = c.pk AND e.name = 'purchase' AND e.at <= %(now)s)
      - CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.contact_pk = c.pk
                            AND e.at > %(now)s - interval '30 days' AND e.at <= %(now)s) THEN 0 ELSE 5 END
      + CASE WHEN c.fields ->> 'plan' = 'pro' THEN 15 ELSE 0 END, 0), 100) >= 50
""",
    "join + one lateral aggregate": """
SELECT c.id FROM contacts c
JOIN contact_tags t ON t.contact_pk = c.pk AND t.tag = 'premium'
CROSS JOIN LATERAL (
  SELECT count(*) FILTER (WHERE e.name = 'purchase' AND e.at > %(now)s - interval '30 days') AS p30,
         count(*) FILTER (WHERE e.name = 'purchase') AS p,
         count(*) FILTER (WHERE e.name = 'email_open' AND e.at > %(now)s - interval '90 days') AS o90,
         count(*) FILTER (WHERE e.at > %(now)s - interval '30 days') AS any30
  FROM events e WHERE e.contact_pk = c.pk AND e.at <= %(now)s) ev
WHERE c.workspace_id = %(ws)s
  AND c.fields ->> 'plan' IN ('pro', 'enterprise')
  AND (right(lower(c.email), 9) = '@acme.com' OR left(lower(c.phone), 4) = '+254')
  AND ev.p30 >= 2
  AND least(greatest(least(10 * ev.o90, 50) + 25 * ev.p - CASE WHEN ev.any30 > 0 THEN 0 ELSE 5 END
        + CASE WHEN c.fields ->> 'plan' = 'pro' THEN 15 ELSE 0 END, 0), 100) >= 50
""",
}

HAND_ENGAGEMENT = {
    "group by over events": """
SELECT c.id, least(greatest(least(10 * coalesce(ev.o90, 0), 50) + 25 * coalesce(ev.p, 0)
         - CASE WHEN coalesce(ev.any30, 0) > 0 THEN 0 ELSE 5 END
         + CASE WHEN c.fields ->> 'plan' = 'pro' THEN 15 ELSE 0 END, 0), 100) AS score
FROM contacts c
LEFT JOIN (
  SELECT e.contact_pk,
         count(*) FILTER (WHERE e.name = 'email_open' AND e.at > %(now)s - interval '90 days') AS o90,
         count(*) FILTER (WHERE e.name = 'purchase') AS p,
         count(*) FILTER (WHERE e.at > %(now)s - interval '30 days') AS any30
  FROM events e WHERE e.at <= %(now)s GROUP BY e.contact_pk) ev ON ev.contact_pk = c.pk
WHERE c.workspace_id = %(ws)s
""",
    "correlated index probes": """
SELECT c.id, least(greatest(
         least(10 * (SELECT count(*) FROM events e WHERE e.contact_pk = c.pk AND e.name = 'email_open'
                       AND e.at > %(now)s - interval '90 days' AND e.at <= %(now)s), 50)
       + 25 * (SELECT count(*) FROM events e WHERE e.contact_pk = c.pk AND e.name = 'purchase'
                 AND e.at <= %(now)s)
       - CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.contact_pk = c.pk
                             AND e.at > %(now)s - interval '30 days' AND e.at <= %(now)s) THEN 0 ELSE 5 END
       + CASE WHEN c.fields ->> 'plan' = 'pro' THEN 15 ELSE 0 END, 0), 100) AS score
FROM contacts c
WHERE c.workspace_id = %(ws)s
""",
    "lateral per contact": """
SELECT c.id, least(greatest(least(10 * ev.o90, 50) + 25 * ev.p
         - CASE WHEN ev.any30 > 0 THEN 0 ELSE 5 END
         + CASE WHEN c.fields ->> 'plan' = 'pro' THEN 15 ELSE 0 END, 0), 100) AS score
FROM contacts c
CROSS JOIN LATERAL (
  SELECT count(*) FILTER (WHERE e.name = 'email_open' AND e.at > %(now)s - interval '90 days') AS o90,
         count(*) FILTER (WHERE e.name = 'purchase') AS p,
         count(*) FILTER (WHERE e.at > %(now)s - interval '30 days') AS any30
  FROM events e WHERE e.contact_pk = c.pk AND e.at <= %(now)s) ev
WHERE c.workspace_id = %(ws)s
""",
}


def contact_rows(count: int, workspace: int, rng: random.Random) -> Iterator[str]:
    for i in range(count):
        domain = rng.choice(["acme.com", "example.co.ke", "gmail.com"])
        email = f"user{i}@{domain}" if rng.random() < 0.9 else "\\N"
        phone = (
            # Unique per contact: phones are unique within a workspace.
            rng.choice(["+254", "+1", "+44"]) + str(700_000_000 + i)
            if rng.random() < 0.5
            else "\\N"
        )
        fields = json.dumps({"plan": rng.choice(["free", "pro", "enterprise", "basic"])})
        yield f"{workspace}\tc{i:07d}\t{email}\t{phone}\t{fields}\t2026-01-01 00:00:00+00\t2026-01-01 00:00:00+00\n"


def copy_text(
    cur: psycopg.Cursor[Any], statement: str, lines: Iterator[str], batch: int = 20_000
) -> None:
    with cur.copy(statement) as copy:
        buffer = io.StringIO()
        for n, line in enumerate(lines, start=1):
            buffer.write(line)
            if n % batch == 0:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def load(
    conn: psycopg.Connection[Any], contacts: int, events_per_contact: int, seed: int = 5
) -> int:
    rng = random.Random(seed)
    with conn.cursor() as cur:
        workspace = cur.execute(
            "INSERT INTO workspaces (name) VALUES ('bench') RETURNING id"
        ).fetchone()
        assert workspace is not None
        ws = workspace[0]
        start = time.perf_counter()
        copy_text(
            cur,
            "COPY contacts (workspace_id, id, email, phone, fields, created_at, updated_at) FROM STDIN",
            contact_rows(contacts, ws, rng),
        )
        first_pk = cur.execute(
            "SELECT min(pk) FROM contacts WHERE workspace_id = %s", (ws,)
        ).fetchone()
        assert first_pk is not None
        base = first_pk[0]
        tags = ["premium", "KE", "vip", "beta"]
        copy_text(
            cur,
            "COPY contact_tags (contact_pk, tag) FROM STDIN",
            (
                f"{base + i}\t{tag}\n"
                for i in range(contacts)
                for tag in rng.sample(tags, rng.randrange(0, 3))
            ),
        )
        copy_text(
            cur,
            "COPY events (contact_pk, name, at, props) FROM STDIN",
            event_rows(base, contacts, events_per_contact, rng),
        )
        conn.commit()
        print(f"loaded in {time.perf_counter() - start:.0f} s; analyzing ...", flush=True)
        cur.execute("ANALYZE")
    return ws


def event_rows(base: int, contacts: int, per_contact: int, rng: random.Random) -> Iterator[str]:
    seconds = 200 * 86400
    for i in range(contacts):
        for _ in range(rng.randrange(per_contact // 2, per_contact * 3 // 2 + 1)):
            at = NOW - timedelta(seconds=rng.randrange(seconds))
            name = rng.choice(EVENT_NAMES)
            props = json.dumps(
                {"amount": rng.randrange(100, 90000), "currency": rng.choice(["KES", "USD"])}
            )
            yield f"{base + i}\t{name}\t{at.isoformat()}\t{props}\n"


def timed(
    conn: psycopg.Connection[Any], query: str, params: dict[str, Any], repeat: int
) -> tuple[float, list[Any]]:
    best, rows = float("inf"), []
    for _ in range(repeat):
        start = time.perf_counter()
        rows = conn.execute(query, params).fetchall()
        best = min(best, time.perf_counter() - start)
    return best, rows


def plan_shape(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> str:
    lines = [r[0] for r in conn.execute("EXPLAIN " + query, params).fetchall()]
    shape = [line for line in lines if "->" in line or not line.startswith(" ")]
    return "\n".join("    " + line for line in shape[:14])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated schema")
    parser.add_argument("--reuse", metavar="SCHEMA", help="measure on a schema kept by --keep")
    parser.add_argument("--only", choices=["hot_leads", "engagement"], help="measure one rule")
    parser.add_argument("--jit", choices=["on", "off"], help="the session's jit (all queries)")
    args = parser.parse_args()
    contacts = max(100, int(1_000_000 * args.scale))

    checked = check_sources({"marketing.rules": spec_rules()})
    assert checked.rules is not None
    compiler = SqlCompiler(checked.rules)
    url = database_url_from_env()
    schema = args.reuse or f"bench_{secrets.token_hex(4)}"
    if not args.reuse:
        with psycopg.connect(url, autocommit=True) as conn:
            apply_migrations(conn, schema=schema)
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        if args.jit:
            conn.execute(sql.SQL("SET jit = {}").format(sql.Literal(args.jit)))
        try:
            if args.reuse:
                found = conn.execute("SELECT id FROM workspaces WHERE name = 'bench'").fetchone()
                assert found is not None, f"no bench workspace in schema {schema}"
                ws = found[0]
            else:
                print(
                    f"generating {contacts:,} contacts, ~{contacts * args.events:,} events (COPY) ...",
                    flush=True,
                )
                ws = load(conn, contacts, args.events)
            conn.commit()
            hand_params = {"ws": ws, "now": NOW}
            cases = [
                (
                    "hot_leads",
                    compiler.segment_members("hot_leads"),
                    HAND_HOT_LEADS,
                    lambda rows: sorted(r[0] for r in rows),
                ),
                (
                    "engagement",
                    compiler.score_values("engagement"),
                    HAND_ENGAGEMENT,
                    lambda rows: sorted((r[0], float(r[1])) for r in rows),
                ),
            ]
            for name, compiled, hands, normal in cases:
                if args.only and name != args.only:
                    continue
                params = compiled.bind(now=NOW_MICROS, workspace_id=ws)
                compiled_time, compiled_rows = timed(conn, compiled.sql, params, args.repeat)
                best_hand = float("inf")
                print(f"\n{name}: {len(compiled_rows):,} rows")
                for label, query in hands.items():
                    hand_time, hand_rows = timed(conn, query, hand_params, args.repeat)
                    assert normal(hand_rows) == normal(compiled_rows), (
                        f"{label} disagrees with the compiled SQL"
                    )
                    best_hand = min(best_hand, hand_time)
                    print(f"  hand-written ({label}): {hand_time * 1000:10.1f} ms")
                    print(plan_shape(conn, query, hand_params))
                print(f"  compiled:                 {compiled_time * 1000:10.1f} ms")
                print(plan_shape(conn, compiled.sql, params))
                print(
                    f"  ratio compiled / fastest hand-written: {compiled_time / best_hand:.2f}   (aim: <= 1.2)"
                )
        finally:
            conn.rollback()
            if args.keep or args.reuse:
                print(f"kept schema {schema} (measure again with --reuse {schema})")
            else:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                conn.commit()


if __name__ == "__main__":
    main()
