"""/mcp through the official `mcp` SDK's client against a running gateway: two tenants (acme, beta),
each with corpus `handbook` and domain `support`; a key of acme with a document filter (group hr).
Tools are listed per key, search/ask/resources answer what the same key gets over REST and nothing
else, and hostile input answers errors while the gateway keeps serving.

Real embedder, FAISS, BM25 and database; the engine is the fake one, which echoes the prompt it got
(so a passage that reached it would show in the answer).
"""

import json
from contextlib import asynccontextmanager

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.harness import client, running_gateway
from tests.service.test_corpora_api import wait_job

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ROOT = "root-admin"
QUESTION = "How many vacation days do I get?"


def handbook(tenant: str) -> dict:
    code = tenant.upper() + "SECRET"  # in this tenant's documents only
    rows = [(f"leave-{i}", "all", f"Vacation policy part {i}: paid leave and vacation days. Code {code}{i}.")
            for i in range(4)]
    rows += [("hr-only", "hr", f"HR staff vacation days are booked in the HR portal. Code {code}HR.")]
    return {"documents": [{"id": i, "text": t, "metadata": {"group": g}} for i, g, t in rows]}


@asynccontextmanager
async def mcp_client(url: str, key: str | None):
    """The SDK's own client on the gateway's /mcp, sending `key` as graft's Bearer key."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as session:
            yield session


def structured(result) -> dict:
    assert result.structured_content is not None, result
    return result.structured_content


@pytest.fixture
async def deployment(make_settings, fake_engine):
    """(base URL, keys by name)."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ROOT])
    keys = {}
    async with running_gateway(settings) as url:
        async with client(url, ROOT) as root:
            for tenant in ("acme", "beta"):
                assert (await root.post("/v1/tenants", json={"name": tenant})).status_code == 201
                for name, body in (("admin", {"scope": "admin"}), ("app", {"scope": "inference"}),
                                   ("hr", {"scope": "inference", "filter": {"group": "hr"}})):
                    made = await root.post("/v1/keys", json={"name": f"{tenant}-{name}", "tenant": tenant, **body})
                    assert made.status_code == 201, made.text
                    keys[f"{tenant}-{name}"] = made.json()["key"]
        for tenant in ("acme", "beta"):
            async with client(url, keys[f"{tenant}-admin"]) as admin:
                assert (await admin.post("/v1/corpora", json={"name": "handbook"})).status_code == 201
                job = (await admin.post("/v1/corpora/handbook/documents", json=handbook(tenant))).json()
                assert (await wait_job(admin, job["job_id"]))["status"] == "succeeded"
                put = await admin.put("/v1/domains/support", json={
                    "corpora": ["handbook"], "retrieval": {"k": 3}, "description": f"{tenant}'s staff handbook"})
                assert put.status_code == 201, put.text
        yield url, keys


async def test_sdk_client_lists_tools_searches_asks_and_reads_a_document(deployment, fake_engine):
    url, keys = deployment
    async with mcp_client(url, keys["acme-app"]) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == {"search", "ask", "list_domains"}
        assert tools["search"].input_schema["properties"]["domain"]["enum"] == ["acme:support"]
        domains = structured(await session.call_tool("list_domains", {}))["domains"]
        assert domains == [{"name": "acme:support", "description": "acme's staff handbook", "corpora": ["acme:handbook"]}]

        found = await session.call_tool("search", {"domain": "support", "query": "vacation days", "k": 5})
        assert not found.is_error, found
        hits = structured(found)["hits"]
        async with client(url, keys["acme-app"]) as rest:  # the same hits as REST search
            same = (await rest.post("/v1/corpora/handbook/search", json={"query": "vacation days", "k": 5})).json()
        assert [(h["document_id"], h["chunk_id"], h["text"]) for h in hits] == \
               [(h["document_id"], h["chunk_id"], h["text"]) for h in same["hits"]]
        assert json.loads(found.content[0].text) == structured(found)

        answer = structured(await session.call_tool("ask", {"domain": "support", "question": QUESTION}))
        assert answer["model"] == "support" and answer["citations"]  # as the key named it, as REST answers
        assert "Code ACMESECRET" in answer["answer"]  # the fake engine echoes the prompt with its passages
        assert "acme's staff handbook" not in json.dumps(fake_engine.requests[-1]["messages"])
        assert fake_engine.requests[-1]["temperature"] == 0  # greedy: the same question, the same answer

        document = (await session.read_resource(hits[0]["uri"])).contents[0]
        assert hits[0]["uri"].startswith("graft://corpora/acme%3Ahandbook/documents/")
        assert hits[0]["text"] in document.text and document.mime_type == "text/plain"


async def test_tenant_and_document_filter_hold_through_search_ask_and_resources(deployment, fake_engine):
    url, keys = deployment
    async with mcp_client(url, keys["beta-app"]) as beta:
        assert [d["name"] for d in structured(await beta.call_tool("list_domains", {}))["domains"]] == ["beta:support"]
        assert (await beta.list_tools()).tools[0].input_schema["properties"]["domain"]["enum"] == ["beta:support"]
        async with client(url, keys["beta-app"]) as rest:
            refused = (await rest.post("/v1/chat/completions", json={
                "model": "acme:support", "messages": [{"role": "user", "content": QUESTION}]})).json()["error"]
        for tool, args in (("search", {"domain": "acme:support", "query": "vacation"}),
                           ("ask", {"domain": "acme:support", "question": QUESTION})):
            result = await beta.call_tool(tool, args)
            assert result.is_error and result.content[0].text == refused["message"]
            assert structured(result)["error"]["code"] == "model_not_found"
        with pytest.raises(MCPError) as hidden:
            await beta.read_resource("graft://corpora/acme%3Ahandbook/documents/leave-1")
        assert "does not exist" in hidden.value.message and "ACMESECRET" not in hidden.value.message

    async with mcp_client(url, keys["acme-hr"]) as hr:
        sent_before = len(fake_engine.requests)
        for query in ("vacation policy paid leave", "HR portal", "Code ACMESECRET1"):
            hits = structured(await hr.call_tool("search", {"domain": "support", "query": query, "k": 5}))["hits"]
            assert [h["document_id"] for h in hits] == ["hr-only"]
        # A filter of the request's own only narrows the key's.
        widened = await hr.call_tool("search", {"domain": "support", "query": "vacation", "filter": {"group": "all"}})
        assert structured(widened)["hits"] == []
        answer = structured(await hr.call_tool("ask", {"domain": "support", "question": QUESTION}))
        assert [c["document_id"] for c in answer["citations"]] == ["hr-only"]
        for sent in fake_engine.requests[sent_before:]:
            assert "ACMESECRET0" not in json.dumps(sent)
        assert "HR portal" in (await hr.read_resource(answer["citations"][0]["uri"])).contents[0].text
        with pytest.raises(MCPError) as filtered:
            await hr.read_resource("graft://corpora/handbook/documents/leave-1")
        with pytest.raises(MCPError) as missing:
            await hr.read_resource("graft://corpora/handbook/documents/leave-99")
        # A hidden document is as missing as one that does not exist.
        assert filtered.value.code == missing.value.code
        assert filtered.value.message == missing.value.message.replace("leave-99", "leave-1")


async def test_hostile_input_answers_errors_and_the_gateway_keeps_serving(deployment):
    url, keys = deployment
    headers = {"Authorization": f"Bearer {keys['acme-app']}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        no_key = await http.post("/mcp", json=init)
        assert no_key.status_code == 401 and no_key.json()["error"]["message"].startswith("missing API key"), no_key.text
        bad_key = await http.post("/mcp", json=init, headers={**headers, "Authorization": "Bearer nope"})
        assert bad_key.status_code == 401 and bad_key.json()["error"]["code"] == "invalid_api_key"
        malformed = await http.post("/mcp", content=b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=headers)
        assert 400 <= malformed.status_code < 500 and malformed.json()["error"]["code"] == -32700, malformed.text
        not_rpc = await http.post("/mcp", json=[1, "two", None], headers=headers)
        assert 400 <= not_rpc.status_code < 500, not_rpc.text
        huge = await http.post("/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "search", "arguments": {"domain": "support", "query": "x" * (2 << 20)}}})
        assert huge.status_code == 413, huge.status_code

        # A session opened by one key is not another key's: answered as a session that does not exist.
        opened = await http.post("/mcp", json=init, headers=headers)
        assert opened.status_code == 200, opened.text
        session_id = opened.headers["mcp-session-id"]
        other = {**headers, "Authorization": f"Bearer {keys['beta-app']}", "Mcp-Session-Id": session_id,
                 "Mcp-Protocol-Version": "2025-06-18"}
        stolen = await http.post("/mcp", headers=other, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
        assert stolen.status_code == 404 and "acme" not in stolen.text, stolen.text

    async with client(url, keys["acme-app"]) as rest:
        rest_errors = {}
        for body in ({"query": 5}, {"query": "vacation", "k": 0}, {"query": "vacation", "k": "3"},
                     {"query": "vacation", "mode": "psychic"}, {"query": "vacation", "filter": {"group": {"$x": 1}}},
                     {"query": "   "}, {"query": "vacation", "surprise": True}, {"query": "a\u0000b"}):
            answer = await rest.post("/v1/corpora/handbook/search", json=body)
            assert answer.status_code == 400, answer.text
            rest_errors[json.dumps(body)] = answer.json()["error"]["message"]
    async with mcp_client(url, keys["acme-app"]) as session:
        with pytest.raises(MCPError) as unknown:
            await session.call_tool("delete_everything", {})
        assert "unknown tool" in unknown.value.message
        for body, message in rest_errors.items():
            result = await session.call_tool("search", {"domain": "support", **json.loads(body)})
            assert result.is_error, body
            if "\\u0000" not in body:  # the REST body is refused as JSON, the tool's argument as a string
                assert result.content[0].text == message, body
            assert structured(result)["status"] == 400
        for args in ({"domain": 7, "question": "x"}, {"domain": "support"}, {"domain": "support", "question": ""},
                     {"domain": "support", "question": "x", "max_tokens": -1}, {"domain": "nowhere", "question": "x"}):
            result = await session.call_tool("ask", args)
            assert result.is_error and structured(result)["status"] in (400, 404), args
        hits = structured(await session.call_tool("search", {"domain": "support", "query": "vacation"}))["hits"]
        assert hits  # still serving


async def test_an_agent_framework_drives_a_tool_call_end_to_end(deployment):
    """The OpenAI Agents SDK's MCP client, with a scripted model: it lists graft's tools, the model
    calls `search`, the SDK calls the tool on /mcp, and the model's next turn sees the hits."""
    from agents import Agent, Runner, set_tracing_disabled
    from agents.mcp import MCPServerStreamableHttp
    from agents.testing.model import ModelStep, ScriptedModel
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

    set_tracing_disabled(True)  # nothing leaves the machine
    url, keys = deployment
    seen = {}

    def answer(call):
        seen["tools"] = sorted(tool.name for tool in call.tools)
        seen["output"] = next(item["output"] for item in call.input if item.get("type") == "function_call_output")
        return [ResponseOutputMessage(id="msg_1", type="message", role="assistant", status="completed", content=[
            ResponseOutputText(type="output_text", text="Found it.", annotations=[])])]

    model = ScriptedModel([
        [ResponseFunctionToolCall(type="function_call", id="fc_1", call_id="call_1", name="search", status="completed",
                                  arguments=json.dumps({"domain": "support", "query": "HR portal", "k": 2}))],
        ModelStep.respond(answer)])
    server = MCPServerStreamableHttp(name="graft", params={
        "url": f"{url}/mcp", "headers": {"Authorization": f"Bearer {keys['acme-hr']}"}, "timeout": 60})
    async with server:
        agent = Agent(name="helper", instructions="Use graft's tools.", model=model, mcp_servers=[server])
        result = await Runner.run(agent, "Where are HR vacation days booked?")
    assert result.final_output == "Found it."
    assert seen["tools"] == ["ask", "list_domains", "search"]
    output = seen["output"] if isinstance(seen["output"], str) else json.dumps(seen["output"])
    assert "HR portal" in output and "ACMESECRET0" not in output


async def test_fuzzing_the_tools_input_schemas_finds_no_server_error(deployment):
    """Arguments drawn from each listed tool's input schema (schemathesis's own JSON Schema engine)
    and arbitrary JSON in each argument: every call answers a result or a tool error of status 4xx,
    never a protocol or server error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    import jsonschema_rs
    from schemathesis.generation.jsonschema.builder import build

    url, keys = deployment
    anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                            max_leaves=8)
    async with mcp_client(url, keys["acme-hr"]) as session:
        tools = (await session.list_tools()).tools
        cases = []
        for tool in tools:
            schema = tool.input_schema
            wrong = st.fixed_dictionaries({}, optional={name: anything for name in schema.get("properties", {})})
            for strategy in (build(schema, draft=jsonschema_rs.Draft202012, formats={}), wrong):
                drawn = []
                settings(max_examples=25, database=None, derandomize=True, deadline=None,
                         suppress_health_check=list(HealthCheck))(given(strategy)(lambda a: drawn.append(a)))()
                cases += [(tool.name, arguments) for arguments in drawn]
        for name, arguments in cases:
            result = await session.call_tool(name, arguments)
            if result.is_error:
                assert 400 <= structured(result)["status"] < 500, (name, arguments, result)
