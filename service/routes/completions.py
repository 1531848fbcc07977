"""OpenAI-compatible completions: plan (retrieval, routing) then relay to an engine."""

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.auth import Principal
from service.completion_request import ChatCompletionRequest, CompletionRequest, validate_completion
from service.engine.client import EngineError
from service.errors import error_body
from service.http_body import read_json_object, request_body
from service.limits import Admission, StreamTokens
from service.rag.plan import Plan
from service.responses import Completion, answers
from service.state import GatewayState, get_state, inference_principal

router = APIRouter()

ENGINE_PATHS = {"chat": "/v1/chat/completions", "text": "/v1/completions"}


@router.post("/v1/chat/completions", responses=answers(Completion, stream=True))
@request_body(json=ChatCompletionRequest)
async def chat_completions(request: Request, state: GatewayState = Depends(get_state),
                           principal: Principal = Depends(inference_principal)):
    async with state.limiter.admit(principal) as admission:  # 429 past the key's or tenant's limits
        return await _complete("chat", request, state, principal, admission)


@router.post("/v1/completions", responses=answers(Completion, stream=True))
@request_body(json=CompletionRequest)
async def completions(request: Request, state: GatewayState = Depends(get_state),
                      principal: Principal = Depends(inference_principal)):
    async with state.limiter.admit(principal) as admission:  # 429 past the key's or tenant's limits
        return await _complete("text", request, state, principal, admission)


async def _complete(kind: str, request: Request, state: GatewayState, principal: Principal,
                    admission: Admission):
    received = time.perf_counter()
    body = await read_json_object(request, state.settings.max_request_bytes)
    body = validate_completion(kind, body)
    route = state.planner.route(body["model"], principal)
    # From routing on, the request counts on its engine model: a swap's drain waits for it while
    # its passages are retrieved, so the version it was routed to is still loaded when it is sent.
    with state.pool.hold(route.engine_model if route is not None else body["model"]):
        plan: Plan = await state.planner.plan_route(kind, body, route, gateway_idle=state.pool.idle,
                                                    principal=principal)
        state.metrics.retrieval_latency.observe(plan.retrieval_s)
        state.metrics.plan_latency.observe(plan.plan_s)
        path = ENGINE_PATHS[kind]
        if body.get("stream"):  # the stream's lease is taken before this returns
            return await _stream(state, path, body["model"], plan, admission)
        async with state.pool.lease(plan.engine_model) as engine:
            started = time.perf_counter()
            result = await engine.client.complete(path, plan.payload)
            engine_s = time.perf_counter() - started
    _decorate(result, body["model"], plan)
    usage = result.get("usage") or {}
    state.metrics.completion_tokens.labels(plan.engine_model).inc(usage.get("completion_tokens", 0))
    admission.charge(usage.get("completion_tokens", 0))
    timing = _server_timing(plan, engine_s, time.perf_counter() - received)
    return JSONResponse(result, headers={"Server-Timing": timing})


def _server_timing(plan: Plan, engine_s: float | None = None, handler_s: float | None = None) -> str:
    """W3C Server-Timing, in ms: where a request's time went (browsers' dev tools show it; the
    gateway bench reads it to take graft's own share out of each request's latency). `gateway`
    is the handler's whole time, body reading to response: the rest of what a client sees is
    HTTP transport."""
    parts = [f"retrieval;dur={plan.retrieval_s * 1000:.2f}", f"plan;dur={plan.plan_s * 1000:.2f}"]
    if engine_s is not None:
        parts.append(f"engine;dur={engine_s * 1000:.2f}")
    if handler_s is not None:
        parts.append(f"gateway;dur={handler_s * 1000:.2f}")
    return ", ".join(parts)


def _decorate(event: dict[str, Any], requested_model: str, plan: Plan) -> None:
    event["model"] = requested_model
    event["adapter"] = plan.engine_model
    event["citations"] = plan.citations


async def _stream(state: GatewayState, path: str, requested_model: str, plan: Plan, admission: Admission):
    lease = state.pool.lease(plan.engine_model)
    engine = await lease.__aenter__()
    events = engine.client.stream(path, plan.payload)
    try:
        # Read the first event before answering, so an engine error is a plain JSON error.
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        await lease.__aexit__(None, None, None)
        raise
    # From here the relay, not the route, releases the admission: when the stream ends.
    return StreamingResponse(_relay(lease, events, first, requested_model, plan, admission.detach()),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                      "Server-Timing": _server_timing(plan)})


async def _relay(lease, events: AsyncIterator[dict], first: dict | None, requested_model: str,
                 plan: Plan, admission: Admission) -> AsyncIterator[bytes]:
    generated = StreamTokens()
    try:
        if first is not None:
            generated.see(first)
            _decorate(first, requested_model, plan)  # citations go in the first event
            yield _sse(first)
            async for event in events:
                generated.see(event)
                event["model"] = requested_model
                yield _sse(event)
        yield b"data: [DONE]\n\n"
    except EngineError as exc:
        yield _sse(error_body(exc.status_code, exc.message, code="engine_error"))
    finally:
        # Runs on client disconnect too: closing the engine stream aborts the engine request.
        admission.charge(generated.total)
        admission.release()
        await events.aclose()
        await lease.__aexit__(None, None, None)


def _sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

