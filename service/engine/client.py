"""Async client for one OpenAI-compatible vLLM server. The httpx transport is the test seam."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

# vLLM's server closes an idle keep-alive connection after 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE). A request
# sent on a connection at that moment fails with "server disconnected"; dropping idle connections well
# before that keeps the gateway from ever reusing one the engine is about to close.
IDLE_CONNECTION_EXPIRY_S = 2.0


class EngineError(Exception):
    """The engine answered with an error; carries its status and message for the client."""

    def __init__(self, status_code: int, message: str, error_type: str = "engine_error"):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type


class EngineUnavailable(EngineError):
    """The engine cannot be reached (down, restarting, timed out): the caller should retry later."""

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(503, message, "engine_unavailable")
        self.retry_after_s = retry_after_s


class EngineClient:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64,
                                keepalive_expiry=IDLE_CONNECTION_EXPIRY_S),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self, timeout_s: float = 2.0, attempts: int = 2) -> bool:
        """Whether /health answers 200. A failed probe is tried once more before the engine is called
        down, since a down engine is taken out of rotation and has its adapters reloaded."""
        for _ in range(attempts):
            try:
                response = await self._http.get("/health", timeout=timeout_s)
            except httpx.HTTPError:
                continue
            return response.status_code == 200
        return False

    async def model_names(self) -> list[str]:
        body = await self.post_or_get("GET", "/v1/models")
        return [model["id"] for model in body.get("data", [])]

    async def complete(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST a non-streaming completion (`/v1/chat/completions` or `/v1/completions`)."""
        return await self.post_or_get("POST", path, payload)

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield each SSE `data:` JSON event as the engine produces it, until `[DONE]`.

        Closing the iterator (e.g. because the gateway's client went away) closes the HTTP
        response, and vLLM aborts the request when its connection closes.
        """
        try:
            async with self._http.stream("POST", path, json=payload) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _error_from(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"engine at {self.base_url} unreachable: {exc!r}") from exc

    async def load_lora(self, name: str, path: str) -> None:
        await self.post_or_get("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload_lora(self, name: str) -> None:
        await self.post_or_get("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    async def post_or_get(self, method: str, path: str, payload: dict | None = None) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, json=payload)
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"engine at {self.base_url} unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise _error_from(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            return {"text": response.text}


def _error_from(response: httpx.Response) -> EngineError:
    message = response.text
    try:
        body = response.json()
        error = body.get("error", body)
        message = error.get("message", message) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        pass
    status = response.status_code
    if status >= 500:
        return EngineUnavailable(f"engine error {status}: {message}")
    return EngineError(status, message, "invalid_request_error")
