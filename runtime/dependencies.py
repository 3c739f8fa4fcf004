"""Dependency sets: what each segment, score and the lifecycle reads, so the
service re-evaluates only what a change can affect."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from nudgel.dsl import ast
from nudgel.dsl.checker import CheckedRules

NodeKey = tuple[str, str]


@dataclass(slots=True)
class DependencySet:
    attributes: set[str] = field(default_factory=set)  # email, name, created_at, stage (prior) ...
    fields: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    lists: set[str] = field(default_factory=set)
    # Event names read; ``any_event`` when `event *` is used.
    events: set[str] = field(default_factory=set)
    any_event: bool = False
    # Truth can change with `now` alone: windows, `now`, and any event (an
    # event dated in the future starts counting when its time comes).
    time: bool = False
    # Other segments, scores and the lifecycle read directly.
    nodes: set[NodeKey] = field(default_factory=set)

    def merge(self, other: DependencySet) -> None:
        self.attributes |= other.attributes
        self.fields |= other.fields
        self.tags |= other.tags
        self.lists |= other.lists
        self.events |= other.events
        self.any_event |= other.any_event
        self.time |= other.time

    def reads_event(self, name: str) -> bool:
        return self.any_event or name in self.events


def dependency_sets(rules: CheckedRules) -> Mapping[NodeKey, DependencySet]:
    """Each node's own reads merged with those of everything it refers to."""
    result: dict[NodeKey, DependencySet] = {}
    for node in rules.order:  # dependencies come first
        deps = DependencySet()
        for item in _node_items(rules, node):
            _collect(item, deps)
        if node[0] == "lifecycle":
            deps.attributes.add("stage")  # stages never move back from the prior one
        for target in deps.nodes:
            deps.merge(result[target])
        result[node] = deps
    return result


def _node_items(rules: CheckedRules, node: NodeKey) -> Iterator[ast.Node]:
    kind, name = node
    if kind == "segment":
        yield rules.segments[name].body
    elif kind == "score":
        for rule in rules.scores[name].rules:
            yield rule.event if isinstance(rule, ast.ScorePer) else rule.condition
    elif rules.lifecycle is not None:
        for stage in rules.lifecycle.stages:
            yield stage.condition


def _collect(node: object, deps: DependencySet) -> None:
    if isinstance(node, ast.Attribute):
        if node.name == "stage":
            deps.nodes.add(("lifecycle", ""))
        elif node.name != "at":
            deps.attributes.add(node.name)
    elif isinstance(node, ast.FieldRef):
        deps.fields.add(node.name)
    elif isinstance(node, ast.TagTest):
        deps.tags.add(node.tag)
    elif isinstance(node, ast.SubscribedTest):
        deps.lists.add(node.list)
    elif isinstance(node, ast.SegmentTest):
        deps.nodes.add(("segment", node.segment))
    elif isinstance(node, ast.ScoreRef):
        deps.nodes.add(("score", node.name))
    elif isinstance(node, ast.Now):
        deps.time = True
    elif isinstance(node, ast.EventSpec):
        deps.time = True
        if node.name is None:
            deps.any_event = True
        else:
            deps.events.add(node.name)
    if hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            if name in ("span", "type", "regex"):
                continue
            child = getattr(node, name)
            if isinstance(child, tuple):
                for item in child:
                    _collect(item, deps)
            else:
                _collect(child, deps)
