"""What the gateway holds while it runs; built by the lifespan, reached by routes via the request."""

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.artifacts import AdapterArtifactStore
from adapters_store.errors import Unavailable
from adapters_store.reconciler import Reconciler
from adapters_store.validation import BaseModelShapes
from indexer.jobs import IngestionWorker
from indexer.registry import CorpusRegistry
from service.auth import Authenticator, Principal
from service.domains import RoutingTable
from service.engine.pool import EnginePool
from service.engine.supervisor import LocalEngine
from service.evals import EvalService
from service.job_runner import JobRunner
from service.limits import RateLimiter
from service.metrics import Metrics
from service.rag.planner import Planner
from service.rag.retrieval import Retriever
from service.reports import ReportService
from service.settings import Settings
from service.swap import SwapService
from service.training import TrainingService
from service.tuning import TuningService


@dataclass
class GatewayState:
    settings: Settings
    db: Engine
    sessions: sessionmaker[Session]
    pool: EnginePool
    metrics: Metrics
    auth: Authenticator
    registry: CorpusRegistry
    retriever: Retriever
    worker: IngestionWorker
    routing: RoutingTable
    planner: Planner
    swaps: SwapService
    jobs: JobRunner  # evaluations, trainings and tunings run on it (service/job_runner.py)
    evals: EvalService
    trainings: TrainingService
    tunings: TuningService  # domain tunings (service/tuning.py)
    reports: ReportService  # domain reports (service/reports.py)
    reconciler: Reconciler
    artifacts: AdapterArtifactStore
    limiter: RateLimiter  # keys' and tenants' rate and concurrency limits (service/limits.py)
    local_engine: LocalEngine | None = None
    owns_engine: bool = False
    _shapes: BaseModelShapes | None = None
    _shapes_lock: threading.Lock = field(default_factory=threading.Lock)

    def base_shapes(self) -> BaseModelShapes:
        """The base model's module shapes, read once (adapter validation needs a local folder)."""
        with self._shapes_lock:
            if self._shapes is None:
                folder = Path(self.settings.resolved_base_model)
                if not (folder / "config.json").is_file():
                    raise Unavailable("adapter validation needs the base model's folder: set "
                                      "GRAFT_BASE_MODEL to a local Hugging Face folder", code="no_base_model")
                self._shapes = BaseModelShapes(folder)
            return self._shapes


# Dependencies are coroutines: FastAPI runs a plain function one in a worker thread, a hop that
# costs more than the function itself.
async def get_state(request: Request) -> GatewayState:
    return request.app.state.graft


async def inference_principal(request: Request) -> Principal:
    return await request.app.state.graft.auth.authenticate(request, "inference")


async def admin_principal(request: Request) -> Principal:
    request.state.audited = True  # a write that then answers 2xx is recorded (service/audit.py)
    return await request.app.state.graft.auth.authenticate(request, "admin")
