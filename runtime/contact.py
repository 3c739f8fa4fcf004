"""Contact data as the rules read it (spec §12): loading, validation and the
normalised in-memory form both backends start from.

Normalised values: text is ``str`` with ``""`` turned into ``None`` (missing);
numbers are ``int`` or ``Decimal`` (never ``float``); dates and timestamps are
integer microseconds since the epoch (a date is its midnight UTC); JSON values
keep their structure with numbers as ``int``/``Decimal``.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from nudgel.dsl.ast import Type
from nudgel.dsl.textfold import fold
from nudgel.dsl.timeparse import parse_date, parse_timestamp

SUBSCRIPTION_STATUSES = frozenset({"pending", "subscribed", "unsubscribed", "bounced"})
TEXT_ATTRIBUTES = ("name", "phone", "whatsapp_id")
TIME_ATTRIBUTES = ("created_at", "updated_at")
KNOWN_KEYS = frozenset(
    {
        "id",
        "email",
        *TEXT_ATTRIBUTES,
        *TIME_ATTRIBUTES,
        "stage",
        "tags",
        "subscriptions",
        "fields",
        "events",
        "external_id",
        "push_tokens",
    }
)
# Numbers the database stores exactly too (PostgreSQL numeric's limits are far
# larger; these keep arithmetic fast and bounded).
MAX_DIGITS = 1000
MAX_EXPONENT = 1000


class DataError(ValueError):
    """Contact data that does not fit: names the contact, the field and what was expected."""

    def __init__(self, contact: str, field: str, expected: str, got: object) -> None:
        shown = json.dumps(got, default=str, ensure_ascii=False)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        super().__init__(f"contact {contact!r}: `{field}` must be {expected}, got {shown}")
        self.contact = contact
        self.field = field
        self.expected = expected


@dataclass(slots=True)
class Event:
    name: str
    at: int
    props: dict[str, Any]


@dataclass(slots=True)
class Contact:
    id: str
    email: str | None = None
    phone: str | None = None
    whatsapp_id: str | None = None
    name: str | None = None
    created_at: int | None = None
    updated_at: int | None = None
    stage: str | None = None
    tags: frozenset[str] = frozenset()
    subscriptions: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    # Sorted by time; ``by_name`` maps each name to its events and their times,
    # so windowed counts are two binary searches.
    events: list[Event] = field(default_factory=list)
    by_name: dict[str, tuple[list[Event], list[int]]] = field(default_factory=dict)
    all_times: list[int] = field(default_factory=list)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def index_events(self) -> None:
        self.events.sort(key=lambda e: e.at)
        self.by_name = {}
        for event in self.events:
            group = self.by_name.setdefault(event.name, ([], []))
            group[0].append(event)
            group[1].append(event.at)
        self.all_times = [e.at for e in self.events]

    def events_named(self, name: str | None) -> tuple[list[Event], list[int]]:
        if name is None:
            return self.events, self.all_times
        return self.by_name.get(name, _NO_EVENTS)

    def count_between(self, name: str | None, after: int | None, until: int) -> int:
        """Events named ``name`` with ``after < at <= until``."""
        _, times = self.events_named(name)
        high = bisect.bisect_right(times, until)
        low = 0 if after is None else bisect.bisect_right(times, after)
        return max(0, high - low)


_NO_EVENTS: tuple[list[Event], list[int]] = ([], [])


def load_contacts(
    records: Iterable[Mapping[str, Any]],
    field_types: Mapping[str, Type],
    stage_names: Iterable[str] = (),
) -> list[Contact]:
    """Validate and normalise every record, or raise ``DataError`` for the first
    that does not fit (nothing is evaluated on bad data)."""
    stages = frozenset(stage_names)
    contacts = [load_contact(record, field_types, stages) for record in records]
    seen: set[str] = set()
    for contact in contacts:
        if contact.id in seen:
            raise DataError(contact.id, "id", "unique", contact.id)
        seen.add(contact.id)
    return contacts


def load_contact(
    record: Mapping[str, Any], field_types: Mapping[str, Type], stages: frozenset[str]
) -> Contact:
    if not isinstance(record, Mapping):
        raise DataError("?", "id", "a JSON object per contact", record)
    contact_id = record.get("id")
    if not isinstance(contact_id, str) or not contact_id:
        raise DataError(str(contact_id), "id", "a non-empty string", contact_id)
    _check_text(contact_id, "id", contact_id)
    contact = Contact(contact_id, raw=record)
    email = record.get("email")
    if email is not None:
        if not isinstance(email, str):
            raise DataError(contact_id, "email", "a string", email)
        contact.email = _missing_if_empty(fold(_check_text(contact_id, "email", email).strip()))
    for key in TEXT_ATTRIBUTES:
        value = record.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise DataError(contact_id, key, "a string", value)
            setattr(contact, key, _missing_if_empty(_check_text(contact_id, key, value)))
    for key in TIME_ATTRIBUTES:
        value = record.get(key)
        if value is not None:
            setattr(contact, key, _timestamp(contact_id, key, value))
    stage = record.get("stage")
    if stage is not None:
        if not isinstance(stage, str) or stage not in stages:
            listed = ", ".join(sorted(stages)) or "none: there is no lifecycle block"
            raise DataError(contact_id, "stage", f"a stage of the lifecycle ({listed})", stage)
        contact.stage = stage
    tags = record.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise DataError(contact_id, "tags", "a list of non-empty strings", tags)
        contact.tags = frozenset(_check_text(contact_id, "tags", t) for t in tags)
    subscriptions = record.get("subscriptions")
    if subscriptions is not None:
        if not isinstance(subscriptions, Mapping):
            raise DataError(contact_id, "subscriptions", "an object of list: status", subscriptions)
        for list_name, status in subscriptions.items():
            if status not in SUBSCRIPTION_STATUSES:
                raise DataError(
                    contact_id,
                    "subscriptions",
                    "pending, subscribed, unsubscribed or bounced",
                    status,
                )
            contact.subscriptions[_check_text(contact_id, "subscriptions", list_name)] = status
    fields = record.get("fields")
    if fields is not None:
        if not isinstance(fields, Mapping):
            raise DataError(contact_id, "fields", "an object", fields)
        for name, value in fields.items():
            if name in field_types and value is not None:
                contact.fields[name] = _field_value(contact_id, name, field_types[name], value)
    events = record.get("events")
    if events is not None:
        if not isinstance(events, list):
            raise DataError(contact_id, "events", "a list of events", events)
        for event in events:
            contact.events.append(_event(contact_id, event))
    contact.index_events()
    return contact


def _missing_if_empty(text: str) -> str | None:
    return text if text != "" else None


def _check_text(contact: str, key: str, text: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates are not UTF-8.
    if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise DataError(contact, key, "text without NUL or lone surrogates", text)
    return text


def _timestamp(contact: str, key: str, value: object) -> int:
    micros = parse_timestamp(value) if isinstance(value, str) else None
    if micros is None:
        raise DataError(contact, key, "an RFC 3339 timestamp with an offset", value)
    return micros


def _number(contact: str, key: str, value: object) -> int | Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
        raise DataError(contact, key, "a number", value)
    if isinstance(value, float):
        # A float reaching here came from a JSON parser without Decimal support;
        # its repr is the shortest text that reads back to it.
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise DataError(contact, key, "a finite number", str(value))
        _, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        if len(digits) > MAX_DIGITS or abs(exponent) > MAX_EXPONENT:
            raise DataError(contact, key, f"a number of at most {MAX_DIGITS} digits", str(value))
    elif len(str(abs(value))) > MAX_DIGITS:
        raise DataError(contact, key, f"a number of at most {MAX_DIGITS} digits", str(value))
    return value


def field_value(contact: str, name: str, field_type: Type, value: object) -> Any:
    """A stored field value in its normalised form; ``DataError`` if it does not fit."""
    return _field_value(contact, name, field_type, value)


def _field_value(contact: str, name: str, field_type: Type, value: object) -> Any:
    if field_type.is_text_like:
        if not isinstance(value, str):
            raise DataError(contact, name, f"{field_type.value} (a JSON string)", value)
        text = _check_text(contact, name, value)
        if field_type is Type.EMAIL:
            text = fold(text.strip())
        return _missing_if_empty(text)
    if field_type is Type.NUMBER:
        return _number(contact, name, value)
    if field_type is Type.BOOL:
        if not isinstance(value, bool):
            raise DataError(contact, name, "a JSON boolean", value)
        return value
    if field_type is Type.DATE:
        micros = parse_date(value) if isinstance(value, str) else None
        if micros is None:
            raise DataError(contact, name, 'a date "YYYY-MM-DD"', value)
        return micros
    if field_type is Type.TIMESTAMP:
        return _timestamp(contact, name, value)
    if field_type is Type.JSON:
        return _json_value(contact, name, value)
    raise AssertionError(f"unknown field type {field_type}")


def _json_value(contact: str, key: str, value: object) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _check_text(contact, key, value)
    if isinstance(value, (int, Decimal, float)):
        return _number(contact, key, value)
    if isinstance(value, list):
        return [_json_value(contact, key, v) for v in value]
    if isinstance(value, Mapping):
        return {
            _check_text(contact, key, str(k)): _json_value(contact, key, v)
            for k, v in value.items()
        }
    raise DataError(contact, key, "JSON", str(value))


def _event(contact: str, event: object) -> Event:
    if not isinstance(event, Mapping):
        raise DataError(contact, "events", "an object per event", event)
    name = event.get("name")
    if not isinstance(name, str) or not name:
        raise DataError(contact, "name", "an event name (non-empty string)", name)
    at = _timestamp(contact, "at", event.get("at"))
    props = event.get("props", {})
    if props is None:
        props = {}
    if not isinstance(props, Mapping):
        raise DataError(contact, "props", "a JSON object", props)
    return Event(_check_text(contact, "name", name), at, _json_value(contact, "props", props))


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """JSON Lines with exact numbers: decimals never pass through a float."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_float=Decimal)
        except (json.JSONDecodeError, InvalidOperation) as error:
            raise ValueError(f"line {number}: invalid JSON: {error}") from None
        records.append(record)
    return records
