"""A short domain tuning on the real CPU vLLM: three trials through real evaluation runs produce a
configuration version, which a gate then applies or refuses, consistently with its own numbers."""

import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.harness import client, free_port, running_gateway
from tests.service.test_corpora_api import upload, wait_job

pytestmark = pytest.mark.engine

FACTS = [("zorblax.txt", "The Zorblax Institute was founded in 1847 by Elira Vantress.", "Who founded the Zorblax Institute?", "Vantress"),
         ("weather.txt", "Quenmoor has mild winters and foggy summers.", "What are the winters like in Quenmoor?", "mild"),
         ("river.txt", "The Velt river flows through Quenmoor to the grey sea.", "Where does the Velt river flow to?", "grey sea"),
         ("castle.txt", "Orrin Castle was built from black basalt in 1602.", "What was Orrin Castle built from?", "basalt"),
         ("bread.txt", "Drevik bread is baked with rye and caraway seeds.", "What is Drevik bread baked with?", "rye"),
         ("mine.txt", "The Ulmara mine produced silver for two centuries.", "What did the Ulmara mine produce?", "silver")]
SPACE = {"prompt_template": ["numbered", "quote_then_answer", "answer_then_cite"], "k": [1, 2], "mode": ["hybrid"],
         "min_score": [None], "max_tokens": [24], "system_prompt": [None], "demonstrations": [0, 1]}


@pytest.fixture(scope="module")
async def gateway(local_engine, base_model_dir, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("tunings"), base_model=str(base_model_dir),
                        port=free_port(), max_lora_rank=16)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url, timeout=600) as http:
        yield http


async def test_a_three_trial_tuning_gives_a_version_that_a_gate_applies_or_refuses(gateway):
    await gateway.post("/v1/corpora", json={"name": "lore"})
    job = await upload(gateway, "lore", [(name, text.encode(), "text/plain") for name, text, _, _ in FACTS])
    assert job["status"] == "succeeded"
    assert (await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 3}})).status_code == 201
    items = [{"id": name.split(".")[0], "question": q, "answers": [a], "document_ids": [name]} for name, _, q, a in FACTS]
    assert (await gateway.post("/v1/evalsets", json={"name": "lore-qa", "items": items})).status_code == 201

    started = await gateway.post("/v1/domains/lore/tunings", json={
        "evalset": "lore-qa", "metric": "answer_contains", "budget": {"trials": 3}, "space": SPACE})
    assert started.status_code == 202, started.text
    job = await wait_job(gateway, started.json()["job_id"], timeout=900)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["config_version"] == 1 and result["trials"] == 3
    assert 0.0 <= result["tuning_score"] <= 1.0 and result["engine_calls"] > 0
    print(f"\ntuning: {result}")  # wall time and engine calls (bench/README.md quotes a bench run)

    before = (await gateway.get("/v1/domains/lore")).json()
    gate = {"evalset": "lore-qa", "metric": "answer_contains", "min_delta": 0.0}
    applied = await gateway.post("/v1/domains/lore/configs/1/apply", json={"gate": gate})
    after = (await gateway.get("/v1/domains/lore")).json()
    if applied.status_code == 200:
        numbers = applied.json()["gate_result"]
        assert numbers["passed"] and numbers["candidate"] >= numbers["current"]
        assert after["config_version"] == 1
    else:
        assert applied.status_code == 409 and applied.json()["error"]["code"] == "gate_failed", applied.text
        assert after == before
    print(f"apply: {applied.status_code} {applied.json().get('gate_result') or applied.json()}")
