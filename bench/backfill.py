"""Backfill of a deployed rule set (20 segments, 2 score models, a lifecycle)
against the bare SQL of the same rules, on the same data, in the same run.

    python bench/backfill.py [--scale 1.0] [--events 20] [--keep | --reuse DBNAME]

--scale 1.0 is 1,000,000 contacts and about 20,000,000 events, loaded with
COPY into a fresh database created from DATABASE_URL (default: the embedded
PostgreSQL) and dropped at the end (--keep leaves it; --reuse DBNAME measures
again on a kept one, its rule state reset first). It times:

- bare SQL: the compiled `everything` query of the rules, all rows fetched;
- backfill: `PUT /v1/rules`'s path (deploy + the backfill job: the same
  query streamed, results compared with the stored state and written in
  batches with their history and next evaluation instants), while the job's
  progress is printed;

and prints backfill / bare SQL. The stored memberships are then checked
against the bare query's answer (a benchmark of a wrong answer is void).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_sql import NOW, load
from nudgel.api.db.embedded import database_url_from_env
from nudgel.api.jobs.runner import JobHost
from nudgel.api.rules.backfill import run_backfill
from nudgel.api.rules.deploy import deploy
from nudgel.api.settings import Settings
from nudgel.compiler.sql import SqlCompiler
from nudgel.runtime.program import to_micros
from nudgel.schema.migrate import apply_migrations

RULES = """
segment premium { tag "premium" }
segment vip_ke { tag "vip" and tag "KE" }
segment pro { fields.plan in ["pro", "enterprise"] }
segment acme { email ends_with "@acme.com" }
segment kenyan { phone starts_with "+254" }
segment no_phone { phone is not set }
segment buyers_30d { count(event "purchase" within 30d) >= 2 }
segment buyer_ever { event "purchase" }
segment lapsed { event "purchase" and not event "purchase" within 90d }
segment active_7d { event * within 7d }
segment openers { count(event "email_open" within 30d) >= 3 }
segment big_spend { sum(event "purchase", props.amount) >= 200000 }
segment big_order { event "purchase" where (props.amount > 80000) within 60d }
segment usd { event "purchase" where (props.currency = "USD") within 30d }
segment avg_mid { avg(event "purchase", props.amount) between 30000 and 60000 }
segment first_visit_old { first(event "visit") < now - 150d }
segment last_visit_new { last(event "visit") > now - 3d }
segment engaged { score.engagement >= 50 }
segment hot_leads { in segment pro and in segment buyers_30d }
segment customers { stage >= "customer" }
score engagement {
  +10 per event "email_open" within 90d max 50
  +25 per event "purchase" within 30d
  -5 when not event * within 30d
}
score value {
  +1 per event "purchase" max 20
  +5 when max(event "purchase", props.amount) > 85000
  clamp 0..30
}
lifecycle {
  lead when email is set
  customer when event "purchase"
  champion when score.engagement >= 60
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--reuse", metavar="DBNAME", help="a database kept by --keep")
    args = parser.parse_args()
    server_url = database_url_from_env()
    if args.reuse:
        url = psycopg.conninfo.make_conninfo(server_url, dbname=args.reuse)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE rule_sets, segment_members, contact_scores, rule_history, jobs CASCADE"
            )
            conn.execute("UPDATE contacts SET stage = NULL, next_evaluation_at = NULL")
            conn.execute("VACUUM ANALYZE contacts")
            row = conn.execute("SELECT id FROM workspaces WHERE name = 'bench'").fetchone()
        assert row is not None
        asyncio.run(measure(url, int(row[0])))
        return
    name = f"nudgel_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        run(url, int(1_000_000 * args.scale), args.events)
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def run(url: str, contacts: int, events: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        apply_migrations(conn)
        print(f"loading {contacts:,} contacts, ~{contacts * events:,} events ...", flush=True)
        conn.autocommit = False
        workspace = load(conn, contacts, events)
        conn.commit()
        conn.autocommit = True
        conn.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, 'plan', 'text')",
            (workspace,),
        )
        conn.execute("UPDATE workspaces SET test_clock = %s WHERE id = %s", (NOW, workspace))
    asyncio.run(measure(url, workspace))


async def measure(url: str, workspace: int) -> None:
    async with AsyncConnectionPool(
        url, min_size=2, max_size=4, kwargs={"autocommit": True}, open=False
    ) as pool:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            settings = Settings(database_url=url)
            async with conn.transaction():
                deployment = await deploy(conn, workspace, {"bench.rules": RULES}, settings)
            assert deployment.deployed is not None and deployment.job_id is not None
            rules = deployment.deployed.rules
            query = SqlCompiler(rules).everything()
            params = query.bind(now=to_micros(NOW), workspace_id=workspace)
            start = time.perf_counter()
            cur = await conn.execute(query.sql, params)
            expected = await cur.fetchall()
            bare = time.perf_counter() - start
            print(f"bare SQL of the rules: {bare:8.1f} s  ({len(expected):,} rows)", flush=True)

            start = time.perf_counter()
            task = asyncio.create_task(run_backfill(JobHost(pool, settings), deployment.job_id))
            shown = time.perf_counter()
            while not task.done():
                await asyncio.sleep(0.05)
                if time.perf_counter() - shown < 5:
                    continue
                shown = time.perf_counter()
                cur = await conn.execute(
                    "SELECT done, total FROM jobs WHERE id = %s", (deployment.job_id,)
                )
                row = await cur.fetchone()
                if row and row[1]:
                    print(f"  backfill {row[0]:>10,} / {row[1]:,}", flush=True)
            await task
            backfill = time.perf_counter() - start
            cur = await conn.execute(
                "SELECT status, result, error FROM jobs WHERE id = %s", (deployment.job_id,)
            )
            status = await cur.fetchone()
            assert status is not None and status[0] == "succeeded", status
            print(f"backfill job:          {backfill:8.1f} s  {status[1]}")
            print(f"ratio backfill / bare SQL: {backfill / bare:.2f}")

            segment_columns = [
                (i, node[1]) for i, node in enumerate(query.columns) if node[0] == "segment"
            ]
            want = {(row[0], name) for row in expected for i, name in segment_columns if row[i]}
            cur = await conn.execute(
                "SELECT c.id, m.segment FROM segment_members m JOIN contacts c"
                " ON c.pk = m.contact_pk WHERE m.workspace_id = %s",
                (workspace,),
            )
            stored = {(r[0], r[1]) for r in await cur.fetchall()}
            assert stored == want, "stored memberships differ from the bare query's"
            print(f"checked: {len(stored):,} memberships equal the bare query's answer")


if __name__ == "__main__":
    main()
