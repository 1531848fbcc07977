"""A domain report on the real CPU vLLM: closed book, retrieval and one adapter row (an uploaded
LoRA whose provenance names the domain's corpus and the `reader` recipe, found without being named),
each a real evaluation run on the same items, the adapter loaded without being routed."""

import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.harness import client, free_port, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import upload
from tests.service.test_evals_engine import FACT, LORE_ITEMS
from tests.service.test_reports_api import record_training, report

pytestmark = pytest.mark.engine


async def test_a_report_runs_closed_book_retrieval_and_a_reader_adapter(local_engine, base_model_dir, good_lora,
                                                                        tmp_path):
    settings = Settings(data_dir=tmp_path, base_model=str(base_model_dir), port=free_port(), max_lora_rank=16)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url, timeout=600) as http:
        await http.post("/v1/corpora", json={"name": "lore"})
        job = await upload(http, "lore", [
            ("zorblax.txt", FACT, "text/plain"),
            ("weather.txt", b"Quenmoor has mild winters and foggy summers.", "text/plain")])
        assert job["status"] == "succeeded"
        assert (await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 2}})).status_code == 201
        assert (await http.post("/v1/evalsets", json={"name": "lore-qa", "items": LORE_ITEMS})).status_code == 201
        assert (await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
        record_training(settings, "tone", 1, "lore", "reader")

        result = (await report(http, max_tokens=40))["result"]
        rows = {row["route"]: row for row in result["rows"]}
        assert [r["route"] for r in result["rows"] if r["available"]] == ["closed_book", "retrieval", "reader"]
        assert all(rows[r]["status"] == "succeeded" for r in ("closed_book", "retrieval", "reader")), rows
        assert (rows["reader"]["engine_model"], rows["reader"]["source"]) == ("tone@1", "provenance")
        outputs = {}
        for route in ("closed_book", "retrieval", "reader"):
            items = (await http.get(f"/v1/evals/{rows[route]['eval_id']}/items")).json()["items"]
            assert sorted(i["id"] for i in items) == ["founder", "winters"]
            outputs[route] = {i["id"]: i for i in items}
        # The passages answer who founded it; closed book, the base model cannot know the made-up name.
        assert outputs["retrieval"]["founder"]["answer_contains"] == 1.0, outputs["retrieval"]["founder"]
        assert outputs["closed_book"]["founder"]["answer_contains"] == 0.0
        assert rows["closed_book"]["metrics"]["hit_at_k"] is None and rows["retrieval"]["metrics"]["hit_at_k"] == 1.0
        contains = rows["closed_book"]["delta"]["answer_contains"]
        assert contains["n"] == 2 and contains["delta"] < 0 and contains["low"] <= contains["delta"] <= contains["high"]
        assert rows["reader"]["delta"]["answer_contains"]["n"] == 2
