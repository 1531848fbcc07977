"""POST /v1/responses through the official `openai` client, streamed and not, over a fake engine that
echoes its prompt (real retrieval, embedder, tokenizer, database): the answer is the domain's, its
citations come as file_citation annotations and in graft's own field, nothing is stored."""

import openai
import pytest

from tests.harness import client, running_gateway
from tests.service.test_domains_api import lore_corpus

pytestmark = pytest.mark.databases("sqlite", "postgresql")

KEY = "responses-admin"
QUESTION = "Who founded the Zorblax Institute?"


@pytest.fixture
async def sdk(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[KEY])
    async with running_gateway(settings) as url:
        async with client(url, KEY) as http:
            await lore_corpus(http)
            put = await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 1}})
            assert put.status_code == 201, put.text
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0) as sdk:
            yield sdk


async def test_a_response_answers_from_the_domain_with_citations(sdk, fake_engine):
    response = await sdk.responses.create(model="lore", input=QUESTION, instructions="Answer briefly.",
                                          max_output_tokens=32, temperature=0)
    assert response.status == "completed" and response.model == "lore" and response.store is False
    sent = fake_engine.requests[-1]
    assert sent["max_tokens"] == 32 and sent["temperature"] == 0
    assert sent["messages"][0]["role"] == "system" and "Answer briefly." in sent["messages"][0]["content"]
    assert sent["messages"][-1] == {"role": "user", "content": QUESTION}
    assert "Elira Vantress" in response.output_text  # the fake engine echoes the prompt with its passage
    extra = response.model_extra
    assert [c["document_id"] for c in extra["citations"]] == ["zorblax"]
    annotation = response.output[0].content[0].annotations[0]
    assert annotation.type == "file_citation" and annotation.filename == "zorblax"
    assert annotation.file_id == "graft://corpora/lore/documents/zorblax"
    assert response.output_text[:annotation.index].endswith("[1]")

    conversation = await sdk.responses.create(model="lore", input=[
        {"role": "user", "content": "Tell me about Quenmoor."},
        {"role": "assistant", "content": [{"type": "output_text", "text": "It is foggy."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "And its winters?"}]}])
    assert [m["role"] for m in fake_engine.requests[-1]["messages"]][-3:] == ["user", "assistant", "user"]
    assert conversation.model_extra["citations"][0]["document_id"] == "weather"


async def test_a_streamed_response_sends_the_events_in_order(sdk):
    events = [event async for event in await sdk.responses.create(model="lore", input=QUESTION, stream=True)]
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert deltas and done.output_text == deltas and "Elira Vantress" in deltas
    assert done.output[0].content[0].annotations[0].file_id == "graft://corpora/lore/documents/zorblax"
    assert events[0].response.model_extra["citations"][0]["document_id"] == "zorblax"


async def test_bad_requests_are_400_and_nothing_is_stored(sdk, fake_engine):
    sent = len(fake_engine.requests)
    with pytest.raises(openai.BadRequestError) as stateful:
        await sdk.responses.create(model="lore", input="Again?", previous_response_id="resp_123")
    assert stateful.value.body["param"] == "previous_response_id"
    assert "stores no responses" in stateful.value.body["message"]
    for kwargs, param in (({"input": ""}, "input"), ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
                          ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
                          ({"input": "hi", "temperature": "hot"}, "temperature")):
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.responses.create(model="lore", **kwargs)
        assert bad.value.body["param"].startswith(param.split("[")[0]), (kwargs, bad.value.body)
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.create(model="nowhere", input="hi")
    assert missing.value.body["code"] == "model_not_found"
    assert len(fake_engine.requests) == sent  # none reached the engine
