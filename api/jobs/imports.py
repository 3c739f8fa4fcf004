"""CSV contact imports: the file is staged with COPY, then applied in batches
through the same upsert as ``POST /v1/contacts``.

The file (UTF-8, a byte-order mark allowed; RFC 4180 CSV, comma-separated)
starts with a header row. Each column maps to a target (:data:`ATTRIBUTES`,
or ``fields.NAME`` for a custom field the workspace defines): by its header
(case and surrounding blanks ignored; a field by its bare name too) unless
the import's ``mapping`` names it (``"-"`` ignores the column). A header
that maps to nothing refuses the whole file up front (:class:`ImportRefused`),
before any row is read: a misspelt column would otherwise drop a value from
every row.

Rows are numbered as a spreadsheet shows them: the header is row 1, the
first data row is row 2 (CSV records: a quoted cell spanning several lines
is still one row). Blank lines count but are skipped.

:func:`prepare_import` (in the caller's transaction) creates the job (kind
``import``) and COPYs every row into ``import_rows`` as its cells (the
parsing runs in a worker thread, a chunk at a time, so the event loop is
never held for long). A row whose cell count differs from the header's is
rejected there. :func:`run_import` then reads the staged rows in batches of
``import_batch_size`` (a setting), one transaction each: every row is validated as an
upsert body (:class:`ContactUpsert`, identifiers, typed fields: the API's
rules, so the same value is refused with the same reason) and applied with
``contacts_store.upsert`` in its own savepoint (``with_retries``), so a row
refused while it is applied (two external ids, 409) leaves nothing behind
and the batch goes on. Applied rows are deleted from the staging table,
rejected ones keep their reason: the rejection report, and, if the process
stops mid-job, exactly the rows still to do. The batch's transaction also
adds its counts to the job and checks that this process still holds the
job's lease (``nudgel.api.jobs.runner``): a crashed import is resumed by
another process (``nudgel.api.jobs.resume``) with no row applied twice.

Cells: empty (or blank) means "not given", as ``null`` in the API; ``tags``
and ``push_tokens`` hold several values separated by ``;``; a ``number``
field reads decimal text, a ``bool`` field ``true``/``false``/``yes``/``no``/
``1``/``0``, a ``json`` field JSON text, the others the text as is. A row
without any identifier is rejected: it could never match on a re-import.

The import's tags are added to every contact it writes; its list (if any)
is asked ``subscribed`` for each, as an upsert's ``subscriptions`` does:
on a double opt-in list that is ``pending`` and a confirmation email, sent
once the row's batch has committed, and a row without an email is rejected.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import IO, Any

from nudgel.api.contacts.fields import field_types, stored_fields_json
from nudgel.api.contacts.identity import KINDS, IdentifierError, Identifiers, normalise_blocked
from nudgel.api.contacts.models import ContactUpsert
from nudgel.api.contacts.store import (
    UpsertInput,
    UpsertResult,
    create_many,
    upsert,
    with_retries,
)
from nudgel.api.contacts.views import emit_created, emit_upsert
from nudgel.api.jobs.runner import JobHost, Lease, create_job, run_job, start_job
from nudgel.api.lists.subscriptions import Confirming, Outgoing, confirming_of, get_list, send_all
from nudgel.api.lists.subscriptions import apply as apply_subscriptions
from nudgel.api.problems import ProblemError
from nudgel.api.transaction import Transaction
from nudgel.dsl.ast import Type
from psycopg import AsyncConnection, errors
from psycopg.types.json import Jsonb
from pydantic import ValidationError

__all__ = [
    "ATTRIBUTES",
    "DEFAULT_SOURCE",
    "IGNORE",
    "Counts",
    "ImportRefused",
    "ListContext",
    "Rejection",
    "prepare_import",
    "rejected_rows",
    "resolve_targets",
    "run_import",
    "start_import",
]

log = logging.getLogger(__name__)

ATTRIBUTES = ("email", "phone", "whatsapp_id", "external_id", "name", "tags", "push_tokens")
IGNORE = "-"
DEFAULT_SOURCE = "import"
LIST_SEPARATOR = ";"
# Rows parsed per trip to the worker thread while staging.
STAGE_CHUNK = 5000
MAX_COLUMNS = 200
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_TRUE = frozenset({"true", "yes", "y", "t", "1"})
_FALSE = frozenset({"false", "no", "n", "f", "0"})


class ImportRefused(ValueError):
    """The file as a whole cannot be imported (encoding, header, mapping); nothing is."""

    def __init__(self, detail: str, problems: Sequence[str] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.problems = list(problems)


# ---- the header -------------------------------------------------------------------


def _target_of(text: str, fields: Collection[str]) -> str | None:
    key = text.strip().lower()
    if key in ATTRIBUTES:
        return key
    name = key.removeprefix("fields.")
    return f"fields.{name}" if name in fields else None


def resolve_targets(
    header: Sequence[str], mapping: Mapping[str, str] | None, fields: Collection[str]
) -> list[str | None]:
    """What each column maps to (None: ignored); :class:`ImportRefused` listing
    every column that maps to nothing and every mapping entry that does not fit."""
    mapping = dict(mapping or {})
    problems: list[str] = []
    for name in mapping:
        if name not in header:
            problems.append(f"the mapping names column {name!r}, which the header does not have")
    seen: set[str] = set()
    for name in header:
        if header.count(name) > 1 and name not in seen:
            problems.append(f"column {name!r} appears {header.count(name)} times in the header")
        seen.add(name)
    targets: list[str | None] = []
    unknown: list[str] = []
    for index, name in enumerate(header, start=1):
        if name in mapping:
            wanted = mapping[name]
            target = None if wanted.strip() == IGNORE else _target_of(wanted, fields)
            if target is None and wanted.strip() != IGNORE:
                problems.append(
                    f"column {name!r} is mapped to {wanted!r}: not an attribute"
                    f" ({', '.join(ATTRIBUTES)}) or a field of this workspace"
                )
        else:
            target = _target_of(name, fields)
            if target is None:
                label = repr(name) if name.strip() else f"{index} (no name)"
                problems.append(f"column {label} matches no attribute and no field")
                unknown.append(name)
        targets.append(target)
    chosen = [t for t in targets if t is not None]
    for target in sorted({t for t in chosen if chosen.count(t) > 1}):
        columns = [h for h, t in zip(header, targets, strict=True) if t == target]
        problems.append(f"columns {', '.join(map(repr, columns))} all map to {target!r}")
    if not problems and not any(t in KINDS for t in chosen):
        problems.append(
            "no column maps to an identifier (email, phone, whatsapp_id or external_id)"
        )
    if problems:
        raise ImportRefused(
            "The file's columns cannot be imported: " + "; ".join(problems) + ".", problems
        )
    return targets


# ---- reading and staging -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Staged:
    number: int
    cells: list[str]
    column: str | None = None
    reason: str | None = None


class _CsvFile:
    """The header and the data rows of a binary CSV file (parsed lazily)."""

    def __init__(self, binary: IO[bytes]) -> None:
        # utf-8-sig: a leading byte-order mark (spreadsheet exports) is dropped.
        self._text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        self._reader = csv.reader(self._text, strict=False)
        self._number = 1
        try:
            header = next(self._reader, None)
        except (csv.Error, UnicodeDecodeError) as error:
            raise _refusal(error) from None
        if header is None or not any(cell.strip() for cell in header):
            raise ImportRefused("The file is empty: a CSV file starts with a header row.")
        if len(header) > MAX_COLUMNS:
            raise ImportRefused(f"The header has {len(header)} columns; at most {MAX_COLUMNS}.")
        if any("\x00" in cell for cell in header):
            raise ImportRefused("The header contains a NUL character: the file is not CSV text.")
        self.header = [cell.strip() for cell in header]

    def chunk(self, size: int) -> list[_Staged]:
        """The next ``size`` rows (fewer at the end)."""
        out: list[_Staged] = []
        width = len(self.header)
        while len(out) < size:
            self._number += 1
            try:
                cells = next(self._reader, None)
            except csv.Error as error:
                out.append(_Staged(self._number, [], None, f"not valid CSV: {error}"))
                continue
            except UnicodeDecodeError as error:
                raise _refusal(error) from None
            if cells is None:
                break
            if not cells or (len(cells) == 1 and not cells[0].strip() and width > 1):
                continue  # a blank line
            if any("\x00" in cell for cell in cells):
                # PostgreSQL text cannot hold NUL: kept readable, and refused.
                cells = [cell.replace("\x00", "\ufffd") for cell in cells]
                out.append(_Staged(self._number, cells, None, "a cell contains a NUL character"))
            elif len(cells) != width:
                out.append(
                    _Staged(
                        self._number,
                        cells,
                        None,
                        f"the row has {len(cells)} cells; the header has {width}",
                    )
                )
            else:
                out.append(_Staged(self._number, cells))
        return out


def _refusal(error: Exception) -> ImportRefused:
    if isinstance(error, UnicodeDecodeError):
        # Decoding runs ahead of the parsing, so the row is not reliable.
        return ImportRefused(f"The file is not UTF-8 text ({error.reason}); save it as CSV UTF-8.")
    return ImportRefused(f"The header row is not valid CSV: {error}.")


async def prepare_import(
    conn: AsyncConnection,
    workspace_id: int,
    binary: IO[bytes],
    *,
    filename: str | None,
    mapping: Mapping[str, str] | None,
    tags: Sequence[str],
    source: str,
    list_name: str | None = None,
    lease_seconds: float,
) -> tuple[str, int]:
    """In the caller's transaction: the job (leased to this process for
    ``lease_seconds``) and its staged rows; (job id, rows).

    :class:`ImportRefused` when the file cannot be imported (roll back).
    """
    parsed = await asyncio.to_thread(_CsvFile, binary)
    fields = await field_types(conn, workspace_id)
    targets = resolve_targets(parsed.header, mapping, fields)
    if list_name is not None and await get_list(conn, workspace_id, list_name) is None:
        raise ImportRefused(f"There is no list {list_name!r} (create it with POST /v1/lists).")
    job_id = await create_job(conn, workspace_id, "import", lease_seconds)
    await conn.execute(
        "INSERT INTO imports (job_id, workspace_id, filename, header, targets, tags, source, list)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            job_id,
            workspace_id,
            filename,
            parsed.header,
            targets,
            sorted(set(tags)),
            source,
            list_name,
        ),
    )
    total = 0
    async with conn.cursor().copy(
        "COPY import_rows (job_id, row_number, cells, column_name, reason) FROM STDIN"
    ) as copy:
        while rows := await asyncio.to_thread(parsed.chunk, STAGE_CHUNK):
            for row in rows:
                await copy.write_row((job_id, row.number, row.cells, row.column, row.reason))
            total += len(rows)
    await conn.execute("UPDATE jobs SET total = %s WHERE id = %s", (total, job_id))
    return job_id, total


# ---- one row -----------------------------------------------------------------------


class _RowError(Exception):
    def __init__(self, column: str | None, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass(frozen=True)
class _Plan:
    header: list[str]
    targets: list[str | None]
    tags: list[str]
    source: str
    list: str | None

    def column_of(self, target: str) -> str | None:
        return next(
            (h for h, t in zip(self.header, self.targets, strict=True) if t == target), None
        )


def _split(cell: str) -> list[str]:
    return [part.strip() for part in cell.split(LIST_SEPARATOR) if part.strip()]


def _typed(cell: str, type_: Type | None, column: str) -> Any:
    """A cell as the JSON value the API would take for a field of ``type_``; a
    cell that does not read as one is passed on as text, for the field
    validation to refuse with the API's message."""
    text = cell.strip()
    if type_ is Type.NUMBER and _NUMBER.match(text):
        return Decimal(text)
    if type_ is Type.BOOL and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if type_ is Type.JSON:
        try:
            return json.loads(text, parse_float=Decimal)
        except ValueError as error:
            raise _RowError(column, f"not JSON: {error}") from None
    if type_ in (Type.DATE, Type.TIMESTAMP, Type.NUMBER, Type.BOOL):
        return text
    return cell


def _pydantic_reason(plan: _Plan, error: ValidationError) -> _RowError:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    target = f"fields.{loc[1]}" if loc[0] == "fields" and len(loc) > 1 else loc[0]
    return _RowError(plan.column_of(target), f"{target}: {first['msg']}")


def row_input(
    plan: _Plan,
    cells: Sequence[str],
    types: Mapping[str, Type],
    region: str,
    blocked: frozenset[str],
) -> UpsertInput:
    """The upsert of one row, validated as the API validates a body; :class:`_RowError`."""
    body: dict[str, Any] = {"source": plan.source}
    tags = list(plan.tags)
    tokens: list[str] = []
    fields: dict[str, Any] = {}
    for column, target, cell in zip(plan.header, plan.targets, cells, strict=True):
        if target is None or not cell.strip():
            continue
        if target == "tags":
            tags += [t for t in _split(cell) if t not in tags]
        elif target == "push_tokens":
            tokens += _split(cell)
        elif target.startswith("fields."):
            name = target.removeprefix("fields.")
            fields[name] = _typed(cell, types.get(name), column)
        else:
            body[target] = cell
    body.update(tags=tags, push_tokens=tokens, fields=fields)
    try:
        model = ContactUpsert.model_validate(body)
    except ValidationError as error:
        raise _pydantic_reason(plan, error) from None
    try:
        identifiers = Identifiers.parse(
            {kind: getattr(model, kind) for kind in KINDS}, region, blocked
        )
    except IdentifierError as error:
        raise _RowError(plan.column_of(error.kind), str(error)) from None
    if not identifiers.values:
        raise _RowError(
            None, "no identifier: the row needs an email, phone, whatsapp_id or external_id"
        )
    try:
        fields_json = stored_fields_json(model.fields, types)
    except ProblemError as error:
        pointer = error.errors[0].pointer if error.errors else ""
        name = pointer.rsplit("/", 1)[-1]
        raise _RowError(plan.column_of(f"fields.{name}"), error.detail or error.title) from None
    return UpsertInput(
        identifiers=identifiers,
        name=model.name,
        push_tokens=model.push_tokens,
        tags=model.tags,
        fields_json=fields_json,
        source=model.source,
    )


# ---- applying ----------------------------------------------------------------------


@dataclass
class Counts:
    rows: int = 0
    created: int = 0
    updated: int = 0
    merged: int = 0
    unchanged: int = 0
    rejected: int = 0

    def add(self, result: UpsertResult) -> None:
        if result.status == 201:
            self.created += 1
        elif result.merged_ids:
            self.merged += 1
        elif result.changed or result.added_tags:
            self.updated += 1
        else:
            self.unchanged += 1

    def as_json(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "merged": self.merged,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class ListContext:
    """What subscribing imported contacts to a list needs (as ``POST /v1/contacts``
    with ``subscriptions``): what makes the confirmation emails, and how to send
    them once a batch has committed."""

    confirming: Confirming
    send: Callable[[list[Outgoing]], Awaitable[None]]


async def _upsert_row(
    tx: Transaction,
    req: UpsertInput,
    list_name: str | None,
    lists: ListContext | None,
    outgoing: list[Outgoing],
) -> UpsertResult:
    outgoing.clear()  # a retried attempt's emails were rolled back with it
    result = await upsert(tx, req)
    await emit_upsert(tx, result)
    if list_name is not None:
        assert lists is not None
        # After the contact's own events, as the API does: list.* never
        # precede contact.created. A double opt-in list needs an email: a
        # row without one is refused (422 problem) and rolled back whole.
        outgoing += await apply_subscriptions(
            tx,
            lists.confirming,
            result.pk,
            result.contact_id,
            {list_name: "subscribed"},
            req.source,
            pointer=lambda _: "/list",
        )
    return result


async def _load_plan(conn: AsyncConnection, job_id: str) -> _Plan:
    cur = await conn.execute(
        "SELECT header, targets, tags, source, list FROM imports WHERE job_id = %s", (job_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"no import {job_id}")
    return _Plan(list(row[0]), list(row[1]), list(row[2]), row[3], row[4])


async def _apply_batch(
    conn: AsyncConnection,
    workspace_id: int,
    job_id: str,
    plan: _Plan,
    rows: Sequence[tuple[int, list[str]]],
    region: str,
    blocked: frozenset[str],
    counts: Counts,
    lists: ListContext | None,
) -> list[Outgoing]:
    """One transaction: every row applied in its savepoint or rejected; the
    confirmation emails to send once it has committed."""
    types = await field_types(conn, workspace_id)
    batch = Transaction(conn, workspace_id)
    outgoing: list[Outgoing] = []
    # Lists are locked before contacts on every path (routers.subscriptions).
    if plan.list is not None and await get_list(conn, workspace_id, plan.list, share=True) is None:
        raise LookupError(f"list {plan.list!r} was deleted during the import")
    applied: list[int] = []
    rejected: list[tuple[int, str | None, str]] = []
    valid: list[tuple[int, UpsertInput]] = []
    for number, cells in rows:
        try:
            valid.append((number, row_input(plan, cells, types, region, blocked)))
        except _RowError as error:
            rejected.append((number, error.column, error.reason))
    one_by_one = valid
    if plan.list is None and valid:
        # New people, the common case of an import: created set-based. The
        # rows that may match, merge or conflict go one by one below (their
        # identifiers are not shared with the bulk rows, so the order between
        # the two groups does not matter).
        try:
            async with conn.transaction():  # a savepoint: on a race, one by one
                created, others = await create_many(batch, [req for _, req in valid])
                made = [r for r in created if r is not None]
                if made:
                    await emit_created(batch, made)
        except (errors.UniqueViolation, errors.DeadlockDetected):
            # Someone created one of these identifiers meanwhile: the per-row
            # upsert finds it and merges.
            created, others = [None] * len(valid), list(range(len(valid)))
        for (number, _), result in zip(valid, created, strict=True):
            if result is not None:
                counts.add(result)
                applied.append(number)
        one_by_one = [valid[i] for i in others]
    for number, req in one_by_one:
        # Its own Transaction: what a row touches joins the batch only if the
        # row stands (a rolled-back merge must not drop another row's touch).
        row_tx = Transaction(conn, workspace_id)
        mails: list[Outgoing] = []
        try:
            result = await with_retries(
                conn, partial(_upsert_row, row_tx, req, plan.list, lists, mails)
            )
        except ProblemError as error:
            rejected.append((number, None, error.detail or error.title))
            continue
        except (errors.DataError, errors.IntegrityError) as error:
            # A value the database refuses: that row only, not the job.
            rejected.append((number, None, f"refused by the database: {error}"))
            continue
        for pk, change in row_tx._touched.items():
            batch.touch(pk, change)
        outgoing += mails
        counts.add(result)
        applied.append(number)
    if applied:
        await conn.execute(
            "DELETE FROM import_rows WHERE job_id = %s AND row_number = ANY(%s)",
            (job_id, applied),
        )
    if rejected:
        numbers, columns, reasons = zip(*rejected, strict=True)
        await conn.execute(
            "UPDATE import_rows r SET column_name = x.col, reason = x.reason"
            " FROM unnest(%s::int[], %s::text[], %s::text[]) AS x(n, col, reason)"
            " WHERE r.job_id = %s AND r.row_number = x.n",
            (list(numbers), list(columns), list(reasons), job_id),
        )
        counts.rejected += len(rejected)
    await batch.reevaluate()
    return outgoing


async def _run(
    host: JobHost, lease: Lease, workspace_id: int, params: dict[str, Any]
) -> dict[str, Any]:
    """Every staged row still to do applied or rejected; the counts, as the job's result.

    Resumed after a crash, it goes on with the rows its committed batches
    left (each batch deletes the rows it applied and adds its counts to the
    job in its own transaction, so no row is applied twice and the counts
    stay exact)."""
    settings = host.settings
    region = settings.default_phone_region
    blocked = normalise_blocked(settings.blocked_identifiers, region)
    async with host.pool.connection() as conn:
        plan = await _load_plan(conn, lease.job_id)
        lists = None
        if plan.list is not None:
            # The signing key, the template renderer and the mailer of the
            # app the job runs in (the API's, or the CLI's or worker's own).
            await host.renderer()
            confirming = await confirming_of(host.app, conn)
            lists = ListContext(confirming, partial(send_all, host.app))
        # The first run counts the rows refused while staging; a resumed one
        # finds its counts on the job.
        await conn.execute(
            "UPDATE jobs SET done = r.rejected, result = %s::jsonb || jsonb_build_object("
            "'rows', jobs.total, 'rejected', r.rejected)"
            " FROM (SELECT count(*) AS rejected FROM import_rows"
            "        WHERE job_id = %s AND reason IS NOT NULL) r"
            " WHERE id = %s AND result IS NULL AND lease_owner = %s",
            (Jsonb(Counts().as_json()), lease.job_id, lease.job_id, lease.owner),
        )
        last = 0
        while True:
            async with conn.transaction():
                # Fenced first: the job row stays locked to the batch's end,
                # so a process that lost the lease applies nothing.
                await lease.commit(conn)
                cur = await conn.execute(
                    "SELECT row_number, cells FROM import_rows WHERE job_id = %s"
                    " AND row_number > %s AND reason IS NULL ORDER BY row_number LIMIT %s",
                    (lease.job_id, last, settings.import_batch_size),
                )
                rows = [(int(r[0]), list(r[1])) for r in await cur.fetchall()]
                if not rows:
                    break
                counts = Counts()
                outgoing = await _apply_batch(
                    conn, workspace_id, lease.job_id, plan, rows, region, blocked, counts, lists
                )
                # Counts so far, with the progress, in the batch's transaction:
                # a client polling the job sees them grow.
                await lease.commit(conn, done=len(rows), counts=counts.as_json())
            last = rows[-1][0]
            if outgoing:
                # Committed: the confirmation emails of the batch go out (never
                # for a change that rolled back; no locks held while sending).
                assert lists is not None
                await lists.send(outgoing)
        cur = await conn.execute("SELECT result FROM jobs WHERE id = %s", (lease.job_id,))
        final = await cur.fetchone()
    assert final is not None
    result: dict[str, Any] = final[0]
    return result


async def run_import(host: JobHost, job_id: str) -> None:
    """Apply the staged rows to the end (or to where another process takes the
    job over), recording the counts or the failure on the job. The settings'
    default phone region and blocked identifiers apply, as for
    ``POST /v1/contacts``; an import subscribing contacts to a list sends
    the confirmation emails with ``host.app``'s mailer."""
    lease = Lease(job_id, host.settings.job_lease_seconds)
    await run_job(host.pool, lease, partial(_run, host, lease))


def start_import(host: JobHost, job_id: str) -> None:
    """Start applying a prepared import (after its transaction committed)."""
    start_job(host, run_import(host, job_id), f"import {job_id}")


# ---- the report --------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    row: int
    column: str | None
    reason: str
    values: dict[str, str] = field(default_factory=dict)


async def rejected_rows(
    conn: AsyncConnection, job_id: str, after: int, limit: int
) -> list[Rejection]:
    """Rejected rows after row ``after``, in row order (the staged cells by header)."""
    cur = await conn.execute(
        "SELECT r.row_number, r.column_name, r.reason, r.cells, i.header"
        " FROM import_rows r JOIN imports i USING (job_id)"
        " WHERE r.job_id = %s AND r.row_number > %s AND r.reason IS NOT NULL"
        " ORDER BY r.row_number LIMIT %s",
        (job_id, after, limit),
    )
    return [
        Rejection(int(number), column, reason, dict(zip(header, cells, strict=False)))
        for number, column, reason, cells, header in await cur.fetchall()
    ]
