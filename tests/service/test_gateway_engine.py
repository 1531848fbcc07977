"""The whole chain on the real CPU vLLM: gateway → engine → answer, streaming, errors, health."""

import json

import pytest

from tests.harness import client, running_gateway

pytestmark = pytest.mark.engine
BASE = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def test_base_model_answers_through_the_gateway(make_settings, local_engine):
    async with running_gateway(make_settings(), local_engine=local_engine) as url, client(url) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        response = await http.post("/v1/chat/completions", json={
            "model": BASE, "messages": QUESTION, "temperature": 0, "max_tokens": 30})
        assert response.status_code == 200, response.text
        body = response.json()
        assert "Paris" in body["choices"][0]["message"]["content"]
        assert body["model"] == BASE and body["adapter"] == BASE and body["citations"] == []

        text = await http.post("/v1/completions", json={
            "model": BASE, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 5})
        assert text.status_code == 200 and "Paris" in text.json()["choices"][0]["text"]

        metrics = await http.get("/metrics")
        assert "graft_http_requests_total" in metrics.text and "graft_engines_ready 1.0" in metrics.text


async def test_streaming_relays_sse_events(make_settings, local_engine):
    async with running_gateway(make_settings(), local_engine=local_engine) as url, client(url) as http:
        async with http.stream("POST", "/v1/chat/completions", json={
                "model": BASE, "messages": QUESTION, "temperature": 0, "max_tokens": 30,
                "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[5:]) for line in lines[:-1]]
    assert events[0]["citations"] == [] and events[0]["adapter"] == BASE
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert "Paris" in text


@pytest.mark.parametrize("payload, status, param", [
    ({"model": "no-such-domain", "messages": QUESTION}, 404, "model"),
    ({"messages": QUESTION}, 400, "model"),
    ({"model": BASE, "messages": []}, 400, "messages"),
    ({"model": BASE, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": BASE, "messages": QUESTION, "stream": "yes"}, 400, "stream"),
    ({"model": BASE, "messages": QUESTION, "temperature": "hot"}, 400, None),  # vLLM's own check
])
async def test_bad_requests_get_one_error_shape(make_settings, local_engine, payload, status, param):
    async with running_gateway(make_settings(), local_engine=local_engine) as url, client(url) as http:
        response = await http.post("/v1/chat/completions", json=payload)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        if param:
            assert error["param"] == param
        # and the gateway keeps serving
        ok = await http.post("/v1/chat/completions", json={
            "model": BASE, "messages": QUESTION, "temperature": 0, "max_tokens": 5})
        assert ok.status_code == 200


async def test_malformed_and_oversized_bodies(make_settings, local_engine):
    settings = make_settings(max_request_bytes=10_000)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url) as http:
        bad = await http.post("/v1/chat/completions", content=b"{not json",
                              headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        array = await http.post("/v1/chat/completions", json=[1, 2])
        assert array.status_code == 400
        big = await http.post("/v1/chat/completions", json={
            "model": BASE, "messages": [{"role": "user", "content": "x" * 20_000}]})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        missing = await http.get("/v1/nothing-here")
        assert missing.status_code == 404 and "error" in missing.json()
