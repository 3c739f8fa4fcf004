"""Rendering list templates in worker processes, each render bounded.

A list's templates are code its workspace's users write; the service runs
them when a list is saved (a trial render), when a confirmation email is
made and when a landing page is shown. None of that runs on the event loop or
in the server process: a :class:`TemplateRenderer` hands each render to a
pool of worker processes (``pebble.ProcessPool``, which kills and replaces a
worker whose task overruns its timeout; ``concurrent.futures`` cannot stop a
running task). Each render is limited to ``template_timeout_ms`` of wall
time, its output to ``template_max_output`` bytes, and the worker's memory to
``template_worker_memory_mb`` (``nudgel.api.lists.templates`` enforces the
last two in the worker). A workspace has at most
``template_renders_per_workspace`` renders running at once, so one
workspace's slow templates cannot take every worker; a render that waits
longer than two of its time limits for its turn fails. A render that fails
raises :class:`RenderFailed` with the problem in words that name the limit.

The app creates the renderer in its lifespan (``app.state.renderer``) and
closes it on shutdown; ``nudgel import`` makes its own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI
from nudgel.api.lists import templates
from nudgel.api.lists.templates import Checked, Limits, TemplateProblem
from nudgel.api.problems import FieldError
from nudgel.api.settings import Settings
from pebble import ProcessExpired, ProcessPool

__all__ = [
    "LIST_TEMPLATES",
    "RenderFailed",
    "TemplateRenderer",
    "list_template_errors",
    "renderer_of",
]

T = TypeVar("T")

# Seconds past its own timeout a render may wait for a free worker: a burst of
# slow templates queues behind the workers, but never makes a caller wait
# much longer than two renders.
_QUEUE_GRACE = 2.0

# (member, is HTML, names it may use)
LIST_TEMPLATES: list[tuple[str, bool, frozenset[str]]] = [
    ("confirmation_subject", False, templates.TEXT_NAMES),
    ("confirmation_body", False, templates.TEXT_NAMES),
    ("landing_page", True, templates.PAGE_NAMES),
]


def _preload() -> list[str]:
    """What the fork server imports once for every worker it forks.

    A worker re-runs the parent's main module (multiprocessing's rule): the
    fork server importing it first makes that cheap, for a script
    (``__main__``) and for ``python -m nudgel.cli.nudgel`` (its name) alike,
    so a worker replaced after a timeout starts in milliseconds.
    """
    main = sys.modules["__main__"]
    name = getattr(getattr(main, "__spec__", None), "name", None)
    by_name = [name] if name and not name.endswith("__main__") else []
    return ["__main__", *by_name, "nudgel.api.lists.templates"]


class RenderFailed(Exception):
    """A template could not be rendered (its fault, a limit, or no free worker)."""

    def __init__(self, problem: TemplateProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class TemplateRenderer:
    """A pool of render worker processes with the settings' limits."""

    def __init__(self, settings: Settings) -> None:
        self.timeout_ms = settings.template_timeout_ms
        self._per_workspace = settings.template_renders_per_workspace
        # Each workspace's turns; a workspace's entry goes when nothing of it runs.
        self._turns: dict[int, tuple[asyncio.Semaphore, list[int]]] = {}
        limits = Limits(
            max_output=settings.template_max_output,
            max_range=settings.template_max_range,
            memory_bytes=settings.template_worker_memory_mb * 1024 * 1024,
        )
        # forkserver: workers fork from a process that has imported the
        # templates module, not from the server with its threads and pools.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_preload())
        self._pool = ProcessPool(
            max_workers=settings.template_workers,
            initializer=templates.start_worker,
            initargs=(limits,),
            context=context,
        )

    async def start(self) -> None:
        """Start the workers now rather than on the first render."""
        await self._run(0, templates.render, "", {}, False)

    async def close(self) -> None:
        """Let the renders in progress finish (each is bounded), then stop the workers."""
        self._pool.close()  # type: ignore[no-untyped-call]  # pebble leaves it unannotated
        try:
            await asyncio.to_thread(self._pool.join, 2 * self.timeout_ms / 1000 + _QUEUE_GRACE)
        except TimeoutError:
            self._pool.stop()  # type: ignore[no-untyped-call]
            await asyncio.to_thread(self._pool.join)

    async def check(
        self, workspace_id: int, source: str, *, html: bool, names: frozenset[str]
    ) -> Checked:
        """Why ``source`` cannot be saved (``templates.check``), a timeout included."""
        try:
            return await self._run(workspace_id, templates.check, source, html, names)
        except RenderFailed as failed:
            return Checked(failed.problem, frozenset())

    async def render(
        self, workspace_id: int, source: str, context: Mapping[str, Any], *, html: bool
    ) -> str:
        """The rendered text; raises :class:`RenderFailed`."""
        rendered = await self._run(workspace_id, templates.render, source, dict(context), html)
        if rendered.text is None:
            assert rendered.problem is not None
            raise RenderFailed(rendered.problem)
        return rendered.text

    async def _run(self, workspace_id: int, function: Callable[..., T], *args: Any) -> T:
        seconds = self.timeout_ms / 1000
        turn, users = self._turns.setdefault(
            workspace_id, (asyncio.Semaphore(self._per_workspace), [0])
        )
        users[0] += 1
        try:
            try:
                await asyncio.wait_for(turn.acquire(), 2 * seconds)
            except TimeoutError:
                raise _busy() from None
            try:
                return await self._render(function, args, seconds)
            finally:
                turn.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._turns[workspace_id]

    async def _render(self, function: Callable[..., T], args: tuple[Any, ...], seconds: float) -> T:
        future = self._pool.schedule(function, args=args, timeout=seconds)
        result = asyncio.wrap_future(future)
        # The pool stops a render at its timeout; this bounds the wait for a
        # free worker too.
        try:
            done, _ = await asyncio.wait({result}, timeout=2 * seconds + _QUEUE_GRACE)
        except asyncio.CancelledError:  # the request went away: so does its render
            future.cancel()  # type: ignore[no-untyped-call]
            raise
        if not done:
            # The pool stops its worker if the render had started.
            future.cancel()  # type: ignore[no-untyped-call]
            raise _busy()
        try:
            return result.result()
        except TimeoutError:
            raise RenderFailed(
                TemplateProblem(
                    None,
                    f"rendering takes longer than {self.timeout_ms} ms (NUDGEL_TEMPLATE_TIMEOUT_MS)",
                )
            ) from None
        except ProcessExpired as error:
            # Killed from outside (the kernel's OOM killer) or crashed.
            raise RenderFailed(
                TemplateProblem(None, f"the render worker died (exit code {error.exitcode})")
            ) from None


def _busy() -> RenderFailed:
    return RenderFailed(
        TemplateProblem(None, "no template render worker was free in time; try again")
    )


def renderer_of(app: FastAPI) -> TemplateRenderer:
    """The app's renderer (made by its lifespan)."""
    renderer: TemplateRenderer = app.state.renderer
    return renderer


async def list_template_errors(
    renderer: TemplateRenderer, workspace_id: int, values: Mapping[str, Any]
) -> list[FieldError]:
    """Each of a list's templates that cannot be saved, with its member and line; a
    double opt-in list's body must use ``confirm_url``. The checks run at once."""
    checks = await asyncio.gather(
        *(
            renderer.check(workspace_id, values[member], html=html, names=names)
            for member, html, names in LIST_TEMPLATES
        )
    )
    errors = [
        FieldError(
            location="body", pointer=f"/{member}", detail=str(checked.problem), code="template"
        )
        for (member, _, _), checked in zip(LIST_TEMPLATES, checks, strict=True)
        if checked.problem is not None
    ]
    if values["double_opt_in"] and not errors and "confirm_url" not in checks[1].names:
        errors.append(
            FieldError(
                location="body",
                pointer="/confirmation_body",
                detail="a double opt-in list's email must contain {{ confirm_url }}",
                code="template",
            )
        )
    return errors
