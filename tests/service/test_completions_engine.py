"""Retrieval-augmented completions on the real CPU vLLM, through the official `openai` SDK."""

import asyncio
import time

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

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


async def engine_metrics(engine_url: str) -> dict[tuple[str, str], float]:
    """The engine's own Prometheus samples: (name, finished_reason or "") → value, summed."""
    async with httpx.AsyncClient(timeout=120) as http:  # a busy machine can be slow to answer
        text = (await http.get(f"{engine_url}/metrics")).text
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("finished_reason", ""))
            values[key] = values.get(key, 0.0) + sample.value
    return values


FINISHED = "vllm:request_success_total"
RUNNING = ("vllm:num_requests_running", "")
GENERATED = ("vllm:generation_tokens_total", "")


def finished(metrics: dict) -> float:
    """Requests the engine finished (for any reason but an abort)."""
    return sum(value for (name, reason), value in metrics.items() if name == FINISHED and reason != "abort")


async def until_engine_idle(engine_url: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (metrics := await engine_metrics(engine_url))[RUNNING] != 0.0:
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine still runs {metrics[RUNNING]} request(s)")
        await asyncio.sleep(0.2)
    return metrics


async def test_first_token_arrives_before_generation_ends(gateway_url, local_engine):
    """Tokens reach the client while the engine is still generating the rest: when the 20th token
    event arrives, the engine has not finished the request (its own counters say so). A relay that
    buffered the answer would deliver the first token only after the engine's last one."""
    before = await until_engine_idle(local_engine.url)
    tokens = 0
    async with client(gateway_url) as http:
        async with http.stream("POST", "/v1/chat/completions", json={
                "model": "lore", "messages": QUESTION, "temperature": 0, "max_tokens": 1500,
                "ignore_eos": True, "stream": True}) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"content":"' in line:
                    tokens += 1  # an event per token, not one at the end
                    if tokens == 20:
                        break
            during = await engine_metrics(local_engine.url)
        # leaving the block closes the connection: the engine drops the request
    assert tokens == 20
    done, generated = finished(during) - finished(before), during[GENERATED] - before[GENERATED]
    assert done == 0 and generated < 1500, f"the engine had finished ({generated} tokens) before the client saw any"
    await until_engine_idle(local_engine.url)


async def test_client_disconnect_cancels_the_engine_request(gateway_url, local_engine):
    """The client goes away three events into a 1500-token answer: the engine stops generating it
    (it goes idle without finishing the request, well short of 1500 tokens), whatever the machine's
    speed. The engine's counters, not the clock, say so."""
    before = await until_engine_idle(local_engine.url)
    async with client(gateway_url) as http:
        async with http.stream("POST", "/v1/chat/completions", json={
                "model": "lore", "messages": QUESTION, "max_tokens": 1500, "ignore_eos": True,
                "stream": True}) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            lines = response.aiter_lines()
            for _ in range(3):
                await anext(lines)
            deadline = time.monotonic() + 300
            while (await engine_metrics(local_engine.url))[RUNNING] != 1.0:  # its gauge lags a little
                assert time.monotonic() < deadline, "the engine never reported the request running"
                await asyncio.sleep(0.1)
        # leaving the block closes the connection mid-stream
    after = await until_engine_idle(local_engine.url)
    done, generated = finished(after) - finished(before), after[GENERATED] - before[GENERATED]
    assert done == 0 and generated < 1500, f"the engine ran the request to its end ({generated} tokens)"
