"""The agents' protocols on the real CPU vLLM: the `mcp` SDK's client asks a domain over /mcp, and
the official `openai` client gets Responses API answers, streamed and not, with the domain's citations."""

import asyncio

import pytest
from openai import OpenAI

from tests.service.test_completions_engine import gateway_url  # noqa: F401 (a fixture: the `lore` domain)
from tests.service.test_mcp import mcp_client, structured

pytestmark = pytest.mark.engine

QUESTION = "Who founded the Zorblax Institute?"


async def test_mcp_ask_answers_from_the_domain_with_citations(gateway_url):  # noqa: F811
    async with mcp_client(gateway_url, None) as session:  # open mode: no key configured
        result = await session.call_tool("ask", {"domain": "lore", "question": QUESTION, "max_tokens": 40})
        assert not result.is_error, result
        answer = structured(result)
        assert "Vantress" in answer["answer"] and answer["citations"][0]["document_id"] == "zorblax.txt"
        document = await session.read_resource(answer["citations"][0]["uri"])
        assert "founded in 1847 by Elira Vantress" in document.contents[0].text


async def test_responses_api_answers_streamed_and_not(gateway_url):  # noqa: F811
    sdk = OpenAI(base_url=f"{gateway_url}/v1", api_key="unused-in-open-mode", max_retries=0)
    response = await asyncio.to_thread(lambda: sdk.responses.create(
        model="lore", input=QUESTION, temperature=0, max_output_tokens=40))
    assert "Vantress" in response.output_text and response.status in ("completed", "incomplete")
    assert response.model_extra["citations"][0]["document_id"] == "zorblax.txt"
    assert response.output[0].content[0].annotations[0].type == "file_citation"
    assert response.usage.output_tokens > 0

    events = await asyncio.to_thread(lambda: list(sdk.responses.create(
        model="lore", input=QUESTION, temperature=0, max_output_tokens=40, stream=True)))
    assert events[-1].type == "response.completed"
    assert "Vantress" in "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.output_text == response.output_text  # temperature 0: the same answer
