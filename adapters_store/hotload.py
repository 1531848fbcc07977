"""Load and unload adapter versions on engines, under immutable names `adapter@version`.

Engines are duck-typed (an EngineHandle of the gateway: `.client` with load_lora/unload_lora/
complete, `.healthy`, `.loaded_adapters`), so this package never imports the gateway.
"""

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class HotLoadError(Exception):
    pass


class HotLoader:
    def __init__(self, pool, drain_timeout_s: float = 60.0):
        self.pool = pool
        self.drain_timeout_s = drain_timeout_s

    async def ensure_loaded(self, engine, name: str, path: str) -> None:
        if name in engine.loaded_adapters:
            return
        await engine.client.load_lora(name, path)
        engine.loaded_adapters.add(name)
        await self.warm_up(engine, name)

    async def warm_up(self, engine, name: str) -> None:
        """One tiny request through the adapter, so the first real request pays no load cost."""
        await engine.client.complete("/v1/completions", {"model": name, "prompt": "Hello",
                                                         "max_tokens": 1, "temperature": 0})

    async def load_everywhere(self, name: str, path: str) -> None:
        """Load on every healthy engine, or on none: a failure unloads what this call loaded."""
        engines = [e for e in self.pool.engines if e.healthy]
        if not engines:
            raise HotLoadError("no engine is up to load the adapter on; retry when one is ready")
        loaded_here = []
        try:
            for engine in engines:
                fresh = name not in engine.loaded_adapters
                await self.ensure_loaded(engine, name, path)
                if fresh:
                    loaded_here.append(engine)
        except Exception as exc:
            for engine in loaded_here:
                await self._unload(engine, name)
            raise HotLoadError(f"loading {name} failed: {getattr(exc, 'message', exc)}") from exc

    async def unload_when_drained(self, name: str, still_needed: Callable[[], bool]) -> None:
        """Wait until no request runs on `name`, then unload it unless a domain uses it again."""
        deadline = time.monotonic() + self.drain_timeout_s
        while self.pool.model_in_flight.get(name, 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if still_needed():
            return
        for engine in self.pool.engines:
            if name in engine.loaded_adapters:
                await self._unload(engine, name)

    async def _unload(self, engine, name: str) -> None:
        try:
            await engine.client.unload_lora(name)
        except Exception as exc:  # the engine may be down; the reconciler repairs drift
            log.warning("unloading %s from %s failed: %s", name, engine.url, exc)
        engine.loaded_adapters.discard(name)
