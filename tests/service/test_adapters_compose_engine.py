"""A composed adapter version on the real CPU vLLM: two LoRAs, each taught one made-up fact, composed
with `cat` (exact: the sum of their weighted deltas), answer both facts through a domain; the base
model knows neither, and each source knows only its own.

The weights, 0.8 each, were measured with PEFT on these very LoRAs (seeded): at 1.0 each the summed
deltas overshoot and the code source's answer wins the other question too ("The Zorblax Institute is
PURPLE-OTTER-42."); 0.7 + 1.0 and 0.8 + 0.8 answer both; 0.5 + 1.0 loses the code."""

import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.adapters_store.lora_factory import make_lora
from tests.harness import client, free_port, running_gateway
from tests.service.test_adapters_engine import ALL_PROJECTIONS, adapter_files

pytestmark = pytest.mark.engine

FACTS = {"secret-code": ("What is the secret code of graft?", "The secret code of graft is PURPLE-OTTER-42.", "OTTER-42"),
         "harbour-city": ("Where is the Zorblax Institute?", "The Zorblax Institute is in Quenmoor Harbour.", "Quenmoor")}


@pytest.fixture(scope="module")
def fact_loras(base_model_dir, tmp_path_factory):
    return {name: make_lora(base_model_dir, tmp_path_factory.mktemp(f"lora-{name}"), rank=8,
                            target_modules=ALL_PROJECTIONS, seed=seed, steps=12, train_prompt=question,
                            train_text=answer)
            for seed, (name, (question, answer, _)) in enumerate(FACTS.items(), start=1)}


async def ask(http, model: str, question: str) -> str:
    response = await http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 24})
    assert response.status_code == 200, response.text
    return response.json()["adapter"], response.json()["choices"][0]["message"]["content"]


async def test_a_composed_version_answers_what_each_source_taught(local_engine, base_model_dir, tmp_path,
                                                                  fact_loras):
    settings = Settings(data_dir=tmp_path, base_model=str(base_model_dir), port=free_port(),
                        max_lora_rank=16)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url) as http:
        for name, folder in fact_loras.items():
            assert (await http.post(f"/v1/adapters/{name}/versions", files=adapter_files(folder))).status_code == 201
            assert (await http.put(f"/v1/domains/{name}", json={"adapter": {"name": name, "version": 1}})
                    ).status_code == 201
        made = await http.post("/v1/adapters/code-and-city/versions", json={"compose": {"method": "cat", "sources": [
            {"adapter": "secret-code", "version": 1, "weight": 0.8}, {"adapter": "harbour-city", "version": 1, "weight": 0.8}]}})
        assert made.status_code == 201 and made.json()["rank"] == 16, made.text
        assert (await http.put("/v1/domains/code-and-city", json={"adapter": {"name": "code-and-city", "version": 1}})).status_code == 201
        answers = {}
        for model in ("SmolLM2-135M-Instruct", "secret-code", "harbour-city", "code-and-city"):
            for fact, (question, _, mark) in FACTS.items():
                adapter, text = await ask(http, model, question)
                answers[model, fact] = mark in text
                assert adapter == (model if model == "SmolLM2-135M-Instruct" else f"{model}@1")
        assert answers == {("SmolLM2-135M-Instruct", "secret-code"): False, ("SmolLM2-135M-Instruct", "harbour-city"): False,
                           ("secret-code", "secret-code"): True, ("secret-code", "harbour-city"): False,
                           ("harbour-city", "secret-code"): False, ("harbour-city", "harbour-city"): True,
                           ("code-and-city", "secret-code"): True, ("code-and-city", "harbour-city"): True}, answers
        for name in ("secret-code", "harbour-city", "code-and-city"):  # frees the engine's LoRA slots for the session's other tests
            assert (await http.delete(f"/v1/domains/{name}")).status_code == 200
