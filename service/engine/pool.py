"""The set of engines the gateway routes to, with health, in-flight and adapter bookkeeping.

An engine takes traffic only while it is `ready`: healthy, and (after a restart) with every
adapter that a domain uses loaded again by the reconciler. The pool is the `AdapterHost` of
adapters_store: the one owner of what each engine holds.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from service.engine.client import EngineClient, EngineUnavailable

log = logging.getLogger(__name__)


@dataclass(eq=False)
class EngineHandle:
    client: EngineClient
    healthy: bool = False
    ready: bool = False
    in_flight: int = 0
    loaded_adapters: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.client.base_url


# Called with an engine's id when it turns healthy after being down: reload adapters, then ready.
RecoverHook = Callable[[str], Awaitable[None]]


class EnginePool:
    def __init__(self, clients: list[EngineClient], base_model: str, check_interval_s: float = 2.0):
        self.engines = [EngineHandle(client) for client in clients]
        self.base_model = base_model
        self.check_interval_s = check_interval_s
        self.on_recover: RecoverHook | None = None
        self._model_in_flight: dict[str, int] = {}  # engine model name → running requests
        self._monitor: asyncio.Task | None = None

    # AdapterHost: engines are named by their URL.
    def healthy_engines(self) -> list[str]:
        return [e.url for e in self.engines if e.healthy]

    def ready_engines(self) -> list[str]:
        return [e.url for e in self.engines if e.ready]

    def holds(self, engine: str, name: str) -> bool:
        return name in self._engine(engine).loaded_adapters

    async def load(self, engine: str, name: str, path: str) -> None:
        handle = self._engine(engine)
        await handle.client.load_lora(name, path)
        handle.loaded_adapters.add(name)

    async def unload(self, engine: str, name: str) -> None:
        handle = self._engine(engine)
        try:
            await handle.client.unload_lora(name)
        finally:
            handle.loaded_adapters.discard(name)

    async def warm_up(self, engine: str, name: str) -> None:
        await self._engine(engine).client.complete(
            "/v1/completions", {"model": name, "prompt": "Hello", "max_tokens": 1, "temperature": 0})

    async def refresh(self, engine: str) -> set[str]:
        handle = self._engine(engine)
        names = await handle.client.model_names()
        handle.loaded_adapters = {name for name in names if name != self.base_model}
        return set(handle.loaded_adapters)

    def in_flight(self, name: str) -> int:
        return self._model_in_flight.get(name, 0)

    def _engine(self, engine: str) -> EngineHandle:
        for handle in self.engines:
            if handle.url == engine:
                return handle
        raise KeyError(f"no engine {engine!r} in the pool")

    async def check_all(self) -> None:
        for engine in self.engines:
            await self.check(engine)

    async def check(self, engine: EngineHandle) -> None:
        healthy = await engine.client.health()
        if healthy and not engine.healthy:
            log.info("engine %s is healthy", engine.url)
            engine.healthy = True
            await self._recover(engine)
        elif not healthy and engine.healthy:
            log.warning("engine %s is down", engine.url)
            engine.healthy = False
            engine.ready = False
            engine.loaded_adapters.clear()

    async def _recover(self, engine: EngineHandle) -> None:
        try:
            if self.on_recover is not None:
                await self.on_recover(engine.url)
            engine.ready = True
        except Exception:  # the next check tries again
            log.exception("engine %s could not be prepared; keeping it out of rotation", engine.url)
            engine.healthy = False

    def start_monitor(self) -> None:
        self._monitor = asyncio.create_task(self._monitor_loop(), name="engine-monitor")

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            with contextlib.suppress(Exception):
                await self.check_all()

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for engine in self.engines:
            await engine.client.aclose()

    def replicas(self) -> list[EngineHandle]:
        """What `/v1/engines` and readiness list: each engine (a fleet lists its replicas)."""
        return list(self.engines)

    @property
    def idle(self) -> bool:
        """No request is in flight on any engine."""
        return all(engine.in_flight == 0 for engine in self.engines)

    @property
    def any_ready(self) -> bool:
        return any(engine.ready for engine in self.engines)

    def pick(self, model: str | None = None) -> EngineHandle:
        """The least busy ready engine; for an adapter, one that has it loaded."""
        candidates = [e for e in self.engines if e.ready]
        if model is not None and "@" in model:
            candidates = [e for e in candidates if model in e.loaded_adapters]
        if not candidates:
            raise EngineUnavailable("no engine is ready (starting, restarting or down)")
        return min(candidates, key=lambda e: e.in_flight)

    @contextlib.contextmanager
    def hold(self, model: str | None = None) -> Iterator[None]:
        """Count a request on the engine model `model` from the moment it is routed to it, before
        it reaches an engine (while its passages are retrieved): a drain waits for it, so the
        version it was planned on is still loaded when it is sent."""
        key = model or ""
        self._model_in_flight[key] = self._model_in_flight.get(key, 0) + 1
        try:
            yield
        finally:
            self._model_in_flight[key] -= 1

    @contextlib.asynccontextmanager
    async def lease(self, model: str | None = None) -> AsyncIterator[EngineHandle]:
        engine = self.pick(model)
        engine.in_flight += 1
        try:
            with self.hold(model):
                yield engine
        finally:
            engine.in_flight -= 1
