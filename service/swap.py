"""The one author of domain bindings: create, update, swap, roll back and delete a domain.

Every change runs the same protocol under the domain's lock: make the target adapter version
servable on every engine (load + warm up), commit the binding and its history row in SQL,
flip the in-memory route, then unload the old version once no request runs on it. Requests
already planned keep their engine model name; a request planned after the flip gets the new
one. Any failure before the commit leaves the domain exactly as it was.
"""

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from adapters_store import adapter_repo, config_repo, eval_repo
from adapters_store.errors import Conflict, NotFound, Unavailable
from adapters_store.hotload import HotLoader, HotLoadError
from adapters_store.models import AdapterVersion, Corpus, Domain, DomainConfig, DomainHistory, utcnow
from service.auth import Principal
from service.domains import RoutingTable, route_of

# Runs after the target is loaded and before the commit: raises to refuse, returns history details.
Check = Callable[[Domain, AdapterVersion | None], Awaitable[dict | None]]


@dataclass(frozen=True)
class Binding:
    """What PUT /v1/domains/{d} sets; `adapter` is (name, version) or None for the base model."""
    corpora: list[str]
    adapter: tuple[str, int] | None
    system_prompt: str | None
    retrieval: dict
    gate: dict | None = None  # the default gate of every swap to this domain
    description: str | None = None  # shown to agents (service/mcp_server.py list_domains)


class SwapService:
    """`evals` scores gated swaps (service.evals.EvalService; None: gates are refused)."""

    def __init__(self, sessions, routing: RoutingTable, loader: HotLoader, evals=None):
        self.sessions = sessions
        self.routing = routing
        self.loader = loader
        self.evals = evals
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._drains: set[asyncio.Task] = set()
        self._staged: Counter[str] = Counter()  # versions kept loaded for runs and rebinds: their uses
        self._staged_paths: dict[str, str] = {}  # … and their folders (the base model has none)

    async def put(self, name: str, binding: Binding, key_id: int | None) -> bool:
        """Create or update a domain; True when it was created."""
        with self.sessions() as session:
            known = set(session.scalars(select(Corpus.name).where(Corpus.name.in_(binding.corpora))))
            missing = [c for c in binding.corpora if c not in known]
            if missing:
                raise NotFound(f"corpus {missing[0]!r} does not exist", param="corpora",
                               code="corpus_not_found")
            target_id = adapter_repo.get_version(session, *binding.adapter).id if binding.adapter else None
            if binding.gate is not None:
                eval_repo.get_evalset(session, binding.gate["evalset"])
            created = session.scalar(select(Domain.id).where(Domain.name == name)) is None

        def apply(domain: Domain) -> None:
            before = config_repo.snapshot(domain) if not created else None
            domain.corpora = list(binding.corpora)
            domain.system_prompt = binding.system_prompt
            domain.retrieval = dict(binding.retrieval)
            domain.gate = binding.gate
            domain.description = binding.description
            if before is not None and config_repo.snapshot(domain) != before:
                domain.config_version = None  # no longer the configuration version applied last

        await self._rebind(name, lambda *_: target_id, "create" if created else "update", key_id,
                           apply=apply, create=created)
        return created

    async def swap(self, name: str, adapter: str, version: int, principal: Principal,
                   gate: dict | None = None) -> dict | None:
        """Swap to adapter@version for `principal`; with a gate (or the domain's default one) only
        when the candidate scores at least `min_delta` above the current binding (evaluated for
        `principal`, so a key that may not evaluate cannot gate). The gate's numbers."""
        outcome: dict = {}
        check = self._gate_check(name, principal, gate, outcome, "swap_refused")
        await self._rebind(name, lambda session, _: adapter_repo.get_version(session, adapter, version).id,
                           "swap", principal.key_id, check=check)
        return outcome.get("gate")

    async def apply_config(self, name: str, version: int, principal: Principal,
                           gate: dict | None = None) -> dict | None:
        """Make configuration version `version` the domain's live one, through the same protocol
        and gate as a swap (the candidate: the current adapter with that configuration); recorded
        in the history as `config_apply`, so a rollback returns to the configuration before it."""
        outcome: dict = {}
        chosen: dict = {}

        def target_of(session: Session, domain: Domain | None) -> int | None:
            chosen["config"] = dict(config_repo.get_version(session, domain, version).config)  # 404 first
            return domain.adapter_version_id

        def apply(domain: Domain) -> dict:
            before, before_version = config_repo.snapshot(domain), domain.config_version
            config_repo.assign(domain, chosen["config"], version)
            return {"config_version": version, "config": {
                "from": before, "to": config_repo.snapshot(domain), "from_version": before_version,
                "to_version": version}}

        check = self._gate_check(name, principal, gate, outcome, "config_refused",
                                 config=lambda: chosen["config"], candidate=f"config {version}")
        await self._rebind(name, target_of, "config_apply", principal.key_id, apply=apply, check=check)
        return outcome.get("gate")

    def _gate_check(self, name: str, principal: Principal, gate: dict | None, outcome: dict, refused: str,
                    config: Callable[[], dict] | None = None, candidate: str | None = None) -> Check:
        """The check of a gated change: the gate given, or the domain's default one; the candidate is
        the target adapter version, or (`config`) a configuration on the current one. A refusal is
        recorded in the history as `refused` and raised as 409 gate_failed."""
        key_id = principal.key_id

        async def check(domain: Domain, target: AdapterVersion | None) -> dict | None:
            spec = gate or domain.gate
            if spec is None:
                return None
            with self.sessions() as session:
                eval_repo.get_evalset(session, spec["evalset"])
            if self.evals is None:
                raise Unavailable("this gateway cannot evaluate a gate", code="gate_unavailable")
            engine = target.engine_name if target is not None else self.routing.base_model
            what = candidate or engine
            result = (await self.evals.gate(name, engine, spec, principal,
                                            config=config() if config is not None else None)).as_dict()
            outcome["gate"] = result
            if not result["passed"]:
                with self.sessions() as session, session.begin():
                    current = adapter_repo.get_domain(session, name)
                    adapter_repo.record(session, current, refused, current.adapter_version_id,
                                        current.adapter_version_id, key_id, {"gate": result, "candidate": what})
                raise Conflict(
                    f"gate refused {what}: {spec['metric']} {_fmt(result['candidate'])} (eval "
                    f"{result['candidate_eval_id']}) vs current {_fmt(result['current'])} (eval "
                    f"{result['current_eval_id']}), needs a gain of at least {spec['min_delta']}",
                    param="gate", code="gate_failed")
            return {"gate": result}

        return check

    @contextlib.asynccontextmanager
    async def kept_loaded(self, domain: str, candidate: tuple[str, int] | None = None) -> AsyncIterator[str]:
        """The version a run scores, loaded on every engine until the block ends; yields its engine
        model name. `candidate` (adapter, version): loaded without being routed to; None: the
        domain's current version, kept even if the domain is swapped meanwhile, so an evaluation
        of the current binding scores that one version to its end."""
        target = None
        if candidate is None:
            route = self.routing.require(domain)
            engine_model, path = route.engine_model, route.adapter_path  # loaded already: it is routed
        else:
            with self.sessions() as session:
                target = _load_version(session, adapter_repo.get_version(session, *candidate).id)
            engine_model, path = target.engine_name, target.path
        self._stage(engine_model, path)
        try:
            await self._prepare(target)
            yield engine_model
        finally:
            if self._unstage(engine_model) and engine_model != self.routing.base_model:
                self._unload_after_drain(engine_model)

    def needed_adapters(self) -> dict[str, str]:
        """Adapter name → folder of every adapter each engine must hold: those the domains route to
        and those kept loaded for runs and rebinds in progress. The one source of the reconciler
        (what an engine that comes back gets before it takes traffic) and of the drains."""
        return {**self.routing.routed_adapters(), **self._staged_paths}

    def _stage(self, engine_model: str, path: str | None) -> None:
        """One use more of a version that must stay loaded (`path`: None for the base model)."""
        self._staged[engine_model] += 1
        if path:
            self._staged_paths[engine_model] = path

    def _unstage(self, engine_model: str) -> bool:
        """One use fewer; True when it was the last."""
        self._staged[engine_model] -= 1
        if self._staged[engine_model] > 0:
            return False
        del self._staged[engine_model]
        self._staged_paths.pop(engine_model, None)
        return True

    async def rollback(self, name: str, key_id: int | None) -> None:
        """Undo the last change: back to the previous adapter version, or, when the last change was a
        configuration version's apply (or a rollback of one), to the configuration before it."""
        plan: dict = {}

        def target_of(session: Session, domain: Domain | None) -> int | None:
            is_config, config, version = config_repo.rollback_config(session, domain)
            if not is_config:
                return self._rollback_target(session, domain)
            plan.update(config=config, version=version)
            return domain.adapter_version_id

        def apply(domain: Domain) -> dict | None:
            if "config" not in plan:
                return None
            before, before_version = config_repo.snapshot(domain), domain.config_version
            config_repo.assign(domain, plan["config"], plan["version"])
            return {"config": {"from": before, "to": config_repo.snapshot(domain), "from_version": before_version,
                               "to_version": plan["version"]}}

        await self._rebind(name, target_of, "rollback", key_id, apply=apply)

    async def delete(self, name: str) -> None:
        """Remove the domain and its history; its adapter is unloaded once its requests finish."""
        async with self._locks[name]:
            with self.sessions() as session, session.begin():
                domain = adapter_repo.get_domain(session, name)
                session.execute(delete(DomainHistory).where(DomainHistory.domain_id == domain.id))
                session.execute(delete(DomainConfig).where(DomainConfig.domain_id == domain.id))
                session.delete(domain)
            old = self.routing.remove(name)
            if old is not None and old.adapter_path:
                self._unload_after_drain(old.engine_model)

    async def _rebind(self, name: str, target_of: Callable[[Session, Domain | None], int | None], action: str,
                      key_id: int | None, *, apply: Callable[[Domain], dict | None] | None = None,
                      create: bool = False, check: Check | None = None) -> None:
        async with self._locks[name]:
            with self.sessions() as session:
                current = None if create else adapter_repo.get_domain(session, name)  # 404 first
                target = _load_version(session, target_of(session, current))
            staged = target.engine_name if target is not None else None
            if staged:  # needed from now on: a drain of an earlier use must not unload it
                self._stage(staged, target.path)
            try:
                await self._prepare(target)
                details = await check(current, target) if check is not None else None
                with self.sessions() as session, session.begin():
                    if create:
                        if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
                            raise Conflict(f"domain {name!r} was created meanwhile", param="domain")
                        domain = Domain(name=name)
                        session.add(domain)
                    else:
                        domain = adapter_repo.get_domain(session, name)
                    previous = domain.adapter_version_id
                    if apply is not None:  # what it returns goes into the history row's details
                        details = {**(details or {}), **(apply(domain) or {})} or None
                    domain.adapter_version = _load_version(session, target.id if target else None)
                    domain.updated_at = utcnow()
                    session.flush()
                    adapter_repo.record(session, domain, action, previous, target.id if target else None,
                                        key_id, details)
                self._flip(domain)
            except BaseException:  # refused or failed: the target goes unless something uses it
                if staged:
                    self._unload_after_drain(staged)  # a task: it looks after the unstaging below
                raise
            finally:
                if staged:
                    self._unstage(staged)

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
            engine_model, lambda: engine_model in self.needed_adapters()))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def wait_drained(self) -> None:
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)


def _fmt(score: float | None) -> str:
    return "none" if score is None else f"{score:.3f}"


def _load_version(session: Session, version_id: int | None) -> AdapterVersion | None:
    if version_id is None:
        return None
    return session.get(AdapterVersion, version_id, options=[selectinload(AdapterVersion.adapter)])
