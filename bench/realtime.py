"""What real-time rules cost an upsert: `POST /v1/contacts` throughput and
latency with 50 segments, 3 score models and a lifecycle deployed, as a ratio
to the same load on a workspace with no rules, in the same run.

    python bench/realtime.py [--requests 3000] [--clients 16] [--rounds 2] [--quick]

A throwaway database is created from DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end; the
service runs in a subprocess (as in bench/api_upsert.py). Two workspaces get
the same kind of load (new people and updates of known ones, with tags and
custom fields, ~1% merges): one with no rules, one with the rules below
deployed (every upsert then re-evaluates, in its own transaction, what it
touched, writes memberships, scores, history and outbox events). Rounds
alternate between the two so that the machine's noise hits both alike; each
side's best round is reported. The aim is a ratio of at most 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_upsert import DEFAULT_URL, percentile, run_api, served, throwaway_database
from nudgel.api.keys.store import create_key

FIELDS = {"plan": "text", "ltv": "number", "beta": "bool", "company": "text"}
TAGS = ["premium", "KE", "vip", "beta", "newsletter", "churn-risk"]


def rules() -> str:
    """50 segments of every kind of condition the profile and timeline feed,
    3 score models and a lifecycle."""
    segments = []
    for n, tag in enumerate(TAGS):
        segments.append(f'segment tag_{n} {{ tag "{tag}" }}')
        segments.append(f'segment tag_{n}_pro {{ tag "{tag}" and fields.plan = "pro" }}')
    for n, plan in enumerate(["free", "pro", "enterprise", "basic"]):
        segments.append(f'segment plan_{n} {{ fields.plan = "{plan}" }}')
        segments.append(
            f'segment plan_{n}_rich {{ fields.plan = "{plan}" and fields.ltv >= 1000 }}'
        )
    for n, domain in enumerate(["acme.com", "example.com", "gmail.com", "bench.example"]):
        segments.append(f'segment domain_{n} {{ email ends_with "@{domain}" }}')
    for n, prefix in enumerate(["+254", "+1", "+44"]):
        segments.append(f'segment phone_{n} {{ phone starts_with "{prefix}" }}')
    for n, days in enumerate([1, 7, 30, 90]):
        segments.append(f'segment buyers_{n} {{ count(event "purchase" within {days}d) >= 1 }}')
        segments.append(f"segment active_{n} {{ event * within {days}d }}")
    segments += [
        'segment named { name is set and name matches "^[A-Z]" }',
        "segment beta_users { fields.beta }",
        "segment big_ltv { fields.ltv > 5000 }",
        'segment companies { fields.company contains "ltd" }',
        "segment engaged { score.engagement >= 30 }",
        "segment valuable { score.value >= 10 }",
        'segment customers { stage >= "customer" }',
        "segment vip_customers { in segment customers and in segment tag_2 }",
        "segment new_contacts { created_at > now - 1d }",
        'segment lapsed { event "purchase" and not event "purchase" within 60d }',
        'segment big_orders { event "purchase" where (props.amount > 1000) within 30d }',
        'segment high_avg { avg(event "purchase", props.amount) > 500 }',
        'segment openers { count(event "email_open" within 30d) >= 3 }',
        "segment no_phone { phone is not set }",
        'segment premium_ke { tag "premium" and tag "KE" and not tag "churn-risk" }',
    ]
    assert len(segments) == 50, len(segments)
    scores = """
score engagement {
  +10 per event "email_open" within 90d max 50
  +25 per event "purchase" within 30d
  -5 when not event * within 30d
}
score value {
  +1 per event "purchase" max 20
  +5 when fields.ltv >= 1000
  +3 when tag "vip"
}
score risk {
  +10 when tag "churn-risk"
  +5 when not event * within 14d
  clamp 0..100
}
lifecycle {
  lead when email is set or phone is set
  customer when event "purchase"
  champion when score.engagement >= 60
}
"""
    return "\n".join(segments) + "\n" + scores


def bodies(requests: int, domain: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    seen: list[int] = []
    out: list[dict[str, Any]] = []
    for _ in range(requests):
        if not seen or rng.random() < 0.5:
            seen.append(len(seen))
            person = seen[-1]
        else:
            person = rng.choice(seen)
        body: dict[str, Any] = {
            "email": f"person{person}@{domain}",
            "name": rng.choice([f"Person {person}", f"person {person}"]),
            "tags": rng.sample(TAGS, rng.randint(0, 2)),
            "fields": {
                "plan": rng.choice(["free", "pro", "enterprise", "basic"]),
                "ltv": rng.choice([0, 999.5, 1000, 7500]),
                "beta": rng.random() < 0.3,
                "company": rng.choice(["Acme Ltd", "Beta Inc"]),
            },
        }
        if rng.random() < 0.5:
            body["phone"] = f"+2547{10_000_000 + person:08d}"
        if len(seen) > 1 and rng.random() < 0.01:
            body["phone"] = f"+2547{10_000_000 + rng.choice(seen):08d}"
        out.append(body)
    return out


def setup_workspace(url: str, name: str) -> tuple[int, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        issued = create_key(conn, name, "test")
        for field, type_name in FIELDS.items():
            conn.execute(
                "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, %s, %s)",
                (issued.workspace_id, field, type_name),
            )
    return issued.workspace_id, issued.secret


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="600 requests, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 600, 1
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    with throwaway_database(server_url) as url, served(url, args.clients) as (base, pid):
        plain = setup_workspace(url, "plain")
        ruled = setup_workspace(url, "ruled")
        deployed = httpx.put(
            base + "/v1/rules",
            json={"files": {"bench.rules": rules()}},
            headers={"Authorization": f"Bearer {ruled[1]}"},
            timeout=60,
        )
        deployed.raise_for_status()
        results: dict[str, list[tuple[float, list[float]]]] = {"no rules": [], "rules": []}
        for round_number in range(args.rounds):
            for label, (_, secret) in (("no rules", plain), ("rules", ruled)):
                load = bodies(args.requests, f"r{round_number}.bench.example", 7 + round_number)
                wall, latencies, statuses, *_ = asyncio.run(
                    run_api(base, pid, secret, load, args.clients)
                )
                bad = {s: n for s, n in statuses.items() if s not in (200, 201)}
                assert not bad, f"{label}: unexpected statuses {bad}"
                results[label].append((wall, latencies))
                print(
                    f"round {round_number + 1} {label:9} {len(load) / wall:8.0f} req/s"
                    f"  p50 {percentile(latencies, 0.5) * 1000:6.1f} ms"
                    f"  p99 {percentile(latencies, 0.99) * 1000:6.1f} ms",
                    flush=True,
                )
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM segment_members WHERE workspace_id = %s", (ruled[0],)
            ).fetchone()
        print(f"memberships kept in real time: {row[0] if row else 0:,}")
        best = {label: min(runs, key=lambda run: run[0]) for label, runs in results.items()}
        throughput = {label: args.requests / run[0] for label, run in best.items()}
        p99 = {label: percentile(run[1], 0.99) for label, run in best.items()}
        p50 = {label: percentile(run[1], 0.5) for label, run in best.items()}
        print(
            f"best rounds: no rules {throughput['no rules']:.0f} req/s, p50"
            f" {p50['no rules'] * 1000:.1f} ms, p99 {p99['no rules'] * 1000:.1f} ms;"
            f" rules {throughput['rules']:.0f} req/s, p50 {p50['rules'] * 1000:.1f} ms,"
            f" p99 {p99['rules'] * 1000:.1f} ms"
        )
        print(
            f"ratio rules / no rules: time per request"
            f" {throughput['no rules'] / throughput['rules']:.2f},"
            f" p50 {p50['rules'] / p50['no rules']:.2f}, p99 {p99['rules'] / p99['no rules']:.2f}"
            "  (aim: at most 1.5)"
        )


if __name__ == "__main__":
    main()
