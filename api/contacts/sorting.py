"""``GET /v1/contacts?sort=KEY``: the contact list in another order, paged by
keyset on (the sort key, the contact id).

KEY is ``created_at``, ``updated_at``, ``name`` (lower-cased), ``email`` or
``score.NAME`` (a score of the deployed rules; a contact without a stored
value has 0, as the rules say); ``-KEY`` sorts descending. The contact id
breaks ties, in the same direction. Contacts without the value (no name, no
email) come last in both directions.

A page's ``next_cursor`` is opaque: ``cur_`` and the base64url of
``[sort, key, id]``, the sort it was made for and the last contact's key and
id. The next page starts strictly after that pair, so pages neither repeat
nor skip a contact however many share a key, and a contact whose key
changes between two pages is seen at most once more or not at all, like any
keyset list. A cursor is only good for the sort it was made for (422).

The page is two keyset scans, one over the contacts with the key and one
over those without (by id), each limited to the page: with the indexes of
``0015_contact_search_and_sorts`` (created_at, name, email) a page is an
index range scan; updated_at and scores sort the matching contacts per page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from nudgel.api.problems import ProblemError

__all__ = [
    "SORT_PATTERN",
    "Sort",
    "decode_cursor",
    "encode_cursor",
    "parse_sort",
]

SORT_PATTERN = r"^-?(?:created_at|updated_at|name|email|score\.[a-z_][a-z0-9_]{0,99})$"
CURSOR_PREFIX = "cur_"
MAX_CURSOR_CHARS = 4096

KeyType = Literal["timestamptz", "text", "numeric"]


@dataclass(frozen=True, slots=True)
class Sort:
    text: str  # as asked, e.g. "-name"
    descending: bool
    key: str  # SQL expression over contacts c (and s, the score's row)
    type: KeyType
    nullable: bool
    score: str | None = None  # score.NAME: NAME, joined as s

    @property
    def direction(self) -> str:
        return "DESC" if self.descending else "ASC"

    @property
    def after(self) -> str:
        """The comparison that means "comes after" in this direction."""
        return "<" if self.descending else ">"


_KEYS: dict[str, tuple[str, KeyType, bool]] = {
    "created_at": ("c.created_at", "timestamptz", True),
    "updated_at": ("c.updated_at", "timestamptz", True),
    # Lower-cased, so "ada" and "Ada" sort together (indexed as lower(name)).
    "name": ("lower(c.name)", "text", True),
    "email": ("c.email", "text", True),
}


def _invalid_sort(detail: str) -> ProblemError:
    return ProblemError.invalid(
        "Invalid sort", detail, location="query", pointer="/sort", code="unknown_sort"
    )


def parse_sort(text: str, scores: Collection[str]) -> Sort:
    """The sort ``text`` asks for (already matching :data:`SORT_PATTERN`);
    ``scores`` are the deployed score names (422 for another)."""
    descending = text.startswith("-")
    name = text.removeprefix("-")
    if name.startswith("score."):
        score = name.removeprefix("score.")
        if score not in scores:
            deployed = ", ".join(f"score.{s}" for s in sorted(scores)) or "none are deployed"
            raise _invalid_sort(
                f"sort: the deployed rules have no score {score!r} (scores: {deployed})."
            )
        return Sort(text, descending, "coalesce(s.value, 0)", "numeric", False, score)
    key, type_, nullable = _KEYS[name]
    return Sort(text, descending, key, type_, nullable)


def _key_json(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def encode_cursor(sort: Sort, key: Any, contact_id: str) -> str:
    """The cursor of the page that ends with this contact."""
    document = json.dumps([sort.text, _key_json(key), contact_id], ensure_ascii=False)
    encoded = base64.urlsafe_b64encode(document.encode()).rstrip(b"=").decode()
    return CURSOR_PREFIX + encoded


def _invalid_cursor(detail: str) -> ProblemError:
    return ProblemError.invalid(
        "Invalid cursor",
        f"starting_after: {detail}",
        location="query",
        pointer="/starting_after",
        code="invalid_cursor",
    )


def _typed_key(text: str | None, type_: KeyType) -> Any:
    if text is None:
        return None
    if type_ == "timestamptz":
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError(text)
        return moment
    if type_ == "numeric":
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValueError(text) from None
        if not number.is_finite():
            raise ValueError(text)
        return number
    return text


def decode_cursor(cursor: str, sort: Sort | None) -> tuple[Any, str] | None:
    """(key, contact id) after which a sorted page starts; None for a plain
    contact id, which only the default order (``sort`` None) takes."""
    if not cursor.startswith(CURSOR_PREFIX):
        if sort is not None:
            raise _invalid_cursor(
                f"with sort={sort.text}, pass the `next_cursor` of the previous page"
                " (a `cur_...` cursor), not a contact id."
            )
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise _invalid_cursor(f"longer than any cursor ({MAX_CURSOR_CHARS} characters).")
    encoded = cursor.removeprefix(CURSOR_PREFIX)
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        document = json.loads(raw.decode())
    except (binascii.Error, ValueError):
        raise _invalid_cursor("not a cursor this list made.") from None
    if (
        not isinstance(document, list)
        or len(document) != 3
        or not isinstance(document[0], str)
        or not (document[1] is None or isinstance(document[1], str))
        or not isinstance(document[2], str)
        or "\x00" in "".join(part or "" for part in document)
    ):
        raise _invalid_cursor("not a cursor this list made.")
    made_for, key, contact_id = document
    if sort is None or made_for != sort.text:
        asked = f"sort={sort.text}" if sort is not None else "no sort"
        raise _invalid_cursor(
            f"this cursor was made for sort={made_for}, and the request has {asked}:"
            " keep the sort while paging."
        )
    try:
        typed = _typed_key(key, sort.type)
    except ValueError:
        raise _invalid_cursor("not a cursor this list made.") from None
    if typed is None and not sort.nullable:
        raise _invalid_cursor("not a cursor this list made.")
    return typed, contact_id
