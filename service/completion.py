"""The one completion path: route a validated request to its domain, plan it (retrieval, prompt),
send it to an engine and decorate the answer with graft's fields. Chat and text completions,
the Responses API (service/responses_api.py) and the MCP `ask` tool (service/mcp_server.py) all
answer through `complete`; each only shapes what it returns."""

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from service.auth import Principal
from service.limits import Admission, StreamTokens
from service.rag.plan import Plan
from service.state import GatewayState

ENGINE_PATHS = {"chat": "/v1/chat/completions", "text": "/v1/completions"}


@dataclass
class Answered:
    """A whole answer: the engine's completion with graft's fields (`model`, `adapter`, `citations`)."""
    result: dict[str, Any]
    plan: Plan
    engine_s: float


@dataclass
class Streaming:
    """A streamed answer: `events` yields the engine's events decorated (citations in the first);
    it raises EngineError if the engine fails mid-stream. Closing it, or reaching its end, releases
    the engine lease and the admission."""
    events: AsyncIterator[dict[str, Any]]
    plan: Plan


async def complete(kind: str, body: dict[str, Any], state: GatewayState, principal: Principal,
                   admission: Admission) -> Answered | Streaming:
    """Answer `body` (validated by service.completion_request) for `principal`, admitted as
    `admission`. A streamed answer detaches the admission: its events release it."""
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
    decorate(result, body["model"], plan)
    usage = result.get("usage") or {}
    state.metrics.completion_tokens.labels(plan.engine_model).inc(usage.get("completion_tokens", 0))
    admission.charge(usage.get("completion_tokens", 0))
    return Answered(result, plan, engine_s)


def decorate(event: dict[str, Any], requested_model: str, plan: Plan) -> None:
    event["model"] = requested_model
    event["adapter"] = plan.engine_model
    event["citations"] = plan.citations


async def _stream(state: GatewayState, path: str, requested_model: str, plan: Plan,
                  admission: Admission) -> Streaming:
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
    # From here the relay, not the caller, releases the admission: when the stream ends.
    return Streaming(_relay(lease, events, first, requested_model, plan, admission.detach()), plan)


async def _relay(lease, events: AsyncIterator[dict], first: dict | None, requested_model: str,
                 plan: Plan, admission: Admission) -> AsyncIterator[dict]:
    generated = StreamTokens()
    try:
        if first is not None:
            generated.see(first)
            decorate(first, requested_model, plan)  # citations go in the first event
            yield first
            async for event in events:
                generated.see(event)
                event["model"] = requested_model
                yield event
    finally:
        # Runs on client disconnect too: closing the engine stream aborts the engine request.
        admission.charge(generated.total)
        admission.release()
        await events.aclose()
        await lease.__aexit__(None, None, None)
