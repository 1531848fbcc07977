"""Engine client unit tests against small aiohttp servers on loopback (the real engine is in the e2e tests)."""

import asyncio
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from service.engine.client import EngineClient, EngineError, EngineUnavailable
from tests.fake_engine import serving_handler
from tests.harness import free_port


@asynccontextmanager
async def serving(handler, prefix: str = ""):
    """An EngineClient for a server that answers every request with `handler`."""
    async with serving_handler(handler) as url:
        client = EngineClient(url + prefix)
        try:
            yield client
        finally:
            await client.aclose()


def _drop(request: web.Request):
    """Close the connection without answering, as a crashing engine does."""
    request.transport.close()
    raise web.HTTPServiceUnavailable()


async def test_connection_failure_is_unavailable():
    client = EngineClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        assert await client.health() is False
        with pytest.raises(EngineUnavailable):
            await client.complete("/v1/chat/completions", {})
        with pytest.raises(EngineUnavailable):
            async for _ in client.stream("/v1/chat/completions", {}):
                pass
    finally:
        await client.aclose()


async def test_dropped_connection_is_unavailable():
    async with serving(_drop) as client:
        with pytest.raises(EngineUnavailable):
            await client.complete("/v1/chat/completions", {})


async def test_health_survives_one_dropped_probe():
    probes = []

    async def flaky(request):
        probes.append(request.path)
        if len(probes) == 1:
            _drop(request)
        return web.Response()

    async with serving(flaky) as client:
        assert await client.health() is True
    assert probes == ["/health", "/health"]


async def test_engine_4xx_keeps_status_and_message():
    async def refuse(request):
        return web.json_response({"error": {"message": "bad temperature"}}, status=400)

    async with serving(refuse) as client:
        with pytest.raises(EngineError) as info:
            await client.complete("/v1/completions", {})
    assert info.value.status_code == 400 and info.value.message == "bad temperature"
    assert not isinstance(info.value, EngineUnavailable)


async def test_engine_5xx_is_unavailable():
    async def crash(request):
        return web.Response(status=500, text="CUDA error")

    async with serving(crash) as client:
        with pytest.raises(EngineUnavailable, match="CUDA error"):
            await client.complete("/v1/completions", {})


async def test_requests_keep_the_base_url_path_and_send_the_payload():
    seen = []

    async def echo(request):
        seen.append((request.method, request.path, await request.json()))
        return web.json_response({"ok": True})

    async with serving(echo, prefix="/engine-a") as client:
        assert await client.complete("/v1/completions", {"prompt": "hi"}) == {"ok": True}
    assert seen == [("POST", "/engine-a/v1/completions", {"prompt": "hi"})]


async def test_stream_yields_events_until_done():
    async def events(request):
        return web.Response(body=b'data: {"n": 1}\n\n: keep-alive\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n',
                            content_type="text/event-stream")

    async with serving(events) as client:
        assert [e["n"] async for e in client.stream("/v1/completions", {})] == [1, 2]


async def test_closing_a_stream_early_closes_the_engine_connection():
    """vLLM aborts a request when its connection closes: an abandoned stream must not linger."""
    server_saw_disconnect = asyncio.Event()

    async def endless(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for n in range(1000):
                await response.write(f'data: {{"n": {n}}}\n\n'.encode())
                await asyncio.sleep(0.02)
        except (ConnectionResetError, asyncio.CancelledError):
            server_saw_disconnect.set()
            raise
        return response

    async with serving(endless) as client:
        stream = client.stream("/v1/completions", {})
        assert (await anext(stream))["n"] == 0
        await stream.aclose()
        await asyncio.wait_for(server_saw_disconnect.wait(), timeout=5)
