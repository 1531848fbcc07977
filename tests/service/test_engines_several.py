"""A gateway in front of two engines (GRAFT_ENGINE_URLS with two URLs): a swap loads on both or on
neither, the periodic reconciler repairs an engine that lost an adapter, and an engine that comes
back takes traffic only once its adapters are loaded again. Two fake engines for the protocol, and
the real engine beside a fake one for the swap (tests/adapters_store/test_hotload.py has the same
rules at the unit level, against an in-memory host)."""

import asyncio
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.fake_engine import FakeEngine
from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
async def engines():
    a, b = FakeEngine(), FakeEngine()
    async with a.serving(), b.serving():
        yield a, b


@asynccontextmanager
async def gateway_for(make_settings, urls: list[str], good_lora, versions: int = 2, adapter: str = "tone",
                      **overrides):
    """Start a gateway on `urls` with `versions` uploads of `adapter`; yields its client."""
    settings = make_settings(engine_urls=urls, **overrides)
    async with running_gateway(settings) as url, client(url) as http:
        for version in range(1, versions + 1):
            uploaded = await http.post(f"/v1/adapters/{adapter}/versions", files=adapter_files(good_lora))
            assert uploaded.status_code == 201 and uploaded.json()["version"] == version, uploaded.text
        yield http


async def engine_models(engine_url: str) -> set[str]:
    """The engine's own list (its /v1/models), not the gateway's record of it."""
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.get(f"{engine_url}/v1/models")
    assert response.status_code == 200, response.text
    return {m["id"] for m in response.json()["data"]} - {BASE}


async def ready_engines(http) -> list[str]:
    ready = await http.get("/readyz")
    return ready.json().get("engines", []) if ready.status_code == 200 else []


def completions(engine: FakeEngine, since: int = 0) -> list[dict]:
    """Completions (not warm-ups) the engine received, from its request number `since` on."""
    return [r for r in engine.requests[since:] if r.get("prompt") != "Hello"]


async def test_a_swap_loads_on_both_engines_or_on_neither(make_settings, engines, good_lora):
    a, b = engines
    async with gateway_for(make_settings, [a.url, b.url], good_lora, versions=3) as http:
        assert (await http.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})).status_code == 201
        assert await engine_models(a.url) == await engine_models(b.url) == {"tone@1"}
        for engine in (a, b):  # loaded and warmed up on each before the domain points at it
            assert engine.events.index(("load", "tone@1")) < engine.events.index(("request", "tone@1"))

        swapped = await http.post("/v1/domains/d/adapter", json={"adapter": "tone", "version": 2})
        assert swapped.status_code == 200, swapped.text
        await until(lambda: a.loaded == b.loaded == {"tone@2"}, "tone@1 to be unloaded from both engines")
        assert await engine_models(a.url) == await engine_models(b.url) == {"tone@2"}

        # The second engine refuses the new version: the first one's copy is unloaded again.
        b.refuse_loads.add("tone@3")
        refused = await http.post("/v1/domains/d/adapter", json={"adapter": "tone", "version": 3})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "adapter_load_failed"
        assert a.events.index(("load", "tone@3")) < a.events.index(("unload", "tone@3")), a.events
        assert ("load", "tone@3") not in b.events
        assert await engine_models(a.url) == await engine_models(b.url) == {"tone@2"}
        assert (await http.get("/v1/domains/d")).json()["engine_model"] == "tone@2"

        # The first engine refuses it: the second one is never asked.
        b.refuse_loads.clear()
        a.refuse_loads.add("tone@3")
        asked_before = b.events.count(("load requested", "tone@3"))
        refused = await http.post("/v1/domains/d/adapter", json={"adapter": "tone", "version": 3})
        assert refused.status_code == 503
        assert b.events.count(("load requested", "tone@3")) == asked_before
        assert await engine_models(a.url) == await engine_models(b.url) == {"tone@2"}
        answer = await http.post("/v1/completions", json={"model": "d", "prompt": "hi"})
        assert answer.status_code == 200 and answer.json()["adapter"] == "tone@2"


async def test_the_reconciler_reloads_an_adapter_an_engine_lost(make_settings, engines, good_lora):
    a, b = engines
    async with gateway_for(make_settings, [a.url, b.url], good_lora, versions=1, reconcile_interval_s=0.2) as http:
        assert (await http.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})).status_code == 201
        assert a.loaded == b.loaded == {"tone@1"}
        lost_at = len(b.events)
        b.loaded.clear()  # the engine lost it behind the gateway's back; it stays healthy

        async def back():
            return await engine_models(b.url) == {"tone@1"}
        await until(back, "the reconciler to load tone@1 on the engine again")
        repaired = b.events[lost_at:]
        assert repaired.index(("load", "tone@1")) < repaired.index(("request", "tone@1")), repaired  # warmed up
        assert a.events.count(("load", "tone@1")) == 1  # the engine that kept it is left alone


async def test_a_restarted_engine_takes_traffic_only_once_its_adapters_are_back(make_settings, engines, good_lora):
    a, b = engines
    async with gateway_for(make_settings, [a.url, b.url], good_lora, versions=1) as http:
        assert (await http.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})).status_code == 201
        await until(lambda: _equal(ready_engines(http), [a.url, b.url]), "both engines to be ready")

        b.healthy = False  # engine b dies ...
        await until(lambda: _equal(ready_engines(http), [a.url]), "the gateway to notice engine b is down")
        b.loaded.clear()  # ... and restarts empty; its first load takes a while
        b.hold_loads = asyncio.Event()
        restarted_at, events_at = len(b.requests), len(b.events)
        b.healthy = True
        await until(lambda: ("load requested", "tone@1") in b.events[events_at:], "the gateway to reload tone@1 on b")

        # b answers its health checks but still lacks tone@1. Engine a holds requests, so a ready b
        # (the less busy engine) would get the next ones: none may go to b.
        a.hold_completions, sent_to_a = asyncio.Event(), len(a.requests)
        held = [asyncio.create_task(http.post("/v1/completions", json={"model": model, "prompt": "hi"}))
                for model in ("d", "d", BASE)]
        try:
            await until(lambda: len(completions(a, sent_to_a)) + len(completions(b, restarted_at)) == 3,
                        "the three requests to reach an engine")
            assert completions(b, restarted_at) == [], "engine b took traffic before its adapters were back"
            assert await ready_engines(http) == [a.url]

            b.hold_loads.set()  # tone@1 is back on b: b is ready and, being idle, takes the next request
            await until(lambda: _equal(ready_engines(http), [a.url, b.url]), "engine b to be ready again")
            routed = asyncio.create_task(http.post("/v1/completions", json={"model": "d", "prompt": "now b"}))
            await until(lambda: len(completions(b, restarted_at)) == 1, "a request to reach engine b")
            answer = await routed
            assert answer.status_code == 200 and answer.json()["adapter"] == "tone@1", answer.text
        finally:
            a.hold_completions.set()
            b.hold_loads.set()
        for request in held:
            response = await request
            assert response.status_code == 200, response.text


async def _equal(ready, expected: list[str]) -> bool:
    return await ready == expected


@pytest.mark.engine
async def test_a_swap_on_the_real_engine_and_a_fake_one_loads_on_both_or_on_neither(
        make_settings, local_engine, fake_engine, good_lora):
    real = local_engine.url
    async with gateway_for(make_settings, [real, fake_engine.url], good_lora, versions=3, adapter="pair-tone") as http:
        # An adapter name of this test alone: the real engine is shared by the session (other
        # modules leave their `tone@1` loaded on it).
        held_before = await engine_models(real)
        assert not {m for m in held_before if m.startswith("pair-tone@")}, held_before
        assert (await http.put("/v1/domains/pair", json={"adapter": {"name": "pair-tone", "version": 1}})
                ).status_code == 201
        assert "pair-tone@1" in await engine_models(real) and fake_engine.loaded == {"pair-tone@1"}

        fake_engine.refuse_loads.add("pair-tone@2")
        refused = await http.post("/v1/domains/pair/adapter", json={"adapter": "pair-tone", "version": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "adapter_load_failed"
        assert "pair-tone@2" not in await engine_models(real), "the real engine kept the refused version"
        assert fake_engine.loaded == {"pair-tone@1"}

        fake_engine.refuse_loads.clear()
        swapped = await http.post("/v1/domains/pair/adapter", json={"adapter": "pair-tone", "version": 3})
        assert swapped.status_code == 200, swapped.text

        async def only_v3():
            return {m for m in await engine_models(real) if m.startswith("pair-tone@")} == {"pair-tone@3"}
        await until(only_v3, "pair-tone@1 to leave the real engine")
        assert fake_engine.loaded == {"pair-tone@3"}
        assert (await http.delete("/v1/domains/pair")).status_code == 200

        async def none_left():
            return not {m for m in await engine_models(real) if m.startswith("pair-tone@")}
        await until(none_left, "the deleted domain's adapter to leave the real engine")
