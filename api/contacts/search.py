"""``GET /v1/contacts?q=TEXT``: contacts whose name, email or phone contains TEXT,
case-insensitively (a prefix is a substring too: ``ada``, ``lovelace``,
``@example.com``, ``2547``).

The three are one lower-cased text per contact
(``nudgel_contact_search_text``, migration 0015) matched with ``LIKE
'%TEXT%'``; TEXT's own ``%``, ``_`` and ``\\`` are literal. Where the
database has pg_trgm the match is a trigram index scan (for TEXT of three
characters or more; shorter text matches so many contacts that the planner
scans instead); without it, a scan of the workspace's contacts. Phones are
stored in E.164 (``+254712345678``): TEXT that looks like part of a phone
number (``+254 712-345``) also matches without its spaces, dashes, dots and
parentheses.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Q_PATTERN", "search_condition"]

# Printable text with something besides blanks (blanks around it are dropped).
Q_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$"
_PHONE_LIKE = re.compile(r"^\+?[0-9][0-9 ().-]*$")
_PHONE_SEPARATORS = re.compile(r"[ ().-]")
_SEARCH_TEXT = "nudgel_contact_search_text(c.name, c.email, c.phone)"


def _contains(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_condition(q: str) -> tuple[str, dict[str, Any]]:
    """SQL (`` AND ...`` over contacts ``c``) keeping the contacts ``q`` finds, and its parameters."""
    text = q.strip()
    patterns = [_contains(text)]
    if _PHONE_LIKE.match(text):
        compact = _PHONE_SEPARATORS.sub("", text)
        if compact != text:
            patterns.append(_contains(compact))
    params = {f"q_{i}": pattern for i, pattern in enumerate(patterns)}
    # lower() in SQL: a parameter has the database's default collation, the
    # one the search text is folded with (an explicit COLLATE here would keep
    # the planner from matching the index's expression).
    tests = [f"{_SEARCH_TEXT} LIKE lower(%({name})s::text)" for name in params]
    return " AND (" + " OR ".join(tests) + ")", params
