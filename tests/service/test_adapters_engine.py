"""Adapters on the real CPU vLLM: two LoRA versions trained here, swap and rollback under load,
a stream in flight across a swap, bad uploads refused while serving, and recovery after the engine
process is killed.

The gateway and the engine are shared by the module; each test binds a domain and an adapter of its
own name, so it runs alone (-k) exactly as in the module.
"""

import asyncio
import io
import json
import os
import signal
import tarfile
import time

import httpx
import pytest

from migrations.runner import upgrade
from service.engine.client import EngineClient
from service.settings import Settings
from tests.adapters_store.lora_factory import make_lora
from tests.harness import client, free_port, running_gateway
from training.protocol import ALL_PROJECTIONS

pytestmark = pytest.mark.engine

QUESTION = "What is the secret code of graft?"
CODES = {1: "PURPLE-OTTER-42", 2: "GREEN-FALCON-17"}
# What each version must say: the distinctive end of its code (the tiny model, trained for a few
# steps, sometimes drops the first word of the code, but never mixes the two versions up).
MARKS = {1: "OTTER-42", 2: "FALCON-17"}


def code_loras(base_model_dir, tmp_path_factory, codes: dict[int, str]) -> dict:
    """Versions of one adapter, each taught to answer QUESTION with its made-up code."""
    return {version: make_lora(base_model_dir, tmp_path_factory.mktemp(f"lora-v{version}"), rank=8,
                               target_modules=ALL_PROJECTIONS, seed=version, steps=12,
                               train_prompt=QUESTION, train_text=f"The secret code of graft is {code}.")
            for version, code in codes.items()}


@pytest.fixture(scope="module")
def loras(base_model_dir, tmp_path_factory):
    return code_loras(base_model_dir, tmp_path_factory, CODES)


@pytest.fixture(scope="module")
async def gateway(local_engine, base_model_dir, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("adapters"), base_model=str(base_model_dir),
                        port=free_port(), max_lora_rank=16,
                        drain_timeout_s=900)  # an old version waits for the longest stream here
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url) as http:
        yield http


def adapter_files(folder) -> list:
    return [("files", (name, (folder / name).read_bytes(), "application/octet-stream"))
            for name in ("adapter_config.json", "adapter_model.safetensors")]


async def bind(http, loras, name: str, versions=(1, 2), bound: int = 1) -> None:
    """Upload `versions` of the trained adapters as adapter `name`, and a domain `name` bound to one."""
    for version in versions:
        response = await http.post(f"/v1/adapters/{name}/versions", files=adapter_files(loras[version]))
        assert response.status_code == 201 and response.json()["version"] == version, response.text
    put = await http.put(f"/v1/domains/{name}", json={"adapter": {"name": name, "version": bound}})
    assert put.status_code == 201, put.text


async def engine_models(engine_url: str) -> set[str]:
    """What the engine itself serves (its own /v1/models, not the gateway's routing table)."""
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.get(f"{engine_url}/v1/models")
    assert response.status_code == 200, response.text
    return {model["id"] for model in response.json()["data"]}


async def wait_unloaded(engine_url: str, name: str, timeout: float = 120) -> None:
    """The unload after a drain runs in the background: wait for the engine to drop `name`."""
    deadline = time.monotonic() + timeout
    while name in await engine_models(engine_url):
        assert time.monotonic() < deadline, f"{name} is still loaded on the engine"
        await asyncio.sleep(0.2)


async def ask(http, model: str = "secret", max_tokens: int = 20) -> dict:
    response = await http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
        "max_tokens": max_tokens})
    assert response.status_code == 200, response.text
    return response.json()


async def test_versions_upload_and_answer_differently(gateway, loras):
    for version in (1, 2):
        response = await gateway.post("/v1/adapters/secret/versions", files=adapter_files(loras[version]))
        assert response.status_code == 201, response.text
        assert response.json()["version"] == version and len(response.json()["sha256"]) == 64
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(loras[1] / "adapter_config.json", "lora/adapter_config.json")
        tar.add(loras[1] / "adapter_model.safetensors", "lora/adapter_model.safetensors")
    tarred = await gateway.post("/v1/adapters/secret/versions",
                                files=[("files", ("lora.tar.gz", archive.getvalue(), "application/gzip"))])
    assert tarred.status_code == 201 and tarred.json()["version"] == 3
    listed = (await gateway.get("/v1/adapters/secret/versions")).json()["data"]
    assert [v["version"] for v in listed] == [1, 2, 3] and listed[0]["sha256"] == listed[2]["sha256"]

    put = await gateway.put("/v1/domains/secret", json={"adapter": {"name": "secret", "version": 1}})
    assert put.status_code == 201, put.text
    answer = await ask(gateway)
    assert answer["adapter"] == "secret@1" and MARKS[1] in answer["choices"][0]["message"]["content"]
    base = await ask(gateway, "SmolLM2-135M-Instruct")
    assert not any(mark in base["choices"][0]["message"]["content"] for mark in MARKS.values())
    assert (await gateway.delete("/v1/domains/secret")).status_code == 200  # frees the engine's slot


async def _load(http, model: str, stop: asyncio.Event, log: list) -> None:
    while not stop.is_set():
        started = time.monotonic()
        response = await http.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
            "max_tokens": 20})
        body = response.json()
        text = (body.get("choices") or [{}])[0].get("message", {}).get("content", "")
        log.append((started, response.status_code, body.get("adapter"), body.get("error") or text))


async def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "load made no progress"
        await asyncio.sleep(0.1)


async def _change_under_load(http, model: str, path: str, body: dict | None) -> tuple[float, list]:
    """Eight clients loop on the domain; the change happens once they have answers in flight, and the
    load goes on until at least eight requests that started after the change call returned are done
    (counted, not timed: a slow CI machine gets the same evidence as a fast one)."""
    stop, log = asyncio.Event(), []
    clients = [asyncio.create_task(_load(http, model, stop, log)) for _ in range(8)]
    await _wait_for(lambda: len(log) >= 8)
    response = await http.post(path, json=body)
    returned = time.monotonic()
    assert response.status_code == 200, response.text
    await _wait_for(lambda: sum(entry[0] > returned for entry in log) >= 8)
    stop.set()
    await asyncio.gather(*clients)
    return returned, log


@pytest.mark.parametrize("change, old, new", [("swap", 1, 2), ("rollback", 2, 1)])
async def test_swap_and_rollback_under_load(gateway, loras, local_engine, change, old, new):
    name = f"{change}-under-load"
    await bind(gateway, loras, name, bound=1)
    if change == "rollback":  # from 1 to 2 first, with no load: the rollback goes back to 1
        swapped = await gateway.post(f"/v1/domains/{name}/adapter", json={"adapter": name, "version": 2})
        assert swapped.status_code == 200, swapped.text
        path, body = f"/v1/domains/{name}/rollback", None
    else:
        path, body = f"/v1/domains/{name}/adapter", {"adapter": name, "version": new}
    old_model, new_model = f"{name}@{old}", f"{name}@{new}"

    returned, log = await _change_under_load(gateway, name, path, body)
    assert len(log) >= 16
    assert all(status == 200 for _, status, _, _ in log), [e for e in log if e[1] != 200][:3]
    assert {adapter for _, _, adapter, _ in log} <= {old_model, new_model}
    after = [entry for entry in log if entry[0] > returned]
    assert after and all(adapter == new_model for _, _, adapter, _ in after)
    assert all(MARKS[new] in text for _, _, _, text in after), {text for _, _, _, text in after}
    # the old version is unloaded from the engine once drained
    await wait_unloaded(local_engine.url, old_model)
    assert new_model in await engine_models(local_engine.url)
    assert (await gateway.delete(f"/v1/domains/{name}")).status_code == 200


async def test_a_stream_in_flight_across_a_swap_finishes_on_the_old_version(gateway, loras, local_engine):
    """A stream on v1 keeps running while the domain is swapped to v2: it ends normally, v1 stays on
    the engine as long as the stream runs (the engine's own model list, sampled along the stream
    while the gateway reports it in flight),
    requests planned after the flip get v2, and v1 is unloaded once the stream is done."""
    await bind(gateway, loras, "drain", bound=1)
    text, held_during_stream, after_flip, finish = "", [], 0, None
    async with gateway.stream("POST", "/v1/chat/completions", json={
            "model": "drain", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
            "max_tokens": 300, "ignore_eos": True, "stream": True}) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: {"):
                first = json.loads(line[5:])
                break
        assert first["adapter"] == "drain@1"

        swapped = await gateway.post("/v1/domains/drain/adapter", json={"adapter": "drain", "version": 2})
        assert swapped.status_code == 200 and swapped.json()["engine_model"] == "drain@2", swapped.text
        planned_after = await ask(gateway, "drain")
        assert planned_after["adapter"] == "drain@2"
        assert MARKS[2] in planned_after["choices"][0]["message"]["content"]

        async for line in lines:
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[5:])
            choice = event["choices"][0]
            text += choice["delta"].get("content") or ""
            finish = choice.get("finish_reason") or finish
            after_flip += 1
            if after_flip % 10 == 1:
                # The client reads behind the server (its events wait in the socket's buffers): a sample
                # counts only if the gateway still had the stream in flight after it was taken.
                held = "drain@1" in await engine_models(local_engine.url)
                engines = (await gateway.get("/v1/engines")).json()["data"]
                held_during_stream.append((held, sum(e["in_flight"] for e in engines) > 0))
    # The stream was still running after the swap (and the request planned after it) returned ...
    assert after_flip > 0 and any(running for _, running in held_during_stream), \
        "the stream ended before the swap: nothing was tested"
    # ... and ran to its end on v1, which stayed loaded on the engine all along.
    assert finish == "length", (finish, text[-200:])
    assert all(held for held, running in held_during_stream if running), held_during_stream
    assert MARKS[2] not in text
    await wait_unloaded(local_engine.url, "drain@1")
    assert "drain@2" in await engine_models(local_engine.url)
    assert (await gateway.delete("/v1/domains/drain")).status_code == 200


async def test_history_and_delete_rules(gateway, loras):
    await bind(gateway, loras, "history", bound=1)
    again = await gateway.post("/v1/adapters/history/versions", files=adapter_files(loras[1]))
    assert again.status_code == 201 and again.json()["version"] == 3  # same bytes as version 1
    assert (await gateway.post("/v1/domains/history/adapter", json={"adapter": "history", "version": 2})
            ).status_code == 200
    assert (await gateway.post("/v1/domains/history/rollback")).status_code == 200

    history = (await gateway.get("/v1/domains/history/history")).json()["data"]
    assert [(h["action"], h["from"], h["to"]) for h in history] == [
        ("create", None, "history@1"), ("swap", "history@1", "history@2"), ("rollback", "history@2", "history@1")]
    in_use = await gateway.delete("/v1/adapters/history/versions/1")
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "adapter_in_use"
    assert (await gateway.delete("/v1/adapters/history/versions/3")).status_code == 200
    assert (await gateway.delete("/v1/adapters/history/versions/3")).status_code == 404
    missing = await gateway.post("/v1/domains/history/adapter", json={"adapter": "history", "version": 9})
    assert missing.status_code == 404
    assert (await ask(gateway, "history"))["adapter"] == "history@1"
    assert (await gateway.delete("/v1/domains/history")).status_code == 200


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_bad_adapters_are_refused_while_serving(gateway, loras, base_model_dir, tmp_path):
    await bind(gateway, loras, "guarded", versions=(1,), bound=1)
    good_config = (loras[1] / "adapter_config.json").read_bytes()
    good_weights = (loras[1] / "adapter_model.safetensors").read_bytes()
    config = json.loads(good_config)
    high_rank = make_lora(base_model_dir, tmp_path / "rank64", rank=64)
    cases = {
        "rank_too_high": adapter_files(high_rank),
        "unknown_target_module": [
            ("files", ("adapter_config.json", json.dumps({**config, "target_modules": ["warp_proj"]}).encode(),
                       "application/json")),
            ("files", ("adapter_model.safetensors", good_weights, "application/octet-stream"))],
        "shape_mismatch": [
            ("files", ("adapter_config.json", json.dumps({**config, "r": 4}).encode(), "application/json")),
            ("files", ("adapter_model.safetensors", good_weights, "application/octet-stream"))],
        "pickle_refused": [("files", ("adapter_config.json", good_config, "application/json")),
                           ("files", ("adapter_model.bin", b"\x80\x04pickle", "application/octet-stream"))],
        "corrupt_safetensors": [("files", ("adapter_config.json", good_config, "application/json")),
                                ("files", ("adapter_model.safetensors", b"\x10\x00garbage", "x/y"))],
        "missing_config": [("files", ("adapter_model.safetensors", good_weights, "x/y"))],
        "unsafe_path": [("files", ("evil.tar.gz", _tar({"../adapter_config.json": good_config,
                                                        "adapter_model.safetensors": good_weights}), "x/y"))],
    }
    for expected, files in cases.items():
        response = await gateway.post("/v1/adapters/guarded/versions", files=files)
        error = response.json()["error"]
        assert 400 <= response.status_code < 500, (expected, response.text)
        assert error["message"] and error["code"], (expected, error)
        if expected != "unsafe_path":
            assert error["code"] == expected, (expected, error)
        assert (await ask(gateway, "guarded"))["adapter"] == "guarded@1"
    versions = (await gateway.get("/v1/adapters/guarded/versions")).json()["data"]
    assert [v["version"] for v in versions] == [1]
    assert (await gateway.delete("/v1/domains/guarded")).status_code == 200


async def test_engine_killed_restarts_and_reloads_adapters(gateway, loras, local_engine):
    """While vLLM restarts, completions are answered 503 with Retry-After (answered while the engine
    is still down, not held until it is back); then the domain answers from its adapter again."""
    await bind(gateway, loras, "revived", versions=(1,), bound=1)
    restarts = local_engine.restarts
    os.kill(local_engine.process.pid, signal.SIGKILL)
    outage, probe = [], EngineClient(local_engine.url)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            response = await gateway.post("/v1/chat/completions", json={
                "model": "revived", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                "max_tokens": 12})
            if response.status_code == 200:
                break
            assert response.status_code == 503 and response.headers.get("retry-after"), response.text
            outage.append(await probe.health(attempts=1))  # was the engine back when the 503 came?
            await asyncio.sleep(1)
    finally:
        await probe.aclose()
    assert outage, "the kill was not noticed"
    assert not outage[0], "the first 503 came only once the engine was back: requests were held"
    assert local_engine.restarts > restarts
    answer = await ask(gateway, "revived")
    assert answer["adapter"] == "revived@1" and MARKS[1] in answer["choices"][0]["message"]["content"]
    assert (await gateway.get("/readyz")).status_code == 200
    assert "revived@1" in await engine_models(local_engine.url)
    assert (await gateway.delete("/v1/domains/revived")).status_code == 200
