"""Async client for one OpenAI-compatible vLLM server.

aiohttp rather than httpx: every completion pays this client's per-request cost on top of the
engine's, and aiohttp's is about 1 ms lower (bench/gateway.py's load generator uses it too, so
the added latency it reports stays comparable).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

# vLLM's server closes an idle keep-alive connection after 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE). A request
# sent on a connection at that moment fails with "server disconnected"; dropping idle connections well
# before that keeps the gateway from ever reusing one the engine is about to close.
IDLE_CONNECTION_EXPIRY_S = 2.0
MAX_CONNECTIONS = 256
# What a failed call to the engine raises, whatever the cause: refused, reset, timed out, cut short.
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class EngineError(Exception):
    """The engine answered with an error; carries its status and message for the client."""

    def __init__(self, status_code: int, message: str, error_type: str = "engine_error"):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type


class EngineUnavailable(EngineError):
    """The engine cannot be reached (down, restarting, timed out): the caller should retry later."""

    def __init__(self, message: str, retry_after_s: int = 5, upstream_status: int | None = None):
        super().__init__(503, message, "engine_unavailable")
        self.retry_after_s = retry_after_s
        self.upstream_status = upstream_status  # the engine's own 5xx; None when it could not be reached


class EngineClient:
    def __init__(self, base_url: str, *, connect_timeout_s: float = 5.0, request_timeout_s: float = 300.0,
                 api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No total limit: a long generation streams for as long as it produces tokens; a read
        # that waits longer than request_timeout_s for the next bytes fails.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                              sock_read=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the event loop that creates it.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=IDLE_CONNECTION_EXPIRY_S)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers,
                                                  timeout=self._timeout, trust_env=False)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self, timeout_s: float = 2.0, attempts: int = 2) -> bool:
        """Whether /health answers 200. A failed probe is tried once more before the engine is called
        down, since a down engine is taken out of rotation and has its adapters reloaded."""
        for _ in range(attempts):
            try:
                probe = self._http().get(f"{self.base_url}/health", timeout=aiohttp.ClientTimeout(total=timeout_s))
                async with probe as response:
                    await response.read()
                    return response.status == 200
            except _TRANSPORT_ERRORS:
                continue
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
        connection, and vLLM aborts the request when its connection closes.
        """
        finished = False
        try:
            async with self._http().post(self.base_url + path, json=payload,
                                         headers=self.request_headers(payload)) as response:
                try:
                    if response.status != 200:
                        raise _error_from(response.status, await response.read())
                    async for line in response.content:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            finished = True
                            return
                        yield json.loads(data)
                finally:
                    if not finished:
                        response.close()  # drop the connection, not back to the pool: vLLM aborts
        except _TRANSPORT_ERRORS as exc:
            raise EngineUnavailable(f"engine at {self.base_url} unreachable: {exc!r}") from exc

    def request_headers(self, payload: dict | None) -> dict[str, str]:
        """Headers a request carries besides the session's (a fleet names the adapter in one)."""
        return {}

    async def load_lora(self, name: str, path: str) -> None:
        await self.post_or_get("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload_lora(self, name: str) -> None:
        await self.post_or_get("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    async def post_or_get(self, method: str, path: str, payload: dict | None = None) -> dict[str, Any]:
        try:
            async with self._http().request(method, self.base_url + path, json=payload,
                                            headers=self.request_headers(payload)) as response:
                status, content = response.status, await response.read()
        except _TRANSPORT_ERRORS as exc:
            raise EngineUnavailable(f"engine at {self.base_url} unreachable: {exc!r}") from exc
        if status != 200:
            raise _error_from(status, content)
        if not content:
            return {}
        try:
            return json.loads(content)
        except ValueError:
            return {"text": content.decode(errors="replace")}


def _error_from(status: int, content: bytes) -> EngineError:
    message = content.decode(errors="replace")
    try:
        body = json.loads(content)
        error = body.get("error", body)
        message = error.get("message", message) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        pass
    if status >= 500:
        return EngineUnavailable(f"engine error {status}: {message}", upstream_status=status)
    return EngineError(status, message, "invalid_request_error")
