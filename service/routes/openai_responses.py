"""`POST /v1/responses`: OpenAI's Responses API, with `model` naming a domain. Stateless: nothing is
stored (`store` is answered false) and `previous_response_id` is refused. The request becomes a chat
completion and is answered through the one completion path (service/completion.py); this module
only translates the request in and the answer (or its stream of events) out. graft's citations
ride as `file_citation` annotations of the output text and, whole, in graft's own `citations`."""

import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from adapters_store.errors import Invalid
from service.auth import Principal
from service.completion import Streaming, complete
from service.completion_request import Retrieval, validate_completion
from service.engine.client import EngineError
from service.errors import error_body, invalid_from
from service.http_body import integral_numbers_as_ints, read_json_object, request_body
from service.mcp_server import document_uri
from service.responses import _Open, answers
from service.routes.completions import server_timing, sse, sse_response
from service.state import GatewayState, get_state, inference_principal

router = APIRouter()


class InputText(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["input_text", "output_text"]
    text: StrictStr


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: StrictStr | list[InputText]


class ResponsesRequest(BaseModel):
    """The fields graft reads; others (tools, reasoning, ...) are not supported and are ignored."""
    model_config = ConfigDict(extra="allow")
    model: StrictStr = Field(min_length=1, description="a domain name or the base model")
    input: Annotated[StrictStr, Field(min_length=1)] | Annotated[list[InputMessage], Field(min_length=1)]
    instructions: StrictStr | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: StrictBool | None = None
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = Field(default=None, description="refused: graft stores no responses")
    retrieval: Retrieval = Field(default=None, description="graft's own, as on chat completions")


class ResponseObject(_Open):
    """OpenAI's `response` object, with graft's `citations` and `adapter`."""
    id: str
    object: Literal["response"]
    status: str
    model: str
    output: list[dict[str, Any]]
    citations: list[dict[str, Any]]


@router.post("/v1/responses", responses=answers(ResponseObject, stream=True))
@request_body(json=ResponsesRequest)
async def create_response(request: Request, state: GatewayState = Depends(get_state),
                          principal: Principal = Depends(inference_principal)):
    async with state.limiter.admit(principal) as admission:  # 429 past the key's or tenant's limits
        received = time.perf_counter()
        raw = integral_numbers_as_ints(await read_json_object(request, state.settings.max_request_bytes))
        try:
            asked = ResponsesRequest.model_validate(raw, strict=True)
        except ValidationError as exc:
            raise invalid_from(exc) from exc
        if asked.previous_response_id is not None:
            raise Invalid("previous_response_id is not supported: graft stores no responses; send the whole "
                          "conversation as `input`", param="previous_response_id", code="unsupported_parameter")
        answer = await complete("chat", validate_completion("chat", _chat_body(asked)), state, principal, admission)
        shell = _Response(asked)
        if isinstance(answer, Streaming):
            return sse_response(_events(shell, answer), server_timing(answer.plan))
        result = answer.result
        choice = result["choices"][0]
        body = shell.finished(choice["message"].get("content") or "", result["citations"], result["adapter"],
                              result.get("usage"), choice.get("finish_reason"))
        timing = server_timing(answer.plan, answer.engine_s, time.perf_counter() - received)
        return JSONResponse(body, headers={"Server-Timing": timing})


def _chat_body(asked: ResponsesRequest) -> dict[str, Any]:
    messages = [{"role": "system", "content": asked.instructions}] if asked.instructions else []
    if isinstance(asked.input, str):
        messages.append({"role": "user", "content": asked.input})
    else:
        for item in asked.input:
            content = item.content if isinstance(item.content, str) else "".join(p.text for p in item.content)
            messages.append({"role": "system" if item.role == "developer" else item.role, "content": content})
    body = {"model": asked.model, "messages": messages, "max_tokens": asked.max_output_tokens,
            "temperature": asked.temperature, "top_p": asked.top_p, "stream": asked.stream,
            "retrieval": asked.retrieval}
    return {key: value for key, value in body.items() if value is not None}


def annotations(text: str, citations: list[dict]) -> list[dict]:
    """A `file_citation` where the text cites passage n (`[n]`), or at its end for a passage it
    does not cite by number; the file is the document's URI (an MCP resource of /mcp)."""
    found = []
    for citation in citations:
        file = {"type": "file_citation", "file_id": document_uri(citation["corpus"], citation["document_id"]),
                "filename": (citation.get("metadata") or {}).get("filename") or citation["document_id"] or ""}
        marks = [m.end() for m in re.finditer(re.escape(f"[{citation['index']}]"), text)] or [len(text)]
        found += [{**file, "index": at} for at in marks]
    return sorted(found, key=lambda a: a["index"])


class _Response:
    """One response's ids and echoed settings, and its `response` object at each stage."""

    def __init__(self, asked: ResponsesRequest):
        self.asked = asked
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def object(self, status: str, output: list[dict], citations: list[dict], adapter: str | None,
               usage: dict | None = None, finish_reason: str | None = None) -> dict:
        incomplete = finish_reason == "length"
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": "incomplete" if incomplete and status == "completed" else status,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None, "model": self.asked.model, "output": output,
            "instructions": self.asked.instructions, "max_output_tokens": self.asked.max_output_tokens,
            "temperature": self.asked.temperature, "top_p": self.asked.top_p, "previous_response_id": None,
            "store": False, "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
            "text": {"format": {"type": "text"}}, "truncation": "disabled", "metadata": {},
            "usage": _usage(usage), "citations": citations, "adapter": adapter}

    def message(self, text: str, citations: list[dict], status: str = "completed") -> dict:
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant",
                "content": [_text_part(text, citations)]}

    def finished(self, text: str, citations: list[dict], adapter: str, usage: dict | None,
                 finish_reason: str | None) -> dict:
        return self.object("completed", [self.message(text, citations)], citations, adapter, usage, finish_reason)


def _text_part(text: str, citations: list[dict]) -> dict:
    return {"type": "output_text", "text": text, "annotations": annotations(text, citations), "logprobs": []}


def _usage(usage: dict | None) -> dict | None:
    if not usage:
        return None
    return {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0), "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


async def _events(shell: _Response, answer: Streaming) -> AsyncIterator[bytes]:
    """The chat completion's chunks as the Responses API's stream of events."""
    numbered = _Sequence()
    citations, adapter = answer.plan.citations, answer.plan.engine_model
    usage, finish, text = None, None, []
    item = {"item_id": shell.message_id, "output_index": 0, "content_index": 0}
    async with aclosing(answer.events) as chunks:
        try:
            # Started before anything is sent: from here, however the stream ends (a client that goes
            # away included), closing it releases the engine lease and the admission.
            first = await anext(chunks, None)
            begun = shell.object("in_progress", [], citations, adapter)
            yield numbered("response.created", response=begun)
            yield numbered("response.in_progress", response=begun)
            yield numbered("response.output_item.added", output_index=0,
                           item={**shell.message("", [], "in_progress"), "content": []})
            yield numbered("response.content_part.added", **item, part=_text_part("", []))
            async for chunk in _chain(first, chunks):
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    finish = choice.get("finish_reason") or finish
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        text.append(delta)
                        yield numbered("response.output_text.delta", **item, delta=delta, logprobs=[])
        except EngineError as exc:
            failure = error_body(exc.status_code, exc.message, code="engine_error")["error"]
            yield numbered("error", code=failure["code"], message=failure["message"], param=None)
            return
    whole = "".join(text)
    yield numbered("response.output_text.done", **item, text=whole, logprobs=[])
    yield numbered("response.content_part.done", **item, part=_text_part(whole, citations))
    yield numbered("response.output_item.done", output_index=0, item=shell.message(whole, citations))
    yield numbered("response.completed", response=shell.finished(whole, citations, adapter, usage, finish))


async def _chain(first: dict | None, rest: AsyncIterator[dict]) -> AsyncIterator[dict]:
    if first is not None:
        yield first
        async for chunk in rest:
            yield chunk


class _Sequence:
    """Server-sent events of the Responses API, numbered in order (`sequence_number`)."""

    def __init__(self):
        self.next = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.next, **fields}
        self.next += 1
        return f"event: {kind}\n".encode() + sse(event)
