"""Fixtures shared by the API test modules of this package."""

import pytest

from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job


@pytest.fixture
async def lore_gateway(make_settings, fake_engine, good_lora):
    """A keyed gateway on the fake engine with corpus `lore` (one document), adapter `tone` (v1) and
    domain `lore` over the corpus; yields a client with the admin key."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=["admin-key"])
    async with running_gateway(settings) as url:
        async with client(url, "admin-key") as http:
            await http.post("/v1/corpora", json={"name": "lore"})
            job = (await http.post("/v1/corpora/lore/documents", json={"documents": [
                {"id": "zorblax", "text": "The Zorblax Institute was founded in 1847."}]})).json()
            assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
            assert (await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
            assert (await http.put("/v1/domains/lore", json={"corpora": ["lore"]})).status_code == 201
            yield http
