"""Contact identifiers: normalisation, blocked values, and their advisory locks.

A contact is found by any of its identifiers (:data:`KINDS`) within the
workspace, so each is normalised before it is stored or looked up: an email
is validated for syntax with ``email-validator`` (no DNS: an upsert must not
depend on the network) and lower-cased whole, as the rules language compares
emails lower-cased; a phone becomes E.164 with ``phonenumbers`` (numbers
without a country code are read in the settings' default region); WhatsApp
and external ids are only trimmed (they are opaque).

Blocked values (``settings.blocked_identifiers``) are stored but never used
for matching; see migration 0004 for how the unique indexes skip them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from nudgel.api.problems import FieldError, ProblemError, problem_type
from psycopg import AsyncConnection

__all__ = [
    "KINDS",
    "LOCK_SEED",
    "IdentifierError",
    "Identifiers",
    "Kind",
    "identifier_problem",
    "lock_identifiers",
    "normalise_blocked",
    "normalise_email",
    "normalise_phone",
]

Kind = Literal["email", "phone", "whatsapp_id", "external_id"]
KINDS: tuple[Kind, ...] = ("email", "phone", "whatsapp_id", "external_id")

# Seed of hashtextextended() for identifier locks: different from the
# idempotency lock's (0x1DE40001), so the two key spaces never collide.
LOCK_SEED = 0x1DE4_0002


class IdentifierError(ValueError):
    """An identifier that cannot be normalised; ``kind`` names the input."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def normalise_email(raw: str) -> str:
    text = raw.strip()
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as error:
        raise IdentifierError("email", f"{text!r} is not a valid email address: {error}") from None
    # email-validator keeps the local part's case (RFC 5321 lets it matter);
    # in practice mailboxes are case-insensitive and rules compare emails
    # lower-cased, so the whole address is folded.
    return result.normalized.lower()


def normalise_phone(raw: str, region: str) -> str:
    text = raw.strip()
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as error:
        raise IdentifierError("phone", f"{text!r} is not a phone number: {error}") from None
    if not phonenumbers.is_valid_number(number):
        raise IdentifierError(
            "phone", f"{text!r} is not a valid phone number (default region {region})."
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _normalise_opaque(kind: str, raw: str) -> str:
    text = raw.strip()
    if "\x00" in text:
        raise IdentifierError(kind, f"{kind} must not contain NUL characters.")
    return text


def normalise(kind: Kind, raw: str, region: str) -> str:
    if kind == "email":
        return normalise_email(raw)
    if kind == "phone":
        return normalise_phone(raw, region)
    return _normalise_opaque(kind, raw)


def normalise_blocked(values: Iterable[str], region: str) -> frozenset[str]:
    """The blocked values in normalised form (each as whatever kind it parses as)."""
    out: set[str] = set()
    for value in values:
        out.add(value.strip().lower())
        out.add(value.strip())
        kinds: tuple[Kind, ...] = ("email", "phone")
        for kind in kinds:
            with contextlib.suppress(IdentifierError):
                out.add(normalise(kind, value, region))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Identifiers:
    """The normalised identifiers of a request; ``blocked`` are kinds never matched on."""

    values: Mapping[Kind, str]
    blocked: frozenset[Kind]

    @classmethod
    def parse(
        cls, raw: Mapping[Kind, str | None], region: str, blocked_values: frozenset[str]
    ) -> Identifiers:
        values: dict[Kind, str] = {}
        blocked: set[Kind] = set()
        for kind in KINDS:
            text = raw.get(kind)
            if text is None or not text.strip():
                continue  # empty means "not given": it never clears a stored value
            value = normalise(kind, text, region)
            values[kind] = value
            if value in blocked_values:
                blocked.add(kind)
        return cls(values, frozenset(blocked))

    @property
    def matchable(self) -> dict[Kind, str]:
        return {k: v for k, v in self.values.items() if k not in self.blocked}


async def lock_identifiers(conn: AsyncConnection, workspace_id: int, ids: Identifiers) -> None:
    """Transaction-level advisory locks on every matchable identifier, in a fixed order.

    Two requests sharing an identifier serialise here, before either looks
    anything up; the fixed (kind, value) order means two requests sharing
    several identifiers take them in the same order and cannot deadlock on
    them. One statement per lock, so the order is the order taken.
    """
    texts = sorted(f"{workspace_id}:{kind}:{value}" for kind, value in ids.matchable.items())
    for text in texts:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (text, LOCK_SEED)
        )


def identifier_problem(error: IdentifierError) -> ProblemError:
    """A 422 problem pointing at the body member that holds a bad identifier."""
    return ProblemError(
        422,
        "Invalid identifier",
        str(error),
        type_=problem_type("validation"),
        errors=[
            FieldError(location="body", pointer=f"/{error.kind}", detail=str(error), code="invalid")
        ],
    )
