"""The gateway's client to the Ray fleet, against a stand-in for Serve's proxy (no Ray): the adapter goes
in Serve's multiplexing header, and a request whose replica failed before anything reached the client
is sent again while the retry window lasts (a stream only before its first event); an engine's other
5xx, which the request itself may cause, is sent again once only."""

import json

import pytest
from aiohttp import web

from service.engine.client import EngineUnavailable
from service.engine.ray_fleet import MULTIPLEXED_MODEL_HEADER, FleetClient
from tests.fake_engine import serving_handler


class Proxy:
    """Fails the first `failures` requests with `status` (503: what a replica whose vLLM died answers)."""

    def __init__(self, failures: int, status: int = 503):
        self.failures = failures
        self.status = status
        self.headers: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.headers.append(request.headers.get(MULTIPLEXED_MODEL_HEADER))
        if self.failures:
            self.failures -= 1
            return web.json_response({"error": {"message": "replica died"}}, status=self.status)
        if body.get("stream"):
            events = "".join(f"data: {json.dumps({'n': i})}\n\n" for i in range(3)) + "data: [DONE]\n\n"
            return web.Response(body=events.encode(), content_type="text/event-stream")
        return web.json_response({"model": body["model"]})


async def test_the_adapter_rides_in_the_header_and_a_failed_request_is_sent_again():
    proxy = Proxy(failures=1)
    async with serving_handler(proxy.handle) as url:
        fleet = FleetClient(url, "http://gateway", retry_window_s=30)
        try:
            assert await fleet.complete("/v1/completions", {"model": "tone@1", "prompt": "x"}) == {"model": "tone@1"}
            assert proxy.headers == ["tone@1", "tone@1"]
            await fleet.complete("/v1/completions", {"model": "SmolLM2-135M-Instruct", "prompt": "x"})
            assert proxy.headers[-1] is None  # the base model: no adapter to route by

            proxy.failures = 3  # a dead replica answers until Ray replaces it: several tries
            events = [e async for e in fleet.stream("/v1/completions", {"model": "tone@1", "stream": True})]
            assert events == [{"n": 0}, {"n": 1}, {"n": 2}]
            proxy.failures = 3
            assert await fleet.complete("/v1/completions", {"model": "tone@1", "prompt": "x"}) == {"model": "tone@1"}
            assert len(proxy.headers) == 3 + 4 + 4  # 3 so far, then 4 tries each
        finally:
            await fleet.aclose()


async def test_a_replica_still_failing_after_the_retry_window_is_an_error_the_caller_hears():
    proxy = Proxy(failures=1000)
    async with serving_handler(proxy.handle) as url:
        fleet = FleetClient(url, "http://gateway", retry_window_s=1.0)
        try:
            with pytest.raises(EngineUnavailable):
                await fleet.complete("/v1/completions", {"model": "tone@1", "prompt": "x"})
            with pytest.raises(EngineUnavailable):
                [e async for e in fleet.stream("/v1/completions", {"model": "tone@1", "stream": True})]
            assert 2 <= len(proxy.headers) <= 10  # tried again, with pauses, then gave up
        finally:
            await fleet.aclose()


async def test_an_engine_error_that_is_not_a_replica_being_replaced_is_sent_again_once_only():
    proxy = Proxy(failures=1000, status=500)
    async with serving_handler(proxy.handle) as url:
        fleet = FleetClient(url, "http://gateway", retry_window_s=60)
        try:
            with pytest.raises(EngineUnavailable, match="engine error 500"):
                await fleet.complete("/v1/completions", {"model": "tone@1", "prompt": "x"})
            assert len(proxy.headers) == 2  # not 60 seconds of retries for a request the engine cannot take
            proxy.failures = 1
            assert await fleet.complete("/v1/completions", {"model": "tone@1", "prompt": "x"}) == {"model": "tone@1"}
        finally:
            await fleet.aclose()
