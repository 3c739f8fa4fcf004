"""CSV contact import (``POST /v1/imports``'s path) against a bare COPY of the
same file, in the same run.

    python bench/import.py [--rows 100000] [--bad 0.01] [--keep]

Writes a CSV of ``--rows`` contacts (email, phone, name, two custom fields,
tags), ``--bad`` of them bad (an invalid email, a number field that is not a
number, a phone that is not one), into a fresh database created from
DATABASE_URL (default: the embedded PostgreSQL) and dropped at the end. It
times:

- bare COPY: ``COPY ... FROM STDIN (FORMAT csv, HEADER)`` of the file into a
  plain table of text columns (no parsing of values, no index);
- import: staging (the file parsed and COPYed into ``import_rows``) and the
  job (every row validated and upserted in its savepoint, outbox events,
  batches of ``import_batch_size``), while the job's progress is printed;

and prints rows per second of each and the ratio. The counts, the rejected
rows' numbers and the contacts stored are then checked (a benchmark of a
wrong answer is void).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import tempfile
import time
from pathlib import Path

import psycopg
from nudgel.api.db.embedded import database_url_from_env
from nudgel.api.jobs.imports import prepare_import, rejected_rows, run_import
from nudgel.api.jobs.runner import JobHost
from nudgel.api.keys.store import create_key
from nudgel.api.settings import Settings
from nudgel.schema.migrate import apply_migrations
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

HEADER = "email,phone,name,plan,ltv,tags\n"


def write_csv(path: Path, rows: int, bad_share: float) -> set[int]:
    """The file; returns the file row numbers of the bad rows (header = row 1)."""
    rng = random.Random(6)
    bad = set(rng.sample(range(rows), round(rows * bad_share)))
    plans = ["free", "pro", "enterprise"]
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        for n in range(rows):
            email = f"person{n}@example.com"
            # Distinct valid Kenyan mobile numbers (+2547XXXXXXXX).
            phone = f"+2547{n:08d}" if n % 3 == 0 else ""
            ltv = f"{rng.randint(0, 100000)}.{rng.randint(0, 99):02d}"
            if n in bad:
                kind = n % 3
                if kind == 0:
                    email = f"person{n}-at-example.com"
                elif kind == 1:
                    ltv = "lots"
                else:
                    phone = "12"
            tags = "vip;KE" if n % 10 == 0 else ""
            out.write(f'{email},{phone},"Person {n}, Jr",{plans[n % 3]},{ltv},{tags}\n')
    return {n + 2 for n in bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bad", type=float, default=0.01, help="share of bad rows")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    server_url = database_url_from_env()
    name = f"nudgel_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "contacts.csv"
            bad = write_csv(path, args.rows, args.bad)
            size = path.stat().st_size
            print(f"{args.rows:,} rows, {len(bad):,} bad, {size / 2**20:.1f} MiB", flush=True)
            asyncio.run(measure(url, path, args.rows, bad))
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


async def measure(url: str, path: Path, rows: int, bad: set[int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        apply_migrations(conn)
        workspace = create_key(conn, "bench", "live").workspace_id
        conn.execute(
            "INSERT INTO field_definitions (workspace_id, name, type)"
            " VALUES (%s, 'plan', 'text'), (%s, 'ltv', 'number')",
            (workspace, workspace),
        )
    settings = Settings(database_url=url, blocked_identifiers=["test@example.com"])
    async with AsyncConnectionPool(
        url, min_size=2, max_size=4, kwargs={"autocommit": True}, open=False
    ) as pool:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE bare (email text, phone text, name text, plan text, ltv text,"
                " tags text)"
            )
            start = time.perf_counter()
            async with conn.cursor().copy("COPY bare FROM STDIN (FORMAT csv, HEADER true)") as cp:
                with path.open("rb") as data:
                    while chunk := data.read(1 << 20):
                        await cp.write(chunk)
            bare = time.perf_counter() - start
            print(f"bare COPY:  {bare:8.2f} s  {rows / bare:12,.0f} rows/s", flush=True)

            start = time.perf_counter()
            with path.open("rb") as data:
                async with conn.transaction():
                    job_id, staged = await prepare_import(
                        conn,
                        workspace,
                        data,
                        filename=path.name,
                        mapping=None,
                        tags=["imported"],
                        source="import",
                        lease_seconds=settings.job_lease_seconds,
                    )
            staging = time.perf_counter() - start
            assert staged == rows, (staged, rows)
            print(f"  staging:  {staging:8.2f} s  {rows / staging:12,.0f} rows/s", flush=True)
            task = asyncio.create_task(run_import(JobHost(pool, settings), job_id))
            shown = time.perf_counter()
            while not task.done():
                await asyncio.sleep(0.1)
                if time.perf_counter() - shown < 10:
                    continue
                shown = time.perf_counter()
                cur = await conn.execute("SELECT done, total FROM jobs WHERE id = %s", (job_id,))
                row = await cur.fetchone()
                if row is not None:
                    print(f"  job {row[0]:>10,} / {row[1]:,}", flush=True)
            await task
            total = time.perf_counter() - start
            cur = await conn.execute(
                "SELECT status, result, error FROM jobs WHERE id = %s", (job_id,)
            )
            status = await cur.fetchone()
            assert status is not None and status[0] == "succeeded", status
            print(
                f"  job:      {total - staging:8.2f} s  (batches of {settings.import_batch_size})"
            )
            print(f"import:     {total:8.2f} s  {rows / total:12,.0f} rows/s  {status[1]}")
            print(f"ratio import / bare COPY: {total / bare:.1f}")

            expected = {
                "rows": rows,
                "created": rows - len(bad),
                "updated": 0,
                "merged": 0,
                "unchanged": 0,
                "rejected": len(bad),
            }
            assert status[1] == expected, (status[1], expected)
            report = await rejected_rows(conn, job_id, 0, len(bad) + 1)
            assert {r.row for r in report} == bad, "rejected rows differ from the bad ones"
            cur = await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE name IS NULL OR fields->>'plan' IS NULL"
                " OR NOT fields ? 'ltv') FROM contacts WHERE workspace_id = %s",
                (workspace,),
            )
            counted = await cur.fetchone()
            assert counted is not None and counted[0] == rows - len(bad), counted
            assert counted[1] == 0, "a contact is missing values of its row"
            # The bad rows' valid identifiers made no contact (no partial row).
            emails = [f"person{n - 2}@example.com" for n in bad]
            cur = await conn.execute(
                "SELECT count(*) FROM contacts WHERE workspace_id = %s AND email = ANY(%s)",
                (workspace, emails),
            )
            leaked = await cur.fetchone()
            assert leaked is not None and leaked[0] == 0, "a bad row left a contact"
            print(
                f"checked: counts, {len(report):,} rejected rows by number,"
                f" {counted[0]:,} whole contacts, none from a bad row"
            )


if __name__ == "__main__":
    main()
