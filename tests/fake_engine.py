"""A fake OpenAI-compatible engine as an httpx transport: for fast tests of the gateway's own logic.

It echoes what it received, so tests can see the exact prompt graft built. The real vLLM engine
is exercised by the tests marked `engine`.
"""

import json

import httpx


class FakeEngine:
    def __init__(self, base_model: str = "SmolLM2-135M-Instruct"):
        self.base_model = base_model
        self.loaded: set[str] = set()
        self.requests: list[dict] = []
        self.healthy = True
        self.refuse_loads: set[str] = set()  # adapter names whose load fails, as a bad adapter would

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.healthy:
            raise httpx.ConnectError("engine down", request=request)
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            names = [self.base_model, *sorted(self.loaded)]
            return httpx.Response(200, json={"data": [{"id": n} for n in names]})
        if path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.refuse_loads:
                return httpx.Response(400, json={"error": {"message": "adapter failed to load"}})
            self.loaded.add(body["lora_name"])
            return httpx.Response(200, text="ok")
        if path == "/v1/unload_lora_adapter":
            self.loaded.discard(body["lora_name"])
            return httpx.Response(200, text="ok")
        self.requests.append(body)
        if body["model"] != self.base_model and body["model"] not in self.loaded:
            return httpx.Response(404, json={"error": {"message": f"model {body['model']} not found"}})
        if path == "/v1/chat/completions":
            text = json.dumps(body["messages"])
            return self._answer(body, {"message": {"role": "assistant", "content": text}}, "chat.completion")
        return self._answer(body, {"text": body["prompt"]}, "text_completion")

    def _answer(self, body: dict, choice: dict, kind: str) -> httpx.Response:
        result = {"id": "x", "object": kind, "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "stop", **choice}],
                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        if body.get("stream"):
            delta = choice.get("message", {"content": choice.get("text")})
            chunk = {**result, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            return httpx.Response(200, content=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        return httpx.Response(200, json=result)
