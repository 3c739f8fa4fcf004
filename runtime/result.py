"""What evaluating a rule set over contacts gives, whichever backend ran it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(slots=True)
class EvalResult:
    # segment -> member ids sorted by code point
    segments: dict[str, list[str]] = field(default_factory=dict)
    # score -> contact id -> exact value
    scores: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    # contact id -> stage name, or None
    stages: dict[str, str | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The document `rulec eval` prints (spec §13)."""
        return {
            "segments": {name: sorted(ids) for name, ids in self.segments.items()},
            "scores": {
                name: {cid: canonical_decimal(v) for cid, v in sorted(values.items())}
                for name, values in self.scores.items()
            },
            "stages": dict(sorted(self.stages.items())),
        }


def canonical_decimal(value: Decimal | int) -> str:
    """No exponent, no trailing zeros after the point, no trailing point, never -0."""
    text = format(Decimal(value), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text
