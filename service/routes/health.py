"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters_store.db import ping
from service.errors import error_response
from service.openapi import error_responses
from service.state import GatewayState, get_state

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(state: GatewayState = Depends(get_state)):
    problems = []
    try:
        ping(state.db)
    except Exception as exc:  # any DB failure means not ready
        problems.append(f"database unreachable: {exc.__class__.__name__}")
    if not state.pool.any_ready:
        problems.append("no engine is ready: " + ", ".join(
            f"{e.url} ({'healthy' if e.healthy else 'down'})" for e in state.pool.replicas()))
    if problems:
        return error_response(503, "; ".join(problems), code="not_ready", headers={"Retry-After": "5"})
    return {"status": "ready", "engines": [e.url for e in state.pool.replicas() if e.ready]}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.graft
    state.metrics.engine_ready.set(sum(e.ready for e in state.pool.replicas()))
    if state.local_engine is not None:
        state.metrics.engine_restarts.set(state.local_engine.restarts)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
