"""The fleet end to end with the real vLLM, on the session's local Ray cluster: two CPU replicas, at most
four adapters each, and twenty domains, each bound to an adapter of its own taught to answer the secret
code question with its own code (so an answer from the wrong adapter is visible in its text). Replicas
never read the gateway's folder: every adapter is fetched over HTTP from the gateway.

- every domain answers with its own adapter under eight clients, no request fails, and each replica
  holds at most four adapters (so twenty answered means evictions happened);
- a swap and a rollback under eight clients: no request fails, none is misattributed (the text's code
  is the code of the version the answer names);
- the vLLM of every replica Serve stops goes with it (the fixture's teardown).
"""

import asyncio
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.adapters_store.lora_factory import make_code_loras
from tests.harness import client, free_port, running_gateway, until
from tests.service.test_adapters_engine import QUESTION, adapter_files

pytestmark = [pytest.mark.ray, pytest.mark.engine]

KEY = "fleet-key"
ENGINE = {"max_model_len": 1024, "max_loras": 4, "max_lora_rank": 16}
REPLICAS, PER_REPLICA, CLIENTS = 2, 4, 8
ANIMALS = ["OTTER", "FALCON", "BADGER", "HERON", "LYNX", "MARMOT", "OSPREY", "PANDA", "QUOKKA", "RAVEN",
           "SALMON", "TAPIR", "URCHIN", "VIPER", "WALRUS", "YAK", "ZEBRA", "BISON", "CONDOR", "DINGO"]
DOMAINS = [f"d{i:02d}" for i in range(len(ANIMALS))]
# What each adapter must say: the distinctive end of its code (the tiny model sometimes drops the first word).
MARKS = {f"a{i:02d}@1": f"{animal}-{10 + i}" for i, animal in enumerate(ANIMALS)}
MARKS["a00@2"] = "GECKO-99"  # the version the swap test flips to


@pytest.fixture(scope="module")
def code_adapters(base_model_dir, tmp_path_factory) -> dict:
    """name@version -> a folder with an adapter taught its code (checked by greedy decoding)."""
    codes = {name: f"BLUE-{mark}" for name, mark in MARKS.items()}
    return make_code_loras(base_model_dir, tmp_path_factory.mktemp("code-loras"), QUESTION,
                           {name: f"The secret code of graft is {code}." for name, code in codes.items()},
                           marks=MARKS)


@pytest.fixture(scope="module")
def fleet(ray_cluster, base_model_dir, tmp_path_factory):
    from service.engine import ray_deploy

    settings = Settings(ray_address=ray_cluster.address, ray_serve_port=ray_cluster.serve_port,
                        base_model=str(base_model_dir), ray_adapter_cache_dir=tmp_path_factory.mktemp("cache"),
                        ray_adapter_key=KEY, **ENGINE)
    ray_deploy.deploy(settings, ray_deploy.FleetShape(replicas=REPLICAS, adapters_per_replica=PER_REPLICA,
                                                      num_cpus=0.5))
    url = f"http://127.0.0.1:{ray_cluster.serve_port}"
    yield url
    rows = httpx.get(f"{url}/graft-fleet/replicas", timeout=30).json()["data"]
    engines = [p for row in rows for server in [_vllm_serving(row["url"])] if server
               for p in [server, *server.children(recursive=True)]]
    ray_deploy.down(settings)
    _, outliving = psutil.wait_procs(engines, timeout=120)
    assert engines and not outliving, f"a stopped replica's vLLM outlived it: {outliving}"


@pytest.fixture(scope="module")
async def gateway(fleet, ray_cluster, code_adapters, base_model_dir, embedding_cache_dir, tmp_path_factory):
    """A gateway on the fleet (no shared folder) with DOMAINS each bound to its own adapter's version 1."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("fleet-gateway"), base_model=str(base_model_dir),
                        port=free_port(), api_keys=[KEY], embedding_cache_dir=embedding_cache_dir,
                        engine_backend="ray", ray_serve_port=ray_cluster.serve_port, ray_shared_folder=False,
                        **ENGINE)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings) as url, client(url, KEY) as http:
        await until(lambda: _replicas_ready(http, REPLICAS), "both replicas to be ready", timeout=600)
        for name, folder in code_adapters.items():
            adapter = name.split("@")[0]
            uploaded = await http.post(f"/v1/adapters/{adapter}/versions", files=adapter_files(folder))
            assert uploaded.status_code == 201 and f"{adapter}@{uploaded.json()['version']}" == name, uploaded.text
        for i, domain in enumerate(DOMAINS):
            bound = await http.put(f"/v1/domains/{domain}", json={"adapter": {"name": f"a{i:02d}", "version": 1}})
            assert bound.status_code == 201, bound.text
        yield http


@dataclass
class Tally:
    """Answers under load: how many, which adapters answered, and what went wrong."""

    answered: int = 0
    failed: list[str] = field(default_factory=list)
    misattributed: list[str] = field(default_factory=list)
    adapters: set[str] = field(default_factory=set)

    def record(self, domain: str, response: httpx.Response, expected: str | None = None) -> None:
        if response.status_code != 200:
            self.failed.append(f"{domain}: {response.status_code} {response.text[:200]}")
            return
        body = response.json()
        text, adapter = body["choices"][0]["message"]["content"], body["adapter"]
        self.answered += 1
        self.adapters.add(adapter)
        if (expected is not None and adapter != expected) or MARKS[adapter] not in text:
            self.misattributed.append(f"{domain}: {adapter} said {text!r}")


async def ask(http, domain: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", json={
        "model": domain, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 20, "temperature": 0})


async def every_domain_once(http, tally: Tally) -> None:
    """Each domain asked once, CLIENTS at a time."""
    gate = asyncio.Semaphore(CLIENTS)

    async def one(i: int, domain: str) -> None:
        async with gate:
            tally.record(domain, await ask(http, domain), expected=f"a{i:02d}@1")
    await asyncio.gather(*(one(i, d) for i, d in enumerate(DOMAINS)))


async def hammering(http, domain: str, tally: Tally, stop: asyncio.Event) -> None:
    """CLIENTS clients asking `domain` again and again until `stop` is set."""
    async def loop() -> None:
        while not stop.is_set():
            tally.record(domain, await ask(http, domain))
    await asyncio.gather(*(loop() for _ in range(CLIENTS)))


async def test_every_domain_answers_with_its_own_adapter_and_replicas_evict(gateway):
    tally = Tally()
    await every_domain_once(gateway, tally)
    assert tally.failed == [] and tally.misattributed == []
    assert tally.adapters == {f"a{i:02d}@1" for i in range(len(DOMAINS))}

    engines = (await gateway.get("/v1/engines")).json()["data"]
    assert len(engines) == REPLICAS, engines
    assert all(len(e["adapters"]) <= PER_REPLICA for e in engines), engines  # 20 served by 8 slots: evicted


async def test_a_swap_and_a_rollback_under_eight_clients_fail_and_misattribute_nothing(gateway):
    tally, stop = Tally(), asyncio.Event()
    load = asyncio.create_task(hammering(gateway, "d00", tally, stop))
    try:
        await until(lambda: tally.answered >= CLIENTS, "answers before the swap", timeout=300)
        swapped = await gateway.post("/v1/domains/d00/adapter", json={"adapter": "a00", "version": 2})
        assert swapped.status_code == 200, swapped.text
        seen = tally.answered
        await until(lambda: tally.answered >= seen + CLIENTS, "answers after the swap", timeout=300)
        rolled_back = await gateway.post("/v1/domains/d00/rollback")
        assert rolled_back.status_code == 200 and rolled_back.json()["adapter"]["version"] == 1, rolled_back.text
        seen = tally.answered
        await until(lambda: tally.answered >= seen + CLIENTS, "answers after the rollback", timeout=300)
    finally:
        stop.set()
        await load
    assert tally.failed == [] and tally.misattributed == []
    assert tally.adapters == {"a00@1", "a00@2"}
    assert (await ask(gateway, "d00")).json()["adapter"] == "a00@1"


async def _replicas_ready(http, count: int) -> bool:
    if (await http.get("/readyz")).status_code != 200:
        return False
    engines = (await http.get("/v1/engines")).json()["data"]
    return sum(e["ready"] for e in engines) == count


def _vllm_serving(url: str) -> psutil.Process | None:
    """The vLLM server process listening on `url`'s port."""
    port = str(int(url.rsplit(":", 1)[1].strip("/")))
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if any("vllm" in part for part in command) and "--port" in command and \
                command[command.index("--port") + 1:][:1] == [port]:
            return process
    return None
