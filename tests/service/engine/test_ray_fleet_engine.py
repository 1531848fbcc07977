"""End to end on the fleet with the real vLLM: one replica on the session's local Ray cluster, started as
the local engine is; a domain's adapter, never seen by the replica and in no shared folder, is fetched
from the gateway over HTTP, loaded, and answers a completion through the gateway."""

import pytest

from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files

pytestmark = [pytest.mark.ray, pytest.mark.engine]

KEY = "fleet-key"
ENGINE = {"max_model_len": 1024, "max_loras": 2, "max_lora_rank": 16}


@pytest.fixture(scope="module")
def vllm_fleet(ray_cluster, base_model_dir, tmp_path_factory):
    from service.engine import ray_deploy
    from service.settings import Settings

    settings = Settings(ray_address=ray_cluster.address, ray_serve_port=ray_cluster.serve_port,
                        base_model=str(base_model_dir), ray_adapter_cache_dir=tmp_path_factory.mktemp("cache"),
                        ray_adapter_key=KEY, **ENGINE)
    ray_deploy.deploy(settings, ray_deploy.FleetShape(replicas=1, adapters_per_replica=2, num_cpus=1))
    yield
    ray_deploy.down(settings)


async def test_a_domain_answers_with_its_adapter_through_a_vllm_replica(vllm_fleet, ray_cluster, make_settings,
                                                                        good_lora):
    settings = make_settings(engine_backend="ray", ray_serve_port=ray_cluster.serve_port, ray_shared_folder=False,
                             api_keys=[KEY], **ENGINE)
    async with running_gateway(settings) as url, client(url, KEY) as http:
        await until(lambda: _ready(http), "the fleet to be ready", timeout=300)  # a loaded machine: slow
        assert (await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
        bound = await http.put("/v1/domains/d", json={"adapter": {"name": "tone", "version": 1}})
        assert bound.status_code == 201, bound.text

        answer = await http.post("/v1/chat/completions", json={
            "model": "d", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["adapter"] == "tone@1" and body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] > 0

        # the replicas' view reaches the gateway with the next report or health check, not with the answer
        await until(lambda: _engines_show(http, ["tone@1"]), "the replica to report tone@1 loaded", timeout=60)
        engines = (await http.get("/v1/engines")).json()["data"]
        assert len(engines) == 1 and engines[0]["adapters"] == ["tone@1"], engines


async def _engines_show(http, adapters: list[str]) -> bool:
    return [row["adapters"] for row in (await http.get("/v1/engines")).json()["data"]] == [adapters]


async def _ready(http) -> bool:
    return (await http.get("/readyz")).status_code == 200
