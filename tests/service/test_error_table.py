"""One error table: the same bad input gets the same status and code on every route that takes
it, JSON bodies are read whatever Content-Type the client sends, and keys are checked first."""

import pytest

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

ASK = [{"role": "user", "content": "when was the institute founded?"}]

# (what is wrong, method, path, JSON body): each group must answer one status and one code.
UNKNOWN_CORPUS = [
    ("GET", "/v1/corpora/ghost", None),
    ("DELETE", "/v1/corpora/ghost", None),
    ("GET", "/v1/corpora/ghost/documents", None),
    ("POST", "/v1/corpora/ghost/documents", {"documents": [{"text": "x"}]}),
    ("POST", "/v1/corpora/ghost/search", {"query": "x"}),
    ("POST", "/v1/corpora/ghost/rebuild", {"chunk_size": 64}),
    ("PUT", "/v1/domains/new", {"corpora": ["ghost"]}),
    ("POST", "/v1/chat/completions", {"model": "lore", "messages": ASK, "retrieval": {"corpora": ["ghost"]}}),
]
UNKNOWN_ADAPTER = [
    ("GET", "/v1/adapters/ghost/versions", None),
    ("DELETE", "/v1/adapters/ghost/versions/1", None),
    ("DELETE", "/v1/adapters/tone/versions/9", None),
    ("PUT", "/v1/domains/new", {"adapter": {"name": "ghost", "version": 1}}),
    ("POST", "/v1/domains/lore/adapter", {"adapter": "ghost", "version": 1}),
    ("POST", "/v1/domains/lore/adapter", {"adapter": "tone", "version": 9}),
]
UNKNOWN_DOMAIN = [
    ("GET", "/v1/domains/ghost", None),
    ("DELETE", "/v1/domains/ghost", None),
    ("GET", "/v1/domains/ghost/history", None),
    ("POST", "/v1/domains/ghost/adapter", {"adapter": "tone", "version": 1}),
    ("POST", "/v1/domains/ghost/rollback", None),
]
BAD_MODE = [
    ("POST", "/v1/corpora/lore/search", {"query": "x", "mode": "psychic"}),
    ("PUT", "/v1/domains/new", {"retrieval": {"mode": "psychic"}}),
    ("POST", "/v1/chat/completions", {"model": "lore", "messages": ASK, "retrieval": {"mode": "psychic"}}),
]
BAD_K = [
    ("POST", "/v1/corpora/lore/search", {"query": "x", "k": 1000}),
    ("POST", "/v1/corpora/lore/search", {"query": "x", "k": -1}),
    ("PUT", "/v1/domains/new", {"retrieval": {"k": 1000}}),
    ("PUT", "/v1/domains/new", {"retrieval": {"k": -1}}),
    ("POST", "/v1/chat/completions", {"model": "lore", "messages": ASK, "retrieval": {"k": 1000}}),
    ("POST", "/v1/chat/completions", {"model": "lore", "messages": ASK, "retrieval": {"k": -1}}),
]
CASES = [("unknown corpus", UNKNOWN_CORPUS, 404, "corpus_not_found"),
         ("unknown adapter version", UNKNOWN_ADAPTER, 404, "adapter_not_found"),
         ("unknown domain", UNKNOWN_DOMAIN, 404, "domain_not_found"),
         ("bad mode", BAD_MODE, 400, "invalid_parameter"),
         ("bad k", BAD_K, 400, "invalid_parameter")]
# Every route whose body is JSON, with a valid body.
JSON_ROUTES = [
    ("POST", "/v1/corpora", {"name": "curl-made"}),
    ("POST", "/v1/corpora/lore/search", {"query": "institute"}),
    ("POST", "/v1/corpora/lore/documents", {"documents": [{"id": "more", "text": "More lore."}]}),
    ("POST", "/v1/corpora/lore/rebuild", {"chunk_size": 64}),
    ("PUT", "/v1/domains/curl-made", {"corpora": ["lore"]}),
    ("POST", "/v1/domains/lore/adapter", {"adapter": "tone", "version": 1}),
    ("POST", "/v1/chat/completions", {"model": "lore", "messages": ASK}),
    ("POST", "/v1/completions", {"model": "lore", "prompt": "The institute"}),
]


@pytest.fixture
async def gateway(lore_gateway):
    return lore_gateway


async def test_the_same_bad_input_gets_the_same_status_and_code_on_every_route(gateway):
    for what, requests, status, code in CASES:
        for method, path, body in requests:
            response = await gateway.request(method, path, json=body)
            error = response.json().get("error", {})
            assert (response.status_code, error.get("code")) == (status, code), (what, method, path, response.text)
            assert set(error) == {"message", "type", "param", "code"}
    assert (await gateway.get("/v1/domains/new")).status_code == 404, "a refused PUT created nothing"


async def test_json_bodies_are_read_whatever_the_content_type(gateway):
    import json
    for method, path, body in JSON_ROUTES:
        for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
            headers = {"Content-Type": content_type} if content_type else {}
            response = await gateway.request(method, path, content=json.dumps(body), headers=headers)
            assert response.status_code < 300 or (method, path, response.status_code) == (
                "POST", "/v1/corpora", 409), (method, path, content_type, response.text)


async def test_malformed_json_is_400_everywhere_and_keys_are_checked_first(gateway):
    for method, path, _ in JSON_ROUTES:
        bad = await gateway.request(method, path, content=b"{not json")
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_json"), (path, bad.text)
        anonymous = await gateway.request(method, path, content=b"{not json", headers={"Authorization": ""})
        assert anonymous.status_code == 401, (path, anonymous.text)
