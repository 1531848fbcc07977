"""Adapters on the real CPU vLLM: two LoRA versions trained here, swap and rollback under load,
bad uploads refused while serving, and recovery after the engine process is killed."""

import asyncio
import io
import json
import os
import signal
import tarfile
import time

import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.adapters_store.lora_factory import make_lora
from tests.harness import client, free_port, running_gateway

pytestmark = pytest.mark.engine

QUESTION = "What is the secret code of graft?"
CODES = {1: "PURPLE-OTTER-42", 2: "GREEN-FALCON-17"}
# What each version must say: the distinctive end of its code (the tiny model, trained for a few
# steps, sometimes drops the first word of the code, but never mixes the two versions up).
MARKS = {1: "OTTER-42", 2: "FALCON-17"}
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
                        port=free_port(), max_lora_rank=16, drain_timeout_s=30)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url) as http:
        yield http


def adapter_files(folder) -> list:
    return [("files", (name, (folder / name).read_bytes(), "application/octet-stream"))
            for name in ("adapter_config.json", "adapter_model.safetensors")]


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


async def _load(http, stop: asyncio.Event, log: list) -> None:
    while not stop.is_set():
        started = time.monotonic()
        response = await http.post("/v1/chat/completions", json={
            "model": "secret", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
            "max_tokens": 20})
        body = response.json()
        log.append((started, response.status_code, body.get("adapter"),
                    (body.get("choices") or [{}])[0].get("message", {}).get("content", "")))


async def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "load made no progress"
        await asyncio.sleep(0.1)


async def _change_under_load(http, path: str, body: dict | None) -> tuple[float, list]:
    """Eight clients loop on the domain; the change happens once they have answers in flight, and the
    load goes on until at least eight requests that started after the change call returned are done
    (counted, not timed: a slow CI machine gets the same evidence as a fast one)."""
    stop, log = asyncio.Event(), []
    clients = [asyncio.create_task(_load(http, stop, log)) for _ in range(8)]
    await _wait_for(lambda: len(log) >= 8)
    response = await http.post(path, json=body)
    returned = time.monotonic()
    assert response.status_code == 200, response.text
    await _wait_for(lambda: sum(entry[0] > returned for entry in log) >= 8)
    stop.set()
    await asyncio.gather(*clients)
    return returned, log


@pytest.mark.parametrize("path, body, old, new", [
    ("/v1/domains/secret/adapter", {"adapter": "secret", "version": 2}, "secret@1", "secret@2"),
    ("/v1/domains/secret/rollback", None, "secret@2", "secret@1"),
])
async def test_swap_and_rollback_under_load(gateway, path, body, old, new):
    returned, log = await _change_under_load(gateway, path, body)
    assert len(log) >= 24
    assert all(status == 200 for _, status, _, _ in log), [e for e in log if e[1] != 200][:3]
    assert {adapter for _, _, adapter, _ in log} <= {old, new}
    after = [entry for entry in log if entry[0] > returned]
    assert after and all(adapter == new for _, _, adapter, _ in after)
    mark = MARKS[int(new.split("@")[1])]
    assert all(mark in text for _, _, _, text in after), {text for _, _, _, text in after}
    # the old version is unloaded once drained
    await asyncio.sleep(1)
    models = (await gateway.get("/v1/models")).json()["data"]
    assert next(m for m in models if m["id"] == "secret")["root"] == new


async def test_history_and_delete_rules(gateway):
    history = (await gateway.get("/v1/domains/secret/history")).json()["data"]
    assert [(h["action"], h["from"], h["to"]) for h in history] == [
        ("create", None, "secret@1"), ("swap", "secret@1", "secret@2"), ("rollback", "secret@2", "secret@1")]
    in_use = await gateway.delete("/v1/adapters/secret/versions/1")
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "adapter_in_use"
    assert (await gateway.delete("/v1/adapters/secret/versions/3")).status_code == 200
    assert (await gateway.delete("/v1/adapters/secret/versions/3")).status_code == 404
    missing = await gateway.post("/v1/domains/secret/adapter", json={"adapter": "secret", "version": 9})
    assert missing.status_code == 404
    assert (await ask(gateway))["adapter"] == "secret@1"


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_bad_adapters_are_refused_while_serving(gateway, loras, base_model_dir, tmp_path):
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
        response = await gateway.post("/v1/adapters/secret/versions", files=files)
        error = response.json()["error"]
        assert 400 <= response.status_code < 500, (expected, response.text)
        assert error["message"] and error["code"], (expected, error)
        if expected != "unsafe_path":
            assert error["code"] == expected, (expected, error)
        assert (await ask(gateway))["adapter"] == "secret@1"
    versions = (await gateway.get("/v1/adapters/secret/versions")).json()["data"]
    assert [v["version"] for v in versions] == [1, 2]


async def test_engine_killed_restarts_and_reloads_adapters(gateway, local_engine):
    restarts = local_engine.restarts
    os.kill(local_engine.process.pid, signal.SIGKILL)
    outage = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        started = time.monotonic()
        response = await gateway.post("/v1/chat/completions", json={
            "model": "secret", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
            "max_tokens": 12})
        elapsed = time.monotonic() - started
        if response.status_code == 200:
            break
        outage.append(response.status_code)
        assert response.status_code == 503 and response.headers.get("retry-after"), response.text
        assert elapsed < 10  # an answer, not a hang
        await asyncio.sleep(1)
    assert outage, "the kill was not noticed"
    assert local_engine.restarts == restarts + 1
    answer = await ask(gateway)
    assert answer["adapter"] == "secret@1" and MARKS[1] in answer["choices"][0]["message"]["content"]
    assert (await gateway.get("/readyz")).status_code == 200
