"""Compiling a large rule set: N one-line segments (``segment s1 { tag "t1" }``),
as ``PUT /v1/rules`` compiles them before anything changes.

    python bench/deploy_size.py [--segments 5000]

Times each step: the check (parse, types, declarations), the in-memory
program and time plan (``DeployedRules.build``), and the backfill's SQL (the
``everything`` queries, split to fit PostgreSQL's column limit when the
compiler has ``everything_chunks``). Nothing touches a database.
"""

from __future__ import annotations

import argparse
import time

try:
    from nudgel.api.rules.compiling import compile_for_workspace
except ImportError:  # before the split
    from nudgel.api.rules.store import compile_for_workspace  # type: ignore[attr-defined,no-redef]
from nudgel.api.rules.store import DeployedRules
from nudgel.compiler.sql import SqlCompiler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=5000)
    parser.add_argument("--max-columns", type=int, default=1000)
    args = parser.parse_args()
    files = {
        "m.rules": "".join(f'segment s{i} {{ tag "t{i}" }}\n' for i in range(1, args.segments + 1))
    }
    print(f"{args.segments} segments, {len(files['m.rules']):,} bytes")
    start = time.perf_counter()
    result = compile_for_workspace(files, {})
    assert result.rules is not None
    checked = time.perf_counter()
    print(f"  check:        {checked - start:8.2f} s")
    DeployedRules.build(1, files, result.rules)
    built = time.perf_counter()
    print(f"  program:      {built - checked:8.2f} s")
    compiler = SqlCompiler(result.rules)
    chunks = getattr(compiler, "everything_chunks", None)
    # Before the split: one query, every column.
    queries = chunks(args.max_columns) if chunks is not None else [compiler.everything()]
    done = time.perf_counter()
    widest = max(len(q.columns) for q in queries)
    print(
        f"  backfill SQL: {done - built:8.2f} s  ({len(queries)} queries, widest {widest} columns)"
    )
    print(f"  total:        {done - start:8.2f} s")


if __name__ == "__main__":
    main()
