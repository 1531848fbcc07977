"""The engine fleet's Ray Serve deployments; they run on the Ray cluster's nodes.

- `EngineReplica` (application `graft-engines`, route `/`): each replica runs one vLLM OpenAI
  server, started exactly as the gateway's local engine is (`LocalEngine`), and relays requests to
  it. Adapters are multiplexed: a request names its adapter version (`name@version`, immutable) in
  Serve's `serve_multiplexed_model_id` header, Serve routes it to a replica that holds it, and a
  replica that does not loads it (LRU, at most K per replica). An evicted adapter is unloaded once
  its last request is done, never under a running one.
- `FleetCatalog` (application `graft-fleet`, route `/graft-fleet`): where each registered adapter's
  files are (the gateway registers them), and what each replica reports it holds.

The gateway side (registration, routing, `/v1/engines`) is service/engine/ray_fleet.py.
"""

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from service.engine.adapter_fetch import AdapterFetchError, local_folder
from service.engine.client import EngineClient, EngineError
from service.engine.supervisor import LocalEngine
from service.settings import Settings

log = logging.getLogger(__name__)

ENGINES_APP = "graft-engines"
CATALOG_APP = "graft-fleet"
CATALOG_ROUTE = "/graft-fleet"
REPORT_INTERVAL_S = 1.0
# A replica not heard from for this long is gone (Ray replaced it, or it is stuck).
REPLICA_STALE_S = 10.0


class Engine(Protocol):
    """What a replica needs of its engine: LocalEngine, or a fake in tests."""

    url: str

    @property
    def running(self) -> bool: ...

    async def stop(self) -> None: ...


EngineStarter = Callable[[], Awaitable[Engine]]


# What LocalEngine reads of the settings: only these travel to the cluster (not keys, not the database URL).
ENGINE_FIELDS = ("base_model_name", "max_lora_rank", "max_loras", "lora_target_modules", "max_model_len",
                 "engine_dtype", "engine_kv_cache_gib", "engine_start_timeout_s", "engine_extra_args")


def replica_engine_env(environ: Mapping[str, str]) -> dict[str, str]:
    """vLLM on CPU pins its threads to the node's cores by default, so replicas sharing a node would all
    pin the same cores. Ray reserves CPUs without pinning them and sets OMP_NUM_THREADS to the
    replica's share: the engine leaves placement to the OS and keeps to that share. What the node's
    environment says already wins."""
    return {} if "VLLM_CPU_OMP_THREADS_BIND" in environ else {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def vllm_starter(settings: Settings) -> EngineStarter:
    """Starts one vLLM as the local engine does, on a free port, logging to a folder of the node."""
    engine_settings = {name: getattr(settings, name) for name in ENGINE_FIELDS}
    engine_settings["base_model"] = settings.resolved_base_model

    async def start() -> Engine:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        node = Settings.model_construct(**engine_settings, engine_port=port,
                                        data_dir=Path(tempfile.mkdtemp(prefix="graft-replica-")))
        engine = LocalEngine(node, env=replica_engine_env(os.environ))
        await engine.start()
        return engine

    return start


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "engine_error"}}, status_code=status)


@serve.deployment(name="FleetCatalog", num_replicas=1, ray_actor_options={"num_cpus": 0})
class FleetCatalog:
    def __init__(self):
        self.sources: dict[str, dict[str, Any]] = {}  # adapter name → where its files are
        self.replicas: dict[str, dict[str, Any]] = {}  # replica id → its last report

    def source(self, name: str) -> dict[str, Any] | None:
        return self.sources.get(name)

    def report(self, row: dict[str, Any]) -> None:
        self.replicas[row["id"]] = {**row, "seen": time.time()}

    def rows(self) -> list[dict[str, Any]]:
        cutoff = time.time() - REPLICA_STALE_S
        self.replicas = {k: row for k, row in self.replicas.items() if row["seen"] >= cutoff}
        return sorted(self.replicas.values(), key=lambda row: row["id"])

    async def __call__(self, request: Request) -> Response:
        parts = request.url.path.removeprefix(CATALOG_ROUTE).strip("/").split("/")
        if parts == ["replicas"] and request.method == "GET":
            return JSONResponse({"data": self.rows()})
        if parts == ["adapters"] and request.method == "GET":
            return JSONResponse({"data": sorted(self.sources)})
        if len(parts) == 2 and parts[0] == "adapters" and request.method == "PUT":
            self.sources[parts[1]] = await request.json()
            return JSONResponse({"registered": parts[1]})
        if len(parts) == 2 and parts[0] == "adapters" and request.method == "DELETE":
            self.sources.pop(parts[1], None)
            return JSONResponse({"removed": parts[1]})
        return _error(404, f"no route {request.method} {request.url.path}")


class ResidentAdapter:
    """An adapter loaded on this replica's engine, with the requests running on it."""

    def __init__(self, name: str, replica: "EngineReplica"):
        self.name = name
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._replica = replica
        # Serve's LRU eviction awaits an evicted model's `__del__` when it is a coroutine function. An
        # instance attribute, so Python's garbage collector (which looks on the class) never calls it.
        self.__del__ = self._unload_when_idle

    def acquire(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def _unload_when_idle(self) -> None:
        await self._idle.wait()
        await self._replica.unload(self.name)


class EngineReplica:
    """One replica: one engine, a bounded LRU set of adapters (see `engine_replica` for the bound)."""

    async def __init__(self, start_engine: EngineStarter, cache_dir: str, fetch_key: str | None = None):
        self.engine = await start_engine()
        self.client = EngineClient(self.engine.url)
        self.cache_dir = Path(cache_dir)
        self.fetch_key = fetch_key
        self.id = serve.get_replica_context().replica_id.unique_id
        self.held: dict[str, ResidentAdapter] = {}
        self.catalog = serve.get_deployment_handle("FleetCatalog", app_name=CATALOG_APP)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=300))
        self._reporter = asyncio.create_task(self._report_loop())
        # Serve awaits `__del__` when it stops a replica (down, scale-in, replacement after a failed health
        # check): the vLLM goes with it instead of outliving the replica. An instance attribute, as below.
        self.__del__ = self._shutdown

    async def _shutdown(self) -> None:
        self._reporter.cancel()
        await self._http.close()
        await self.engine.stop()

    async def resident(self, name: str) -> ResidentAdapter:  # replaced by engine_replica's multiplexed loader
        raise NotImplementedError

    async def load(self, name: str) -> ResidentAdapter:
        source = await self.catalog.source.remote(name)
        if source is None:
            raise EngineError(404, f"adapter {name} is not registered with the fleet", "invalid_request_error")
        try:
            folder = await local_folder(source, self.cache_dir, self.fetch_key)
        except AdapterFetchError as exc:
            raise EngineError(503, f"adapter {name} could not be fetched: {exc}", "engine_unavailable") from exc
        await self.client.load_lora(name, str(folder))
        self.held[name] = ResidentAdapter(name, self)
        self._report_soon()
        return self.held[name]

    async def unload(self, name: str) -> None:
        self.held.pop(name, None)
        try:
            await self.client.unload_lora(name)
        except EngineError as exc:  # the engine frees the weights by its own LRU anyway
            log.warning("unloading %s failed: %s", name, exc.message)
        self._report_soon()

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes Ray replace the replica (its vLLM died)."""
        if not self.engine.running:
            raise RuntimeError("the replica's vLLM server exited")

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.engine.url, "healthy": self.engine.running, "ready": self.engine.running,
                "in_flight": sum(a.in_flight for a in self.held.values()), "adapters": sorted(self.held)}

    def _report_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._report())

    async def _report(self) -> None:
        with contextlib.suppress(Exception):  # the catalog may be restarting; the next report tells it
            await self.catalog.report.remote(self.row())

    async def _report_loop(self) -> None:
        while True:
            await self._report()
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def __call__(self, request: Request) -> Response:
        name = serve.get_multiplexed_model_id()
        adapter = None
        if name:
            try:
                adapter = await self.resident(name)
            except EngineError as exc:
                return _error(exc.status_code, exc.message)
            adapter.acquire()
        try:
            upstream = await self._http.request(request.method, self.engine.url + request.url.path,
                                                data=await request.body(),
                                                headers={"Content-Type": "application/json"})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if adapter is not None:
                adapter.release()
            return _error(503, f"the replica's engine is unreachable: {exc!r}")
        media_type = upstream.headers.get("Content-Type", "application/json")
        if not media_type.startswith("text/event-stream"):
            try:
                return Response(await upstream.read(), status_code=upstream.status, media_type=media_type)
            finally:
                upstream.release()
                if adapter is not None:
                    adapter.release()
        return StreamingResponse(_relay(upstream, adapter), status_code=upstream.status, media_type=media_type)


async def _relay(upstream: aiohttp.ClientResponse, adapter: ResidentAdapter | None) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    finally:  # also when the client went away: closing the connection aborts the vLLM request
        upstream.close()
        if adapter is not None:
            adapter.release()


def engine_replica(adapters_per_replica: int) -> type[EngineReplica]:
    """The replica class with its LRU bound: Serve's multiplexing takes the bound when the loader is
    decorated, so the class is made per deployment."""

    class GraftEngineReplica(EngineReplica):
        @serve.multiplexed(max_num_models_per_replica=adapters_per_replica)
        async def resident(self, name: str) -> ResidentAdapter:
            return await self.load(name)

    return GraftEngineReplica


def replica_cache_dir(configured: Path | None) -> str:
    """Fetched adapters on a node: a folder of the node's own (not shared with the gateway)."""
    return str(configured) if configured else os.path.join(tempfile.gettempdir(), "graft-adapter-cache")
