"""Trust (issue #11): rule deploys of any size, and jobs that survive their process.

- Large rule sets: the chunked backfill queries give the results of the one
  ``everything`` query on every conformance case; a 5,000-segment deploy
  succeeds and fills completely while ``/healthz`` keeps answering; the
  segment+score limit and a segment too wide for one query are 422s that
  change nothing.
- Crashes: ``nudgel serve`` killed (SIGKILL) mid-import and mid-backfill; the
  restarted server (or a ``nudgel worker``) finishes the job with exact
  counts, no row applied twice, no drift. Leases fence a process that lost
  its job.
- Recovery by hand: ``POST /v1/jobs/{id}/retry``, ``"backfill": "force"``,
  and the failed deploy as ``GET /v1/rules`` shows it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conformance import Case
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.jobs.runner import Lease, LeaseLost, create_job
from nudgel.api.keys.store import IssuedKey
from nudgel.api.rules import backfill
from nudgel.api.settings import Settings
from nudgel.compiler.sql import QueryTooWide, SqlCompiler
from nudgel.dsl.timeparse import parse_timestamp
from nudgel.runtime.contact import DataError, load_contacts
from nudgel.runtime.postgres_eval import evaluate_postgres
from test_api_foundation import assert_problem, bearer, free_port
from test_api_realtime import drift
from test_conformance_eval import CASES, compiled
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres

DEADLINE = 120.0


def many_segments(count: int) -> str:
    return "".join(f'segment s{i} {{ tag "t{i}" }}\n' for i in range(1, count + 1))


RULES = """
segment vip { tag "vip" }
segment pro { fields.plan = "pro" }
segment pro_vip { in segment pro and in segment vip }
score value { +10 when tag "vip"  +5 when fields.plan = "pro" }
lifecycle {
  lead when email is set
  customer when score.value >= 15
}
"""


# ---- the chunked queries -------------------------------------------------------------


def _narrowest(case: Case) -> int:
    """The fewest columns per query the case's rules can be split into."""
    rules = compiled(case)
    for width in range(3, 100):
        try:
            SqlCompiler(rules).everything_chunks(width, batch=True)
        except QueryTooWide:
            continue
        return width
    raise AssertionError("no width fits")


def _evaluated(case: Case) -> bool:
    rules = compiled(case)
    field_types = {name: rules.field_type(name) for name in rules.fields}
    try:
        load_contacts(case.contacts, field_types, rules.stage_names)
    except DataError:
        return False  # a data error case: nothing is evaluated
    return True


EVALUATED = [c for c in CASES if _evaluated(c)]


@pytest.mark.parametrize("case", EVALUATED, ids=[c.id for c in EVALUATED])
def test_chunked_queries_give_the_results_of_one_query(case: Case, migrated_url: str) -> None:
    """Split as finely as the rules allow (mostly one node a query), for a
    batch of contacts and for the workspace, every result is that of
    ``everything`` (which the conformance suite checks)."""
    rules = compiled(case)
    field_types = {name: rules.field_type(name) for name in rules.fields}
    contacts = load_contacts(case.contacts, field_types, rules.stage_names)
    now = parse_timestamp(case.now)
    assert now is not None
    whole = evaluate_postgres(rules, contacts, now, migrated_url).to_json()
    width = _narrowest(case)
    for batch in (True, False):
        split = evaluate_postgres(
            rules, contacts, now, migrated_url, max_columns=width, batch=batch
        ).to_json()
        assert split == whole


def test_chunks_respect_the_width_and_keep_every_node_once() -> None:
    from nudgel.dsl.checker import check_sources

    result = check_sources({"m.rules": "field plan: text\n" + many_segments(2500) + RULES})
    assert result.rules is not None
    queries = SqlCompiler(result.rules).everything_chunks(1000, batch=True)
    assert len(queries) == 3
    nodes = [c for q in queries for c in q.columns if c not in (("pk", ""), ("id", ""))]
    expected = [n for n in result.rules.order if n[0] != "lifecycle"] + [("stage", "")]
    assert sorted(nodes) == sorted(expected)
    assert all(len(q.columns) <= 1000 for q in queries)
    with pytest.raises(QueryTooWide, match="segment wide needs 4 values"):
        wide = check_sources({"m.rules": 'segment wide { tag "a" or tag "b" or tag "c" }'})
        assert wide.rules is not None
        SqlCompiler(wide.rules).everything_chunks(3, batch=True)


# ---- a served process ----------------------------------------------------------------


class Served:
    """``nudgel serve`` (or ``nudgel worker``) as a child process with settings in
    its environment; output goes to a file (a full pipe would stall it)."""

    def __init__(self, url: str, command: str = "serve", **settings: Any) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": url}
        env.update({f"NUDGEL_{name.upper()}": str(value) for name, value in settings.items()})
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        args = [sys.executable, "-m", "nudgel.cli.nudgel", command]
        if command == "serve":
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        if command == "serve":
            self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nudgel serve did not answer in 60 s"
            time.sleep(0.1)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind (no lease released)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def servers(migrated_url: str) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(command: str = "serve", **settings: Any) -> Served:
        served = Served(migrated_url, command, **settings)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def job_row(url: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT status, total, done, result, error, attempts FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    return dict(zip(("status", "total", "done", "result", "error", "attempts"), row, strict=True))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_job(url: str, job_id: str, timeout: float = DEADLINE) -> dict[str, Any]:
    wait_for(lambda: job_row(url, job_id)["status"] in ("succeeded", "failed"), job_id, timeout)
    return job_row(url, job_id)


def csv_of(rows: int, tags: Callable[[int], str] = lambda i: "") -> bytes:
    lines = ["email,name,plan,tags"]
    lines += [
        f"p{i}@example.com,Person {i},{'pro' if i % 3 == 0 else 'free'},{tags(i)}"
        for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def import_file(base: str, key: IssuedKey, content: bytes) -> str:
    response = httpx.post(
        f"{base}/v1/imports",
        files={"file": ("people.csv", content, "text/csv")},
        headers=bearer(key),
        timeout=60,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


@pytest.fixture
def workspace(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, 'plan', 'text')",
            (issued.workspace_id,),
        )
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


# ---- deploys at any size ---------------------------------------------------------------


def test_5000_segments_deploy_and_fill_while_the_api_answers(
    migrated_url: str, workspace: IssuedKey, servers: Callable[..., Served]
) -> None:
    served = servers()
    # 600 contacts, each tagged with three of the 5,000 segments' tags.
    tags = lambda i: f"t{i % 5000 + 1};t{(i * 7) % 5000 + 1};t{(i * 13) % 5000 + 1}"  # noqa: E731
    job = wait_job(migrated_url, import_file(served.base, workspace, csv_of(600, tags)))
    assert job["status"] == "succeeded", job

    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=served.base, timeout=30) as client:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError as error:
                    ok, failures[:] = False, [*failures, repr(error)]
                latencies.append(time.perf_counter() - start)
                if not ok:
                    failures.append("not 200")
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.5)  # a baseline before the deploy
        started = time.perf_counter()
        response = httpx.put(
            f"{served.base}/v1/rules",
            json={"files": {"many.rules": many_segments(5000)}},
            headers=bearer(workspace),
            timeout=300,
        )
        deployed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["segments"]) == 5000 and body["status"] == "backfilling"
        job = wait_job(migrated_url, body["job"]["id"], timeout=600)
        filled = time.perf_counter() - started
    finally:
        stop.set()
        poller.join()
    assert job["status"] == "succeeded", (job, served.output()[-3000:])
    assert job["result"]["contacts"] == 600 and job["done"] == job["total"] == 600
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"\n5,000 segments: PUT {deployed:.2f} s, filled {filled:.2f} s;"
        f" /healthz during it: {len(latencies)} requests, p50 {p50 * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert not failures
    # Generous for a loaded 2-core machine; the aim is < 200 ms. Before, the
    # API did not answer for minutes (the compile held the event loop).
    assert p99 < 1.0
    assert drift(migrated_url, workspace.workspace_id) == []
    with psycopg.connect(migrated_url) as conn:
        members = conn.execute(
            "SELECT count(*) FROM segment_members WHERE workspace_id = %s",
            (workspace.workspace_id,),
        ).fetchone()
    assert members is not None and members[0] == job["result"]["entered"] > 600
    current = httpx.get(f"{served.base}/v1/rules", headers=bearer(workspace)).json()
    assert (current["status"], current["last_good_version"]) == ("complete", 1)


@pytest.fixture
def limited(migrated_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=migrated_url, run_worker=False, rules_max_nodes=4, backfill_max_columns=3
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_limit_of_segments_and_scores_is_a_422_that_changes_nothing(
    limited: TestClient, workspace: IssuedKey, migrated_url: str
) -> None:
    assert Settings.model_fields["rules_max_nodes"].default >= 10_000
    first = limited.put(
        "/v1/rules", json={"files": {"m.rules": many_segments(2)}}, headers=bearer(workspace)
    )
    assert first.status_code == 200, first.text
    too_many = many_segments(3) + 'score a { +1 when tag "x" }\nscore b { +1 when tag "y" }\n'
    response = limited.put(
        "/v1/rules", json={"files": {"m.rules": too_many}}, headers=bearer(workspace)
    )
    problem = assert_problem(response, 422)
    assert problem["title"] == "Too many segments and scores"
    assert "3 segments and 2 scores (5)" in problem["detail"]
    assert "at most 4" in problem["detail"] and "rules_max_nodes" in problem["detail"]
    # A segment too wide for one query (backfill_max_columns=3) is refused too.
    wide = 'segment wide { tag "a" or tag "b" or tag "c" }'
    response = limited.put(
        "/v1/rules", json={"files": {"m.rules": wide}}, headers=bearer(workspace)
    )
    problem = assert_problem(response, 422)
    assert "segment wide needs 4 values" in problem["detail"]
    assert "backfill_max_columns" in problem["detail"]
    current = limited.get("/v1/rules", headers=bearer(workspace)).json()
    assert current["version"] == 1 and current["files"] == {"m.rules": many_segments(2)}
    with psycopg.connect(migrated_url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM rule_sets WHERE workspace_id = %(ws)s),"
            " (SELECT count(*) FROM jobs WHERE workspace_id = %(ws)s)",
            {"ws": workspace.workspace_id},
        ).fetchone()
    assert counts == (1, 1)


def test_rules_compiled_in_the_process_pool_evaluate_as_in_a_thread(
    client: TestClient,
    workspace: IssuedKey,
    migrated_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large rule sets are checked and compiled in another process (their
    checked rules, program bytecode and queries come back pickled); here
    every rule set is, and deploys, real-time evaluation and the backfill
    give what a fresh SQL evaluation gives."""
    from nudgel.api.rules import compiling, store

    monkeypatch.setattr(compiling, "IN_PROCESS_BYTES", 0)
    add_contacts(client, workspace, 6)
    source = RULES + 'segment named { email matches "(?i)^C[0-3]@" and not fields.plan = "free" }\n'
    body = put_rules(client, workspace, source)
    assert api_job(client, workspace, body["job"]["id"])["status"] == "succeeded"
    store._compiled.clear()  # the next mutation compiles the stored rules again, in the pool
    response = client.post(
        "/v1/contacts",
        json={"email": "C1@example.com", "tags": ["vip"], "fields": {"plan": "pro"}},
        headers=bearer(workspace),
    )
    assert response.status_code == 200, response.text
    assert drift(migrated_url, workspace.workspace_id) == []
    members = client.get("/v1/segments/named/contacts", headers=bearer(workspace)).json()
    emails = sorted(c["email"] for c in members["data"])
    assert emails == ["c0@example.com", "c1@example.com", "c3@example.com"]


# ---- crashes ---------------------------------------------------------------------------

# Short leases and frequent looks: a killed process's job is resumed in seconds.
FAST = {"job_lease_seconds": 2, "job_resume_interval": 0.3}


def test_an_import_killed_mid_way_finishes_after_a_restart_exactly_once(
    migrated_url: str, workspace: IssuedKey, servers: Callable[..., Served]
) -> None:
    rows = 3000
    first = servers(import_batch_size=10, **FAST)
    job_id = import_file(first.base, workspace, csv_of(rows))
    wait_for(lambda: job_row(migrated_url, job_id)["done"] >= 300, "the import to start")
    first.kill()
    killed = job_row(migrated_url, job_id)
    assert killed["status"] == "running" and 300 <= killed["done"] < rows, killed

    second = servers(import_batch_size=10, **FAST)  # no client action from here on
    job = wait_job(migrated_url, job_id)
    assert job["status"] == "succeeded", (job, second.output()[-3000:])
    assert job["attempts"] == 2
    assert job["result"] == {
        "rows": rows,
        "created": rows,
        "updated": 0,
        "merged": 0,
        "unchanged": 0,
        "rejected": 0,
    }
    assert job["done"] == job["total"] == rows
    with psycopg.connect(migrated_url) as conn:
        contacts = conn.execute(
            "SELECT count(*), count(DISTINCT email) FROM contacts WHERE workspace_id = %s",
            (workspace.workspace_id,),
        ).fetchone()
        created = conn.execute(
            "SELECT count(*), count(DISTINCT contact_pk) FROM outbox"
            " WHERE workspace_id = %s AND event_type = 'contact.created'",
            (workspace.workspace_id,),
        ).fetchone()
        left = conn.execute("SELECT count(*) FROM import_rows WHERE job_id = %s", (job_id,))
        staged = left.fetchone()
    # Every row once: one contact and one contact.created event each.
    assert contacts == (rows, rows)
    assert created == (rows, rows)
    assert staged == (0,)
    view = httpx.get(f"{second.base}/v1/jobs/{job_id}", headers=bearer(workspace)).json()
    assert view["attempts"] == 2 and view["lease_expires_at"] is None


@pytest.mark.parametrize("resumer", ["serve", "worker"])
def test_a_backfill_killed_mid_way_is_finished_after_a_restart(
    migrated_url: str, workspace: IssuedKey, servers: Callable[..., Served], resumer: str
) -> None:
    rows = 4000
    tags = lambda i: "vip" if i % 2 else ""  # noqa: E731
    first = servers(backfill_batch_size=20, **FAST)
    loaded = wait_job(migrated_url, import_file(first.base, workspace, csv_of(rows, tags)))
    assert loaded["status"] == "succeeded", loaded
    response = httpx.put(
        f"{first.base}/v1/rules", json={"files": {"m.rules": RULES}}, headers=bearer(workspace)
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["job"]["id"]
    wait_for(lambda: job_row(migrated_url, job_id)["done"] >= 400, "the backfill to start")
    first.kill()
    killed = job_row(migrated_url, job_id)
    assert killed["status"] == "running" and 400 <= killed["done"] < rows, killed
    assert drift(migrated_url, workspace.workspace_id) != []  # half filled

    # No client action: the restarted server (or a worker) resumes the job.
    again = servers(resumer, backfill_batch_size=20, **FAST)
    job = wait_job(migrated_url, job_id)
    assert job["status"] == "succeeded", (job, again.output()[-3000:])
    assert job["attempts"] == 2
    assert job["done"] == job["total"] == job["result"]["contacts"] == rows
    assert drift(migrated_url, workspace.workspace_id) == []
    with psycopg.connect(migrated_url) as conn:
        found = conn.execute(
            "SELECT (SELECT count(*) FROM segment_members WHERE workspace_id = %(ws)s),"
            " (SELECT count(*) FROM outbox WHERE workspace_id = %(ws)s"
            "   AND event_type LIKE 'segment.%%')",
            {"ws": workspace.workspace_id},
        ).fetchone()
    assert found is not None
    members, segment_events = found
    # Each membership entered once over both runs (a batch redone after the
    # crash finds nothing to change); a first fill is silent.
    assert job["result"]["entered"] == members and segment_events == 0


def test_leases_fence_a_process_that_lost_its_job(migrated_url: str, workspace: IssuedKey) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(migrated_url, autocommit=True) as conn:
            async with conn.transaction():
                job_id = await create_job(conn, workspace.workspace_id, "import", 60)
            ours, theirs = Lease(job_id, 60), Lease(job_id, 60, owner="another:1:x")
            assert await theirs.claim(conn) is None  # ours, and not lapsed
            assert await ours.claim(conn) is not None
            await conn.execute(
                "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                (job_id,),
            )
            assert await theirs.claim(conn) is not None  # lapsed: taken over
            with pytest.raises(LeaseLost):
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE jobs SET total = 99 WHERE id = %s", (job_id,)
                    )  # a batch's write
                    await ours.commit(conn, done=10)
            with pytest.raises(LeaseLost):
                await ours.extend(conn)
            cur = await conn.execute("SELECT total, done FROM jobs WHERE id = %s", (job_id,))
            assert await cur.fetchone() == (0, 0)  # the fenced batch rolled back whole

    asyncio.run(scenario())


# ---- recovery by hand ------------------------------------------------------------------


@pytest.fixture
def client(migrated_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=migrated_url, run_worker=False)
    with TestClient(create_app(settings)) as served:
        yield served


def put_rules(client: TestClient, key: IssuedKey, source: str, **extra: Any) -> dict[str, Any]:
    response = client.put(
        "/v1/rules", json={"files": {"m.rules": source}, **extra}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def api_job(client: TestClient, key: IssuedKey, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def add_contacts(client: TestClient, key: IssuedKey, count: int) -> None:
    for i in range(count):
        response = client.post(
            "/v1/contacts",
            json={
                "email": f"c{i}@example.com",
                "tags": ["vip"] if i % 2 else [],
                "fields": {"plan": "pro" if i % 3 == 0 else "free"},
            },
            headers=bearer(key),
        )
        assert response.status_code == 201, response.text


def test_a_failed_backfill_shows_on_the_rules_and_a_retry_completes_it(
    client: TestClient,
    workspace: IssuedKey,
    other_key: IssuedKey,
    migrated_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_contacts(client, workspace, 12)
    first = put_rules(client, workspace, many_segments(3))
    assert api_job(client, workspace, first["job"]["id"])["status"] == "succeeded"

    real_write = backfill._write_batch
    calls = 0

    async def failing_write(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the disk is full")
        await real_write(*args, **kwargs)

    monkeypatch.setattr(backfill, "_write_batch", failing_write)
    monkeypatch.setattr(client.app.state.settings, "backfill_batch_size", 5)  # type: ignore[attr-defined]
    second = put_rules(client, workspace, RULES)
    job_id = second["job"]["id"]
    failed = api_job(client, workspace, job_id)
    assert failed["status"] == "failed" and "the disk is full" in failed["error"]
    assert failed["result"] is not None and failed["done"] < 12
    rules = client.get("/v1/rules", headers=bearer(workspace)).json()
    assert rules["version"] == 2 and rules["status"] == "failed"
    assert rules["job"] == {
        "object": "job",
        "id": job_id,
        "status": "failed",
        "error": "RuntimeError: the disk is full",
    }
    assert rules["last_good_version"] == 1
    assert drift(migrated_url, workspace.workspace_id) != []

    # The retry route: a key, the job's own workspace, a failed job.
    url = f"/v1/jobs/{job_id}/retry"
    assert_problem(client.post(url), 401)
    assert_problem(client.post(url, headers=bearer(other_key)), 404)
    assert_problem(client.post("/v1/jobs/job_nope/retry", headers=bearer(workspace)), 404)
    succeeded = first["job"]["id"]
    problem = assert_problem(
        client.post(f"/v1/jobs/{succeeded}/retry", headers=bearer(workspace)), 409
    )
    assert "succeeded" in problem["detail"]

    response = client.post(url, headers=bearer(workspace))
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("queued", "running", "succeeded")
    job = api_job(client, workspace, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["error"] is None
    assert job["done"] == job["total"] == 12
    assert drift(migrated_url, workspace.workspace_id) == []
    rules = client.get("/v1/rules", headers=bearer(workspace)).json()
    assert (rules["status"], rules["last_good_version"]) == ("complete", 2)
    assert rules["job"]["status"] == "succeeded"
    again = assert_problem(client.post(url, headers=bearer(workspace)), 409)
    assert "succeeded" in again["detail"]


def test_retry_refuses_queued_and_running_jobs(
    client: TestClient, workspace: IssuedKey, migrated_url: str
) -> None:
    add_contacts(client, workspace, 2)
    job_id = put_rules(client, workspace, RULES)["job"]["id"]
    assert api_job(client, workspace, job_id)["status"] == "succeeded"
    for status in ("queued", "running"):
        # As a job another process holds would be.
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE jobs SET status = %s, lease_owner = 'elsewhere:1:x',"
                " lease_expires_at = now() + interval '1 hour' WHERE id = %s",
                (status, job_id),
            )
        problem = assert_problem(
            client.post(f"/v1/jobs/{job_id}/retry", headers=bearer(workspace)), 409
        )
        assert f"is {status}" in problem["detail"]
        view = client.get(f"/v1/jobs/{job_id}", headers=bearer(workspace)).json()
        assert view["status"] == status and view["lease_expires_at"] is not None
        # And a forced backfill waits for it.
        forced = client.put(
            "/v1/rules",
            json={"files": {"m.rules": RULES}, "backfill": "force"},
            headers=bearer(workspace),
        )
        assert "is running" in assert_problem(forced, 409)["detail"]


def test_a_superseded_backfill_cannot_be_retried(
    client: TestClient, workspace: IssuedKey, migrated_url: str
) -> None:
    job_id = put_rules(client, workspace, RULES)["job"]["id"]
    assert api_job(client, workspace, job_id)["status"] == "succeeded"
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET status = 'failed' WHERE id = %s", (job_id,))
    put_rules(client, workspace, many_segments(2))
    problem = assert_problem(
        client.post(f"/v1/jobs/{job_id}/retry", headers=bearer(workspace)), 409
    )
    assert "superseded" in problem["detail"]


def test_force_backfill_refills_unchanged_rules(
    client: TestClient, workspace: IssuedKey, migrated_url: str
) -> None:
    add_contacts(client, workspace, 10)
    body = put_rules(client, workspace, RULES)
    assert api_job(client, workspace, body["job"]["id"])["status"] == "succeeded"
    # A segment stuck half filled (as a backfill cut short leaves it).
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM segment_members WHERE workspace_id = %s AND segment = 'vip'"
            " AND contact_pk IN (SELECT contact_pk FROM segment_members"
            "  WHERE workspace_id = %s AND segment = 'vip' LIMIT 3)",
            (workspace.workspace_id, workspace.workspace_id),
        )
    stuck = drift(migrated_url, workspace.workspace_id)
    assert len(stuck) == 3
    again = put_rules(client, workspace, RULES)
    assert again["version"] == 1 and again["job"] is None  # an identical redeploy does nothing
    assert drift(migrated_url, workspace.workspace_id) == stuck
    forced = put_rules(client, workspace, RULES, backfill="force")
    assert forced["version"] == 1 and forced["status"] == "backfilling"
    job = api_job(client, workspace, forced["job"]["id"])
    assert job["status"] == "succeeded" and job["result"]["entered"] == 3
    assert drift(migrated_url, workspace.workspace_id) == []
    rules = client.get("/v1/rules", headers=bearer(workspace)).json()
    assert rules["job"]["id"] == forced["job"]["id"] and rules["status"] == "complete"
    with psycopg.connect(migrated_url) as conn:
        events = conn.execute(
            "SELECT count(*) FROM outbox WHERE workspace_id = %s AND event_type LIKE 'segment.%%'",
            (workspace.workspace_id,),
        ).fetchone()
    assert events == (0,)  # still the first fill of version 1's segments: silent
