"""The FastAPI app factory. Settings are passed in; the lifespan owns the engine, DB and indexes."""

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from adapters_store.db import make_engine, make_session_factory
from migrations.runner import current_revision, head_revision
from service.auth import Authenticator
from service.engine.client import EngineClient
from service.engine.pool import EnginePool
from service.engine.supervisor import LocalEngine
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.rag.planner import Planner
from service.routes import completions, health
from service.settings import Settings
from service.state import GatewayState

log = logging.getLogger(__name__)


class StartupError(Exception):
    pass


def create_app(settings: Settings, *, local_engine: LocalEngine | None = None,
               engine_transport=None) -> FastAPI:
    """Build the gateway.

    With `settings.engine_urls` empty, the gateway runs a local vLLM: `local_engine` if one was
    started already (by `graft serve`), else it starts one itself. `engine_transport` is the
    httpx seam for tests that fake the engine.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await _start(settings, local_engine, engine_transport)
        app.state.graft = state
        try:
            yield
        finally:
            await _stop(state)

    app = FastAPI(title="graft", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(completions.router)
    return app


async def _start(settings: Settings, local_engine: LocalEngine | None, transport) -> GatewayState:
    for folder in (settings.data_dir, settings.indexes_dir, settings.uploads_dir,
                   settings.adapters_dir, settings.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    db = make_engine(settings.resolved_database_url)
    if current_revision(db) != head_revision():
        db.dispose()
        raise StartupError("the database schema is not at the latest migration: run `graft db upgrade`")
    sessions = make_session_factory(db)

    urls = list(settings.engine_urls)
    if not urls:
        if local_engine is None:
            local_engine = LocalEngine(settings)
            await local_engine.start()
        urls = [local_engine.url]
    clients = [EngineClient(url, connect_timeout_s=settings.engine_connect_timeout_s,
                            request_timeout_s=settings.engine_request_timeout_s, transport=transport)
               for url in urls]
    pool = EnginePool(clients)
    state = GatewayState(settings=settings, db=db, sessions=sessions, pool=pool, metrics=Metrics(),
                         auth=Authenticator(sessions, settings.api_keys), local_engine=local_engine)
    state.extras["planner"] = Planner(settings)
    await pool.check_all()
    pool.start_monitor()
    if local_engine is not None:
        local_engine.watch()
    return state


async def _stop(state: GatewayState) -> None:
    await state.pool.close()
    if state.local_engine is not None:
        await state.local_engine.stop()
    state.db.dispose()
