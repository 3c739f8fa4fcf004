"""Line-level profile of the generated in-memory program for spec §1, beside the
hand-written baseline of bench/eval_memory.py.

    pip install -e ".[bench]"    # line-profiler
    python bench/profile_memory.py [--contacts 20000] [--events 20] [--source]

The generated source is written to a temporary file and compiled under that
name, so the profiler can show each generated line with its hits and time.
Times are inflated by the profiler (several times over): compare lines with
each other, and use eval_memory.py for the real ratio.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

from line_profiler import LineProfiler
from nudgel.compiler.python import PythonCompiler
from nudgel.dsl.checker import check_sources
from nudgel.runtime.contact import load_contacts

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_memory as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--source", action="store_true", help="print the generated source too")
    args = parser.parse_args()

    checked = check_sources({"marketing.rules": bench.spec_rules()})
    assert checked.rules is not None, checked.diagnostics
    rules = checked.rules
    module = PythonCompiler(rules).compile()
    if args.source:
        print(module.source)
    with tempfile.NamedTemporaryFile("w", suffix="_rules.py", delete=False) as file:
        file.write(module.source)
    namespace: dict[str, Any] = dict(module.namespace)
    exec(compile(module.source, file.name, "exec"), namespace)
    field_types = {name: rules.field_type(name) for name in rules.fields}
    contacts = load_contacts(
        bench.generate(args.contacts, args.events), field_types, rules.stage_names
    )

    profiler = LineProfiler()
    for value in namespace.values():
        code = getattr(value, "__code__", None)
        if code is not None and code.co_filename == file.name:
            profiler.add_function(value)
    for function in (
        bench.hand_everything,
        bench.hand_engagement,
        bench.hand_hot_leads,
        bench.hand_lapsed,
        bench.hand_big_spenders,
        bench.hand_stage,
    ):
        profiler.add_function(function)
    evaluate, hot_leads = namespace["evaluate"], namespace["only_segment_hot_leads"]
    profiler.enable()
    for contact in contacts:
        evaluate(contact, bench.NOW)
        hot_leads(contact, bench.NOW)
        bench.hand_everything(contact, bench.NOW)
        bench.hand_hot_leads(contact, bench.NOW)
    profiler.disable()
    out = io.StringIO()
    profiler.print_stats(stream=out, output_unit=1e-6, stripzeros=True)
    print(out.getvalue())
    Path(file.name).unlink()


if __name__ == "__main__":
    main()
