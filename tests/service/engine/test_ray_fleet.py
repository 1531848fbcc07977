"""The engine fleet on a local Ray cluster, with the fake engine inside two replicas: adapters are
multiplexed (each request reaches a replica holding its adapter, loaded there on demand), each replica
keeps at most K and evicts the least recently used, and the gateway (GRAFT_ENGINE_BACKEND=ray) answers
through the fleet, its replicas listed by /v1/engines and readiness. No folder is shared in this
module: replicas fetch adapters from the gateway over HTTP into their node's cache.

The real vLLM in a replica: test_ray_fleet_engine.py."""

import json

import pytest

from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files

pytestmark = pytest.mark.ray

KEY = "fleet-key"
ADAPTERS_PER_REPLICA = 2
DOMAINS = 5


@pytest.fixture(scope="module")
def fake_fleet(ray_cluster, tmp_path_factory):
    """Two replicas of the fake engine, at most 2 adapters each; yields their node cache folder."""
    from service.engine import ray_deploy
    from service.settings import Settings
    from tests.service.engine.fleet_fake import start_fake_engine

    cache = tmp_path_factory.mktemp("replica-cache")
    settings = Settings(ray_address=ray_cluster.address, ray_serve_port=ray_cluster.serve_port,
                        ray_adapter_cache_dir=cache, ray_adapter_key=KEY)
    shape = ray_deploy.FleetShape(replicas=2, adapters_per_replica=ADAPTERS_PER_REPLICA, num_cpus=0.5)
    ray_deploy.deploy(settings, shape, starter=start_fake_engine)
    yield cache
    ray_deploy.down(settings)


@pytest.fixture
async def fleet_gateway(make_settings, ray_cluster, fake_fleet, good_lora):
    """A gateway on the fleet with domains d0..d4, each bound to its own adapter a0..a4."""
    settings = make_settings(engine_backend="ray", ray_serve_port=ray_cluster.serve_port, ray_shared_folder=False,
                             api_keys=[KEY])
    async with running_gateway(settings) as url, client(url, KEY) as http:
        await until(lambda: _ready(http), "the fleet to be ready", timeout=300)  # a loaded machine: slow
        for i in range(DOMAINS):
            uploaded = await http.post(f"/v1/adapters/a{i}/versions", files=adapter_files(good_lora))
            assert uploaded.status_code == 201, uploaded.text
            bound = await http.put(f"/v1/domains/d{i}", json={"adapter": {"name": f"a{i}", "version": 1}})
            assert bound.status_code == 201, bound.text
        yield http


async def _ready(http) -> bool:
    return (await http.get("/readyz")).status_code == 200


async def _engines(http) -> list[dict]:
    response = await http.get("/v1/engines")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_every_domain_answers_through_the_fleet_and_replicas_evict(fleet_gateway, fake_fleet, good_lora):
    http = fleet_gateway
    for _ in range(3):
        for i in range(DOMAINS):
            answer = await http.post("/v1/completions", json={"model": f"d{i}", "prompt": "x", "max_tokens": 4})
            # The fake engine answers 404 for an adapter it has not loaded: 200 means the replica held it.
            assert answer.status_code == 200, answer.text
            assert answer.json()["adapter"] == f"a{i}@1"

    engines = await _engines(http)
    assert len(engines) == 2 and all(e["healthy"] and e["ready"] for e in engines), engines
    held = [set(e["adapters"]) for e in engines]
    assert all(len(h) <= ADAPTERS_PER_REPLICA for h in held), held
    assert len(set().union(*held)) < DOMAINS  # five answered, at most four resident: some were evicted
    ready = (await http.get("/readyz")).json()
    assert sorted(ready["engines"]) == sorted(e["url"] for e in engines)

    # No folder shared: the replicas fetched the version's files into their node's cache, checked.
    cached = [p for p in fake_fleet.iterdir() if not p.name.startswith(".")]
    assert len(cached) == 1  # five versions of the same content: one content digest
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (cached[0] / name).read_bytes() == (good_lora / name).read_bytes()


async def test_a_stream_and_a_swap_go_through_the_fleet(fleet_gateway, good_lora):
    http = fleet_gateway
    async with http.stream("POST", "/v1/completions",
                           json={"model": "d0", "prompt": "x", "max_tokens": 4, "stream": True}) as response:
        assert response.status_code == 200
        events = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]" and json.loads(events[0][5:])["adapter"] == "a0@1"

    assert (await http.post("/v1/adapters/a0/versions", files=adapter_files(good_lora))).status_code == 201
    swapped = await http.post("/v1/domains/d0/adapter", json={"adapter": "a0", "version": 2})
    assert swapped.status_code == 200, swapped.text
    # Warmed on a replica before the flip: the catalog's replica reports show it held.
    await until(lambda: _holds(http, "a0@2"), "a replica to report a0@2")
    answer = await http.post("/v1/completions", json={"model": "d0", "prompt": "x", "max_tokens": 4})
    assert answer.status_code == 200 and answer.json()["adapter"] == "a0@2", answer.text


async def test_a_gated_swap_evaluates_the_candidate_through_the_fleet(fleet_gateway, good_lora):
    http = fleet_gateway
    # The fake engine's chat answer echoes the prompt, so every version answers these questions: a gate
    # asking a gain of 0.5 must refuse, one asking none must flip. Each run answers only if a replica
    # held the version it names (the fake answers 404 for an adapter it has not loaded).
    items = [{"question": f"Which word is zorblax{i}?", "answers": [f"zorblax{i}"]} for i in range(3)]
    assert (await http.post("/v1/evalsets", json={"name": "echo", "items": items})).status_code == 201
    assert (await http.post("/v1/adapters/a1/versions", files=adapter_files(good_lora))).status_code == 201
    gate = {"evalset": "echo", "metric": "answer_contains"}

    refused = await http.post("/v1/domains/d1/adapter", json={"adapter": "a1", "version": 2,
                                                              "gate": {**gate, "min_delta": 0.5}})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gate_failed", refused.text
    assert (await http.get("/v1/domains/d1")).json()["engine_model"] == "a1@1"

    flipped = await http.post("/v1/domains/d1/adapter", json={"adapter": "a1", "version": 2,
                                                              "gate": {**gate, "min_delta": 0.0}})
    assert flipped.status_code == 200, flipped.text
    result = flipped.json()["gate_result"]
    assert result["passed"] is True and result["candidate"] == result["current"] == 1.0, result
    runs = (await http.get("/v1/evals", params={"domain": "d1"})).json()["data"]
    assert sorted(r["adapter"] for r in runs) == ["a1@1", "a1@1", "a1@2", "a1@2"], runs
    assert all(r["metrics"]["answer_contains"] == 1.0 for r in runs), runs
    answer = await http.post("/v1/completions", json={"model": "d1", "prompt": "x", "max_tokens": 4})
    assert answer.status_code == 200 and answer.json()["adapter"] == "a1@2", answer.text


async def _holds(http, name: str) -> bool:
    return any(name in e["adapters"] for e in await _engines(http))


async def test_a_request_for_an_adapter_the_fleet_does_not_know_is_refused(fleet_gateway, ray_cluster):
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ray_cluster.serve_port}", timeout=60) as fleet:
        answer = await fleet.post("/v1/completions", json={"model": "nobody@1", "prompt": "x"},
                                  headers={"serve_multiplexed_model_id": "nobody@1"})
    assert answer.status_code == 404 and "not registered" in answer.json()["error"]["message"]


async def test_a_replica_whose_engine_died_is_replaced_and_the_fleet_serves_every_domain(
        fleet_gateway, ray_cluster):
    import httpx

    http = fleet_gateway
    before = {e["url"] for e in await _engines(http)}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ray_cluster.serve_port}", timeout=60) as fleet:
        assert (await fleet.post("/fake/exit", json={})).status_code == 200
    # Ray replaces the replica that failed its health check: a new id, two replicas ready again.
    await until(lambda: _replaced(http, before), "Ray to replace the replica", timeout=120)
    for i in range(DOMAINS):
        answer = await http.post("/v1/completions", json={"model": f"d{i}", "prompt": "x", "max_tokens": 4})
        assert answer.status_code == 200 and answer.json()["adapter"] == f"a{i}@1", answer.text


async def _replaced(http, before: set[str]) -> bool:
    engines = await _engines(http)
    ids = {e["url"] for e in engines}
    return len(engines) == 2 and all(e["ready"] for e in engines) and len(ids - before) == 1
