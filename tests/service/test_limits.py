"""Per-key and per-tenant limits (service/limits.py): the RateLimiter on a fake clock, then through a
gateway on the fake engine with keys and tenants in a real SQLite database."""

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import sessionmaker

from adapters_store.db import make_engine, session_scope
from adapters_store.errors import RateLimited
from service.auth import Principal
from service.keys import create_key, create_tenant
from service.limits import GLOBAL, RateLimiter, StreamTokens
from service.metrics import Metrics
from tests.harness import client, running_gateway

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

BASE = "SmolLM2-135M-Instruct"
ASK = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
WAIT_S = 30.0  # the bound on waiting for a state the gateway reaches on its own


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(key_id: int, tenant: str | None = None, **limits) -> Principal:
    return Principal(key_id, "inference", tenant=tenant, limits=limits or None)


async def admitted(limiter: RateLimiter, principal: Principal, tokens: int = 0) -> None:
    """One request that starts and ends, generating `tokens`."""
    async with limiter.admit(principal) as admission:
        admission.charge(tokens)


async def refused(limiter: RateLimiter, principal: Principal) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await admitted(limiter, principal)
    assert caught.value.code == "rate_limit_exceeded"
    return caught.value


# --- the limiter alone, on a fake clock ---------------------------------------------------------

async def test_requests_per_minute_refill_and_retry_after():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    app = key(1, requests_per_minute=2)
    await admitted(limiter, app)
    await admitted(limiter, app)
    error = await refused(limiter, app)
    assert error.retry_after_s == 30  # one request comes back every 60 / 2 s
    assert "key 1" in error.message and "2 requests per minute" in error.message
    clock.advance(29)
    assert (await refused(limiter, app)).retry_after_s == 1  # at least 1, never 0
    clock.advance(1)
    await admitted(limiter, app)
    clock.advance(600)  # idle: the bucket holds a minute's allowance, no more
    await admitted(limiter, app)
    await admitted(limiter, app)
    assert (await refused(limiter, app)).retry_after_s == 30


async def test_tokens_per_minute_are_charged_when_a_request_ends_and_may_go_below_zero():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    app = key(1, tokens_per_minute=10)
    await admitted(limiter, app, tokens=25)  # admitted with 10 left; charged 25 at the end: -15
    error = await refused(limiter, app)
    assert error.retry_after_s == 96  # 16 tokens to refill at 10 per minute
    assert "10 generated tokens per minute" in error.message
    clock.advance(95)
    assert (await refused(limiter, app)).retry_after_s == 1
    clock.advance(1)
    await admitted(limiter, app, tokens=1)
    # Tokens of requests still running are not charged yet: two may start on the last token.
    clock.advance(6)
    async with limiter.admit(app) as first, limiter.admit(app) as second:
        first.charge(3)
        second.charge(3)
    assert (await refused(limiter, app)).retry_after_s == 36


async def test_concurrent_requests_and_release_on_error_and_detach():
    limiter = RateLimiter(clock=FakeClock())
    app = key(1, concurrent=2)
    async with limiter.admit(app), limiter.admit(app):
        assert limiter.in_flight("key", 1) == 2
        error = await refused(limiter, app)
        assert error.retry_after_s == 1 and "2 concurrent requests" in error.message
    assert limiter.in_flight("key", 1) == 0

    with pytest.raises(ValueError):  # an error (or a cancelled request) releases it too
        async with limiter.admit(app):
            raise ValueError("boom")
    assert limiter.in_flight("key", 1) == 0

    async with limiter.admit(app) as streaming:
        streaming.detach()  # a stream's relay releases it when the stream ends
    assert limiter.in_flight("key", 1) == 1
    streaming.release()
    streaming.release()  # once only
    assert limiter.in_flight("key", 1) == 0


async def test_a_refused_request_charges_nothing():
    limiter = RateLimiter(clock=FakeClock())
    app = key(1, requests_per_minute=2, concurrent=1)
    async with limiter.admit(app):
        await refused(limiter, app)  # over `concurrent`: its request is not counted
    await admitted(limiter, app)  # the second of two requests this minute
    assert "requests per minute" in (await refused(limiter, app)).message


async def test_a_tenant_limit_is_shared_by_its_keys():
    clock = FakeClock()
    stored = {"acme": {"requests_per_minute": 3, "concurrent": 5}}
    limiter = RateLimiter(stored.get, clock=clock)
    one, two, other, global_key = key(1, "acme"), key(2, "acme"), key(3, "other"), key(4)
    await admitted(limiter, one)
    await admitted(limiter, one)
    await admitted(limiter, two)
    error = await refused(limiter, two)
    assert "tenant 'acme'" in error.message and error.retry_after_s == 20
    assert "tenant 'acme'" in (await refused(limiter, one)).message
    for _ in range(10):  # another tenant and a global key are not held back by acme's limit
        await admitted(limiter, other)
        await admitted(limiter, global_key)
    clock.advance(20)
    await admitted(limiter, two)


async def test_the_tighter_of_a_key_and_its_tenant_applies():
    limiter = RateLimiter({"acme": {"requests_per_minute": 100}}.get, clock=FakeClock())
    tight = key(1, "acme", requests_per_minute=1)
    await admitted(limiter, tight)
    assert "key 1" in (await refused(limiter, tight)).message
    limiter = RateLimiter({"acme": {"requests_per_minute": 1}}.get, clock=FakeClock())
    loose = key(1, "acme", requests_per_minute=100)
    await admitted(limiter, loose)
    assert "tenant 'acme'" in (await refused(limiter, loose)).message


async def test_bootstrap_keys_and_open_mode_are_not_limited_and_read_nothing():
    reads = []
    limiter = RateLimiter(lambda tenant: reads.append(tenant), clock=FakeClock())
    for _ in range(100):
        await admitted(limiter, Principal(None, "admin"), tokens=10**6)
    assert reads == []


async def test_tenant_limits_are_cached_for_a_few_seconds():
    clock = FakeClock()
    stored, reads = {"acme": {"requests_per_minute": 1}}, []

    def load(tenant):
        reads.append(tenant)
        return stored.get(tenant)

    limiter = RateLimiter(load, clock=clock, tenant_cache_s=5)
    await admitted(limiter, key(1, "acme"))
    await refused(limiter, key(2, "acme"))
    assert reads == ["acme"]  # no database read per request
    stored["acme"] = {"requests_per_minute": 1000}
    clock.advance(4)
    await refused(limiter, key(1, "acme"))
    clock.advance(1)  # the cache is stale: the new limit applies
    await admitted(limiter, key(1, "acme"))
    assert reads == ["acme", "acme"]
    stored["acme"] = None  # limits removed
    clock.advance(5)
    for _ in range(2000):
        await admitted(limiter, key(1, "acme"))

    def broken(tenant):
        raise OSError("database down")

    limiter._tenant_limits = broken  # a failed read keeps the last limits read
    clock.advance(5)
    await admitted(limiter, key(1, "acme"))


async def test_metrics_count_refusals_in_flight_and_tokens_per_tenant():
    metrics = Metrics()
    limiter = RateLimiter({"acme": {"concurrent": 1}}.get, metrics=metrics, clock=FakeClock())

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, labels)

    async with limiter.admit(key(1, "acme")):
        assert sample("graft_requests_in_flight", tenant="acme") == 1
        await refused(limiter, key(2, "acme"))
    assert sample("graft_requests_in_flight", tenant="acme") == 0
    assert sample("graft_rate_limited_total", tenant="acme", limit="concurrent", whose="tenant") == 1
    await admitted(limiter, key(3, tokens_per_minute=5), tokens=7)
    await refused(limiter, key(3, tokens_per_minute=5))
    assert sample("graft_rate_limited_total", tenant=GLOBAL, limit="tokens_per_minute", whose="key") == 1
    assert sample("graft_generated_tokens_total", tenant=GLOBAL) == 7


def test_stream_tokens_prefers_the_engines_usage():
    counted = StreamTokens()
    for word in ("a ", "b ", "", "c"):
        counted.see({"choices": [{"index": 0, "delta": {"content": word}}]})
    assert counted.total == 3  # one per event with text
    counted.see({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 5}})
    assert counted.total == 5  # the engine's count, when it sends one
    text = StreamTokens()
    text.see({"choices": [{"index": 0, "text": "x"}]})
    assert text.total == 1


# --- through the gateway ------------------------------------------------------------------------

def metric_samples(text: str, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of every sample called `name` in a /metrics page."""
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


async def wait_for(check, what: str) -> None:
    """Poll the coroutine function `check` until it returns true, for at most WAIT_S seconds."""
    for _ in range(int(WAIT_S / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def held_after_the_first_event(go_on: asyncio.Event):
    """A fake engine's `after_event`: a stream's first event is sent, the rest once `go_on` is set."""
    async def after_event(i: int) -> None:
        if i == 0:
            await asyncio.wait_for(go_on.wait(), WAIT_S)
    return after_event


async def nothing_in_flight(http) -> bool:
    text = (await http.get("/metrics")).text
    return metric_samples(text, "graft_requests_in_flight").get((("tenant", GLOBAL),), 0.0) == 0


@pytest.fixture
def keyed(make_settings, fake_engine):
    """Settings of a keyed gateway on the fake engine, and `make(name, tenant=None, limits=None)`
    that stores a key in its database (and its tenant, with `tenant_limits`, the first time)."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=["admin-key"])
    db = make_engine(settings.resolved_database_url)
    tenants: set[str] = set()

    def make(name: str, tenant: str | None = None, limits: dict | None = None,
             tenant_limits: dict | None = None) -> str:
        with session_scope(sessionmaker(db)) as session:
            if tenant is not None and tenant not in tenants:
                create_tenant(session, tenant, tenant_limits)
                tenants.add(tenant)
            return create_key(session, name, "inference", tenant=tenant, limits=limits)[1]

    yield settings, make
    db.dispose()


def assert_rate_limited(response, *words: str) -> None:
    assert response.status_code == 429, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "rate_limit_exceeded", None)
    assert all(w in error["message"] for w in words), error["message"]
    assert int(response.headers["retry-after"]) >= 1


async def test_requests_per_minute_of_a_key(keyed):
    settings, make = keyed
    limited, free = make("app", limits={"requests_per_minute": 2}), make("other")
    async with running_gateway(settings) as url, client(url, limited) as app, client(url, free) as other:
        assert (await app.post("/v1/chat/completions", json=ASK)).status_code == 200
        assert (await app.post("/v1/completions", json={"model": BASE, "prompt": "hi"})).status_code == 200
        third = await app.post("/v1/chat/completions", json=ASK)
        assert_rate_limited(third, "requests per minute")
        assert 1 <= int(third.headers["retry-after"]) <= 30
        # Search counts against requests_per_minute too; another key is not held back.
        assert_rate_limited(await app.post("/v1/corpora/lore/search", json={"query": "x"}), "requests per minute")
        assert (await other.post("/v1/chat/completions", json=ASK)).status_code == 200


async def test_concurrent_limit_holds_while_a_stream_is_open(keyed, fake_engine):
    settings, make = keyed
    limited = make("app", limits={"concurrent": 1})
    go_on = asyncio.Event()
    fake_engine.after_event = held_after_the_first_event(go_on)
    async with running_gateway(settings) as url, client(url, limited) as app:
        async with app.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as stream:
            lines = stream.aiter_lines()
            assert stream.status_code == 200 and (await anext(lines)).startswith("data: {")
            busy = await app.post("/v1/chat/completions", json=ASK)
            assert_rate_limited(busy, "1 concurrent request")
            assert busy.headers["retry-after"] == "1"
            go_on.set()
            assert [line async for line in lines if line][-1] == "data: [DONE]"
        await wait_for(lambda: nothing_in_flight(app), "the stream's slot to be released")
        assert (await app.post("/v1/chat/completions", json=ASK)).status_code == 200

        # A client that goes away mid-stream frees its slot too.
        go_on.clear()
        async with app.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as stream:
            assert (await anext(stream.aiter_lines())).startswith("data: {")
        go_on.set()  # the engine's next event finds the client gone
        await wait_for(lambda: nothing_in_flight(app), "a cancelled stream's slot to be released")
        assert (await app.post("/v1/chat/completions", json=ASK)).status_code == 200
    fake_engine.after_event = None


async def test_generated_tokens_are_charged_for_answers_and_streams(keyed):
    settings, make = keyed
    answers, streams = (make(n, limits={"tokens_per_minute": 1}) for n in ("answers", "streams"))
    async with running_gateway(settings) as url, client(url, answers) as one, client(url, streams) as two:
        assert (await one.post("/v1/chat/completions", json=ASK)).status_code == 200  # the fake engine: 1 token
        assert_rate_limited(await one.post("/v1/chat/completions", json=ASK), "generated tokens per minute")
        streamed = await two.post("/v1/chat/completions", json={**ASK, "stream": True})
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        assert_rate_limited(await two.post("/v1/chat/completions", json=ASK), "generated tokens per minute")


async def test_tenant_limits_are_shared_by_its_keys_and_shown_per_tenant(keyed):
    settings, make = keyed
    first = make("first", tenant="acme", tenant_limits={"requests_per_minute": 3})
    second = make("second", tenant="acme")
    other, global_key = make("other", tenant="other"), make("global")
    async with running_gateway(settings) as url, client(url, first) as a, client(url, second) as b, \
            client(url, other) as c, client(url, global_key) as g, client(url) as anonymous:
        assert (await a.post("/v1/chat/completions", json=ASK)).status_code == 200
        assert (await a.post("/v1/chat/completions", json=ASK)).status_code == 200
        assert (await b.post("/v1/chat/completions", json=ASK)).status_code == 200
        assert_rate_limited(await b.post("/v1/chat/completions", json=ASK), "tenant 'acme'", "requests per minute")
        assert_rate_limited(await a.post("/v1/completions", json={"model": BASE, "prompt": "hi"}), "tenant 'acme'")
        for http in (c, g):
            assert (await http.post("/v1/chat/completions", json=ASK)).status_code == 200

        text = (await anonymous.get("/metrics")).text
    refused = metric_samples(text, "graft_rate_limited_total")
    assert refused == {(("limit", "requests_per_minute"), ("tenant", "acme"), ("whose", "tenant")): 2.0}
    requests = metric_samples(text, "graft_requests_total")
    chat, plain = "/v1/chat/completions", "/v1/completions"
    assert requests[(("route", chat), ("status", "200"), ("tenant", "acme"))] == 3
    assert requests[(("route", chat), ("status", "429"), ("tenant", "acme"))] == 1
    assert requests[(("route", plain), ("status", "429"), ("tenant", "acme"))] == 1
    assert requests[(("route", chat), ("status", "200"), ("tenant", "other"))] == 1
    assert requests[(("route", chat), ("status", "200"), ("tenant", GLOBAL))] == 1
    in_flight = metric_samples(text, "graft_requests_in_flight")
    assert in_flight[(("tenant", "acme"),)] == 0 and in_flight[(("tenant", "other"),)] == 0


async def test_the_agents_doors_count_against_the_same_limits(keyed, fake_engine):
    """A Responses API stream holds its `concurrent` slot until it ends, and frees it when its client
    goes away; an MCP search counts against requests_per_minute as a REST search does."""
    from tests.service.test_mcp import mcp_client, structured

    settings, make = keyed
    limited, searcher = make("app", limits={"concurrent": 1}), make("searcher", limits={"requests_per_minute": 1})
    go_on = asyncio.Event()
    fake_engine.after_event = held_after_the_first_event(go_on)
    respond = {"model": BASE, "input": "hi", "stream": True}
    async with running_gateway(settings) as url, client(url, limited) as app:
        async with app.stream("POST", "/v1/responses", json=respond) as stream:
            lines = stream.aiter_lines()  # kept: an abandoned line iterator closes the response when collected
            assert stream.status_code == 200 and (await anext(lines)) == "event: response.created"
            assert_rate_limited(await app.post("/v1/responses", json={"model": BASE, "input": "hi"}),
                                "1 concurrent request")
        go_on.set()  # the engine's next event finds the client gone
        await wait_for(lambda: nothing_in_flight(app), "a cancelled stream's slot to be released")
        assert (await app.post("/v1/responses", json={"model": BASE, "input": "hi"})).status_code == 200

        async with client(url, searcher) as rest:
            assert (await rest.post("/v1/corpora/lore/search", json={"query": "x"})).status_code in (200, 404)
        async with mcp_client(url, searcher) as session:
            result = await session.call_tool("search", {"domain": "lore", "query": "x"})
            assert result.is_error and structured(result)["status"] == 429, result
            assert "requests per minute" in result.content[0].text
    fake_engine.after_event = None
