"""The FastAPI application: ``create_app(settings)``.

The lifespan resolves the database (``DATABASE_URL``, else the embedded
server), applies pending migrations, opens the connection pool, starts the
processes that render list templates (``nudgel.api.lists.rendering``), and
(unless ``run_worker`` is off) starts the background work as tasks that stop
with the app (webhook delivery, re-evaluation as time passes, the resumption
of jobs whose process died, the purge of expired idempotency records);
handlers find the pool, the renderer, the settings and the job host on
``app.state``. Jobs still running when the app stops are cancelled after
their last committed batch, and their leases released for another process. The
blocking steps (starting the embedded server, ``apply_migrations``) run in a
worker thread so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from nudgel.api.db.pool import make_pool, pool_of
from nudgel.api.housekeeping import housekeeping_loop
from nudgel.api.http.limits import LimitsMiddleware
from nudgel.api.http.problems import install_problem_handlers, problem_responses
from nudgel.api.http.routers import OPENAPI_TAGS, ROUTERS, pages
from nudgel.api.http.webhook_payloads import document_webhooks
from nudgel.api.jobs.resume import resume_loop
from nudgel.api.jobs.runner import JobHost
from nudgel.api.lists.rendering import TemplateRenderer
from nudgel.api.problems import Problem, ProblemError
from nudgel.api.rules import compiling
from nudgel.api.rules.scheduler import scheduler_loop
from nudgel.api.settings import Settings
from nudgel.api.webhooks import delivery
from nudgel.schema.migrate import apply_migrations
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel

from nudgel import __version__

__all__ = ["create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
Contacts, segments and scoring. Authenticate with `Authorization: Bearer sk_...`
(`nudgel keys create --workspace NAME`). Lists are cursor-paginated (`limit`,
`starting_after`); every POST accepts an `Idempotency-Key`; errors are RFC 9457
`application/problem+json`.
"""


def _prepare_database(settings: Settings) -> str:
    """Blocking: the database URL, with migrations applied."""
    url = settings.resolve_database_url()
    if settings.migrate_on_startup:
        with psycopg.connect(url, autocommit=True) as conn:
            applied = apply_migrations(conn)  # under its advisory lock
        for name in applied:
            log.info("applied migration %s", name)
    return url


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    url = await asyncio.to_thread(_prepare_database, settings)
    pool = make_pool(url, settings)
    await pool.open(wait=True)
    app.state.pool = pool
    app.state.mailer = None  # made on first use, with this pool
    renderer = TemplateRenderer(settings)
    await renderer.start()
    app.state.renderer = renderer
    # Jobs (backfills, imports) have their own pool, without the request limits.
    job_pool = make_pool(url, settings, for_jobs=True)
    await job_pool.open(wait=True)
    jobs = JobHost(job_pool, settings, app)
    app.state.job_host = jobs
    worker: tuple[asyncio.Task[None], AsyncConnectionPool] | None = None
    stop = asyncio.Event()
    resumer: asyncio.Task[None] | None = None
    if settings.run_worker:
        # Jobs whose process died: at start-up, then every job_resume_interval.
        resumer = asyncio.create_task(resume_loop(jobs, settings.job_resume_interval, stop))
        # Its own small pool: deliveries never queue behind API requests.
        worker_pool = delivery.make_worker_pool(url)
        await worker_pool.open(wait=True)
        task = asyncio.create_task(delivery.run_worker(worker_pool, settings, stop))
        worker = (task, worker_pool)
        # Time passing: contacts whose windowed results fell due.
        scheduler = asyncio.create_task(
            scheduler_loop(worker_pool, settings.schedule_interval, stop)
        )
        # Idempotency records past their retention.
        housekeeping = asyncio.create_task(housekeeping_loop(worker_pool, settings, stop))
    try:
        yield
    finally:
        stop.set()
        if resumer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resumer, 30)
        # Running jobs stop where their last batch committed; their leases
        # are released, so another process resumes them at once.
        await jobs.stop()
        if worker is not None:
            # Let the pass in progress finish (its requests are bounded by
            # webhook_timeout); past that, cancel: the leases run out and
            # the next worker retries those deliveries.
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker[0], settings.webhook_timeout + 5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(scheduler, 30)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(housekeeping, 30)
            await worker[1].close()
        await renderer.close()
        await asyncio.to_thread(compiling.shutdown_pool)
        await job_pool.close()
        await pool.close()


class Health(BaseModel):
    status: str


def _openapi(app: FastAPI, openapi_tags: list[dict[str, Any]]) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            webhooks=app.webhooks.routes,
            tags=openapi_tags,
        )
        # Error responses reference Problem by name (problem+json is not the
        # route's media type, so FastAPI would not collect it by itself).
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem.pop("$defs", {}))
        components["Problem"] = problem
        # A webhook is answered by the receiver: any 2xx settles it. FastAPI's
        # own 422 (and its schemas) describe nothing there.
        for item in schema.get("webhooks", {}).values():
            item["post"]["responses"] = {
                "2XX": {"description": "Accepted; anything else is retried with backoff."}
            }
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    # Swagger UI and ReDoc from files in the package: /docs works offline.
    app = FastAPIOffline(
        title="Nudgel",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        # Operation ids are the handler names (create_tag), not FastAPI's
        # path-derived ones, so generated clients get readable method names.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    app.add_middleware(LimitsMiddleware, settings=settings)
    for router in ROUTERS:
        app.include_router(router, prefix="/v1")
    app.include_router(pages.router)  # confirm/unsubscribe pages: not /v1, no key

    @app.get(
        "/healthz",
        response_model=Health,
        summary="Health check",
        description="Answers when the service can reach its database. No authentication.",
        tags=["Service"],
        responses=problem_responses(503),
    )
    async def healthz(request: Request) -> Health:
        try:
            async with pool_of(request).connection() as conn:
                await conn.execute("SELECT 1")
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise ProblemError(
                503,
                "Service Unavailable",
                "The database cannot be reached.",
                headers={"Retry-After": "5"},
            ) from exc
        return Health(status="ok")

    openapi_tags = [
        *OPENAPI_TAGS,
        {"name": "Service", "description": "Operational endpoints."},
        {
            "name": "Webhook events",
            "description": "What the service POSTs to your endpoints, per event type.",
        },
    ]
    document_webhooks(app)
    app.openapi = lambda: _openapi(app, openapi_tags)  # type: ignore[method-assign]
    return app
