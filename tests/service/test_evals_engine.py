"""Evaluation and gated swaps on the real CPU vLLM: a made-up corpus scored with and without
retrieval, and a gate that refuses a version trained to answer wrongly while traffic flows."""

import asyncio

import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.harness import client, free_port, running_gateway
from tests.service.test_adapters_engine import QUESTION, adapter_files, code_loras
from tests.service.test_corpora_api import upload, wait_job

pytestmark = pytest.mark.engine

FACT = b"The Zorblax Institute was founded in 1847 by Elira Vantress in the city of Quenmoor."
LORE_ITEMS = [{"id": "founder", "question": "Who founded the Zorblax Institute?", "answers": ["Vantress"],
               "document_ids": ["zorblax.txt"]},
              {"id": "winters", "question": "What are the winters like in Quenmoor?", "answers": ["mild"],
               "document_ids": ["weather.txt"]}]
# Version 1 and 3 learn the right code, version 2 a wrong one.
CODES = {1: "PURPLE-OTTER-42", 2: "GREEN-FALCON-17", 3: "PURPLE-OTTER-42"}


@pytest.fixture(scope="module")
def loras(base_model_dir, tmp_path_factory):
    return code_loras(base_model_dir, tmp_path_factory, CODES)


@pytest.fixture(scope="module")
async def gateway(local_engine, base_model_dir, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("evals"), base_model=str(base_model_dir),
                        port=free_port(), max_lora_rank=16, drain_timeout_s=30)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url, timeout=600) as http:
        yield http


async def run_eval(http, **body) -> dict:
    started = await http.post("/v1/evals", json=body)
    assert started.status_code == 202, started.text
    job = await wait_job(http, started.json()["job_id"], timeout=600)
    assert job["status"] == "succeeded", job
    return (await http.get(f"/v1/evals/{job['result']['eval_id']}")).json()


async def test_a_made_up_corpus_scores_with_and_without_retrieval(gateway):
    await gateway.post("/v1/corpora", json={"name": "lore"})
    job = await upload(gateway, "lore", [
        ("zorblax.txt", FACT, "text/plain"),
        ("weather.txt", b"Quenmoor has mild winters and foggy summers.", "text/plain"),
        ("trains.txt", b"The night train to Quenmoor leaves at eleven from platform four.", "text/plain")])
    assert job["status"] == "succeeded"
    assert (await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 2}})).status_code == 201
    assert (await gateway.post("/v1/evalsets", json={"name": "lore-qa", "items": LORE_ITEMS})).status_code == 201

    open_book = await run_eval(gateway, domain="lore", evalset="lore-qa", max_tokens=40)
    assert open_book["metrics"]["hit_at_k"] == 1.0 and open_book["metrics"]["mrr_at_k"] == 1.0
    items = {i["id"]: i for i in (await gateway.get(f"/v1/evals/{open_book['id']}/items")).json()["items"]}
    assert "Vantress" in items["founder"]["output"] and items["founder"]["answer_contains"] == 1.0
    assert items["founder"]["retrieved_document_ids"][0] == "zorblax.txt"
    assert open_book["metrics"]["latency_p50_ms"] > 0 and open_book["metrics"]["completion_tokens"] > 0

    closed_book = await run_eval(gateway, domain="lore", evalset="lore-qa", max_tokens=40, retrieval=False)
    assert closed_book["metrics"]["hit_at_k"] is None
    founder = next(i for i in (await gateway.get(f"/v1/evals/{closed_book['id']}/items")).json()["items"]
                   if i["id"] == "founder")
    assert founder["answer_contains"] == 0.0 and founder["retrieved_document_ids"] == []


async def test_a_gate_refuses_a_wrong_version_while_traffic_flows_and_flips_a_good_one(gateway, loras):
    for version in (1, 2, 3):
        assert (await gateway.post("/v1/adapters/code/versions", files=adapter_files(loras[version]))).status_code == 201
    assert (await gateway.put("/v1/domains/secret", json={"adapter": {"name": "code", "version": 1}})).status_code == 201
    items = [{"id": "code", "question": QUESTION, "answers": ["OTTER-42"]}]
    assert (await gateway.post("/v1/evalsets", json={"name": "code-qa", "items": items})).status_code == 201
    gate = {"evalset": "code-qa", "metric": "answer_contains", "min_delta": 0.0}

    answered: list[int] = []
    stop = asyncio.Event()

    async def traffic():
        while not stop.is_set():
            response = await gateway.post("/v1/chat/completions", json={
                "model": "secret", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                "max_tokens": 12})
            answered.append(response.status_code)
            assert response.json()["adapter"] == "code@1", "traffic stays on the current version"

    load = asyncio.create_task(traffic())
    try:
        refused = await gateway.post("/v1/domains/secret/adapter", json={"adapter": "code", "version": 2, "gate": gate})
    finally:
        stop.set()
        await load
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gate_failed", refused.text
    assert "1.000" in refused.json()["error"]["message"] and "0.000" in refused.json()["error"]["message"]
    assert answered and set(answered) == {200}
    assert (await gateway.get("/v1/domains/secret")).json()["engine_model"] == "code@1"

    flipped = await gateway.post("/v1/domains/secret/adapter", json={"adapter": "code", "version": 3, "gate": gate})
    assert flipped.status_code == 200, flipped.text
    assert flipped.json()["engine_model"] == "code@3"
    history = (await gateway.get("/v1/domains/secret/history")).json()["data"]
    assert [h["action"] for h in history] == ["create", "swap_refused", "swap"]
    assert (history[1]["details"]["gate"]["current"], history[1]["details"]["gate"]["candidate"]) == (1.0, 0.0)
    assert (history[2]["details"]["gate"]["current"], history[2]["details"]["gate"]["candidate"]) == (1.0, 1.0)
