"""Small helpers shared by the benchmarks: ports, percentiles, a local engine, a migrated data dir,
and (for bench/swap.py and bench/adapters.py) a vLLM + in-process gateway stack, adapter upload and
binding, and one timed chat request."""

import asyncio
import contextlib
import math
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.engine.supervisor import LocalEngine
from service.settings import Settings
from training.protocol import ALL_PROJECTIONS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BASE_MODEL = REPO / "data" / "models" / "SmolLM2-135M-Instruct"

QV = ("q_proj", "v_proj")
TARGETS = {"qv": QV, "all": ALL_PROJECTIONS}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def migrated_settings(data_dir: Path, base_model: Path | str, **overrides) -> Settings:
    """Settings for a fresh data dir whose SQLite database is at the latest migration."""
    from migrations.runner import upgrade

    settings = Settings(data_dir=data_dir, base_model=str(base_model), **overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return settings


@contextlib.asynccontextmanager
async def engine_url(url: str | None, data_dir: Path, base_model: Path | str) -> AsyncIterator[str]:
    """`url` when given, else the URL of a local vLLM started (and stopped) here."""
    if url:
        yield url.rstrip("/")
        return
    engine = LocalEngine(Settings(data_dir=data_dir, base_model=str(base_model), engine_port=free_port()))
    await engine.start()
    try:
        yield engine.url
    finally:
        await engine.stop()


async def wait_job(http: httpx.AsyncClient, job_id: str, timeout_s: float = 300) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"job {job_id} did not finish: {job}")
        await asyncio.sleep(0.1)


async def wait_ready(url: str, timeout_s: float = 120, process=None, path: str = "/readyz") -> None:
    """Poll `url` + path until it answers 200 (or the process exits)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
        while asyncio.get_running_loop().time() < deadline:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"process exited with code {process.returncode} during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}{path}")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url}{path} did not answer 200 after {timeout_s:.0f}s")


@contextlib.asynccontextmanager
async def serve_subprocess(settings: Settings, log_path: Path, ready_path: str = "/readyz") -> AsyncIterator[str]:
    """`python -m service serve` on `settings` in its own process (as in production, so a load
    generator does not share its event loop); yields its URL once `ready_path` answers 200."""
    env = dict(os.environ, GRAFT_DATA_DIR=str(settings.data_dir), GRAFT_BASE_MODEL=settings.base_model,
               GRAFT_ENGINE_URLS=",".join(settings.engine_urls), GRAFT_HOST="127.0.0.1",
               GRAFT_PORT=str(settings.port), GRAFT_EMBEDDING_BACKEND=settings.embedding_backend,
               HF_HUB_OFFLINE="1")
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "serve", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        await wait_ready(url, timeout_s=300, process=process, path=ready_path)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def lore_domain(engine: str | None, docs: list[dict], prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """A served gateway (own process; a local vLLM unless `engine` is a URL) with corpus `lore` of
    `docs` indexed and domain `lore` over it (retrieval k 4): bench/train.py, bench/train_beside.py."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        async with engine_url(engine, Path(tmp) / "engine", DEFAULT_BASE_MODEL) as url:
            settings = migrated_settings(Path(tmp) / "gateway", DEFAULT_BASE_MODEL, engine_urls=[url],
                                         port=free_port())
            async with serve_subprocess(settings, Path(tmp) / "gateway.log") as gateway, \
                    httpx.AsyncClient(base_url=gateway, timeout=7200) as http:
                await http.post("/v1/corpora", json={"name": "lore"})
                ingest = (await http.post("/v1/corpora/lore/documents", json={"documents": docs})).json()
                job = await wait_job(http, ingest["job_id"], timeout_s=1800)
                if job["status"] != "succeeded":
                    raise SystemExit(f"ingesting the lore corpus {job['status']}: {job.get('reason')}")
                await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 4}})
                yield http


# --- a vLLM + gateway stack, adapters, timed requests (bench/swap.py, bench/adapters.py) -----

@dataclass
class Stack:
    http: httpx.AsyncClient  # the gateway (open mode: no key)
    engine_url: str
    settings: Settings
    engine_start_s: float | None  # None when an engine URL was given


@contextlib.asynccontextmanager
async def bench_stack(data_dir: Path, base_model: str, engine_url: str | None, *, max_loras: int,
                      max_lora_rank: int, engine_args: list[str] | None = None):
    """A local vLLM (unless `engine_url`) + an in-process gateway on a migrated SQLite data dir."""
    from tests.harness import client, running_gateway

    settings = migrated_settings(
        data_dir, base_model, port=free_port(), engine_port=free_port(), max_loras=max_loras,
        max_lora_rank=max_lora_rank, engine_urls=[engine_url] if engine_url else [],
        engine_extra_args=engine_args or [], drain_timeout_s=60, reconcile_interval_s=3600)
    engine, started_s = None, None
    if not engine_url:
        engine = LocalEngine(settings)
        print(f"starting vLLM: {' '.join(engine.command()[1:])}", flush=True)
        t0 = time.perf_counter()
        await engine.start()
        started_s = time.perf_counter() - t0
        print(f"vLLM ready in {started_s:.1f} s (log: {engine.log_path})", flush=True)
    try:
        async with running_gateway(settings, local_engine=engine) as url, client(url, timeout=600) as http:
            yield Stack(http, engine_url.rstrip("/") if engine_url else engine.url, settings, started_s)
    finally:
        if engine is not None:
            await engine.stop()


def adapter_files(folder: Path) -> list:
    return [("files", (name, (folder / name).read_bytes(), "application/octet-stream"))
            for name in ("adapter_config.json", "adapter_model.safetensors")]


async def upload(http: httpx.AsyncClient, name: str, folder: Path) -> dict:
    response = await http.post(f"/v1/adapters/{name}/versions", files=adapter_files(folder))
    response.raise_for_status()
    return response.json()


async def bind(http: httpx.AsyncClient, domain: str, adapter: str | None, version: int | None) -> float:
    """PUT the domain (no corpora, so no retrieval); returns seconds (includes load + warm-up)."""
    body = {"corpora": [], "adapter": {"name": adapter, "version": version} if adapter else None}
    t0 = time.perf_counter()
    response = await http.put(f"/v1/domains/{domain}", json=body)
    response.raise_for_status()
    return time.perf_counter() - t0


def chat_body(model: str, prompt: str, max_tokens: int) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "ignore_eos": True}


@dataclass
class Req:
    start: float
    end: float
    ok: bool
    adapter: str | None
    tokens: int
    error: str = ""


async def one_request(http: httpx.AsyncClient, body: dict) -> Req:
    start = time.perf_counter()
    try:
        response = await http.post("/v1/chat/completions", json=body)
        end = time.perf_counter()
        data = response.json()
        if response.status_code != 200:
            return Req(start, end, False, None, 0, f"{response.status_code} {str(data)[:200]}")
        tokens = (data.get("usage") or {}).get("completion_tokens", 0)
        return Req(start, end, True, data.get("adapter"), tokens)
    except Exception as exc:  # a failure is a result here, not a crash
        return Req(start, time.perf_counter(), False, None, 0, repr(exc)[:200])


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:8.0f}"


def paired_ratio_interval(direct: dict[int, float], graft: dict[int, float],
                          resamples: int = 2000) -> tuple[float, float, float]:
    """mean(direct latency) / mean(graft latency) over the requests both arms ran (same question,
    same round) -- at a fixed concurrency, the throughput ratio -- and its 95 % bootstrap interval."""
    jobs = sorted(direct.keys() & graft.keys())
    rng = random.Random(0)
    ratios = sorted(_latency_ratio(direct, graft, [rng.choice(jobs) for _ in jobs]) for _ in range(resamples))
    return _latency_ratio(direct, graft, jobs), ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def _latency_ratio(direct: dict[int, float], graft: dict[int, float], jobs: list[int]) -> float:
    return sum(direct[j] for j in jobs) / sum(graft[j] for j in jobs)
