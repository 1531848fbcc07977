"""A corpus compiled into an adapter on the real CPU vLLM: a tiny `reader` training makes a
validated version with provenance, which is evaluated, promoted through a gate and answers."""

import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.harness import client, free_port, running_gateway
from tests.service.test_corpora_api import wait_job
from tests.service.test_training_api import DOCS

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
async def gateway(local_engine, base_model_dir, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("training"), base_model=str(base_model_dir),
                        port=free_port(), max_lora_rank=16, drain_timeout_s=30, training_threads=2)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url, timeout=900) as http:
        yield http


async def test_reader_training_makes_a_scored_version_that_is_promoted_and_answers(gateway):
    await gateway.post("/v1/corpora", json={"name": "lore"})
    job = (await gateway.post("/v1/corpora/lore/documents", json={"documents": DOCS})).json()
    assert (await wait_job(gateway, job["job_id"]))["status"] == "succeeded"
    assert (await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 4}})).status_code == 201
    items = [{"question": "Who founded the Zorblax Institute?", "answers": ["Vantress"], "document_ids": ["zorblax"]}]
    assert (await gateway.post("/v1/evalsets", json={"name": "lore-qa", "items": items})).status_code == 201

    started = await gateway.post("/v1/adapters/reader/trainings", json={
        "corpus": "lore", "recipe": "reader", "rank": 8, "max_examples": 6, "epochs": 1,
        "evalset": "lore-qa",
        "promote": {"domain": "lore", "gate": {"evalset": "lore-qa", "metric": "hit_at_k", "min_delta": 0}}})
    assert started.status_code == 202, started.text
    job = await wait_job(gateway, started.json()["job_id"], timeout=900)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert (result["adapter"], result["version"]) == ("reader", 1) and result["eval_id"]
    # hit@k does not depend on the adapter (same retrieval), so the gate's delta is 0 and it flips
    assert result["promotion"]["promoted"] is True, result

    version = (await gateway.get("/v1/adapters/reader/versions")).json()["data"][0]
    assert version["provenance"]["recipe"] == "reader" and version["provenance"]["eval_id"] == result["eval_id"]
    run = (await gateway.get(f"/v1/evals/{result['eval_id']}")).json()
    assert run["adapter"] == "reader@1" and run["status"] == "succeeded"

    answer = await gateway.post("/v1/chat/completions", json={
        "model": "lore", "messages": [{"role": "user", "content": "Who founded the Zorblax Institute?"}],
        "temperature": 0, "max_tokens": 24})
    assert answer.status_code == 200 and answer.json()["adapter"] == "reader@1"
    assert answer.json()["choices"][0]["message"]["content"].strip()
    history = (await gateway.get("/v1/domains/lore/history")).json()["data"]
    assert history[-1]["action"] == "swap" and history[-1]["details"]["gate"]["passed"] is True


async def test_a_candidate_that_cannot_gain_is_refused_by_an_answer_contains_gate(gateway):
    """The gate compares real answers: no version can say a code that no document holds, so both
    score 0 on answer_contains and a gate asking for +0.5 refuses; the domain stays where it was."""
    if (await gateway.get("/v1/corpora/lore")).status_code == 404:
        await gateway.post("/v1/corpora", json={"name": "lore"})
        job = (await gateway.post("/v1/corpora/lore/documents", json={"documents": DOCS})).json()
        assert (await wait_job(gateway, job["job_id"]))["status"] == "succeeded"
    assert (await gateway.put("/v1/domains/lore-gated", json={"corpora": ["lore"]})).status_code == 201
    items = [{"question": "What is the Zorblax Institute's vault code?", "answers": ["QX-UNWRITTEN-93"]}]
    assert (await gateway.post("/v1/evalsets", json={"name": "unknowable", "items": items})).status_code == 201

    started = await gateway.post("/v1/adapters/gated-reader/trainings", json={
        "corpus": "lore", "recipe": "reader", "rank": 8, "max_examples": 4, "epochs": 1,
        "promote": {"domain": "lore-gated",
                    "gate": {"evalset": "unknowable", "metric": "answer_contains", "min_delta": 0.5}}})
    assert started.status_code == 202, started.text
    job = await wait_job(gateway, started.json()["job_id"], timeout=900)
    assert job["status"] == "succeeded", job
    promotion = job["result"]["promotion"]
    assert promotion["promoted"] is False, promotion
    assert promotion["reason"].startswith("gate refused gated-reader@1: answer_contains 0.000"), promotion
    domain = (await gateway.get("/v1/domains/lore-gated")).json()
    assert domain["adapter"] is None, domain
    actions = [e["action"] for e in (await gateway.get("/v1/domains/lore-gated/history")).json()["data"]]
    assert actions == ["create", "swap_refused"], actions
