"""Checking a rule set against a workspace's field definitions, and compiling
it, off the event loop.

Rule files may declare fields (``field plan: text``) or leave them out: the
workspace's definitions (``/v1/fields``) are declared for them in a virtual
file. A declaration must agree with the definition (E271) and name a defined
field (E270): the service only stores values of defined fields, so a rule
about any other could never hold.

Checking and compiling 5,000 segments is about 3 s of CPU (the checker, the
backfill's SQL, Python's ``compile`` of the in-memory program, which holds
the GIL for a third of a second in one call). In a thread of the serving
process that still competes with the event loop for the GIL (requests
waited up to 400 ms), so a large rule set (over :data:`IN_PROCESS_BYTES`)
is checked and compiled in a small process pool (``spawn``: forking a
process with an event loop, threads and open connections is unsafe), and a
small one in a thread. What comes back is data: the diagnostics, the checked
rules, the program's bytecode, the backfill's queries, or why the rule set
is refused; the serving process only assembles the program, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from nudgel.compiler.sql import CompiledQuery, QueryTooWide, SqlCompiler
from nudgel.dsl import ast
from nudgel.dsl.ast import FIELD_TYPES
from nudgel.dsl.checker import CheckedRules, CheckResult, check_sources
from nudgel.dsl.diagnostics import FIELD_NOT_DEFINED, FIELD_TYPE_DIFFERS, Diagnostic, InternalError
from nudgel.dsl.parser import KEYWORDS, parse
from nudgel.runtime.program import Program

__all__ = [
    "IN_PROCESS_BYTES",
    "Checked",
    "check_for_deploy",
    "compile_for_workspace",
    "compile_rules",
    "declared_fields",
    "definitions_of",
    "shutdown_pool",
    "sql_in_process",
]

# Rule sets larger than this (bytes of source) are compiled in the pool;
# smaller ones (milliseconds) in a thread, without the trip to a process.
IN_PROCESS_BYTES = 32_000

WORKSPACE_FIELDS = "<workspace fields>"


def declared_fields(files: Mapping[str, str]) -> dict[str, str]:
    """The fields ``files`` declare, name -> type name (first declaration wins)."""
    declared: dict[str, str] = {}
    for path in sorted(files):
        parsed = parse(files[path], path)
        if parsed.file is not None:
            for decl in parsed.file.declarations:
                if isinstance(decl, ast.FieldDecl):
                    declared.setdefault(decl.name, decl.type_name)
    return declared


def compile_for_workspace(
    files: Mapping[str, str],
    definitions: Mapping[str, ast.Type],
    *,
    new_fields: bool = False,
) -> CheckResult:
    """Check ``files`` with the workspace's field definitions declared.

    A field the files declare that the workspace lacks is an error (E270),
    unless ``new_fields``: a deploy creates it (the rule files are the
    workspace's schema). A declaration whose type differs from the
    workspace's is always an error (E271)."""
    declared: dict[str, ast.FieldDecl] = {}
    extra: list[Diagnostic] = []
    for path in sorted(files):
        parsed = parse(files[path], path)
        if parsed.file is None:
            continue
        for decl in parsed.file.declarations:
            if not isinstance(decl, ast.FieldDecl):
                continue
            declared.setdefault(decl.name, decl)
            defined = definitions.get(decl.name)
            if defined is None and new_fields:
                continue
            if defined is None:
                extra.append(
                    FIELD_NOT_DEFINED(
                        decl.name_span,
                        help=f'define it first: POST /v1/fields {{"name": "{decl.name}", ...}}',
                        name=decl.name,
                    )
                )
            elif decl.type_name != defined.value:
                extra.append(
                    FIELD_TYPE_DIFFERS(
                        decl.type_span,
                        help=f"declare it `{defined.value}`, or leave the declaration out",
                        name=decl.name,
                        declared=decl.type_name,
                        defined=defined.value,
                    )
                )
    implicit = "".join(
        f"field {name}: {type_.value}\n"
        for name, type_ in sorted(definitions.items())
        # A keyword is no field name in the rules language (the API refuses
        # them; older definitions may still be there): rules cannot name it.
        if name not in declared and name not in KEYWORDS
    )
    sources = dict(files)
    if implicit:
        sources[WORKSPACE_FIELDS] = implicit
    result = check_sources(sources)
    # The implicit declarations are not the user's: no "declared but never
    # used". An error there would be ours, never silently dropped.
    if any(d.is_error for d in result.diagnostics if d.span.file == WORKSPACE_FIELDS):
        raise InternalError(f"the workspace's field declarations do not check: {implicit!r}")
    diagnostics = [d for d in result.diagnostics if d.span.file != WORKSPACE_FIELDS]
    diagnostics.extend(extra)
    diagnostics.sort(key=Diagnostic.sort_key)
    rules = result.rules if not extra else None
    return CheckResult(rules, tuple(diagnostics))


def definitions_of(signature: str) -> dict[str, ast.Type]:
    """Field definitions from their JSON signature (``store.field_signature``)."""
    return {name: FIELD_TYPES[type_name] for name, type_name in json.loads(signature)}


@dataclass(frozen=True)
class Checked:
    """A checked rule set: ``rules`` is None with errors, or with ``refusal``
    (problem type, title, detail) when it is too large to store or backfill.
    ``bytecode`` is the in-memory program's (``Program.bytecode``)."""

    diagnostics: tuple[Diagnostic, ...]
    rules: CheckedRules | None = None
    bytecode: bytes | None = None
    queries: tuple[CompiledQuery, ...] = ()
    refusal: tuple[str, str, str] | None = None


def check_and_compile(
    files: Mapping[str, str],
    signature: str,
    max_nodes: int | None = None,
    max_columns: int | None = None,
    new_fields: bool = False,
) -> Checked:
    """Check the files against the field definitions (``new_fields``: fields
    they declare and the workspace lacks will be created), then (when they
    pass) count segments and scores against ``max_nodes`` and compile the
    program's bytecode and, with ``max_columns``, the backfill's queries."""
    result = compile_for_workspace(files, definitions_of(signature), new_fields=new_fields)
    rules = result.rules
    if rules is None:
        return Checked(result.diagnostics)
    nodes = len(rules.segments) + len(rules.scores)
    if max_nodes is not None and nodes > max_nodes:
        detail = (
            f"The rules have {len(rules.segments)} segments and {len(rules.scores)} scores"
            f" ({nodes}); a workspace may have at most {max_nodes} together"
            " (setting rules_max_nodes)."
        )
        refusal = ("too-many-rules", "Too many segments and scores", detail)
        return Checked(result.diagnostics, refusal=refusal)
    queries: tuple[CompiledQuery, ...] = ()
    if max_columns is not None:
        try:
            queries = tuple(SqlCompiler(rules).everything_chunks(max_columns, batch=True))
        except QueryTooWide as error:
            detail = (
                f"{error}: split it, or raise the setting backfill_max_columns (now {max_columns})."
            )
            refusal = ("rule-too-large", "Rule too large to evaluate", detail)
            return Checked(result.diagnostics, refusal=refusal)
    return Checked(result.diagnostics, rules, Program.bytecode(rules), queries)


def _sql(rules: CheckedRules, max_columns: int) -> tuple[CompiledQuery, ...]:
    return tuple(SqlCompiler(rules).everything_chunks(max_columns, batch=True))


_executor: ProcessPoolExecutor | None = None
_lock = threading.Lock()
_T = TypeVar("_T")


def _die_with_parent(parent: int) -> None:
    """A worker's initializer: exit when the serving process is gone, even killed
    by SIGKILL (an orphan would keep its inherited pipes and CPU, and a killed
    ``nudgel serve`` would leave one per restart)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: Linux
    # Compiling a tenant's rule set yields the CPU to the server's requests.
    with contextlib.suppress(OSError):
        os.nice(10)
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(0)

    def watch() -> None:  # elsewhere, and as a second guard
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _pool() -> ProcessPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ProcessPoolExecutor(
                max_workers=min(2, os.cpu_count() or 1),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_die_with_parent,
                initargs=(os.getpid(),),
            )
        return _executor


def shutdown_pool() -> None:
    """Stop the compile workers (the app's lifespan calls it on the way out)."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


async def _run(large: bool, function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in the pool when ``large``, else in a thread."""
    global _executor
    if not large:
        return await asyncio.to_thread(function, *args)
    pool = _pool()
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
    except BrokenProcessPool:
        # Its process died (killed, out of memory): the next call gets a new one.
        with _lock:
            if _executor is pool:
                _executor = None
        raise


def _large(files: Mapping[str, str]) -> bool:
    return sum(len(text) for text in files.values()) > IN_PROCESS_BYTES


async def check_for_deploy(
    files: Mapping[str, str], signature: str, max_nodes: int, max_columns: int
) -> Checked:
    """A deploy's check, its limits, program and backfill queries (off the loop).
    Fields the files declare and the workspace lacks are the deploy's to create."""
    return await _run(
        _large(files), check_and_compile, dict(files), signature, max_nodes, max_columns, True
    )


async def compile_rules(files: Mapping[str, str], signature: str) -> Checked:
    """Stored rules checked and their program compiled again (off the loop)."""
    return await _run(_large(files), check_and_compile, dict(files), signature)


async def sql_in_process(
    rules: CheckedRules, files: Mapping[str, str], max_columns: int
) -> tuple[CompiledQuery, ...]:
    """The backfill's queries of rules compiled without them (off the loop)."""
    return await _run(_large(files), _sql, rules, max_columns)
