"""The FastAPI app factory. Settings are passed in; the lifespan owns the engine, DB and indexes."""

import asyncio
import functools
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import select
from starlette.routing import Route
from transformers import AutoTokenizer

from adapters_store.artifacts import AdapterArtifactStore
from adapters_store.db import make_engine, make_session_factory
from adapters_store.durable import make_dirs_durably
from adapters_store.hotload import HotLoader
from adapters_store.models import Corpus
from adapters_store.reconciler import Reconciler
from indexer.embedding import Embedder
from indexer.generation import GenerationStore
from indexer.jobs import IngestionWorker, IngestLimits
from indexer.registry import CorpusRegistry
from migrations.runner import SchemaBehind, require_head
from service.audit import AuditLog
from service.auth import Authenticator
from service.domains import RoutingTable
from service.engine.client import EngineClient
from service.engine.pool import EnginePool
from service.engine.supervisor import LocalEngine
from service.errors import install_error_handlers
from service.evals import EvalService
from service.job_runner import JobRunner
from service.http_body import RefuseNul
from service.limits import RateLimiter, tenant_limits_loader
from service.mcp_server import McpEndpoint
from service.metrics import Metrics, RequestMetrics
from service.openapi import install_openapi
from service.rag.planner import Planner
from service.rag.prompt import PromptBuilder
from service.rag.retrieval import Retriever
from service.reports import ReportService
from service.routes import (adapters, audit, completions, console, corpora, domains, evals, health, jobs, keys,
                            openai_responses, reports, trainings, tunings)
from service.settings import Settings
from service.state import GatewayState
from service.swap import SwapService
from service.training import TrainingService
from service.tuning import TuningService

log = logging.getLogger(__name__)


class StartupError(Exception):
    pass


def create_app(settings: Settings, *, local_engine: LocalEngine | None = None) -> FastAPI:
    """Build the gateway.

    With `settings.engine_urls` empty, the gateway runs a local vLLM: `local_engine` if one was
    started already (by `graft serve` or a test; its starter stops it), else it starts and
    stops one itself.
    """

    mcp = McpEndpoint(settings.max_request_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await _start(settings, local_engine)
        app.state.graft = state
        try:
            async with mcp.run():
                yield
        finally:
            await _stop(state)

    pages = settings.api_docs_pages
    app = FastAPI(title="graft", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs" if pages else None, redoc_url="/redoc" if pages else None)
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(AuditLog)  # inside RequestMetrics, which then counts its 500s
    app.add_middleware(RefuseNul)
    app.add_middleware(RequestMetrics)
    for module in (health, completions, openai_responses, corpora, domains, tunings, reports, adapters, evals,
                   trainings, jobs, keys, audit, console):
        app.include_router(module.router)
    # MCP's streamable HTTP: POST (JSON-RPC), GET (the server's event stream), DELETE (end a session).
    app.router.routes.append(Route("/mcp", mcp, methods=["GET", "POST", "DELETE"]))
    return app


async def _start(settings: Settings, local_engine: LocalEngine | None) -> GatewayState:
    for folder in (settings.data_dir, settings.indexes_dir, settings.uploads_dir,
                   settings.adapters_dir, settings.logs_dir):
        make_dirs_durably(folder)
    db = make_engine(settings.resolved_database_url)
    try:
        require_head(db)
    except SchemaBehind as exc:
        db.dispose()
        raise StartupError(str(exc)) from exc
    sessions = make_session_factory(db)

    registry = CorpusRegistry(GenerationStore(settings.indexes_dir), settings.exact_search_max_vectors,
                              hnsw_m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction,
                              ef_search=settings.hnsw_ef_search, load_embedder=embedder_loader(settings),
                              sessions=sessions)
    await asyncio.to_thread(_load_corpora, sessions, registry)
    retriever = Retriever(db, registry)
    routing = RoutingTable(settings.base_model_name)
    with sessions() as session:
        routing.load(session)
    tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, settings.resolved_base_model)
    planner = Planner(settings.base_model_name, routing, retriever,
                      PromptBuilder(tokenizer, settings.max_model_len), threads=settings.resolved_plan_threads)

    pool, local_engine, owns_engine = await _engine_pool(settings, local_engine)
    worker = IngestionWorker(sessions, registry, IngestLimits(
        settings.max_pdf_pages, settings.extract_timeout_s, settings.embedding_batch_size))
    loader = HotLoader(pool, settings.drain_timeout_s)
    jobs = JobRunner(sessions)
    eval_service = EvalService(sessions, routing, planner, pool, settings.eval_concurrency, jobs)
    swaps = SwapService(sessions, routing, loader, eval_service)
    reconciler = Reconciler(loader, swaps.needed_adapters, settings.reconcile_interval_s)
    pool.on_recover = reconciler.prepare
    artifacts = AdapterArtifactStore(settings.adapters_dir / "store")
    artifacts.sweep_leftovers()
    metrics = Metrics()
    state = GatewayState(
        settings=settings, db=db, sessions=sessions, pool=pool, metrics=metrics,
        auth=Authenticator(sessions, settings.api_keys), registry=registry, retriever=retriever,
        worker=worker, routing=routing, planner=planner, swaps=swaps, jobs=jobs,
        evals=eval_service, trainings=None,
        tunings=TuningService(sessions, swaps, eval_service, jobs, settings.tuning_seed),
        reports=ReportService(sessions, swaps, eval_service, jobs),
        reconciler=reconciler, artifacts=artifacts,
        limiter=RateLimiter(tenant_limits_loader(sessions), metrics=metrics),
        local_engine=local_engine, owns_engine=owns_engine)
    state.trainings = TrainingService(settings, sessions, retriever, planner.prompts, artifacts, swaps,
                                      eval_service, pool, state.base_shapes, jobs)
    jobs.fail_unfinished()  # every kind is registered now
    worker.start()
    await pool.check_all()
    for engine in pool.engines:
        if not engine.healthy:  # the monitor logs changes only; say it once at start-up too
            log.warning("engine %s is not reachable; completions answer 503 until it is", engine.url)
    pool.start_monitor()
    reconciler.start()
    if local_engine is not None:
        local_engine.watch()
    return state


async def _engine_pool(settings: Settings, local_engine: LocalEngine | None
                       ) -> tuple[EnginePool, LocalEngine | None, bool]:
    """The engines of `settings.resolved_engine_backend`; the local engine, and whether the gateway owns it."""
    backend = settings.resolved_engine_backend
    if backend == "ray":
        from service.engine.ray_fleet import fleet_pool

        return fleet_pool(settings), None, False
    owns_engine = False
    urls = list(settings.engine_urls)
    if backend == "local":
        if local_engine is None:
            local_engine, owns_engine = LocalEngine(settings), True
            await local_engine.start()
        urls = [local_engine.url]
    if not urls:
        raise StartupError("GRAFT_ENGINE_BACKEND=urls needs GRAFT_ENGINE_URLS")
    pool = EnginePool([EngineClient(url, connect_timeout_s=settings.engine_connect_timeout_s,
                                    request_timeout_s=settings.engine_request_timeout_s)
                       for url in urls], settings.base_model_name)
    return pool, local_engine, owns_engine


def embedder_loader(settings: Settings) -> Callable[[str], Embedder]:
    """Loads an embedding model by name with the configured backend."""
    return functools.partial(Embedder.load, backend=settings.embedding_backend,
                             onnx_cache_dir=settings.resolved_embedding_cache_dir)


def _load_corpora(sessions, registry: CorpusRegistry) -> None:
    """Every corpus answers from its last committed generation; older ones and abandoned writes are removed."""
    with sessions() as session:
        corpora = list(session.scalars(select(Corpus)))
    for corpus in corpora:
        registry.entry_for(corpus)
        registry.store.remove_superseded(corpus.id, corpus.current_generation)


async def _stop(state: GatewayState) -> None:
    await state.jobs.stop()
    await state.reconciler.stop()
    await state.worker.stop()
    await state.swaps.wait_drained()
    await state.pool.close()
    state.planner.close()
    if state.local_engine is not None and state.owns_engine:
        await state.local_engine.stop()
    state.db.dispose()
