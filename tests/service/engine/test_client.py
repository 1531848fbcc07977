"""Engine client unit tests over a fake transport (the real engine is in the e2e tests)."""

import httpx
import pytest

from service.engine.client import EngineClient, EngineError, EngineUnavailable


def _client(handler) -> EngineClient:
    return EngineClient("http://engine", transport=httpx.MockTransport(handler))


async def test_connection_failure_is_unavailable():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    client = _client(refuse)
    assert await client.health() is False
    with pytest.raises(EngineUnavailable):
        await client.complete("/v1/chat/completions", {})
    with pytest.raises(EngineUnavailable):
        async for _ in client.stream("/v1/chat/completions", {}):
            pass


async def test_health_survives_one_dropped_probe():
    probes = []

    def flaky(request):
        probes.append(request)
        if len(probes) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200)

    assert await _client(flaky).health() is True
    assert len(probes) == 2


async def test_engine_4xx_keeps_status_and_message():
    client = _client(lambda r: httpx.Response(400, json={"error": {"message": "bad temperature"}}))
    with pytest.raises(EngineError) as info:
        await client.complete("/v1/completions", {})
    assert info.value.status_code == 400 and info.value.message == "bad temperature"
    assert not isinstance(info.value, EngineUnavailable)


async def test_stream_yields_events_until_done():
    body = b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'
    client = _client(lambda r: httpx.Response(200, content=body))
    assert [e["n"] async for e in client.stream("/v1/completions", {})] == [1, 2]
