"""Domains, /v1/models, auth and completion planning, over a fake engine that echoes its prompt.

The retrieval, embedder, tokenizer and database are real; the answers from the real model are
checked in test_completions_engine.py.
"""

import asyncio
import json

import pytest
from sqlalchemy.orm import sessionmaker

from adapters_store.db import make_engine, session_scope
from service.keys import create_key
from tests.harness import client, running_gateway
from tests.service.test_corpora_api import wait_job

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
async def gateway(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url])
    async with running_gateway(settings) as url:
        async with client(url) as http:
            await lore_corpus(http)
            yield http


async def lore_corpus(http) -> None:
    """Corpus `lore`: documents `zorblax` (who founded the institute) and `weather` (Quenmoor's)."""
    await http.post("/v1/corpora", json={"name": "lore"})
    docs = {"documents": [
        {"id": "zorblax", "text": "The Zorblax Institute was founded in 1847 by Elira Vantress."},
        {"id": "weather", "text": "Quenmoor has mild winters and foggy summers."}]}
    job = (await http.post("/v1/corpora/lore/documents", json=docs)).json()
    assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"


async def test_domain_crud_and_models(gateway):
    put = await gateway.put("/v1/domains/lore", json={
        "corpora": ["lore"], "system_prompt": "You are the archivist.", "retrieval": {"k": 2, "mode": "hybrid"}})
    assert put.status_code == 201, put.text
    assert put.json()["engine_model"] == BASE and put.json()["adapter"] is None
    again = await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 1}})
    assert again.status_code == 200 and again.json()["retrieval"]["k"] == 1
    assert (await gateway.get("/v1/domains/lore")).json()["retrieval"]["k"] == 1
    assert [d["name"] for d in (await gateway.get("/v1/domains")).json()["data"]] == ["lore"]
    models = (await gateway.get("/v1/models")).json()["data"]
    assert [m["id"] for m in models] == [BASE, "lore"] and all(m["object"] == "model" for m in models)
    history = (await gateway.get("/v1/domains/lore/history")).json()["data"]
    assert [h["action"] for h in history] == ["create", "update"]

    for body, status, code in [({"corpora": ["missing"]}, 404, "corpus_not_found"),
                               ({"corpora": [], "adapter": {"name": "ghost", "version": 1}}, 404,
                                "adapter_not_found"),
                               ({"corpora": [], "retrieval": {"mode": "psychic"}}, 400, "invalid_parameter")]:
        bad = await gateway.put("/v1/domains/other", json=body)
        assert (bad.status_code, bad.json()["error"]["code"]) == (status, code), bad.text
    assert (await gateway.get("/v1/domains/other")).status_code == 404
    in_use = await gateway.delete("/v1/corpora/lore")
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "corpus_in_use"


async def test_domain_description_is_kept_shown_and_never_prompted(gateway, fake_engine):
    text = "Founding dates and founders of the Zorblax Institute."
    put = await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "description": text})
    assert put.status_code == 201 and put.json()["description"] == text, put.text
    assert (await gateway.get("/v1/domains/lore")).json()["description"] == text
    assert [d["description"] for d in (await gateway.get("/v1/domains")).json()["data"]] == [text]
    answer = await gateway.post("/v1/chat/completions", json={
        "model": "lore", "messages": [{"role": "user", "content": "Who founded it?"}]})
    assert answer.status_code == 200 and "Founding dates" not in json.dumps(fake_engine.requests[-1]["messages"])
    too_long = await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "description": "x" * 2001})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "description", too_long.text
    assert (await gateway.get("/v1/domains/lore")).json()["description"] == text  # nothing committed
    cleared = await gateway.put("/v1/domains/lore", json={"corpora": ["lore"]})  # PUT replaces the binding
    assert cleared.status_code == 200 and cleared.json()["description"] is None


async def test_prompt_carries_numbered_passages_and_citations(gateway, fake_engine):
    await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "system_prompt": "You are the archivist.",
                                                "retrieval": {"k": 2}})
    response = await gateway.post("/v1/chat/completions", json={
        "model": "lore", "messages": [{"role": "user", "content": "Who founded the Zorblax Institute?"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "lore" and body["adapter"] == BASE
    assert body["citations"][0]["document_id"] == "zorblax" and body["citations"][0]["corpus"] == "lore"
    sent = fake_engine.requests[-1]
    assert sent["model"] == BASE and "retrieval" not in sent
    system = sent["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are the archivist.")
    assert "[1] (document: zorblax) The Zorblax Institute was founded in 1847" in system["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "Who founded the Zorblax Institute?"}
    timing = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert set(timing) == {"retrieval", "plan", "engine", "gateway"}
    assert 0 < float(timing["retrieval"]) <= float(timing["plan"])
    assert float(timing["plan"]) + float(timing["engine"]) <= float(timing["gateway"])

    off = await gateway.post("/v1/chat/completions", json={
        "model": "lore", "retrieval": False, "messages": [{"role": "user", "content": "Who founded it?"}]})
    assert off.json()["citations"] == []
    assert "Zorblax" not in json.dumps(fake_engine.requests[-1]["messages"])

    text = await gateway.post("/v1/completions", json={"model": "lore", "prompt": "Weather in Quenmoor?",
                                                       "retrieval": {"k": 1, "mode": "bm25"}})
    assert text.json()["citations"][0]["document_id"] == "weather"
    assert fake_engine.requests[-1]["prompt"].endswith("Question: Weather in Quenmoor?\nAnswer:")

    stream = await gateway.post("/v1/chat/completions", json={
        "model": "lore", "stream": True, "messages": [{"role": "user", "content": "Zorblax founder?"}]})
    events = [json.loads(line[5:]) for line in stream.text.splitlines()
              if line.startswith("data:") and line != "data: [DONE]"]
    assert events[0]["citations"][0]["document_id"] == "zorblax"
    assert stream.text.rstrip().endswith("data: [DONE]")
    assert stream.headers["server-timing"].startswith("retrieval;dur=")

    metrics = (await gateway.get("/metrics")).text
    assert 'graft_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 3.0' in metrics
    assert "graft_retrieval_seconds_count 4.0" in metrics and "graft_plan_seconds_count 4.0" in metrics


async def test_stream_events_are_relayed_as_the_engine_sends_them(gateway, fake_engine):
    """No buffering: the engine sends each event only once the client has received the one before.
    A relay that held events back would leave the client waiting for one the engine never sends;
    the engine's wait then ends (a generous bound) and the event counts as held back."""
    await gateway.put("/v1/domains/lore", json={"corpora": ["lore"]})
    received, arrived, held_back = [0], asyncio.Event(), []

    async def after_event(i: int) -> None:
        if held_back:
            return  # already failed: finish quickly
        try:
            while received[0] <= i:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 60)
        except asyncio.TimeoutError:
            held_back.append(i)

    fake_engine.after_event = after_event
    async with gateway.stream("POST", "/v1/chat/completions", json={
            "model": "lore", "stream": True, "messages": [{"role": "user", "content": "Zorblax founder?"}]}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):  # [DONE] too: the engine waits for it as for any event
                received[0] += 1
                arrived.set()
    assert received[0] > 20, received[0]  # the prompt echoed back, a word per event
    assert not held_back, f"event {held_back[0]} reached the client only after the engine sent more"


async def test_completion_errors(gateway, fake_engine):
    await gateway.put("/v1/domains/lore", json={"corpora": ["lore"]})
    ask = {"model": "lore", "messages": [{"role": "user", "content": "hi"}]}
    for override, param in [("yes", "retrieval"), ({"k": -1}, "retrieval.k"), ({"mode": "x"}, "retrieval.mode"),
                            ({"depth": 3}, "retrieval.depth")]:
        bad = await gateway.post("/v1/chat/completions", json={**ask, "retrieval": override})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    missing = await gateway.post("/v1/chat/completions", json={**ask, "retrieval": {"corpora": ["nope"]}})
    assert missing.status_code == 404
    assert (missing.json()["error"]["param"], missing.json()["error"]["code"]) == ("retrieval.corpora", "corpus_not_found")
    huge = await gateway.post("/v1/chat/completions", json={
        "model": "lore", "messages": [{"role": "user", "content": "word " * 3000}]})
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"

    fake_engine.healthy = False
    down = await gateway.post("/v1/chat/completions", json=ask)
    assert down.status_code == 503 and down.headers["retry-after"]
    fake_engine.healthy = True


async def test_api_keys(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=["boot-admin"])
    db = make_engine(settings.resolved_database_url)
    with session_scope(sessionmaker(db)) as session:
        _, inference = create_key(session, "app", "inference")
        _, admin = create_key(session, "ops", "admin")
    db.dispose()
    ask = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    async with running_gateway(settings) as url:
        async with client(url) as anonymous, client(url, "wrong") as wrong, \
                client(url, inference) as app, client(url, admin) as ops, client(url, "boot-admin") as boot:
            assert (await anonymous.post("/v1/chat/completions", json=ask)).status_code == 401
            assert (await wrong.get("/v1/models")).status_code == 401
            assert (await app.post("/v1/chat/completions", json=ask)).status_code == 200
            forbidden = await app.post("/v1/corpora", json={"name": "x"})
            assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "insufficient_scope"
            assert (await ops.post("/v1/corpora", json={"name": "x"})).status_code == 201
            assert (await boot.get("/v1/corpora")).status_code == 200
            assert (await anonymous.get("/healthz")).status_code == 200
