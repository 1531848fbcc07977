"""Retrieval-augmented completions on the real CPU vLLM, through the official `openai` SDK."""

import asyncio
import re
import time

import httpx
import pytest
from openai import OpenAI

from migrations.runner import upgrade
from service.settings import Settings
from tests.harness import client, free_port, running_gateway
from tests.service.test_corpora_api import upload

pytestmark = pytest.mark.engine

FACT = b"The Zorblax Institute was founded in 1847 by Elira Vantress in the city of Quenmoor."
QUESTION = [{"role": "user", "content": "Who founded the Zorblax Institute?"}]


@pytest.fixture(scope="module")
async def gateway_url(local_engine, base_model_dir, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("rag"), base_model=str(base_model_dir),
                        port=free_port())
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url) as http:
        await http.post("/v1/corpora", json={"name": "lore"})
        job = await upload(http, "lore", [
            ("zorblax.txt", FACT, "text/plain"),
            ("weather.txt", b"Quenmoor has mild winters and foggy summers.", "text/plain"),
            ("trains.txt", b"The night train to Quenmoor leaves at eleven from platform four.", "text/plain")])
        assert job["status"] == "succeeded"
        domain = await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 2}})
        assert domain.status_code == 201
        yield url


def sdk(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused-in-open-mode", max_retries=0)


async def test_sdk_answers_with_the_fact_and_cites_it(gateway_url):
    def ask(**extra):
        return sdk(gateway_url).chat.completions.create(model="lore", messages=QUESTION, temperature=0,
                                                        max_tokens=40, **extra)

    with_rag = await asyncio.to_thread(ask)
    assert "Vantress" in with_rag.choices[0].message.content
    citations = with_rag.model_extra["citations"]
    assert citations[0]["document_id"] == "zorblax.txt" and citations[0]["corpus"] == "lore"
    assert with_rag.model == "lore" and with_rag.model_extra["adapter"] == "SmolLM2-135M-Instruct"

    without = await asyncio.to_thread(ask, extra_body={"retrieval": False})
    assert "Vantress" not in without.choices[0].message.content
    assert without.model_extra["citations"] == []

    text = await asyncio.to_thread(lambda: sdk(gateway_url).completions.create(
        model="lore", prompt="Who founded the Zorblax Institute?", temperature=0, max_tokens=30))
    assert "Vantress" in text.choices[0].text
    assert text.model_extra["citations"][0]["document_id"] == "zorblax.txt"


async def test_sdk_streaming(gateway_url):
    def stream():
        chunks = list(sdk(gateway_url).chat.completions.create(
            model="lore", messages=QUESTION, temperature=0, max_tokens=40, stream=True))
        return chunks

    chunks = await asyncio.to_thread(stream)
    assert chunks[0].model_extra["citations"][0]["document_id"] == "zorblax.txt"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Vantress" in text


async def test_first_token_arrives_before_generation_ends(gateway_url):
    arrivals = []
    async with client(gateway_url) as http:
        started = time.perf_counter()
        async with http.stream("POST", "/v1/chat/completions", json={
                "model": "lore", "messages": QUESTION, "temperature": 0, "max_tokens": 120,
                "ignore_eos": True, "stream": True}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"content":"' in line:
                    arrivals.append(time.perf_counter() - started)
    assert len(arrivals) >= 100  # an event per token, not one at the end
    # The first token arrives long before the last one is made. (How evenly the rest arrive depends
    # on how busy the machine is: a niced engine beside other work sends its tokens in bursts.
    # test_domains_api.py checks the relay's pacing against an engine of fixed pace.)
    assert arrivals[0] < arrivals[-1] * 0.5, (arrivals[0], arrivals[-1])


async def test_client_disconnect_cancels_the_engine_request(gateway_url, local_engine):
    async def running() -> float:
        async with httpx.AsyncClient(timeout=60) as http:  # a busy machine can be slow to answer
            metrics = (await http.get(f"{local_engine.url}/metrics")).text
        match = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)", metrics, re.M)
        return float(match.group(1))

    async with client(gateway_url) as http:
        async with http.stream("POST", "/v1/chat/completions", json={
                "model": "lore", "messages": QUESTION, "max_tokens": 1500, "ignore_eos": True,
                "stream": True}) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            lines = response.aiter_lines()
            for _ in range(3):
                await anext(lines)
            assert await running() == 1.0
        # leaving the block closes the connection mid-stream
    for _ in range(100):
        if await running() == 0.0:
            break
        await asyncio.sleep(0.1)
    assert await running() == 0.0
