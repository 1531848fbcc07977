"""A fake OpenAI-compatible engine on a loopback port: for fast tests of the gateway's own logic.

It echoes what it received, so tests can see the exact prompt graft built. The real vLLM engine
is exercised by the tests marked `engine`.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from tests.harness import free_port


class FakeEngine:
    def __init__(self, base_model: str = "SmolLM2-135M-Instruct"):
        self.base_model = base_model
        self.loaded: set[str] = set()
        self.requests: list[dict] = []
        self.healthy = True  # False: every connection is dropped without an answer, as a dead engine's
        self.refuse_loads: set[str] = set()  # adapter names whose load fails, as a bad adapter would
        # Set: a chat completion answers script(body) instead of echoing its messages.
        self.script: Callable[[dict], str] | None = None
        # Set: completions (not warm-ups) are recorded at once but answered only once it is set.
        self.hold_completions: asyncio.Event | None = None
        # Set: a load is answered (and the adapter held) only once it is set, as a slow load would be.
        self.hold_loads: asyncio.Event | None = None
        # Set: a stream sends its events one by one, awaiting after_event(i) once event i is sent.
        self.after_event: Callable[[int], Awaitable[None]] | None = None
        # What happened, in order, with the adapter or model name: "load requested", "load" (done),
        # "unload", "request" (a completion or warm-up received), "answer" (its answer starts) or
        # "failed" (its adapter was unloaded while the request was held).
        self.events: list[tuple[str, str]] = []
        self.url = ""  # set while serving

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve this engine on a free loopback port; yields its base URL."""
        async with serving_handler(self._respond) as self.url:
            yield self.url

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        if not self.healthy:
            request.transport.close()
            raise web.HTTPServiceUnavailable()  # never sent: the connection is gone
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        if request.path == "/v1/load_lora_adapter":
            self.events.append(("load requested", body["lora_name"]))
            if self.hold_loads is not None:
                await self.hold_loads.wait()
        status, answer = self.handle(request.path, body)
        if self.hold_completions is not None and "completions" in request.path and body.get("prompt") != "Hello":
            await self.hold_completions.wait()
        if "completions" in request.path and status == 200:
            model = body["model"]
            if model != self.base_model and model not in self.loaded:
                # As an engine whose adapter was unloaded under a running request: it fails.
                status, answer = 500, {"error": {"message": f"adapter {model} was unloaded while in use"}}
            self.events.append(("answer" if status == 200 else "failed", model))
        if isinstance(answer, bytes):
            if self.after_event is not None:
                return await self._one_by_one(request, answer)
            return web.Response(status=status, body=answer, content_type="text/event-stream")
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)

    async def _one_by_one(self, request: web.Request, answer: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(answer.split(b"\n\n")[:-1]):
            await response.write(event + b"\n\n")
            await self.after_event(i)
        await response.write_eof()
        return response

    def handle(self, path: str, body: dict) -> tuple[int, dict | str | bytes]:
        if path == "/health":
            return 200, ""
        if path == "/v1/models":
            names = [self.base_model, *sorted(self.loaded)]
            return 200, {"data": [{"id": n} for n in names]}
        if path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.refuse_loads:
                return 400, {"error": {"message": "adapter failed to load"}}
            self.loaded.add(body["lora_name"])
            self.events.append(("load", body["lora_name"]))
            return 200, "ok"
        if path == "/v1/unload_lora_adapter":
            self.loaded.discard(body["lora_name"])
            self.events.append(("unload", body["lora_name"]))
            return 200, "ok"
        self.requests.append(body)
        self.events.append(("request", body.get("model", "")))
        if body["model"] != self.base_model and body["model"] not in self.loaded:
            return 404, {"error": {"message": f"model {body['model']} not found"}}
        if path == "/v1/chat/completions":
            text = self.script(body) if self.script is not None else json.dumps(body["messages"])
            return self._answer(body, {"message": {"role": "assistant", "content": text}}, "chat.completion")
        return self._answer(body, {"text": body["prompt"]}, "text_completion")

    def _answer(self, body: dict, choice: dict, kind: str) -> tuple[int, dict | bytes]:
        result = {"id": "x", "object": kind, "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "stop", **choice}],
                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        if body.get("stream"):
            delta = choice.get("message", {"content": choice.get("text")})
            words = re.split(r"(?<= )", delta["content"])  # an event per word, as an engine sends tokens
            chunks = [{**result, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {**delta, "content": w}, "finish_reason": None}]}
                      for w in words]
            events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
            return 200, f"{events}data: [DONE]\n\n".encode()
        return 200, result


@asynccontextmanager
async def serving_handler(handler) -> AsyncIterator[str]:
    """An aiohttp server on a free loopback port that answers every request with `handler`."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
