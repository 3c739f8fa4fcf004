"""Per-contact time of the compiled in-memory predicate against hand-written
Python for the same rules (spec §1), measured in the same run.

    python bench/eval_memory.py [--contacts 100000] [--events 20] [--repeat 5]

Both sides get the same loaded contacts (events indexed by name and time) and
must agree on every result; the ratio is compiled / hand-written, best of
--repeat runs each. The runs alternate (compiled, hand-written, compiled, ...)
so that load from other processes on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import random
import time
from bisect import bisect_right
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from nudgel.dsl.checker import check_sources
from nudgel.dsl.textfold import fold
from nudgel.dsl.timeparse import format_timestamp, parse_timestamp
from nudgel.runtime.contact import Contact, load_contacts
from nudgel.runtime.program import Program

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "rules-language.md"
NOW = parse_timestamp("2026-06-01T12:00:00Z") or 0
DAY = 86_400 * 1_000_000


def spec_rules() -> str:
    """The rule file of spec §1, taken from the spec itself."""
    text = SPEC.read_text("utf-8")
    start = text.index("```\n# rules/marketing.rules")
    return text[start + 4 : text.index("```", start + 4)]


def generate(count: int, events_per_contact: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = ["purchase", "email_open", "page_view", "visit"]
    records = []
    for i in range(count):
        record: dict[str, Any] = {"id": f"c{i:07d}"}
        domain = rng.choice(["acme.com", "example.co.ke", "gmail.com"])
        if rng.random() < 0.9:
            record["email"] = f"user{i}@{domain}"
        if rng.random() < 0.5:
            record["phone"] = rng.choice(["+254", "+1", "+44"]) + str(rng.randrange(10**8, 10**9))
        record["tags"] = rng.sample(["premium", "KE", "vip", "beta"], rng.randrange(0, 3))
        record["fields"] = {"plan": rng.choice(["free", "pro", "enterprise", "basic"])}
        if rng.random() < 0.3:
            record["subscriptions"] = {"newsletter": rng.choice(["subscribed", "pending"])}
        events = []
        for _ in range(rng.randrange(events_per_contact // 2, events_per_contact * 3 // 2 + 1)):
            at = NOW - rng.randrange(0, 200 * DAY)
            name = rng.choice(names)
            props = {"amount": rng.randrange(100, 90_000), "currency": rng.choice(["KES", "USD"])}
            events.append({"name": name, "at": format_timestamp(at), "props": props})
        record["events"] = events
        records.append(record)
    return records


# ---- hand-written Python for the same rules, on the same contact structure ----


def _count(c: Contact, name: str | None, after: int | None, now: int) -> int:
    _, times = c.events_named(name)
    high = bisect_right(times, now)
    low = 0 if after is None else bisect_right(times, after)
    return max(0, high - low)


def hand_engagement(c: Contact, now: int) -> int:
    score = min(10 * _count(c, "email_open", now - 90 * DAY, now), 50)
    score += 25 * _count(c, "purchase", None, now)
    if _count(c, None, now - 30 * DAY, now) == 0:
        score -= 5
    if c.fields.get("plan") == "pro":
        score += 15
    return max(0, min(score, 100))


def hand_hot_leads(c: Contact, now: int) -> bool:
    if "premium" not in c.tags or c.fields.get("plan") not in ("pro", "enterprise"):
        return False
    email, phone = c.email, c.phone
    if not (
        (email is not None and fold(email).endswith("@acme.com"))
        or (phone is not None and fold(phone).startswith("+254"))
    ):
        return False
    if _count(c, "purchase", now - 30 * DAY, now) < 2:
        return False
    return hand_engagement(c, now) >= 50


def hand_lapsed(c: Contact, now: int) -> bool:
    return _count(c, "purchase", None, now) > 0 and _count(c, "purchase", now - 90 * DAY, now) == 0


def hand_big_spenders(c: Contact, now: int) -> bool:
    events, times = c.events_named("purchase")
    total = 0
    for event in events[: bisect_right(times, now)]:
        props = event.props
        if props.get("currency") == "KES":
            amount = props.get("amount")
            if type(amount) is int or type(amount) is Decimal:
                total += amount
    return total > 100_000 and hand_hot_leads(c, now)


def hand_stage(c: Contact, now: int, engagement: int) -> int | None:
    ranks = {"subscriber": 0, "lead": 1, "opportunity": 2, "customer": 3}
    if _count(c, "purchase", None, now) > 0:
        rank: int | None = 3
    elif engagement >= 60:
        rank = 2
    elif c.email is not None:
        rank = 1
    elif c.subscriptions.get("newsletter") == "subscribed":
        rank = 0
    else:
        rank = None
    prior = ranks.get(c.stage) if c.stage else None
    if prior is not None and (rank is None or rank < prior):
        rank = prior
    return rank


def hand_everything(c: Contact, now: int) -> tuple[Any, ...]:
    engagement = hand_engagement(c, now)
    hot = hand_hot_leads(c, now)
    return (
        hot,
        hand_lapsed(c, now),
        hand_big_spenders(c, now),
        engagement,
        hand_stage(c, now, engagement),
    )


def run_time(function: Callable[[Contact, int], Any], contacts: list[Contact]) -> float:
    start = time.perf_counter()
    for contact in contacts:
        function(contact, NOW)
    return time.perf_counter() - start


def best_times(
    compiled: Callable[[Contact, int], Any],
    hand: Callable[[Contact, int], Any],
    contacts: list[Contact],
    repeat: int,
) -> tuple[float, float]:
    """Best of ``repeat`` runs of each, alternating, so a burst of load from
    elsewhere lands on one run of each rather than on all runs of one."""
    best_compiled = best_hand = float("inf")
    for _ in range(repeat):
        best_compiled = min(best_compiled, run_time(compiled, contacts))
        best_hand = min(best_hand, run_time(hand, contacts))
    return best_compiled, best_hand


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    checked = check_sources({"marketing.rules": spec_rules()})
    assert checked.rules is not None, checked.diagnostics
    rules = checked.rules
    program = Program.compile(rules)
    field_types = {name: rules.field_type(name) for name in rules.fields}
    print(f"generating {args.contacts:,} contacts with ~{args.events} events each ...")
    contacts = load_contacts(generate(args.contacts, args.events), field_types, rules.stage_names)

    compiled_hot = program.segment("hot_leads")
    members = sum(1 for c in contacts if compiled_hot(c, NOW))
    for c in contacts:  # both implement the same rules: they must agree
        assert compiled_hot(c, NOW) == hand_hot_leads(c, NOW), c.id
        result = program.evaluate(c, NOW)
        hand = hand_everything(c, NOW)
        stage = rules.stage_names[hand[4]] if hand[4] is not None else None
        assert (
            result.segments["hot_leads"],
            result.segments["lapsed_customers"],
            result.segments["big_spenders_ke"],
            result.scores["engagement"],
            result.stage,
        ) == (hand[0], hand[1], hand[2], hand[3], stage), c.id
    print(f"hot_leads members: {members:,}")

    def compiled_all(c: Contact, now: int) -> Any:
        return program.evaluate(c, now)

    raw_evaluate = program._evaluate
    rows = [
        ("hot_leads", *best_times(compiled_hot, hand_hot_leads, contacts, args.repeat)),
        (
            "all of spec §1 (evaluate)",
            *best_times(raw_evaluate, hand_everything, contacts, args.repeat),
        ),
    ]
    print(f"{'rules':<28}{'compiled µs/contact':>22}{'hand µs/contact':>18}{'ratio':>8}")
    for name, compiled_seconds, hand_seconds in rows:
        per = 1e6 / len(contacts)
        print(
            f"{name:<28}{compiled_seconds * per:>22.3f}{hand_seconds * per:>18.3f}"
            f"{compiled_seconds / hand_seconds:>8.2f}"
        )
    print("aim (issue #13): ratio <= 1.0 for both")


if __name__ == "__main__":
    main()
