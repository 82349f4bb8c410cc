"""The FastAPI application. ``create_app`` builds it; the lifespan builds the engine and seeds the starter set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import api_errors, health, metrics
from service.auth.guard import require_token
from service.auth.router import router as tokens_router
from service.auth.scopes import Scope
from service.bounds import check_request
from service.datasets.router import router as datasets_router
from service.datasets.service import ensure_starter
from service.db.migrate import upgrade
from service.db.session import create_engine, create_sessionmaker
from service.gates.router import router as gates_router
from service.jobs.events import EventStreams
from service.jobs.events import router as job_events_router
from service.jobs.router import router as jobs_router
from service.jobs.status_cache import StatusCache
from service.middleware import BodyLimit, HostGuard
from service.model_configs.router import router as model_configs_router
from service.problems import PROTECTED, document_problems
from service.results.cache import ResultsCache
from service.results.router import router as results_router
from service.settings import Settings

API_VERSION = "0.1.0"
# what every operation behind the token check may answer besides its own errors (problem+json, service/problems.py)
AUTH_RESPONSES = PROTECTED


def create_app(
    settings: Settings | None = None,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    *,
    run_jobs: bool | None = None,
) -> FastAPI:
    """The API. Tests pass a ``sessionmaker`` bound to their own connection; otherwise the lifespan builds one.

    ``run_jobs``: execute posted jobs in this process (default: when embedded, i.e. no Redis, and no sessionmaker
    was handed in).

    API tokens are required unless ``settings.auth.required`` is ``False``: the app does not know the address it
    will serve, so an unset setting means required here (``defeater api`` decides it from the address first).
    """
    if run_jobs is None:
        run_jobs = sessionmaker is None
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        if sessionmaker is None:
            engine = create_engine(settings, request_timeouts=True)
            if settings.should_auto_migrate:
                await upgrade(engine)
            app.state.sessionmaker = create_sessionmaker(engine)
        else:
            app.state.sessionmaker = sessionmaker
        async with app.state.sessionmaker() as session:
            await ensure_starter(session)
            await session.commit()
        # polls of running jobs are served from counts refreshed in the background (service/jobs/status_cache.py);
        # not with a sessionmaker handed over (tests share one connection, which a background count would race)
        app.state.status_cache = StatusCache(app.state.sessionmaker) if sessionmaker is None else None
        app.state.results_cache = ResultsCache(sessionmaker=app.state.sessionmaker if sessionmaker is None else None)
        app.state.runner = None
        app.state.queue = None
        if settings.redis_url:
            # distributed: jobs are handed to the workers through Redis, after the commit
            from arq.connections import RedisSettings, create_pool

            app.state.queue = await create_pool(RedisSettings.from_dsn(settings.redis_url))
        elif run_jobs:
            # no Redis: jobs posted here run in this process
            from workers.executor.background import BackgroundRunner
            from workers.providers.registry import preload_sdks
            from workers.tasks import Runtime

            app.state.runner = BackgroundRunner(Runtime.build(settings), app.state.sessionmaker)
            app.state.runner.start()
            # the SDKs load in a thread while the API already answers (at a job's first call, they would hold the loop)
            app.state.sdks_loaded = asyncio.create_task(asyncio.to_thread(preload_sdks))
        try:
            yield
        finally:
            if app.state.status_cache is not None:
                await app.state.status_cache.close()
            await app.state.results_cache.close()
            if app.state.runner is not None:
                await app.state.runner.stop()
                await app.state.sdks_loaded
            if app.state.queue is not None:
                await app.state.queue.aclose()
            if engine is not None:
                await engine.dispose()

    app = FastAPI(
        title="Defeater",
        version=API_VERSION,
        summary="Blind Refusal evaluations at full scale: model configs, datasets, jobs and their results.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.event_streams = EventStreams(settings.events)
    api_errors.install(app)
    document_problems(app)
    # before routing, body parsing and the token check; the last added runs first: the Host, then the body
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(HostGuard, settings=settings)
    app.include_router(health.router)  # the only open router: probes carry no token
    # Every other router goes behind the token check (service/auth/guard.py), its scope following from the method;
    # include new ones with `dependencies=member` (tests/auth checks every operation but health's answers 401 bare).
    # then every request's query, path and JSON body pass the shared input bounds (service/bounds.py)
    checked = Depends(check_request)
    member, admin = [Depends(require_token()), checked], [Depends(require_token(Scope.admin)), checked]
    app.include_router(metrics.router, dependencies=member, responses=AUTH_RESPONSES)
    app.include_router(model_configs_router, dependencies=member, responses=AUTH_RESPONSES)
    app.include_router(datasets_router, dependencies=member, responses=AUTH_RESPONSES)
    app.include_router(jobs_router, dependencies=member, responses=AUTH_RESPONSES)
    app.include_router(job_events_router, dependencies=member, responses=AUTH_RESPONSES)
    app.include_router(results_router, dependencies=member, responses=AUTH_RESPONSES)
    app.include_router(gates_router, dependencies=member, responses=AUTH_RESPONSES)
    app.include_router(tokens_router, dependencies=admin, responses=AUTH_RESPONSES)
    return app
