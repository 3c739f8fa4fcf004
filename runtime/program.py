"""A compiled rule set: compile once, evaluate one contact at a time.

program = Program.compile(checked_rules)
result = program.evaluate(contact, now)      # every segment, score, the stage
program.segment("hot_leads")(contact, now)   # one segment with what it needs
program.dependencies[("segment", "hot_leads")]
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import CodeType
from typing import Any

from nudgel.compiler.python import NodeKey, PythonCompiler, function_name
from nudgel.dsl.checker import CheckedRules
from nudgel.runtime.contact import Contact
from nudgel.runtime.dependencies import DependencySet, dependency_sets
from nudgel.runtime.result import EvalResult


def _code(source: str) -> CodeType:
    return compile(source, "<nudgel rules>", "exec")


@dataclass(frozen=True, slots=True)
class ContactResult:
    segments: Mapping[str, bool]
    scores: Mapping[str, Decimal]
    stage: str | None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(now: int | datetime) -> int:
    """``now`` as microseconds since the epoch (an aware datetime, or already micros)."""
    if isinstance(now, int):
        return now
    if now.tzinfo is None:
        raise ValueError("`now` must carry a time zone")
    delta = now - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class Program:
    def __init__(self, rules: CheckedRules, bytecode: bytes | None = None) -> None:
        module = PythonCompiler(rules).compile()
        self.rules = rules
        self.source = module.source
        namespace = dict(module.namespace)
        code = marshal.loads(bytecode) if bytecode is not None else _code(module.source)
        exec(code, namespace)
        self._evaluate: Callable[
            [Contact, int], tuple[tuple[bool, ...], tuple[Decimal, ...], int | None]
        ]
        self._evaluate = namespace["evaluate"]
        self._only: dict[NodeKey, Callable[[Contact, int], Any]] = {
            node: namespace[f"only_{function_name(node)}"] for node in rules.order
        }
        self.segment_names = tuple(n for k, n in rules.order if k == "segment")
        self.score_names = tuple(n for k, n in rules.order if k == "score")
        self.stage_names = rules.stage_names
        self.dependencies: Mapping[NodeKey, DependencySet] = dependency_sets(rules)

    @classmethod
    def compile(cls, rules: CheckedRules, bytecode: bytes | None = None) -> Program:
        """The program of ``rules``; ``bytecode`` is its code compiled beforehand
        (``Program.bytecode(rules)``, by this Python, possibly in another process:
        ``compile`` of thousands of rules holds the GIL for a while)."""
        return cls(rules, bytecode)

    @staticmethod
    def bytecode(rules: CheckedRules) -> bytes:
        """The compiled code of the program of ``rules``, for :meth:`compile`."""
        return marshal.dumps(_code(PythonCompiler(rules).compile().source))

    def evaluate(self, contact: Contact, now: int | datetime) -> ContactResult:
        segments, scores, stage = self._evaluate(contact, to_micros(now))
        return ContactResult(
            dict(zip(self.segment_names, segments, strict=True)),
            dict(zip(self.score_names, scores, strict=True)),
            self.stage_names[stage] if stage is not None else None,
        )

    def segment(self, name: str) -> Callable[[Contact, int], bool]:
        """The membership test of one segment (``now`` in microseconds)."""
        function: Callable[[Contact, int], bool] = self._only[("segment", name)]
        return function

    def score(self, name: str) -> Callable[[Contact, int], Decimal]:
        function: Callable[[Contact, int], Decimal] = self._only[("score", name)]
        return function

    def stage(self, contact: Contact, now: int) -> str | None:
        """The lifecycle stage alone (None without a lifecycle block)."""
        function = self._only.get(("lifecycle", ""))
        if function is None:
            return None
        rank: int | None = function(contact, now)
        return self.stage_names[rank] if rank is not None else None

    def evaluate_all(self, contacts: Iterable[Contact], now: int | datetime) -> EvalResult:
        micros = to_micros(now)
        result = EvalResult(
            segments={name: [] for name in self.segment_names},
            scores={name: {} for name in self.score_names},
        )
        for contact in contacts:
            segments, scores, stage = self._evaluate(contact, micros)
            for name, member in zip(self.segment_names, segments, strict=True):
                if member:
                    result.segments[name].append(contact.id)
            for name, value in zip(self.score_names, scores, strict=True):
                result.scores[name][contact.id] = value
            result.stages[contact.id] = self.stage_names[stage] if stage is not None else None
        for members in result.segments.values():
            members.sort()
        return result
