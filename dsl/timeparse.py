"""Dates and timestamps of the rules language, as integer microseconds since the
Unix epoch (UTC). Integers never overflow under duration arithmetic and compare
exactly, the same as PostgreSQL's ``timestamptz``."""

from __future__ import annotations

import re

MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})\Z", re.ASCII)
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z",
    re.ASCII,
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _valid_date(year: int, month: int, day: int) -> bool:
    return year >= 1 and 1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)


def parse_date(text: str) -> int | None:
    """``YYYY-MM-DD`` to the micros of its midnight UTC, or None when invalid."""
    match = _DATE.match(text)
    if not match:
        return None
    year, month, day = (int(g) for g in match.groups())
    if not _valid_date(year, month, day):
        return None
    return _days_from_civil(year, month, day) * MICROS_PER_DAY


def parse_timestamp(text: str) -> int | None:
    """RFC 3339 with an explicit offset to micros, or None when invalid.
    Fractional seconds beyond the microsecond are truncated."""
    match = _TIMESTAMP.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    if not _valid_date(year, month, day) or hour > 23 or minute > 59 or second > 59:
        return None
    offset_minutes = 0
    if offset not in ("Z", "z"):
        off_hours, off_minutes = int(offset[1:3]), int(offset[4:6])
        if off_hours > 23 or off_minutes > 59:
            return None
        offset_minutes = (off_hours * 60 + off_minutes) * (-1 if offset[0] == "-" else 1)
    micros = int((fraction or "").ljust(6, "0")[:6])
    seconds = (
        _days_from_civil(year, month, day) * 86_400
        + hour * 3600
        + minute * 60
        + second
        - offset_minutes * 60
    )
    return seconds * MICROS_PER_SECOND + micros


def parse_time_literal(text: str, as_timestamp: bool) -> int | None:
    """A literal in date context (``YYYY-MM-DD``) or timestamp context (RFC 3339,
    or ``YYYY-MM-DD`` meaning that date at 00:00:00 UTC)."""
    if not as_timestamp:
        return parse_date(text)
    return parse_date(text) if _DATE.match(text) else parse_timestamp(text)


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number since 1970-01-01 (H. Hinnant)."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def format_timestamp(micros: int) -> str:
    """Canonical RFC 3339 in UTC: ``2026-06-01T12:00:00Z`` (with ``.ffffff`` when needed)."""
    days, rest = divmod(micros, MICROS_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, fraction = divmod(rest, MICROS_PER_SECOND)
    hour, minute, second = seconds // 3600, seconds // 60 % 60, seconds % 60
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    return text + (f".{fraction:06d}Z" if fraction else "Z")


def format_date(micros: int) -> str:
    year, month, day = civil_from_days(micros // MICROS_PER_DAY)
    return f"{year:04d}-{month:02d}-{day:02d}"
