"""The gateway's side of the engine fleet on Ray Serve (`GRAFT_ENGINE_BACKEND=ray`), and `graft ray`.

To the rest of the gateway the fleet is one engine of the pool: requests go to the Serve proxy with
the adapter as the multiplexed model id (Serve routes them to a replica holding it), "loading" an
adapter registers where its files are in the fleet's catalog (a replica loads it on its first
request; the hot-loader's warm-up makes that happen before a swap flips), and the pool's replica
view (`/v1/engines`, readiness) lists what each replica reports. The deployments are in
service/engine/ray_replica.py.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from service.engine.adapter_fetch import source_of
from service.engine.client import EngineClient, EngineUnavailable
from service.engine.pool import EngineHandle, EnginePool
from service.settings import Settings

MULTIPLEXED_MODEL_HEADER = "serve_multiplexed_model_id"
CATALOG = "/graft-fleet"  # ray_replica.CATALOG_ROUTE (not imported: the gateway imports no Ray)
RETRY_FIRST_PAUSE_S = 0.25
RETRY_MAX_PAUSE_S = 4.0
# What a replica being replaced looks like: unreachable, or the proxy's or the replica's "not now".
# Any other 5xx may be the request's own fault, so it is sent again once, not for the whole window.
_REPLACED_REPLICA_STATUSES = (None, 502, 503, 504)
T = TypeVar("T")


class FleetClient(EngineClient):
    """The fleet's Serve proxy as one OpenAI-compatible engine."""

    def __init__(self, base_url: str, adapter_files_url: str, shared_folder: bool = True,
                 retry_window_s: float = 60.0, **kwargs):
        super().__init__(base_url, **kwargs)
        self.adapter_files_url = adapter_files_url  # the gateway, as replicas reach it
        self.shared_folder = shared_folder
        self.retry_window_s = retry_window_s

    def request_headers(self, payload: dict | None) -> dict[str, str]:
        model = (payload or {}).get("model", "")
        return {MULTIPLEXED_MODEL_HEADER: model} if "@" in model else {}

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt` again, with a growing pause, while the fleet answers that a replica failed and the
        retry window lasts: Serve keeps routing to a replica whose vLLM died until its health check has
        failed and Ray has replaced it (seconds), so one retry is not enough. Another 5xx gets one retry."""
        deadline = time.monotonic() + self.retry_window_s
        pause = RETRY_FIRST_PAUSE_S
        retried_other_error = False
        while True:
            try:
                return await attempt()
            except EngineUnavailable as exc:
                if exc.upstream_status not in _REPLACED_REPLICA_STATUSES:
                    if retried_other_error:
                        raise
                    retried_other_error = True
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_PAUSE_S)

    async def complete(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A request whose replica failed (nothing reached the client yet) is sent again: Serve routes it
        to a replica that is up."""
        return await self._retrying(lambda: super(FleetClient, self).complete(path, payload))

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Likewise for a stream that failed before its first event; never once it has started."""
        async def opened() -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None]:
            events = super(FleetClient, self).stream(path, payload)
            try:
                return events, await anext(events)
            except StopAsyncIteration:
                return events, None
            except BaseException:
                await events.aclose()
                raise

        events, first = await self._retrying(opened)
        try:
            if first is None:
                return
            yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def replicas(self) -> list[dict[str, Any]]:
        return (await self.post_or_get("GET", f"{CATALOG}/replicas"))["data"]

    async def health(self, timeout_s: float = 2.0, attempts: int = 2) -> bool:
        """Healthy while one replica at least is ready."""
        for _ in range(attempts):
            try:
                return any(row["ready"] for row in await asyncio.wait_for(self.replicas(), timeout_s))
            except Exception:  # unreachable, restarting, or not an answer: try once more
                continue
        return False

    async def model_names(self) -> list[str]:
        return (await self.post_or_get("GET", f"{CATALOG}/adapters"))["data"]

    async def load_lora(self, name: str, path: str) -> None:
        adapter, version = name.rsplit("@", 1)
        files_url = f"{self.adapter_files_url}/v1/adapters/{adapter}/versions/{version}/files"
        source = await asyncio.to_thread(source_of, Path(path), files_url, self.shared_folder)
        await self.post_or_get("PUT", f"{CATALOG}/adapters/{name}", source)

    async def unload_lora(self, name: str) -> None:
        await self.post_or_get("DELETE", f"{CATALOG}/adapters/{name}")


@dataclass
class ReplicaView:
    """A fleet replica as `/v1/engines` and readiness show an engine."""

    url: str
    healthy: bool
    ready: bool
    in_flight: int
    loaded_adapters: set[str] = field(default_factory=set)


class FleetPool(EnginePool):
    """The pool of one engine, the fleet; its replica view comes from the replicas' reports."""

    def __init__(self, client: FleetClient, base_model: str, check_interval_s: float = 2.0):
        super().__init__([client], base_model, check_interval_s)
        self.fleet: FleetClient = client
        self._replicas: list[ReplicaView] = []

    async def check(self, engine: EngineHandle) -> None:
        await super().check(engine)
        try:
            rows = await self.fleet.replicas()
        except Exception:
            rows = []
        self._replicas = [ReplicaView(row["id"], row["healthy"], row["ready"], row["in_flight"], set(row["adapters"]))
                          for row in rows]

    def replicas(self) -> list:
        return list(self._replicas)


def fleet_pool(settings: Settings) -> FleetPool:
    client = FleetClient(settings.ray_serve_url, settings.resolved_ray_adapter_url, settings.ray_shared_folder,
                         retry_window_s=settings.ray_retry_window_s,
                         connect_timeout_s=settings.engine_connect_timeout_s,
                         request_timeout_s=settings.engine_request_timeout_s)
    return FleetPool(client, settings.base_model_name)
