"""What the gateway holds while it runs; built by the lifespan, reached by routes via the request."""

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.auth import Authenticator, Principal
from service.engine.pool import EnginePool
from service.engine.supervisor import LocalEngine
from service.metrics import Metrics
from service.settings import Settings


@dataclass
class GatewayState:
    settings: Settings
    db: Engine
    sessions: sessionmaker[Session]
    pool: EnginePool
    metrics: Metrics
    auth: Authenticator
    local_engine: LocalEngine | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def get_state(request: Request) -> GatewayState:
    return request.app.state.graft


def inference_principal(request: Request) -> Principal:
    return get_state(request).auth.authenticate(request, "inference")


def admin_principal(request: Request) -> Principal:
    return get_state(request).auth.authenticate(request, "admin")
