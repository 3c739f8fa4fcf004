"""The webhook delivery worker: outbox rows to signed HTTP POSTs.

One pass (:func:`deliver_once`) does three things:

1. **Fan-out.** Undispatched outbox rows, in id order, become one
   ``webhook_deliveries`` row per webhook of the workspace that subscribes to
   the event type and existed when the event happened (``created_at``). Only
   one worker fans out at a time (a transaction-scoped advisory lock; the
   others skip the step): if two fanned out side by side with SKIP LOCKED, a
   contact's later event could get its delivery rows before an earlier one,
   and go out first.
2. **Claim.** Due pending deliveries are claimed with ``FOR UPDATE SKIP
   LOCKED``, so any number of workers share the work without taking the same
   row. A delivery is not due while an earlier delivery of the same contact to
   the same webhook is pending: each contact's events arrive in order. (A
   delivery that gave up, ``failed``, no longer holds the later ones back.)
   "In order" is outbox id order, which is the order the changes committed
   in because every mutation of a contact locks its row before writing its
   event (``lock_contact``, the upsert's locks): a contact's later event
   cannot be written, let alone fanned out, before its earlier one commits.
3. **Send and settle.** Each claimed delivery is signed per Standard Webhooks
   (``webhook-id`` is the event id, the same on every retry) and POSTed
   through :func:`delivery_client`, which connects only to public addresses
   (``nudgel.api.webhooks.destinations``); 2xx settles it as delivered,
   anything else schedules a retry with exponential backoff and jitter, until
   ``webhook_max_attempts`` make it ``failed``. An attempt's error is a short
   class (``timeout``, ``connection_refused``, ``dns_error``, ``tls_error``,
   ``blocked_address``, ``http_5xx``, ...), never the raw connect error.

**Leases, not open transactions.** The claim commits at once and leaves a
lease on the row: ``next_attempt_at`` moves to the end of the request's time
budget (``webhook_timeout`` plus ``webhook_lease_margin``) and ``lease_token``
names the claim. Holding the row lock in a transaction across the HTTP call
would also survive crashes, but it would pin a connection and an open
transaction (holding back vacuum) per in-flight request, and a hung endpoint
would hold them for as long as it hangs. With a lease, a worker that crashes
or is killed mid-request simply lets the lease run out and another pass
claims the delivery again; the token makes a worker that overran its lease
leave the delivery to whoever claimed it next. Delivery is therefore
at-least-once: a request that reached the endpoint but whose answer was lost
is sent again with the same ``webhook-id``, which receivers dedupe on.

:func:`run_worker` loops over passes until told to stop; ``nudgel serve``
runs it as a task beside the API (``run_worker`` setting) and ``nudgel
worker`` runs it on its own (:func:`run_standalone`). An idle worker polls
every ``webhook_poll_interval`` rather than waiting on LISTEN/NOTIFY: a NOTIFY
from every mutation would make all committing transactions queue on
PostgreSQL's single notification lock, a cost on the write path paid to save
at most a second of delivery latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import psycopg
from nudgel.api.db.pool import make_pool
from nudgel.api.housekeeping import housekeeping_loop
from nudgel.api.jobs.resume import resume_loop
from nudgel.api.jobs.runner import JobHost
from nudgel.api.rules.scheduler import scheduler_loop
from nudgel.api.settings import Settings
from nudgel.api.webhooks.destinations import (
    DestinationError,
    PinnedBackend,
    PinnedTransport,
    error_class,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from standardwebhooks.webhooks import Webhook

from nudgel import __version__

__all__ = [
    "Claimed",
    "Outcome",
    "backoff_seconds",
    "claim",
    "deliver_once",
    "delivery_client",
    "expire",
    "fan_out",
    "make_worker_pool",
    "run_standalone",
    "run_worker",
    "send",
    "settle",
]

log = logging.getLogger(__name__)

# Names the fan-out among advisory locks ("nudgel" + 5; migrations use + 1).
_FANOUT_LOCK_KEY = 0x6E75_6467_656C_0005
FANOUT_LIMIT = 500
CLAIM_LIMIT = 20
# The worker stopped (or lost its lease) before the endpoint answered.
INTERRUPTED = "interrupted"
USER_AGENT = f"nudgel-webhooks/{__version__}"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this worker holds the lease of, with what it needs to send it."""

    delivery_pk: int
    attempt_pk: int
    lease_token: uuid.UUID
    attempts: int  # including this one
    url: str
    secret: str
    event_id: str
    body: str  # the outbox payload as JSON text: exactly the bytes signed and sent


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int | None  # the endpoint's HTTP status; None when there was no answer
    error: str | None  # None on success

    @property
    def delivered(self) -> bool:
        return self.error is None


def backoff_seconds(attempts: int, settings: Settings) -> float:
    """Delay before the next try after ``attempts`` failed ones.

    ``base * 2^(attempts-1)`` capped at ``webhook_backoff_max``, then jittered
    into its upper half, so endpoints recovering from an outage are not hit
    by every delivery at the same instant, and the delay never exceeds the cap.
    """
    # The exponent is capped: past 2^60 any base is beyond any sane cap, and
    # a float power would overflow for a very large webhook_max_attempts.
    doubling = 2.0 ** min(max(attempts - 1, 0), 60)
    delay = min(settings.webhook_backoff_max, settings.webhook_backoff_base * doubling)
    return delay * random.uniform(0.5, 1.0)


_FANOUT_SQL = """
WITH batch AS (
    SELECT id, workspace_id, event_type, contact_pk, created_at FROM outbox
    WHERE dispatched_at IS NULL ORDER BY id LIMIT %(limit)s
), fanned AS (
    INSERT INTO webhook_deliveries (webhook_pk, outbox_id, contact_pk)
    SELECT w.pk, b.id, b.contact_pk
    FROM batch b
    JOIN webhooks w ON w.workspace_id = b.workspace_id
        AND w.created_at <= b.created_at
        AND (b.event_type = ANY (w.events) OR '*' = ANY (w.events))
    ORDER BY b.id, w.pk
    ON CONFLICT DO NOTHING
)
UPDATE outbox o SET dispatched_at = now() FROM batch b WHERE o.id = b.id
"""


async def fan_out(conn: AsyncConnection, limit: int = FANOUT_LIMIT) -> int:
    """Turn up to ``limit`` undispatched outbox rows into deliveries; returns how many rows.

    0 also when another worker is fanning out right now (it will get these rows).
    """
    async with conn.transaction():
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_FANOUT_LOCK_KEY,))
        row = await cur.fetchone()
        if row is None or not row[0]:
            return 0
        cur = await conn.execute(_FANOUT_SQL, {"limit": limit})
        return cur.rowcount


_CLAIM_SQL = """
WITH due AS (
    SELECT d.pk FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND d.attempts < %(max)s
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries e
          WHERE e.webhook_pk = d.webhook_pk AND e.contact_pk = d.contact_pk
            AND e.outbox_id < d.outbox_id AND e.status = 'pending')
    ORDER BY d.next_attempt_at, d.pk
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, lease_token = %(token)s,
        next_attempt_at = now() + make_interval(secs => %(lease)s)
    FROM due WHERE d.pk = due.pk
    RETURNING d.pk, d.webhook_pk, d.outbox_id, d.attempts
), interrupted AS (
    -- Earlier attempts still open were cut short: their worker's lease ran out.
    UPDATE webhook_attempts a SET error = %(interrupted)s
    FROM claimed c WHERE a.delivery_pk = c.pk AND a.finished_at IS NULL AND a.error IS NULL
), attempt AS (
    INSERT INTO webhook_attempts (delivery_pk) SELECT pk FROM claimed RETURNING pk, delivery_pk
)
SELECT c.pk, a.pk, c.attempts, w.url, w.secret, o.event_id, o.payload::text
FROM claimed c
JOIN attempt a ON a.delivery_pk = c.pk
JOIN webhooks w ON w.pk = c.webhook_pk
JOIN outbox o ON o.id = c.outbox_id
ORDER BY o.id
"""


async def claim(
    conn: AsyncConnection, settings: Settings, limit: int = CLAIM_LIMIT
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (one statement, committed at once)."""
    token = uuid.uuid4()
    cur = await conn.execute(
        _CLAIM_SQL,
        {
            "max": settings.webhook_max_attempts,
            "limit": limit,
            "token": token,
            "lease": settings.webhook_timeout + settings.webhook_lease_margin,
            "interrupted": INTERRUPTED,
        },
    )
    return [
        Claimed(int(r[0]), int(r[1]), token, int(r[2]), r[3], r[4], r[5], r[6])
        for r in await cur.fetchall()
    ]


async def expire(conn: AsyncConnection, settings: Settings) -> int:
    """Give up on deliveries whose last allowed attempt was interrupted (lease over).

    The claim never takes a delivery with ``webhook_max_attempts`` attempts,
    so without this a crash during the last attempt would leave it pending
    forever, holding back the contact's later events.
    """
    cur = await conn.execute(
        "WITH gone AS ("
        " UPDATE webhook_deliveries SET status = 'failed', finished_at = now(),"
        " last_error = %(interrupted)s, lease_token = NULL"
        " WHERE status = 'pending' AND attempts >= %(max)s AND next_attempt_at <= now()"
        " RETURNING pk)"
        " UPDATE webhook_attempts a SET error = %(interrupted)s FROM gone"
        " WHERE a.delivery_pk = gone.pk AND a.finished_at IS NULL AND a.error IS NULL",
        {"max": settings.webhook_max_attempts, "interrupted": INTERRUPTED},
    )
    return cur.rowcount


async def send(client: httpx.AsyncClient, claimed: Claimed, settings: Settings) -> Outcome:
    """POST the event, signed; never raises for what the endpoint or network does."""
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": claimed.event_id,
        # The signer floors the timestamp to whole seconds; so does the header.
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(claimed.secret).sign(claimed.event_id, now, claimed.body),
    }
    try:
        # A total deadline, not only httpx's per-read one: an endpoint that
        # trickles bytes must not outlive the lease.
        async with (
            asyncio.timeout(settings.webhook_timeout),
            client.stream(
                "POST", claimed.url, content=claimed.body.encode(), headers=headers
            ) as response,
        ):
            # The body is never read: only the status matters.
            status = response.status_code
    except (TimeoutError, httpx.HTTPError, DestinationError) as exc:
        # What went wrong is logged for the operator; /deliveries shows its
        # class only (error_class): connect errors and their timing would
        # map the network behind the service for whoever holds a key.
        log.info("delivery %s failed: %r", claimed.delivery_pk, exc)
        return Outcome(None, error_class(exc))
    if 200 <= status < 300:
        return Outcome(status, None)
    return Outcome(status, f"http_{status // 100}xx")


async def settle(
    conn: AsyncConnection, settings: Settings, claimed: Claimed, outcome: Outcome
) -> None:
    """Record the attempt; deliver, reschedule or fail the delivery if the lease is still ours."""
    if outcome.delivered:
        status, next_in = "delivered", 0.0
    elif claimed.attempts >= settings.webhook_max_attempts:
        status, next_in = "failed", 0.0
    else:
        status, next_in = "pending", backoff_seconds(claimed.attempts, settings)
    await conn.execute(
        "WITH attempt AS ("
        " UPDATE webhook_attempts SET finished_at = now(), response_status = %(code)s,"
        " error = %(error)s WHERE pk = %(attempt)s)"
        " UPDATE webhook_deliveries SET status = %(status)s, last_status = %(code)s,"
        " last_error = %(error)s, lease_token = NULL,"
        " next_attempt_at = now() + make_interval(secs => %(next_in)s),"
        " finished_at = CASE WHEN %(status)s = 'pending' THEN NULL ELSE now() END"
        " WHERE pk = %(delivery)s AND lease_token = %(token)s AND status = 'pending'",
        {
            "code": outcome.status,
            "error": outcome.error,
            "attempt": claimed.attempt_pk,
            "status": status,
            "next_in": next_in,
            "delivery": claimed.delivery_pk,
            "token": claimed.lease_token,
        },
    )


async def _deliver(
    pool: AsyncConnectionPool, client: httpx.AsyncClient, settings: Settings, claimed: Claimed
) -> None:
    outcome = await send(client, claimed, settings)
    try:
        async with pool.connection() as conn:
            await settle(conn, settings, claimed, outcome)
    except (psycopg.Error, PoolTimeout):
        # The lease runs out and the delivery is sent again: at-least-once.
        log.exception("could not record delivery %s; it will be retried", claimed.delivery_pk)


async def deliver_once(
    pool: AsyncConnectionPool, client: httpx.AsyncClient, settings: Settings
) -> int:
    """One pass: fan out, expire, claim, send and settle. Returns the work done (0: idle)."""
    async with pool.connection() as conn:
        fanned = await fan_out(conn)
        expired = await expire(conn, settings)
        claimed = await claim(conn, settings)
    # The connection goes back to the pool during the requests; each settles
    # as soon as its answer is in, so a slow endpoint does not hold back the
    # next event of another contact.
    async with asyncio.TaskGroup() as group:
        for item in claimed:
            group.create_task(_deliver(pool, client, settings, item))
    return fanned + expired + len(claimed)


def delivery_client(settings: Settings) -> httpx.AsyncClient:
    """The client deliveries go out through: it connects only to addresses checked by
    ``destinations`` (pinned, so DNS rebinding cannot redirect it), follows no redirect
    (a 3xx could point anywhere), and ignores proxy settings of the environment."""
    backend = PinnedBackend(allow_private=settings.webhook_allow_private)
    return httpx.AsyncClient(
        transport=PinnedTransport(backend),
        timeout=settings.webhook_timeout,
        follow_redirects=False,
        trust_env=False,
    )


def make_worker_pool(url: str) -> AsyncConnectionPool:
    """The background work's own small pool (not yet open): deliveries and the scheduler
    never wait on API requests."""
    return AsyncConnectionPool(
        # Deliveries, the scheduler and the idempotency purge share it.
        url,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True},
        open=False,
        name="nudgel-worker",
    )


async def run_worker(
    pool: AsyncConnectionPool, settings: Settings, stop: asyncio.Event | None = None
) -> None:
    """Deliver until ``stop`` is set; a pass in progress finishes first.

    Loops straight on while there is work, otherwise waits
    ``webhook_poll_interval`` (or until stopped). Errors are logged and the
    loop goes on: a database restart must not end delivery for good.
    """
    stop = stop if stop is not None else asyncio.Event()
    async with delivery_client(settings) as client:
        while not stop.is_set():
            try:
                busy = await deliver_once(pool, client, settings) > 0
            except Exception:
                log.exception("webhook delivery pass failed")
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.webhook_poll_interval)


async def run_standalone(url: str, settings: Settings) -> None:
    """``nudgel worker``: :func:`run_worker` until SIGINT or SIGTERM, then a clean stop.

    The scheduler (re-evaluation as time passes) and the resumption of jobs
    whose process died (on a pool of their own, the size of the API's) are
    background work too."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signum, stop.set)
    pool = make_worker_pool(url)
    jobs_pool = make_pool(url, settings, for_jobs=True)
    await pool.open(wait=True)
    await jobs_pool.open(wait=True)
    jobs = JobHost(jobs_pool, settings)
    try:
        # The scheduler (re-evaluation as time passes), the resumption of jobs
        # and the purge of expired idempotency records are background work too.
        await asyncio.gather(
            run_worker(pool, settings, stop),
            scheduler_loop(pool, settings.schedule_interval, stop),
            resume_loop(jobs, settings.job_resume_interval, stop),
            housekeeping_loop(pool, settings, stop),
        )
    finally:
        await jobs.stop()  # their leases released: another process resumes them at once
        await jobs_pool.close()
        await pool.close()
