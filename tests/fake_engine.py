"""A fake OpenAI-compatible engine on a loopback port: for fast tests of the gateway's own logic.

It echoes what it received, so tests can see the exact prompt graft built. The real vLLM engine
is exercised by the tests marked `engine`.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
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
        self.stream_pace = 0.0  # > 0: a stream sends its events one by one, this many seconds apart
        # Set: a chat completion answers script(body) instead of echoing its messages.
        self.script: Callable[[dict], str] | None = None
        # Set: completions (not warm-ups) are recorded at once but answered only once it is set.
        self.hold_completions: asyncio.Event | None = None
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
        status, answer = self.handle(request.path, body)
        if self.hold_completions is not None and "completions" in request.path and body.get("prompt") != "Hello":
            await self.hold_completions.wait()
        if isinstance(answer, bytes):
            if self.stream_pace:
                return await self._paced(request, answer)
            return web.Response(status=status, body=answer, content_type="text/event-stream")
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)

    async def _paced(self, request: web.Request, answer: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in answer.split(b"\n\n")[:-1]:
            await response.write(event + b"\n\n")
            await asyncio.sleep(self.stream_pace)
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
            return 200, "ok"
        if path == "/v1/unload_lora_adapter":
            self.loaded.discard(body["lora_name"])
            return 200, "ok"
        self.requests.append(body)
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
