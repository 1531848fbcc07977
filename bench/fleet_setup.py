"""The pieces bench/fleet.py is built from: untrained adapters made fast, a static file server standing
in for the gateway's files route, one route to the engine (Serve's proxy or vLLM itself) and closed-loop
batches over it, and the fleet deployed and its catalog filled as the gateway does."""

import asyncio
import contextlib
import functools
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import torch
from safetensors.torch import load_file, save_file

from bench.common import QV, Req
from service.engine import ray_deploy
from service.engine.adapter_fetch import source_of
from service.engine.ray_fleet import MULTIPLEXED_MODEL_HEADER
from service.engine.ray_replica import CATALOG_ROUTE
from service.settings import Settings
from tests.adapters_store.lora_factory import make_lora


# --- adapters --------------------------------------------------------------------------------

def make_adapters(work: Path, base_model: Path, n: int, rank: int, seed: int) -> list[Path]:
    """n distinct untrained LoRAs: one made with PEFT, the rest its copies with fresh random weights of
    the same scale (the speed of a LoRA does not depend on its values; PEFT would take seconds each)."""
    template = make_lora(base_model, work / "lora-0", rank=rank, target_modules=QV, seed=seed)
    tensors = load_file(template / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    folders = [template]
    for i in range(1, n):
        folder = work / f"lora-{i}"
        folder.mkdir(exist_ok=True)
        shutil.copy(template / "adapter_config.json", folder)
        save_file({k: torch.randn(t.shape, generator=generator) * t.std() for k, t in tensors.items()},
                  folder / "adapter_model.safetensors", metadata={"format": "pt"})
        folders.append(folder)
    return folders


@contextlib.contextmanager
def file_server(root: Path) -> Iterator[str]:
    """A static HTTP server of `root` on loopback, standing in for the gateway's adapter files route."""
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def fetched_source(folder: Path, root: Path, files_url: str) -> dict:
    """A source no replica can read from disk or has cached: it downloads the files over HTTP."""
    source = source_of(folder, f"{files_url}/{folder.relative_to(root).as_posix()}", shared=False)
    source["content"] = uuid.uuid4().hex  # the node's cache is keyed by content: never seen there
    return source


# --- requests --------------------------------------------------------------------------------

@dataclass
class Route:
    """One way to the engine: Serve's proxy (the adapter in the multiplexing header) or vLLM itself."""

    label: str
    http: aiohttp.ClientSession
    multiplexed: bool

    async def send(self, body: dict) -> Req:
        headers = {MULTIPLEXED_MODEL_HEADER: body["model"]} if self.multiplexed else None
        start = time.perf_counter()
        try:
            async with self.http.post("/v1/chat/completions", json=body, headers=headers) as response:
                status, content = response.status, await response.read()
        except Exception as exc:  # a failure is a result here, not a crash
            return Req(start, time.perf_counter(), False, None, 0, repr(exc)[:200])
        end = time.perf_counter()
        if status != 200:
            return Req(start, end, False, None, 0, f"{status} {content[:200]!r}")
        data = json.loads(content)
        return Req(start, end, True, data.get("model"), data["usage"]["completion_tokens"])


def session(base_url: str, concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=concurrency * 2),
                                 timeout=aiohttp.ClientTimeout(total=900), trust_env=False)


async def run_batch(route: Route, bodies: list[dict], concurrency: int) -> tuple[list[Req], float]:
    """Send `bodies` from `concurrency` closed-loop clients; the answers (in body order) and the wall time."""
    done: list[Req | None] = [None] * len(bodies)
    pending = iter(enumerate(bodies))

    async def client() -> None:
        for index, body in pending:  # shared iterator: each client takes the next request
            done[index] = await route.send(body)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, time.perf_counter() - t0


def problems(label: str, reqs: list[Req], expected: set[str] | None, max_tokens: int) -> list[str]:
    failed = [r for r in reqs if not r.ok]
    wrong = [r for r in reqs if r.ok and expected is not None and r.adapter not in expected]
    short = [r for r in reqs if r.ok and r.tokens != max_tokens]
    return ([f"{label}: {len(failed)} of {len(reqs)} failed, first: {failed[0].error}"] if failed else []) + \
        ([f"{label}: {len(wrong)} answered by another model, e.g. {wrong[0].adapter}"] if wrong else []) + \
        ([f"{label}: {len(short)} answers not {max_tokens} tokens"] if short else [])


def ms(seconds: float) -> float:
    return seconds * 1000


# --- the fleet -------------------------------------------------------------------------------

def fleet_settings(cluster, args, work: Path) -> Settings:
    cpu_loras = max(args.adapters_per_replica, args.max_loras)
    return Settings(ray_address=cluster.address, ray_serve_port=cluster.serve_port, base_model=str(args.base_model),
                    max_model_len=args.max_model_len, max_loras=args.max_loras, max_lora_rank=args.rank,
                    lora_target_modules=list(QV), ray_adapter_cache_dir=work / "node-cache",
                    engine_start_timeout_s=args.engine_start_timeout,
                    engine_extra_args=["--no-enable-prefix-caching", "--max-cpu-loras", str(cpu_loras)])


def deploy(settings: Settings, replicas: int, args) -> float:
    t0 = time.perf_counter()
    shape = ray_deploy.FleetShape(replicas=replicas, adapters_per_replica=args.adapters_per_replica, num_cpus=1)
    ray_deploy.deploy(settings, shape)
    return time.perf_counter() - t0


async def register(catalog: aiohttp.ClientSession, sources: dict[str, dict]) -> None:
    """Register every adapter with the fleet's catalog (a redeploy starts it empty)."""
    gate = asyncio.Semaphore(16)

    async def put(name: str, source: dict) -> None:
        async with gate, catalog.put(f"{CATALOG_ROUTE}/adapters/{name}", json=source) as response:
            response.raise_for_status()

    await asyncio.gather(*(put(name, source) for name, source in sources.items()))


async def replica_urls(catalog: aiohttp.ClientSession, count: int, timeout_s: float = 60) -> list[str]:
    """The vLLM URLs the fleet's replicas report, once `count` replicas have reported."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with catalog.get(f"{CATALOG_ROUTE}/replicas") as response:
            rows = (await response.json())["data"]
        if len(rows) >= count:
            return [row["url"] for row in rows]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(rows)} replicas reported to the catalog after {timeout_s:.0f} s, "
                               f"expected {count}")
        await asyncio.sleep(0.5)


def adapter_name(rank: int) -> str:
    return f"fleet-{rank}@1"
