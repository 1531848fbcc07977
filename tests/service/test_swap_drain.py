"""Swap drain over a fake engine: a request in flight on the old version while the swap flips
finishes on it, and the engine drops the old version only after that request is done.

Nothing here is timed: the fake engine holds the request until the test lets it go, and the
engine's own record (its /v1/models and its log of events) says what it held and when.
The real engine runs the same story with a stream in test_adapters_engine.py."""

import asyncio
import threading

import httpx
import pytest

from indexer.registry import NotLoaded
from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
async def served(make_settings, fake_engine, good_lora):
    """(client, the gateway's state) over the fake engine, with two versions of adapter `tone`."""
    settings = make_settings(engine_urls=[fake_engine.url], drain_timeout_s=600)
    apps = []
    async with running_gateway(settings, wrap=lambda app: apps.append(app) or app) as url, client(url) as http:
        for version in (1, 2):
            uploaded = await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))
            assert uploaded.status_code == 201 and uploaded.json()["version"] == version, uploaded.text
        yield http, apps[0].state.graft


@pytest.fixture
def gateway(served):
    return served[0]


async def engine_models(engine_url: str) -> list[str]:
    """The engine's own list (GET /v1/models on the engine, not the gateway's routing table)."""
    async with httpx.AsyncClient(timeout=60) as http:
        return [m["id"] for m in (await http.get(f"{engine_url}/v1/models")).json()["data"]]


def completions_on(fake_engine, model: str) -> int:
    """Completions (not warm-ups) the engine received for `model`."""
    return sum(1 for r in fake_engine.requests if r.get("model") == model and r.get("prompt") != "Hello")


async def test_a_request_in_flight_across_a_swap_finishes_on_the_old_version(gateway, fake_engine):
    assert (await gateway.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})).status_code == 201
    fake_engine.hold_completions = asyncio.Event()
    old = asyncio.create_task(gateway.post("/v1/completions", json={"model": "d", "prompt": "before"}))

    async def old_in_flight():
        return completions_on(fake_engine, "tone@1") == 1
    await until(old_in_flight, "the request on tone@1 to reach the engine")

    swapped = await gateway.post("/v1/domains/d/adapter", json={"adapter": "tone", "version": 2})
    assert swapped.status_code == 200 and swapped.json()["engine_model"] == "tone@2", swapped.text
    new = asyncio.create_task(gateway.post("/v1/completions", json={"model": "d", "prompt": "after"}))

    async def new_in_flight():
        return completions_on(fake_engine, "tone@2") == 1
    await until(new_in_flight, "the request planned after the flip to reach the engine")
    # Both versions are on the engine while the old one has a request running.
    assert await engine_models(fake_engine.url) == [BASE, "tone@1", "tone@2"]
    assert not old.done()

    fake_engine.hold_completions.set()
    before, after = await old, await new
    # The fake fails a request whose adapter was unloaded while it ran: these did not.
    assert before.status_code == 200 and before.json()["adapter"] == "tone@1", before.text
    assert after.status_code == 200 and after.json()["adapter"] == "tone@2", after.text

    async def old_unloaded():
        return await engine_models(fake_engine.url) == [BASE, "tone@2"]
    await until(old_unloaded, "tone@1 to be unloaded from the engine")
    # In the engine's own order of events: the old version went only after its request was answered.
    events = fake_engine.events
    assert events.index(("answer", "tone@1")) < events.index(("unload", "tone@1")), events
    assert ("unload", "tone@2") not in events


async def test_a_request_being_planned_across_a_swap_is_sent_to_the_old_version(served, fake_engine):
    """Routed to tone@1, still retrieving its passages when the swap flips: the drain waits for it
    (it counts on tone@1 from routing on), so tone@1 is still loaded when the request is sent.
    Without that, the drain unloaded tone@1 at once and the request found no engine holding it: 503."""
    gateway, state = served
    assert (await gateway.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})).status_code == 201
    planning, resume = threading.Event(), threading.Event()
    plan_domain = state.planner._plan_domain

    def held_plan(kind, body, route, settings, started, may_load=True):
        if not may_load:  # the idle gateway's plan on the event loop: send it to a worker thread
            raise NotLoaded("held by the test")
        planning.set()
        assert resume.wait(timeout=120), "the test never let the plan go on"
        return plan_domain(kind, body, route, settings, started, may_load)

    state.planner._plan_domain = held_plan
    old = asyncio.create_task(gateway.post("/v1/completions", json={"model": "d", "prompt": "before"}))

    async def being_planned():
        return planning.is_set()
    try:
        await until(being_planned, "the request on d to be planned")
        swapped = await gateway.post("/v1/domains/d/adapter", json={"adapter": "tone", "version": 2})
        assert swapped.status_code == 200 and swapped.json()["engine_model"] == "tone@2", swapped.text
        # The drain of tone@1 sees the request that is being planned on it.
        assert state.pool.in_flight("tone@1") == 1
    finally:
        resume.set()
    before = await old
    assert before.status_code == 200 and before.json()["adapter"] == "tone@1", before.text

    async def old_unloaded():
        return await engine_models(fake_engine.url) == [BASE, "tone@2"]
    await until(old_unloaded, "tone@1 to be unloaded from the engine")
    events = fake_engine.events
    assert events.index(("answer", "tone@1")) < events.index(("unload", "tone@1")), events
