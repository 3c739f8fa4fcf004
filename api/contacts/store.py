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
5. records the origin (the request's source, the time of the write) of each
   value that is new to all the contacts involved; a value one of them
   already held keeps that contact's origin, so origins follow the values
   that win a merge (migration 0006),
6. adds the request's tags; the caller writes the outbox events
   (``contact_views.emit_upsert``).

A request may also name a contact by id (``anchor_id``, an event's
``contact_id`` with traits): that contact joins the matches whatever its
identifiers, so the request's identifiers can merge others into it (or it
into an older one).

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

from nudgel.api.contacts.identity import KINDS, LOCK_SEED, Identifiers, Kind, lock_identifiers
from nudgel.api.contacts.models import DEFAULT_SOURCE
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.realtime import Change
from nudgel.api.transaction import Transaction
from nudgel.compiler.sql import json_text
from psycopg import AsyncConnection, errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__all__ = [
    "UpsertInput",
    "UpsertResult",
    "add_tags",
    "create_many",
    "new_contact_id",
    "upsert",
    "with_retries",
]

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
    source: str = DEFAULT_SOURCE  # recorded as the origin of the values the request changes
    anchor_id: str | None = None  # a contact named by id: always one of the matches (else 404)


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
    " unmatched_identifiers, origins"
)


def _fields(text: str) -> dict[str, Any]:
    # Exact numbers: stored decimals never pass through a float.
    loaded: dict[str, Any] = json.loads(text, parse_float=Decimal)
    return loaded


async def _matches(
    conn: AsyncConnection, workspace_id: int, ids: Mapping[Kind, str], anchor_id: str | None
) -> list[dict[str, Any]]:
    if not ids and anchor_id is None:
        return []
    # The same predicate as the partial unique indexes (migration 0004): blocked
    # values stored on a contact never match, and each arm is an index probe.
    arms = [
        f"({kind} = %({kind})s AND NOT ('{kind}' = ANY (unmatched_identifiers)))" for kind in ids
    ]
    if anchor_id is not None:
        arms.append("id = %(anchor)s")
    params: dict[str, Any] = {"ws": workspace_id, "anchor": anchor_id}
    params.update({str(kind): value for kind, value in ids.items()})
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_ROW} FROM contacts WHERE workspace_id = %(ws)s AND ({' OR '.join(arms)})"
        " ORDER BY created_at ASC NULLS LAST, pk FOR UPDATE",
        params,
    )
    found = list(await cur.fetchall())
    if anchor_id is not None and not any(r["id"] == anchor_id for r in found):
        raise ProblemError.not_found(f"Contact {anchor_id!r}")
    return found


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
        # A real value (oldest first) beats a blocked placeholder, whichever
        # contact is older: the placeholder identifies nobody.
        source = next(
            (r for r in found if r[kind] is not None and kind not in r["unmatched_identifiers"]),
            None,
        ) or next((r for r in found if r[kind] is not None), None)
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


def _merged_origins(
    req: UpsertInput, found: Sequence[dict[str, Any]], profile: Mapping[str, Any], stamp: str
) -> dict[str, Any]:
    """The survivor's origins for ``profile`` (see the module docstring, step 5).

    A value held by one of the contacts (survivor first) keeps that contact's
    origin, even none (a value stored before origins were recorded): it did
    not change. Only a value new to all of them is stamped with the request's.
    """
    mine = {"source": req.source, "at": stamp}
    out: dict[str, Any] = {}

    def carry(key: str, held: list[bool], given: bool) -> None:
        holder = next((r for r, has in zip(found, held, strict=True) if has), None)
        if holder is not None:
            if key in holder["origins"]:
                out[key] = holder["origins"][key]
        elif given:
            out[key] = mine

    requested: dict[str, Any] = {str(k): v for k, v in req.identifiers.values.items()}
    requested["name"] = req.name
    for key in (*KINDS, "name"):
        value = profile[key]
        if value is not None:
            carry(key, [r[key] == value for r in found], requested.get(key) == value)
    tokens = profile["push_tokens"]
    known = {t for r in found for t in r["push_tokens"]}
    if any(t not in known for t in tokens):
        out["push_tokens"] = mine  # the request added a token
    elif tokens:
        # The union of the contacts' tokens: the latest addition among them.
        # Stamps are fixed-width UTC text, so they sort as the times do.
        stamps = [r["origins"]["push_tokens"] for r in found if "push_tokens" in r["origins"]]
        if stamps:
            out["push_tokens"] = max(stamps, key=lambda o: str(o["at"]))
    values = _fields(profile["fields"])
    stored = [_fields(r["fields"]) for r in found]
    given = _fields(req.fields_json)
    for name, value in values.items():
        carry(
            f"fields.{name}",
            [f.get(name) == value for f in stored],
            name in given and given[name] == value,
        )
    return out


def _rule_change(before: dict[str, Any], profile: Mapping[str, Any]) -> Change:
    """What an update changed, as the rules read it (for re-evaluation)."""
    change = Change("contact.updated", attributes={"updated_at"})
    for key, value in profile.items():
        if key == "fields":
            old, new = _fields(before["fields"]), _fields(value)
            change.fields |= {
                name for name in old.keys() | new.keys() if old.get(name) != new.get(name)
            }
        elif before[key] != value:
            change.attributes.add(key)
    return change


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
    " unmatched_identifiers = %(unmatched)s::text[], origins = %(origins)s"
)


async def _create(
    tx: Transaction, profile: dict[str, Any], unmatched: list[str], origins: dict[str, Any]
) -> UpsertResult:
    contact_id = new_contact_id()
    cur = await tx.conn.execute(
        "INSERT INTO contacts (workspace_id, id, email, phone, whatsapp_id, external_id, name,"
        " push_tokens, fields, unmatched_identifiers, origins) VALUES (%(ws)s, %(id)s, %(email)s,"
        " %(phone)s, %(whatsapp_id)s, %(external_id)s, %(name)s, %(push_tokens)s,"
        " %(fields)s::jsonb, %(unmatched)s::text[], %(origins)s) RETURNING pk",
        {
            **profile,
            "ws": tx.workspace_id,
            "id": contact_id,
            "push_tokens": Jsonb(profile["push_tokens"]),
            "unmatched": unmatched,
            "origins": Jsonb(origins),
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return UpsertResult(201, int(row[0]), contact_id, changed=True)


async def create_many(
    tx: Transaction, reqs: Sequence[UpsertInput]
) -> tuple[list[UpsertResult | None], list[int]]:
    """The set-based path of a bulk load: every request whose matchable
    identifiers no contact holds, and no other request of ``reqs`` shares,
    creates its contact here, in a few statements for all of them. Returns
    a result per request (None for the others) and the others' indexes, which
    the caller upserts one by one (they may match, merge or conflict).

    The identifiers are locked first, as :func:`upsert` locks them, so a
    concurrent upsert of one of them waits for this transaction and then
    finds the contact.
    """
    conn, ws = tx.conn, tx.workspace_id
    seen: dict[tuple[str, str], int] = {}
    for req in reqs:
        for pair in req.identifiers.matchable.items():
            seen[pair] = seen.get(pair, 0) + 1
    candidates = [
        i
        for i, req in enumerate(reqs)
        if req.anchor_id is None
        and req.identifiers.matchable
        and all(seen[pair] == 1 for pair in req.identifiers.matchable.items())
    ]
    keys = sorted(
        f"{ws}:{kind}:{value}"
        for i in candidates
        for kind, value in reqs[i].identifiers.matchable.items()
    )
    if keys:
        # In array order (a function scan returns its rows in order), as
        # lock_identifiers takes them one by one: the same global order.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, %s))"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, n)",
            (LOCK_SEED, keys),
        )
    held: set[tuple[str, str]] = set()
    if candidates:
        params: dict[str, Any] = {"ws": ws}
        arms = []
        for kind in KINDS:
            values = [
                reqs[i].identifiers.matchable[kind]
                for i in candidates
                if kind in reqs[i].identifiers.matchable
            ]
            if values:
                params[kind] = values
                arms.append(
                    f"SELECT '{kind}', {kind} FROM contacts WHERE workspace_id = %(ws)s"
                    f" AND {kind} = ANY(%({kind})s) AND NOT ('{kind}' = ANY(unmatched_identifiers))"
                )
        cur = await conn.execute(" UNION ALL ".join(arms), params)
        held = {(kind, value) for kind, value in await cur.fetchall()}
    fresh = [
        i
        for i in candidates
        if not any(pair in held for pair in reqs[i].identifiers.matchable.items())
    ]
    results: list[UpsertResult | None] = [None] * len(reqs)
    others = [i for i in range(len(reqs)) if i not in set(fresh)]
    if not fresh:
        return results, others
    stamp = await _stamp(conn)
    columns: dict[str, list[Any]] = {
        name: [] for name in ("id", *KINDS, "name", "push_tokens", "fields", "unmatched", "origins")
    }
    for i in fresh:
        profile, unmatched = _merged_profile(reqs[i], [])
        origins = _merged_origins(reqs[i], [], profile, stamp)
        columns["id"].append(new_contact_id())
        for kind in KINDS:
            columns[kind].append(profile[kind])
        columns["name"].append(profile["name"])
        columns["push_tokens"].append(json.dumps(profile["push_tokens"]))
        columns["fields"].append(profile["fields"])
        columns["unmatched"].append(",".join(unmatched))
        columns["origins"].append(json.dumps(origins))
    kinds = ", ".join(KINDS)
    cur = await conn.execute(
        f"INSERT INTO contacts (workspace_id, id, {kinds}, name, push_tokens, fields,"
        " unmatched_identifiers, origins)"
        f" SELECT %s, u.id, {', '.join('u.' + kind for kind in KINDS)}, u.name, u.push_tokens,"
        " u.fields, string_to_array(u.unmatched, ','), u.origins"
        f" FROM unnest(%s::text[], {'%s::text[], ' * len(KINDS)}%s::text[], %s::jsonb[],"
        " %s::jsonb[], %s::text[], %s::jsonb[])"
        f" AS u(id, {kinds}, name, push_tokens, fields, unmatched, origins)"
        " RETURNING id, pk",
        (
            ws,
            columns["id"],
            *(columns[kind] for kind in KINDS),
            columns["name"],
            columns["push_tokens"],
            columns["fields"],
            columns["unmatched"],
            columns["origins"],
        ),
    )
    pks = {cid: int(pk) for cid, pk in await cur.fetchall()}
    tag_pks: list[int] = []
    tag_names: list[str] = []
    for i, contact_id in zip(fresh, columns["id"], strict=True):
        pk = pks[contact_id]
        tags = sorted(set(reqs[i].tags))
        results[i] = UpsertResult(201, pk, contact_id, changed=True, added_tags=tags)
        tag_pks += [pk] * len(tags)
        tag_names += tags
        tx.touch(pk, Change("contact.created", everything=True))
    if tag_names:
        await _define_tags(tx, sorted(set(tag_names)))
        await conn.execute(
            "INSERT INTO contact_tags (contact_pk, tag) SELECT * FROM unnest(%s::bigint[], %s::text[])",
            (tag_pks, tag_names),
        )
    return results, others


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
    # Confirm and unsubscribe links already sent stay valid: they now act on
    # the survivor's (moved) subscription.
    await conn.execute(
        "UPDATE list_confirmations SET contact_pk = %s WHERE contact_pk = ANY(%s)",
        (survivor["pk"], others),
    )
    await conn.execute(
        "UPDATE list_unsubscribe_links SET contact_pk = %s WHERE contact_pk = ANY(%s)",
        (survivor["pk"], others),
    )
    # Deleted before the survivor takes their identifiers (unique indexes).
    await conn.execute("DELETE FROM contacts WHERE pk = ANY(%s)", (others,))


async def _stamp(conn: AsyncConnection) -> str:
    """The transaction's now() (the ``updated_at`` this write stores) as fixed-width UTC text."""
    cur = await conn.execute(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def upsert(tx: Transaction, req: UpsertInput) -> UpsertResult:
    """One attempt; run it under :func:`with_retries`."""
    conn = tx.conn
    ids = req.identifiers
    await lock_identifiers(conn, tx.workspace_id, ids)
    found = await _matches(conn, tx.workspace_id, ids.matchable, req.anchor_id)
    _external_id_conflict(ids, found)
    profile, unmatched = _merged_profile(req, found)
    origins = _merged_origins(req, found, profile, await _stamp(conn))
    if not found:
        result = await _create(tx, profile, unmatched, origins)
        tx.touch(result.pk, Change("contact.created", everything=True))
    else:
        survivor, others = found[0], found[1:]
        result = UpsertResult(200, survivor["pk"], survivor["id"])
        if others:
            result.merged_ids = [r["id"] for r in others]
            # The merged-away contacts leave their segments before they go.
            await tx.forget([r["pk"] for r in others], "contact.merged")
            await _absorb(conn, survivor, [r["pk"] for r in others])
            await conn.execute(
                "INSERT INTO events (contact_pk, name, at, props, source)"
                " VALUES (%s, 'contact.merged', now(), %s, %s)",
                # The request's source: the touchpoint that brought the identities together.
                (survivor["pk"], Jsonb({"merged_ids": result.merged_ids}), req.source),
            )
        result.changed = bool(others) or _changed(survivor, profile, unmatched)
        if others:
            tx.touch(result.pk, Change("contact.merged", everything=True))
        elif result.changed:
            tx.touch(result.pk, _rule_change(survivor, profile))
        if result.changed:
            await conn.execute(
                f"UPDATE contacts SET {_SET}, updated_at = now() WHERE pk = %(pk)s",
                {
                    **profile,
                    "push_tokens": Jsonb(profile["push_tokens"]),
                    "unmatched": unmatched,
                    "origins": Jsonb(origins),
                    "pk": survivor["pk"],
                },
            )
    result.added_tags = await add_tags(tx, result.pk, req.tags)
    return result


async def _define_tags(tx: Transaction, names: Sequence[str]) -> None:
    """Define the tags the workspace does not know yet (``tag.created``); ``names`` sorted."""
    cur = await tx.conn.execute(
        "INSERT INTO tags (workspace_id, name) SELECT %s, unnest(%s::text[])"
        " ON CONFLICT DO NOTHING RETURNING name, color, created_at, updated_at",
        (tx.workspace_id, list(names)),
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


async def add_tags(tx: Transaction, contact_pk: int, tags: Sequence[str]) -> list[str]:
    """Tag the contact; returns the tags it did not carry yet. Unknown tags are
    defined (no colour) and fire ``tag.created``."""
    if not tags:
        return []
    names = sorted(set(tags))  # one order for every request: no deadlock between them
    await _define_tags(tx, names)
    cur = await tx.conn.execute(
        "INSERT INTO contact_tags (contact_pk, tag) SELECT %s, unnest(%s::text[])"
        " ON CONFLICT DO NOTHING RETURNING tag",
        (contact_pk, names),
    )
    added = sorted(r[0] for r in await cur.fetchall())
    if added:
        tx.touch(contact_pk, Change("contact.tagged", tags=set(added)))
    return added
