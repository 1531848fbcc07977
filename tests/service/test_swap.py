"""Swap protocol edge cases over a fake engine (the real engine runs it in test_adapters_engine.py)."""

import asyncio

import pytest

from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")


@pytest.fixture
async def gateway(make_settings, fake_engine, good_lora):
    settings = make_settings(engine_urls=[fake_engine.url])
    async with running_gateway(settings) as url:
        async with client(url) as http:
            for _ in range(2):
                uploaded = await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))
                assert uploaded.status_code == 201, uploaded.text
            yield http


async def test_failed_load_leaves_the_domain_on_its_old_version(gateway, fake_engine):
    assert (await gateway.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})).status_code == 201
    fake_engine.refuse_loads.add("tone@2")
    failed = await gateway.post("/v1/domains/d/adapter", json={"adapter": "tone", "version": 2})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "adapter_load_failed"
    assert (await gateway.get("/v1/domains/d")).json()["engine_model"] == "tone@1"
    answer = await gateway.post("/v1/chat/completions", json={"model": "d", "messages": [
        {"role": "user", "content": "hi"}]})
    assert answer.json()["adapter"] == "tone@1"
    assert [h["action"] for h in (await gateway.get("/v1/domains/d/history")).json()["data"]] == ["create"]
    assert "tone@2" not in fake_engine.loaded


async def test_swap_unloads_the_old_version_and_rollback_toggles(gateway, fake_engine):
    await gateway.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})
    assert fake_engine.loaded == {"tone@1"}
    swapped = await gateway.post("/v1/domains/d/adapter", json={"adapter": "tone", "version": 2})
    assert swapped.status_code == 200 and swapped.json()["engine_model"] == "tone@2"
    for _ in range(50):
        if fake_engine.loaded == {"tone@2"}:
            break
        await asyncio.sleep(0.05)
    assert fake_engine.loaded == {"tone@2"}  # drained and unloaded
    warmups = [r for r in fake_engine.requests if r.get("prompt") == "Hello"]
    assert {r["model"] for r in warmups} == {"tone@1", "tone@2"}
    assert (await gateway.post("/v1/domains/d/rollback")).json()["engine_model"] == "tone@1"
    assert (await gateway.post("/v1/domains/d/rollback")).json()["engine_model"] == "tone@2"
    fresh = await gateway.put("/v1/domains/e", json={})
    nothing = await gateway.post("/v1/domains/e/rollback")
    assert fresh.status_code == 201 and nothing.status_code == 409
    assert (await gateway.post("/v1/domains/zzz/adapter", json={"adapter": "tone", "version": 1})).status_code == 404
    bad = await gateway.post("/v1/domains/d/adapter", json={"adapter": "tone"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "version"


async def wait_loaded(fake_engine, expected: set[str]) -> None:
    """The unload after a drain runs in the background: wait for it, with a bound."""
    for _ in range(200):
        if fake_engine.loaded == expected:
            return
        await asyncio.sleep(0.05)
    assert fake_engine.loaded == expected


async def test_delete_removes_the_domain_and_unloads_its_adapter_after_drain(gateway, fake_engine):
    await gateway.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})
    await gateway.put("/v1/domains/keep", json={"adapter": {"name": "tone", "version": 2}})
    assert fake_engine.loaded == {"tone@1", "tone@2"}
    fake_engine.hold_completions = asyncio.Event()  # a request on tone@1 stays in flight
    in_flight = asyncio.create_task(gateway.post("/v1/completions", json={"model": "d", "prompt": "hi"}))
    for _ in range(200):
        if any(r.get("model") == "tone@1" and r.get("prompt") != "Hello" for r in fake_engine.requests):
            break
        await asyncio.sleep(0.05)
    deleted = await gateway.delete("/v1/domains/d")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert (await gateway.get("/v1/domains/d")).status_code == 404
    assert "d" not in [m["id"] for m in (await gateway.get("/v1/models")).json()["data"]]
    gone = await gateway.post("/v1/completions", json={"model": "d", "prompt": "hi"})
    assert gone.status_code == 404
    assert "tone@1" in fake_engine.loaded, "still loaded while its request runs"
    fake_engine.hold_completions.set()
    finished = await in_flight
    assert finished.status_code == 200 and finished.json()["adapter"] == "tone@1"
    await wait_loaded(fake_engine, {"tone@2"})
    # Its history went with it, so nothing keeps tone@1 now; the other domain's version stays.
    assert (await gateway.delete("/v1/adapters/tone/versions/1")).status_code == 200
    assert (await gateway.delete("/v1/domains/d")).status_code == 404
    recreated = await gateway.put("/v1/domains/d", json={})
    assert recreated.status_code == 201
    assert [h["action"] for h in (await gateway.get("/v1/domains/d/history")).json()["data"]] == ["create"]
