"""Time of `rulec check` (parse, AST, resolve, type-check) on a large generated
rule set, as a ratio to the bare Lark parse of the same text, same run.

    python bench/check_speed.py [--segments 2000] [--scores 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nudgel.dsl.checker import check_sources
from nudgel.dsl.parser import _lark

FIELDS = """field plan: text
field ltv: number
field trial_ends: timestamp
field birthday: date
field beta: bool
field prefs: json
field site: url
field work_email: email
"""


def generate(segments: int, scores: int, seed: int = 11) -> str:
    rng = random.Random(seed)
    conditions = [
        'fields.plan in ["pro", "enterprise"]',
        "fields.ltv between 100 and 5000",
        'email ends_with "@acme.com"',
        'phone starts_with "+254"',
        'tag "premium"',
        'subscribed "newsletter"',
        'count(event "purchase" within 30d) >= 2',
        'sum(event "purchase" where (props.currency = "KES"), props.amount) > 100000',
        'event "email_open" where (props.campaign = "spring" and at > now - 7d)',
        "fields.trial_ends > now and fields.trial_ends <= now + 3d",
        'fields.birthday < "2000-01-01"',
        "fields.beta",
        'fields.prefs.langs has "sw"',
        'name matches "(?i)^ada"',
        "last(event *) < now - 90d",
        "score.s{score} >= 40",
        'fields.prefs."first-name" is set',
        'not (fields.site contains "example")',
    ]
    parts = [FIELDS]
    for i in range(scores):
        parts.append(
            f"score s{i} {{\n"
            f'  +10 per event "email_open" within 90d max 50\n'
            f'  +25 per event "purchase"\n'
            f"  -5 when not event * within 30d\n"
            f'  +15 when fields.plan = "pro"\n'
            f"  clamp 0..100\n}}\n"
        )
    for i in range(segments):
        chosen = rng.sample(conditions, rng.randrange(2, 5))
        body = "\n  and ".join(c.format(score=rng.randrange(scores)) for c in chosen)
        if i > 0 and rng.random() < 0.3:
            body += f"\n  or in segment g{rng.randrange(i)}"
        parts.append(f'segment g{i} "Generated {i}" {{\n  {body}\n}}\n')
    return "\n".join(parts)


def best(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=2000)
    parser.add_argument("--scores", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    text = generate(args.segments, args.scores)
    result = check_sources({"big.rules": text})
    errors = [d for d in result.diagnostics if d.is_error]
    assert not errors, errors[:3]
    lark = _lark()
    parse_time = best(lambda: lark.parse(text), args.repeat)
    check_time = best(lambda: check_sources({"big.rules": text}), args.repeat)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.rules"
        path.write_text(text, encoding="utf-8")
        command = [sys.executable, "-m", "nudgel.cli.rulec", "check", str(path)]
        cli_time = best(
            lambda: subprocess.run(command, capture_output=True, check=True), args.repeat
        )
    print(f"rule set: {len(text) / 1024:.0f} KiB, {args.segments} segments, {args.scores} scores")
    print(f"bare Lark parse            {parse_time * 1000:9.1f} ms")
    print(
        f"check (in process)         {check_time * 1000:9.1f} ms   ratio {check_time / parse_time:.2f}"
    )
    print(
        f"`rulec check` (a process)  {cli_time * 1000:9.1f} ms   ratio {cli_time / parse_time:.2f}"
    )
    print("aim: ratio <= 2 (checking costs no more than parsing)")


if __name__ == "__main__":
    main()
