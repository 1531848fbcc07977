"""OpenAI-compatible completions: plan (retrieval, routing) then relay to an engine."""

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.auth import Principal
from service.completion import Streaming, complete
from service.completion_request import ChatCompletionRequest, CompletionRequest, validate_completion
from service.engine.client import EngineError
from service.errors import error_body
from service.http_body import read_json_object, request_body
from service.limits import Admission
from service.rag.plan import Plan
from service.responses import Completion, answers
from service.state import GatewayState, get_state, inference_principal

router = APIRouter()


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
    answer = await complete(kind, body, state, principal, admission)
    if isinstance(answer, Streaming):
        return sse_response(_chat_events(answer.events), server_timing(answer.plan))
    timing = server_timing(answer.plan, answer.engine_s, time.perf_counter() - received)
    return JSONResponse(answer.result, headers={"Server-Timing": timing})


def server_timing(plan: Plan, engine_s: float | None = None, handler_s: float | None = None) -> str:
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


async def _chat_events(events: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """The engine's events as OpenAI's SSE, ending with [DONE] (or an error event if it fails)."""
    async with aclosing(events):
        try:
            async for event in events:
                yield sse(event)
            yield b"data: [DONE]\n\n"
        except EngineError as exc:
            yield sse(error_body(exc.status_code, exc.message, code="engine_error"))


def sse_response(events: AsyncIterator[bytes], timing: str) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                      "Server-Timing": timing})


def sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
