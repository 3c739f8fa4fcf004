"""Upsert and merge: one request's identifiers -> exactly one contact.

Within the request's transaction, :func:`upsert`:

1. locks every matchable identifier of the request (``identity.lock_identifiers``),
2. finds every contact carrying one of them (``FOR UPDATE``, oldest first),
3. refuses (409) when that would join two different external ids,
4. creates (none found), updates (one) or merges into the oldest (several):
   events, tags and subscriptions move to the survivor, field values and
   identifiers the survivor lacks are taken from the others (oldest first),
   the others are deleted, and the merge is an event on the survivor's
   timeline; the request's non-empty values win over all stored ones,
5. adds the request's tags, and writes the outbox events.

The locks make two requests that share an identifier run one after the
other. Identifiers a merge takes over from a deleted contact are not locked
by the request, so a concurrent request can still race on them; that shows
as a unique violation (or a deadlock), and :func:`with_retries` reruns the
attempt in a fresh savepoint with a fresh snapshot, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from nudgel.api.identity import KINDS, Identifiers, Kind, lock_identifiers
from nudgel.api.mutation import Transaction
from nudgel.api.problems import ProblemError, problem_type
from nudgel.compiler.sql import json_text
from psycopg import AsyncConnection, errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__all__ = ["UpsertInput", "UpsertResult", "add_tags", "new_contact_id", "upsert", "with_retries"]

T = TypeVar("T")

MAX_ATTEMPTS = 8
RETRYABLE = (errors.UniqueViolation, errors.DeadlockDetected, errors.SerializationFailure)
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_contact_id() -> str:
    """``con_`` + 26 base-32 characters: 48 bits of milliseconds, 80 random bits.

    Time-ordered, so lists (keyset-paginated on the id) come in creation order,
    and unguessable, so ids leak nothing across workspaces.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "con_" + "".join(chars)


async def with_retries(conn: AsyncConnection, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` in a savepoint, rerunning it on a unique violation or deadlock."""
    for number in range(1, MAX_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                return await attempt()
        except RETRYABLE:
            if number == MAX_ATTEMPTS:
                raise ProblemError(
                    409,
                    "Concurrent update",
                    "The contact kept changing under concurrent requests; retry the request.",
                    type_=problem_type("concurrent-update"),
                ) from None
            # Jittered backoff so that the requests racing do not collide again.
            await asyncio.sleep(random.uniform(0, 0.005 * 2**number))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class UpsertInput:
    identifiers: Identifiers
    name: str | None
    push_tokens: Sequence[str]
    tags: Sequence[str]
    fields_json: str  # stored form, from contact_fields.stored_fields_json


@dataclass
class UpsertResult:
    status: int  # 201 created, 200 updated or merged
    pk: int
    contact_id: str
    merged_ids: list[str] = field(default_factory=list)
    changed: bool = False
    added_tags: list[str] = field(default_factory=list)


_ROW = (
    "pk, id, email, phone, whatsapp_id, external_id, name, push_tokens, fields::text AS fields,"
    " unmatched_identifiers"
)


def _fields(text: str) -> dict[str, Any]:
    # Exact numbers: stored decimals never pass through a float.
    loaded: dict[str, Any] = json.loads(text, parse_float=Decimal)
    return loaded


async def _matches(
    conn: AsyncConnection, workspace_id: int, ids: Mapping[Kind, str]
) -> list[dict[str, Any]]:
    if not ids:
        return []
    # The same predicate as the partial unique indexes (migration 0004): blocked
    # values stored on a contact never match, and each arm is an index probe.
    arms = " OR ".join(
        f"({kind} = %({kind})s AND NOT ('{kind}' = ANY (unmatched_identifiers)))" for kind in ids
    )
    params: dict[str, Any] = {"ws": workspace_id}
    params.update({str(kind): value for kind, value in ids.items()})
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ROW} FROM contacts WHERE workspace_id = %(ws)s AND ({arms})"
        " ORDER BY created_at ASC NULLS LAST, pk FOR UPDATE",
        params,
    )
    return list(await cur.fetchall())


def _external_id_conflict(req: Identifiers, found: Sequence[dict[str, Any]]) -> None:
    owners: dict[str, list[str]] = {}
    if "external_id" in req.matchable:
        owners.setdefault(req.matchable["external_id"], []).append("the request")
    for row in found:
        if row["external_id"] is not None and "external_id" not in row["unmatched_identifiers"]:
            owners.setdefault(row["external_id"], []).append(f"contact {row['id']}")
    if len(owners) <= 1:
        return
    by_kind = {
        kind: [r["id"] for r in found if r[kind] == req.values.get(kind)]
        for kind in KINDS
        if kind in req.matchable and kind != "external_id"
    }
    matched = "; ".join(f"{kind} matches {', '.join(ids)}" for kind, ids in by_kind.items() if ids)
    held = ", ".join(f"{value!r} ({' and '.join(who)})" for value, who in owners.items())
    raise ProblemError(
        409,
        "Identity conflict",
        f"These identifiers would join different external ids: {held}. Contacts with"
        f" different external ids never merge ({matched or 'no other identifier matched'}).",
        type_=problem_type("identity-conflict"),
        external_ids=sorted(owners),
        contact_ids=[r["id"] for r in found],
    )


def _merged_profile(
    req: UpsertInput, found: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """The survivor's new profile columns and blocked kinds: the request's
    values, else the survivor's, else the first other contact's that has one
    (a blocked request value only when no contact has one)."""
    profile: dict[str, Any] = {}
    unmatched: list[str] = []
    ids = req.identifiers
    for kind in KINDS:
        if kind in ids.matchable:
            profile[kind] = ids.values[kind]
            continue
        source = next((r for r in found if r[kind] is not None), None)
        if source is not None:
            profile[kind] = source[kind]
            if kind in source["unmatched_identifiers"]:
                unmatched.append(kind)
        else:
            # A blocked value is a placeholder: it never replaces a real one,
            # but is kept when the contact has nothing better.
            profile[kind] = ids.values.get(kind)
            if kind in ids.blocked:
                unmatched.append(kind)
    profile["name"] = req.name or next((r["name"] for r in found if r["name"]), None)
    tokens: list[str] = []
    for r in found:
        tokens += [t for t in r["push_tokens"] if t not in tokens]
    tokens += [t for t in req.push_tokens if t not in tokens]
    profile["push_tokens"] = tokens
    fields: dict[str, Any] = {}
    for r in reversed(found):  # older contacts' values win over newer ones
        fields.update(_fields(r["fields"]))
    fields.update(_fields(req.fields_json))
    profile["fields"] = json_text(fields)
    return profile, unmatched


def _changed(before: dict[str, Any], profile: Mapping[str, Any], unmatched: list[str]) -> bool:
    for key, value in profile.items():
        if key == "fields":
            if _fields(before["fields"]) != _fields(value):
                return True
        elif before[key] != value:
            return True
    return sorted(before["unmatched_identifiers"]) != sorted(unmatched)


_SET = ", ".join(f"{c} = %({c})s" for c in (*KINDS, "name")) + (
    ", push_tokens = %(push_tokens)s, fields = %(fields)s::jsonb,"
    " unmatched_identifiers = %(unmatched)s::text[]"
)


async def _create(tx: Transaction, profile: dict[str, Any], unmatched: list[str]) -> UpsertResult:
    contact_id = new_contact_id()
    cur = await tx.conn.execute(
        "INSERT INTO contacts (workspace_id, id, email, phone, whatsapp_id, external_id, name,"
        " push_tokens, fields, unmatched_identifiers) VALUES (%(ws)s, %(id)s, %(email)s,"
        " %(phone)s, %(whatsapp_id)s, %(external_id)s, %(name)s, %(push_tokens)s,"
        " %(fields)s::jsonb, %(unmatched)s::text[]) RETURNING pk",
        {
            **profile,
            "ws": tx.workspace_id,
            "id": contact_id,
            "push_tokens": Jsonb(profile["push_tokens"]),
            "unmatched": unmatched,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return UpsertResult(201, int(row[0]), contact_id, changed=True)


async def _absorb(conn: AsyncConnection, survivor: dict[str, Any], others: list[int]) -> None:
    """Move the others' events, tags and subscriptions to the survivor, then delete them."""
    await conn.execute(
        "UPDATE events SET contact_pk = %s WHERE contact_pk = ANY(%s)", (survivor["pk"], others)
    )
    await conn.execute(
        "INSERT INTO contact_tags (contact_pk, tag) SELECT %s, tag FROM contact_tags"
        " WHERE contact_pk = ANY(%s) ON CONFLICT DO NOTHING",
        (survivor["pk"], others),
    )
    # The most recently changed status of a list wins.
    await conn.execute(
        "INSERT INTO subscriptions (contact_pk, list, status, updated_at)"
        " SELECT DISTINCT ON (list) %s, list, status, updated_at FROM subscriptions"
        " WHERE contact_pk = ANY(%s) ORDER BY list, updated_at DESC"
        " ON CONFLICT (contact_pk, list) DO UPDATE SET status = excluded.status,"
        " updated_at = excluded.updated_at WHERE excluded.updated_at > subscriptions.updated_at",
        (survivor["pk"], others),
    )
    # Deleted before the survivor takes their identifiers (unique indexes).
    await conn.execute("DELETE FROM contacts WHERE pk = ANY(%s)", (others,))


async def upsert(tx: Transaction, req: UpsertInput) -> UpsertResult:
    """One attempt; run it under :func:`with_retries`."""
    conn = tx.conn
    ids = req.identifiers
    await lock_identifiers(conn, tx.workspace_id, ids)
    found = await _matches(conn, tx.workspace_id, ids.matchable)
    _external_id_conflict(ids, found)
    profile, unmatched = _merged_profile(req, found)
    if not found:
        result = await _create(tx, profile, unmatched)
    else:
        survivor, others = found[0], found[1:]
        result = UpsertResult(200, survivor["pk"], survivor["id"])
        if others:
            result.merged_ids = [r["id"] for r in others]
            await _absorb(conn, survivor, [r["pk"] for r in others])
            await conn.execute(
                "INSERT INTO events (contact_pk, name, at, props, source)"
                " VALUES (%s, 'contact.merged', now(), %s, 'api')",
                (survivor["pk"], Jsonb({"merged_ids": result.merged_ids})),
            )
        result.changed = bool(others) or _changed(survivor, profile, unmatched)
        if result.changed:
            await conn.execute(
                f"UPDATE contacts SET {_SET}, updated_at = now() WHERE pk = %(pk)s",
                {
                    **profile,
                    "push_tokens": Jsonb(profile["push_tokens"]),
                    "unmatched": unmatched,
                    "pk": survivor["pk"],
                },
            )
    result.added_tags = await add_tags(tx, result.pk, req.tags)
    return result


async def add_tags(tx: Transaction, contact_pk: int, tags: Sequence[str]) -> list[str]:
    """Tag the contact; returns the tags it did not carry yet. Unknown tags are
    defined (no colour) and fire ``tag.created``."""
    if not tags:
        return []
    names = sorted(set(tags))  # one order for every request: no deadlock between them
    cur = await tx.conn.execute(
        "INSERT INTO tags (workspace_id, name) SELECT %s, unnest(%s::text[])"
        " ON CONFLICT DO NOTHING RETURNING name, color, created_at, updated_at",
        (tx.workspace_id, names),
    )
    for name, color, created_at, updated_at in await cur.fetchall():
        await tx.emit(
            "tag.created",
            {
                "object": "tag",
                "name": name,
                "color": color,
                "created_at": created_at.isoformat(),
                "updated_at": updated_at.isoformat(),
            },
        )
    cur = await tx.conn.execute(
        "INSERT INTO contact_tags (contact_pk, tag) SELECT %s, unnest(%s::text[])"
        " ON CONFLICT DO NOTHING RETURNING tag",
        (contact_pk, names),
    )
    return sorted(r[0] for r in await cur.fetchall())
