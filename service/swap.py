"""Zero-downtime adapter swap for a domain: load + warm up everywhere, flip, drain, unload.

Requests already planned keep their engine model name (the old version stays loaded until they
finish); a request planned after the flip gets the new one. Any failure before the flip leaves
the domain exactly as it was.
"""

import asyncio
from collections import defaultdict

from sqlalchemy.orm import selectinload

from adapters_store import adapter_repo
from adapters_store.hotload import HotLoader, HotLoadError
from adapters_store.models import AdapterVersion, Domain
from service.domains import RoutingTable, route_of
from service.errors import ApiError


class SwapService:
    def __init__(self, sessions, routes: RoutingTable, loader: HotLoader):
        self.sessions = sessions
        self.routes = routes
        self.loader = loader
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._drains: set[asyncio.Task] = set()

    def lock(self, domain: str) -> asyncio.Lock:
        return self._locks[domain]

    async def prepare(self, version: AdapterVersion | None) -> None:
        """Make `version` servable on every engine (no-op for the base model)."""
        if version is None:
            return
        try:
            await self.loader.load_everywhere(version.engine_name, version.path)
        except HotLoadError as exc:
            raise ApiError(503, str(exc), code="adapter_load_failed",
                           headers={"Retry-After": "5"}) from exc

    def flip(self, domain: Domain) -> None:
        """After the SQL commit: route new requests to the domain's new binding, drain the old."""
        old = self.routes.get(domain.name)
        self.routes.put(route_of(domain, self.routes.base_model))
        if old is not None and old.adapter_path and old.engine_model != self.routes.get(domain.name).engine_model:
            name = old.engine_model
            task = asyncio.create_task(self.loader.unload_when_drained(
                name, lambda: name in self.routes.needed_adapters()))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def swap(self, domain_name: str, adapter: str | None, version: int | None, action: str,
                   key_id: int | None) -> Domain:
        async with self.lock(domain_name):
            target_id = self._target_id(domain_name, adapter, version, action)
            with self.sessions() as session:
                target = load_version(session, target_id)
            await self.prepare(target)
            with self.sessions() as session, session.begin():
                domain = adapter_repo.get_domain(session, domain_name)
                previous = domain.adapter_version_id
                domain.adapter_version = load_version(session, target_id)
                adapter_repo.record(session, domain, action, previous, target_id, key_id)
            self.flip(domain)
            return domain

    def _target_id(self, domain_name: str, adapter: str | None, version: int | None,
                   action: str) -> int | None:
        with self.sessions() as session:
            try:
                domain = adapter_repo.get_domain(session, domain_name)
                if action != "rollback":
                    return adapter_repo.get_version(session, adapter, version).id if adapter else None
            except adapter_repo.NotFound as exc:
                raise ApiError(404, str(exc), code="not_found") from exc
            found, target_id = adapter_repo.previous_version_id(session, domain)
            if not found:
                raise ApiError(409, f"domain {domain_name!r} has no earlier version to roll back to",
                               code="nothing_to_roll_back")
            if target_id is not None and session.get(AdapterVersion, target_id).deleted:
                raise ApiError(409, "the previous version was deleted", code="adapter_deleted")
            return target_id

    async def wait_drained(self) -> None:
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)


def load_version(session, version_id: int | None) -> AdapterVersion | None:
    if version_id is None:
        return None
    return session.get(AdapterVersion, version_id, options=[selectinload(AdapterVersion.adapter)])
