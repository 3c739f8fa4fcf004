"""Admitting a request's key: look it up, and take one request from its rate limit.

One statement per request does both: the key (not revoked, not expired), its
GCRA bucket in ``rate_limits`` (shared by every server process, so a limit
holds however many processes serve), and ``last_used_at`` (written at most
once a minute). GCRA keeps one instant per key, the "theoretical arrival
time": each request moves it on by ``1 / rate``; a request is refused when
that would put it more than ``burst / rate`` ahead of now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from nudgel.api.keys.store import KeyMode, Scope
from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = ["Admission", "RateLimit", "admit"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: int  # the burst: requests that may come at once
    window: float  # seconds for an empty bucket to fill again
    remaining: int
    reset: float  # seconds until the bucket is full again
    retry_after: float | None  # refused: seconds until one request is allowed


@dataclass(frozen=True, slots=True)
class Admission:
    key_id: int
    workspace_id: int
    mode: KeyMode
    scopes: frozenset[Scope] | None  # None: a full key
    rate: RateLimit

    @property
    def limited(self) -> bool:
        return self.rate.retry_after is not None


_ADMIT = """
WITH t AS (SELECT clock_timestamp() AS now),
k AS (
  SELECT id, workspace_id, mode, scopes, last_used_at FROM api_keys, t
   WHERE hash = %(hash)s AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > t.now)
),
r AS (
  INSERT INTO rate_limits AS r (key_id, tat)
  SELECT k.id, t.now + %(interval)s FROM k, t
  ON CONFLICT (key_id) DO UPDATE
     SET tat = greatest(r.tat, (SELECT now FROM t)) + %(interval)s
   WHERE greatest(r.tat, (SELECT now FROM t)) + %(interval)s <= (SELECT now FROM t) + %(window)s
  RETURNING tat
),
u AS (
  UPDATE api_keys a SET last_used_at = t.now FROM k, t
   WHERE a.id = k.id AND (k.last_used_at IS NULL OR k.last_used_at < t.now - interval '1 minute')
  RETURNING 1
)
SELECT k.id, k.workspace_id, k.mode, k.scopes, t.now,
       (SELECT tat FROM r) AS new_tat,
       (SELECT tat FROM rate_limits WHERE key_id = k.id) AS old_tat,
       (SELECT count(*) FROM u) AS touched
  FROM k, t
"""


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


async def admit(
    conn: AsyncConnection, key_hash: bytes, per_second: float, burst: int
) -> Admission | None:
    """The key's admission (``limited`` when over its rate), or None for no valid key."""
    # At least a microsecond (timestamptz's resolution): a rate above a million a
    # second would otherwise round the interval to zero.
    interval = max(timedelta(seconds=1 / per_second), timedelta(microseconds=1))
    window = interval * burst
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_ADMIT, {"hash": key_hash, "interval": interval, "window": window})
    row = await cur.fetchone()
    if row is None:
        return None
    now: datetime = row["now"]
    if row["new_tat"] is not None:
        ahead = _seconds(row["new_tat"] - now)
        remaining = max(0, math.floor((_seconds(window) - ahead) / _seconds(interval)))
        rate = RateLimit(burst, _seconds(window), remaining, max(0.0, ahead), None)
    else:
        earliest = max(row["old_tat"], now) + interval - window
        wait = max(_seconds(earliest - now), _seconds(interval))
        ahead = _seconds(max(row["old_tat"], now) - now)
        rate = RateLimit(burst, _seconds(window), 0, ahead, wait)
    scopes = frozenset(row["scopes"]) if row["scopes"] else None
    return Admission(int(row["id"]), int(row["workspace_id"]), row["mode"], scopes, rate)
