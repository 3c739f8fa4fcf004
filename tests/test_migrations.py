"""The migration runner, the storage schema and its SQL helper functions."""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nudgel.schema.migrate import apply_migrations, available_migrations
from psycopg import errors, sql

pytestmark = pytest.mark.postgres

ALL_NAMES = [m.name for m in available_migrations()]
TABLES = {
    "workspaces",
    "contacts",
    "tags",
    "contact_tags",
    "subscriptions",
    "events",
    "field_definitions",
    "api_keys",
    "idempotency_keys",
    "outbox",
    "webhooks",
    "webhook_deliveries",
    "webhook_attempts",
    "rule_sets",
    "segment_members",
    "contact_scores",
    "rule_history",
    "jobs",
    "imports",
    "import_rows",
    "lists",
    "list_confirmations",
    "list_unsubscribe_links",
    "dev_inbox_messages",
    "service_secrets",
    "schema_migrations",
    "rate_limits",
}


@pytest.fixture
def fresh_schema(database_url: str) -> Iterator[str]:
    """A schema name nobody uses yet; dropped afterwards."""
    name = f"mig_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def one(conn: psycopg.Connection, query: str, *params: Any) -> Any:
    # No parameters: no placeholder parsing either ('%' in format() in a query).
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def tables_in(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    ).fetchall()
    return {r[0] for r in rows}


# ---- the runner ----------------------------------------------------------------


def test_migration_files_are_found() -> None:
    assert ALL_NAMES[0] == "0001_storage"
    assert [m.version for m in available_migrations()] == list(range(1, len(ALL_NAMES) + 1))


def test_apply_then_idempotent(database_url: str, fresh_schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert apply_migrations(conn, fresh_schema) == ALL_NAMES
        assert apply_migrations(conn, fresh_schema) == []
        assert tables_in(conn, fresh_schema) == TABLES
        rows = conn.execute(
            sql.SQL("SELECT version, name FROM {}.schema_migrations ORDER BY version").format(
                sql.Identifier(fresh_schema)
            )
        ).fetchall()
        assert [name for _, name in rows] == ALL_NAMES
        # SET LOCAL only: the caller's search_path is untouched.
        assert fresh_schema not in one(conn, "SHOW search_path")


def test_apply_without_autocommit(database_url: str, fresh_schema: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert apply_migrations(conn, fresh_schema) == ALL_NAMES
        # Committed, not left in an open transaction.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with psycopg.connect(database_url) as other:
        assert tables_in(other, fresh_schema) == TABLES


def test_refuses_a_connection_inside_a_transaction(pg_conn: psycopg.Connection) -> None:
    pg_conn.execute("SELECT 1")
    with pytest.raises(RuntimeError, match="idle connection"):
        apply_migrations(pg_conn)


def test_concurrent_runners_apply_each_migration_once(database_url: str, fresh_schema: str) -> None:
    start = threading.Barrier(2)

    def run() -> list[str]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            start.wait()
            applied: list[str] = apply_migrations(conn, fresh_schema)
            return applied

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run(), range(2)))
    assert sorted(results[0] + results[1]) == ALL_NAMES
    with psycopg.connect(database_url) as conn:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.schema_migrations").format(
                sql.Identifier(fresh_schema)
            )
        ).fetchone()
        assert count == (len(ALL_NAMES),)


def test_two_schemas_in_one_database(database_url: str, fresh_schema: str) -> None:
    other = fresh_schema + "_b"
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert apply_migrations(conn, fresh_schema) == ALL_NAMES
            assert apply_migrations(conn, other) == ALL_NAMES
            for schema in (fresh_schema, other):
                assert tables_in(conn, schema) == TABLES
            conn.execute(
                sql.SQL("INSERT INTO {}.workspaces (name) VALUES ('only here')").format(
                    sql.Identifier(fresh_schema)
                )
            )
            counts = [
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.workspaces").format(sql.Identifier(s))
                ).fetchone()
                for s in (fresh_schema, other)
            ]
            assert counts == [(1,), (0,)]
            # The helpers resolve through search_path, as compiled rules call them.
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(other)))
            assert conn.execute("SELECT nudgel_try_date('2026-06-01')").fetchone() == (
                date(2026, 6, 1),
            )
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))


def test_migrated_url_has_the_schema_in_public(pg_conn: psycopg.Connection) -> None:
    assert tables_in(pg_conn, "public") >= TABLES


# ---- the storage schema ------------------------------------------------------------


def new_contact(conn: psycopg.Connection, workspace: int, cid: str, **cols: Any) -> int:
    names = ["workspace_id", "id", *cols]
    query = sql.SQL("INSERT INTO contacts ({}) VALUES ({}) RETURNING pk").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    row = conn.execute(query, [workspace, cid, *cols.values()]).fetchone()
    assert row is not None
    return int(row[0])


def test_constraints_and_cascades(pg_conn: psycopg.Connection) -> None:
    ws = one(pg_conn, "INSERT INTO workspaces (name) VALUES ('w') RETURNING id")
    c1 = new_contact(pg_conn, ws, "c1", email="a@example.com")
    new_contact(pg_conn, ws, "c2")  # NULL identities never collide
    new_contact(pg_conn, ws, "c3")
    bad: list[tuple[str, dict[str, Any], type[Exception]]] = [
        ("c4", {"email": "a@example.com"}, errors.UniqueViolation),
        ("c1", {}, errors.UniqueViolation),
        ("c5", {"fields": json.dumps([1])}, errors.CheckViolation),
        ("c6", {"push_tokens": json.dumps({})}, errors.CheckViolation),
    ]
    for cid, cols, error in bad:
        with pytest.raises(error), pg_conn.transaction():
            new_contact(pg_conn, ws, cid, **cols)
    with pytest.raises(errors.CheckViolation), pg_conn.transaction():
        pg_conn.execute("INSERT INTO subscriptions VALUES (%s, 'news', 'maybe')", (c1,))
    pg_conn.execute("INSERT INTO subscriptions VALUES (%s, 'news', 'subscribed')", (c1,))
    pg_conn.execute("INSERT INTO contact_tags VALUES (%s, 'vip')", (c1,))
    pg_conn.execute("INSERT INTO events (contact_pk, name, at) VALUES (%s, 'x', now())", (c1,))
    pg_conn.execute("DELETE FROM workspaces WHERE id = %s", (ws,))
    for table in ("contacts", "subscriptions", "contact_tags", "events"):
        count = pg_conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        assert count.fetchone() == (0,), table


def test_compared_text_orders_by_code_point(pg_conn: psycopg.Connection) -> None:
    rows = pg_conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND collation_name = 'C'"
    ).fetchall()
    assert {
        ("contacts", "id"),
        ("contacts", "email"),
        ("contacts", "phone"),
        ("contacts", "whatsapp_id"),
        ("contacts", "name"),
        ("contact_tags", "tag"),
        ("subscriptions", "list"),
        ("events", "name"),
    } <= set(rows)


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def test_event_lookup_uses_the_name_index(pg_conn: psycopg.Connection) -> None:
    ws = one(pg_conn, "INSERT INTO workspaces (name) VALUES ('w') RETURNING id")
    pg_conn.execute(
        "INSERT INTO contacts (workspace_id, id)"
        " SELECT %s, 'c' || g FROM generate_series(1, 200) g",
        (ws,),
    )
    # 200 contacts x 10 names x 10 events, spread over 100 days.
    pg_conn.execute(
        """
        INSERT INTO events (contact_pk, name, at)
        SELECT c.pk, 'e' || (g % 10), timestamptz '2026-01-01' + g * interval '1 day'
        FROM contacts c, generate_series(1, 100) g
        """
    )
    pg_conn.execute("ANALYZE contacts, events")
    pg_conn.execute(
        "PREPARE lookup(bigint, text, timestamptz) AS"
        " SELECT at, props FROM events WHERE contact_pk = $1 AND name = $2 AND at > $3"
    )
    # The generic plan is what a prepared compiled rule reuses for every contact.
    for mode in ("force_generic_plan", "force_custom_plan"):
        pg_conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        (plan,) = one(pg_conn, "EXPLAIN (FORMAT JSON) EXECUTE lookup(7, 'e3', '2026-02-01')")
        nodes = list(plan_nodes(plan["Plan"]))
        assert "events_contact_pk_name_at_idx" in {n.get("Index Name") for n in nodes}, mode
        assert not any(n["Node Type"] == "Seq Scan" for n in nodes), mode
    pg_conn.execute("DEALLOCATE lookup")


# ---- helper functions --------------------------------------------------------------


BAD_DATES = [
    "2026-02-30",
    "2023-02-29",
    "1900-02-29",
    "2026-04-31",
    "2026-13-01",
    "2026-00-10",
    "2026-01-00",
    "0000-01-01",
    "2026-6-01",
    "20260601",
    "2026-06-01T00:00:00Z",  # a timestamp is not a date
    " 2026-06-01",
    "2026-06-01\n",
    "２０２６-06-01",  # full-width digits
    "garbage",
    "",
    "infinity",
    "today",
    None,
]


@pytest.mark.parametrize("value", BAD_DATES)
def test_try_date_rejects(pg_conn: psycopg.Connection, value: str | None) -> None:
    assert one(pg_conn, "SELECT nudgel_try_date(%s)", value) is None


@pytest.mark.parametrize(
    "value", ["2026-06-01", "2024-02-29", "2000-02-29", "0001-01-01", "9999-12-31"]
)
def test_try_date_accepts(pg_conn: psycopg.Connection, value: str) -> None:
    assert one(pg_conn, "SELECT nudgel_try_date(%s)", value) == date.fromisoformat(value)


BAD_TIMESTAMPS = [
    "2026-06-01T00:00:00",  # no offset: the language requires one
    "2026-06-01t00:00:00.5",
    "2026-02-30T00:00:00Z",
    "2026-06-01T24:00:00Z",
    "2026-06-01T23:60:00Z",
    "2026-06-01T23:59:60Z",  # no leap second
    "2026-06-01 00:00:00Z",  # RFC 3339 needs T
    "2026-06-01T00:00Z",
    "2026-06-01T00:00:00.Z",
    "2026-06-01T00:00:00+0530",
    "2026-06-01T00:00:00+05",
    "2026-06-01T00:00:00+24:00",
    "2026-06-01T00:00:00 Z",
    "2026-06-01T00:00:00Z ",
    "2026-06-01T00:00:00UTC",
    "0000-01-01T00:00:00Z",
    "2026-06-01",
    "garbage",
    "",
    "now",
    "infinity",
    "epoch",
    None,
]


@pytest.mark.parametrize("value", BAD_TIMESTAMPS)
def test_try_timestamptz_rejects(pg_conn: psycopg.Connection, value: str | None) -> None:
    assert one(pg_conn, "SELECT nudgel_try_timestamptz(%s)", value) is None


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-06-01T10:00:00Z", utc(2026, 6, 1, 10)),
        ("2026-06-01t10:00:00z", utc(2026, 6, 1, 10)),
        ("2026-06-01T10:00:00.5Z", utc(2026, 6, 1, 10, 0, 0, 500000)),
        ("2026-06-01T10:00:00.123456+00:00", utc(2026, 6, 1, 10, 0, 0, 123456)),
        # Beyond microseconds: truncated, as Python's datetime.fromisoformat does.
        ("2026-06-01T10:00:00.9999999Z", utc(2026, 6, 1, 10, 0, 0, 999999)),
        ("2026-06-01T10:00:00+05:30", utc(2026, 6, 1, 4, 30)),
        ("2026-06-01T10:00:00-08:00", utc(2026, 6, 1, 18)),
        ("2026-06-01T10:00:00-00:00", utc(2026, 6, 1, 10)),
        ("2026-06-01T10:00:00+23:59", utc(2026, 5, 31, 10, 1)),  # beyond PostgreSQL's +15:59
        ("2024-02-29T23:30:00-01:00", utc(2024, 3, 1, 0, 30)),
        ("2026-12-31T23:59:59.999999Z", utc(2026, 12, 31, 23, 59, 59, 999999)),
    ],
)
def test_try_timestamptz_accepts(
    pg_conn: psycopg.Connection, value: str, expected: datetime
) -> None:
    assert one(pg_conn, "SELECT nudgel_try_timestamptz(%s)", value) == expected


def test_helpers_ignore_session_settings(pg_conn: psycopg.Connection) -> None:
    pg_conn.execute("SET LOCAL TimeZone = 'America/St_Johns'")
    pg_conn.execute("SET LOCAL DateStyle = 'SQL, DMY'")
    # Compared in SQL: psycopg cannot read timestamps in the SQL DateStyle.
    assert one(
        pg_conn,
        "SELECT nudgel_try_timestamptz('2026-06-01T10:00:00+02:00')"
        " = timestamptz '2026-06-01 08:00:00+00'",
    )
    assert one(pg_conn, "SELECT nudgel_try_date('2026-06-01') = make_date(2026, 6, 1)")


def test_helpers_run_in_parallel_workers(pg_conn: psycopg.Connection) -> None:
    # An EXCEPTION block here would fail on PostgreSQL < 17 ("cannot start
    # subtransactions during a parallel operation").
    version = int(one(pg_conn, "SHOW server_version_num"))
    knob = "debug_parallel_query" if version >= 160000 else "force_parallel_mode"
    pg_conn.execute(f"SET LOCAL {knob} = on")
    query = """
        SELECT count(nudgel_try_timestamptz(v)), count(nudgel_try_date(left(v, 10))),
               count(nudgel_fold(v, 'T', 't'))
        FROM (SELECT format('2026-%s-%sT00:00:00Z', lpad((g % 14)::text, 2, '0'),
                            lpad((g % 33)::text, 2, '0')) AS v
              FROM generate_series(1, 2000) g) s
    """
    (plan,) = one(pg_conn, "EXPLAIN (FORMAT JSON) " + query)
    assert plan["Plan"]["Node Type"] == "Gather"
    valid = sum(1 for g in range(1, 2001) if _valid_ymd(2026, g % 14, g % 33))
    assert pg_conn.execute(query).fetchone() == (valid, valid, 2000)


def _valid_ymd(y: int, m: int, d: int) -> bool:
    try:
        date(y, m, d)
    except ValueError:
        return False
    return True


def test_fold(pg_conn: psycopg.Connection) -> None:
    fold = "SELECT nudgel_fold(%s, 'ÀÉ', 'àé')"
    assert one(pg_conn, fold, "HeLLo World") == "hello world"
    # lower() under "C" leaves non-ASCII alone; the map does the rest.
    assert one(pg_conn, fold, "ÀBÇ É") == "àbÇ é"
    assert one(pg_conn, fold, None) is None


def test_fold_is_inlined(pg_conn: psycopg.Connection) -> None:
    rows = pg_conn.execute(
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT nudgel_fold(name, 'À', 'à') FROM contacts"
    ).fetchall()
    text = "\n".join(r[0] for r in rows)
    assert "nudgel_fold" not in text
    assert "CASE WHEN" in text


# ---- property: the helpers agree with a strict Python reading ------------------------

_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def ref_date(s: str) -> date | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", s, re.ASCII):
        return None
    try:
        return date(int(s[:4]), int(s[5:7]), int(s[8:]))
    except ValueError:
        return None


def ref_epoch(s: str) -> Decimal | None:
    """Seconds since the epoch, exactly (Decimal: years 1 and 9999 with an offset
    leave the range of Python's datetime)."""
    m = _TS.fullmatch(s)
    if m is None:
        return None
    h, mi, sec = (int(g) for g in m.groups()[3:6])
    day = ref_date(s[:10])
    if day is None or h > 23 or mi > 59 or sec > 59:
        return None
    offset = 0
    if m[8]:
        if int(m[9]) > 23 or int(m[10]) > 59:
            return None
        offset = (1 if m[8] == "+" else -1) * (int(m[9]) * 3600 + int(m[10]) * 60)
    micros = int((m[7] or "")[:6].ljust(6, "0"))
    whole = (day.toordinal() - _EPOCH_DAY) * 86400 + h * 3600 + mi * 60 + sec - offset
    return Decimal(whole * 1_000_000 + micros) / 1_000_000


def two_digits(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda n: f"{n:02d}")


near_timestamps = st.builds(
    lambda *parts: "".join(parts),
    st.sampled_from(["0000", "0001", "1900", "2000", "2024", "2026", "9999", "999", "20260"]),
    st.just("-"),
    two_digits(0, 13),
    st.sampled_from(["-", "/"]),
    two_digits(0, 32),
    st.sampled_from(["T", "t", " ", ""]),
    two_digits(0, 25),
    st.just(":"),
    two_digits(0, 61),
    st.sampled_from([":", ""]),
    two_digits(0, 61),
    st.one_of(st.just(""), st.text("0123456789", max_size=9).map(lambda f: "." + f)),
    st.one_of(
        st.sampled_from(["Z", "z", "", "+0530", " Z", "+05"]),
        st.builds(
            lambda sign, hh, mm: f"{sign}{hh}:{mm}",
            st.sampled_from("+-"),
            two_digits(0, 25),
            two_digits(0, 61),
        ),
    ),
)
candidates = st.one_of(
    near_timestamps,
    near_timestamps.map(lambda s: s[:10]),  # date-shaped
    st.text(max_size=30),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(values=st.lists(candidates, min_size=1, max_size=40))
def test_helpers_never_raise_and_match_reference(
    pg_conn: psycopg.Connection, values: list[str]
) -> None:
    values = [v.replace("\x00", "") for v in values]  # text cannot hold NUL
    rows = pg_conn.execute(
        "SELECT nudgel_try_date(v), extract(epoch FROM nudgel_try_timestamptz(v))"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
        (values,),
    ).fetchall()
    assert rows == [(ref_date(v), ref_epoch(v)) for v in values]


def test_reference_sanity() -> None:
    # The property above is only as good as its reference.
    assert ref_epoch("1970-01-01T00:00:00Z") == 0
    assert ref_epoch("1970-01-01T01:00:00.25+01:00") == Decimal("0.25")
    assert ref_epoch("2026-06-01T10:00:00") is None
    parsed = datetime.fromisoformat("2026-06-01T10:00:00.5+02:00")
    expected = (parsed - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)
    assert ref_epoch("2026-06-01T10:00:00.5+02:00") == Decimal(int(expected)) / 1_000_000
