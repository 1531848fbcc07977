"""The one author of domain bindings: create, update, swap, roll back and delete a domain.

Every change runs the same protocol under the domain's lock: make the target adapter version
servable on every engine (load + warm up), commit the binding and its history row in SQL,
flip the in-memory route, then unload the old version once no request runs on it. Requests
already planned keep their engine model name; a request planned after the flip gets the new
one. Any failure before the commit leaves the domain exactly as it was.
"""

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from adapters_store import adapter_repo
from adapters_store.errors import Conflict, NotFound, Unavailable
from adapters_store.hotload import HotLoader, HotLoadError
from adapters_store.models import AdapterVersion, Corpus, Domain, DomainHistory, utcnow
from service.domains import RoutingTable, route_of


@dataclass(frozen=True)
class Binding:
    """What PUT /v1/domains/{d} sets; `adapter` is (name, version) or None for the base model."""
    corpora: list[str]
    adapter: tuple[str, int] | None
    system_prompt: str | None
    retrieval: dict


class SwapService:
    def __init__(self, sessions, routing: RoutingTable, loader: HotLoader):
        self.sessions = sessions
        self.routing = routing
        self.loader = loader
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._drains: set[asyncio.Task] = set()

    async def put(self, name: str, binding: Binding, key_id: int | None) -> bool:
        """Create or update a domain; True when it was created."""
        with self.sessions() as session:
            known = set(session.scalars(select(Corpus.name).where(Corpus.name.in_(binding.corpora))))
            missing = [c for c in binding.corpora if c not in known]
            if missing:
                raise NotFound(f"corpus {missing[0]!r} does not exist", param="corpora",
                               code="corpus_not_found")
            target_id = adapter_repo.get_version(session, *binding.adapter).id if binding.adapter else None
            created = session.scalar(select(Domain.id).where(Domain.name == name)) is None

        def apply(domain: Domain) -> None:
            domain.corpora = list(binding.corpora)
            domain.system_prompt = binding.system_prompt
            domain.retrieval = dict(binding.retrieval)

        await self._rebind(name, lambda *_: target_id, "create" if created else "update", key_id,
                           apply=apply, create=created)
        return created

    async def swap(self, name: str, adapter: str, version: int, key_id: int | None) -> None:
        await self._rebind(name, lambda session, _: adapter_repo.get_version(session, adapter, version).id,
                           "swap", key_id)

    async def rollback(self, name: str, key_id: int | None) -> None:
        await self._rebind(name, self._rollback_target, "rollback", key_id)

    async def delete(self, name: str) -> None:
        """Remove the domain and its history; its adapter is unloaded once its requests finish."""
        async with self._locks[name]:
            with self.sessions() as session, session.begin():
                domain = adapter_repo.get_domain(session, name)
                session.execute(delete(DomainHistory).where(DomainHistory.domain_id == domain.id))
                session.delete(domain)
            old = self.routing.remove(name)
            if old is not None and old.adapter_path:
                self._unload_after_drain(old.engine_model)

    async def _rebind(self, name: str, target_of: Callable[[Session, Domain | None], int | None], action: str,
                      key_id: int | None, *, apply: Callable[[Domain], None] | None = None,
                      create: bool = False) -> None:
        async with self._locks[name]:
            with self.sessions() as session:
                current = None if create else adapter_repo.get_domain(session, name)  # 404 first
                target = _load_version(session, target_of(session, current))
            await self._prepare(target)
            with self.sessions() as session, session.begin():
                if create:
                    if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
                        raise Conflict(f"domain {name!r} was created meanwhile", param="domain")
                    domain = Domain(name=name)
                    session.add(domain)
                else:
                    domain = adapter_repo.get_domain(session, name)
                previous = domain.adapter_version_id
                if apply is not None:
                    apply(domain)
                domain.adapter_version = _load_version(session, target.id if target else None)
                domain.updated_at = utcnow()
                session.flush()
                adapter_repo.record(session, domain, action, previous, target.id if target else None, key_id)
            self._flip(domain)

    @staticmethod
    def _rollback_target(session: Session, domain: Domain | None) -> int | None:
        found, target_id = adapter_repo.previous_version_id(session, domain)
        if not found:
            raise Conflict(f"domain {domain.name!r} has no earlier version to roll back to",
                           param="domain", code="nothing_to_roll_back")
        if target_id is not None and session.get(AdapterVersion, target_id).deleted:
            raise Conflict("the previous version was deleted", param="domain", code="adapter_deleted")
        return target_id

    async def _prepare(self, version: AdapterVersion | None) -> None:
        """Make `version` servable on every engine (nothing to do for the base model)."""
        if version is None:
            return
        try:
            await self.loader.load_everywhere(version.engine_name, version.path)
        except HotLoadError as exc:
            raise Unavailable(str(exc), code="adapter_load_failed", retry_after_s=5) from exc

    def _flip(self, domain: Domain) -> None:
        """After the SQL commit: route new requests to the new binding, drain the old one."""
        old = self.routing.get(domain.name)
        new = route_of(domain, self.routing.base_model)
        self.routing.put(new)
        if old is not None and old.adapter_path and old.engine_model != new.engine_model:
            self._unload_after_drain(old.engine_model)

    def _unload_after_drain(self, engine_model: str) -> None:
        task = asyncio.create_task(self.loader.unload_when_drained(
            engine_model, lambda: engine_model in self.routing.needed_adapters()))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def wait_drained(self) -> None:
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)


def _load_version(session: Session, version_id: int | None) -> AdapterVersion | None:
    if version_id is None:
        return None
    return session.get(AdapterVersion, version_id, options=[selectinload(AdapterVersion.adapter)])
