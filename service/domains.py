"""The in-memory routing table: domain name → what a request for it needs, mirrored from SQL.

A route is immutable; changing a domain replaces its route in one dict assignment, so a request
sees either the old binding or the new one, never a mix.
"""

import dataclasses
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from adapters_store import config_repo
from adapters_store.errors import NotFound
from adapters_store.models import AdapterVersion, Domain
from indexer import filters
from indexer.filters import MetadataFilter
from service.auth import Principal
from service.rag.prompt import DEFAULT_TEMPLATE

# `filter`: the domain's enforced metadata filter (canonical JSON form), or None.
DEFAULT_RETRIEVAL = {"k": 4, "mode": "hybrid", "min_score": None, "filter": None}


@dataclass(frozen=True)
class DomainRoute:
    name: str
    corpora: tuple[str, ...]
    engine_model: str  # `adapter@version` or the base model name
    adapter_path: str | None  # the stored adapter folder the engines load
    system_prompt: str | None
    retrieval: dict = field(default_factory=lambda: dict(DEFAULT_RETRIEVAL))
    created_at: int = 0
    gate: dict | None = None
    filter: MetadataFilter | None = None  # parsed from retrieval["filter"]: every retrieval applies it
    # The rest of the domain's configuration (a configuration version sets them; see config_repo).
    prompt_template: str = DEFAULT_TEMPLATE
    demonstrations: tuple[dict, ...] = ()
    max_tokens: int | None = None  # a request's default max_tokens (None: the gateway's)
    config_version: int | None = None
    description: str | None = None  # what agents are shown of the domain


def with_config(route: DomainRoute, config: dict) -> DomainRoute:
    """The route as it would be with `config` live (config_repo's shape): what an evaluation of a
    candidate configuration plans with, leaving the live domain as it is. The domain's enforced
    filter and corpora are kept."""
    config = config_repo.normalised(config)
    return dataclasses.replace(
        route, retrieval={**route.retrieval, **config["retrieval"]}, system_prompt=config["system_prompt"],
        prompt_template=config["prompt_template"], demonstrations=tuple(config["demonstrations"]),
        max_tokens=config["max_tokens"])


def route_of(domain: Domain, base_model: str) -> DomainRoute:
    version = domain.adapter_version
    retrieval = {**DEFAULT_RETRIEVAL, **(domain.retrieval or {})}
    return DomainRoute(
        name=domain.name,
        corpora=tuple(domain.corpora or ()),
        engine_model=version.engine_name if version is not None else base_model,
        adapter_path=version.path if version is not None else None,
        system_prompt=domain.system_prompt,
        retrieval=retrieval,
        created_at=int(domain.created_at.timestamp()),
        gate=domain.gate,
        filter=filters.parse(retrieval["filter"], param="retrieval.filter"),
        prompt_template=domain.prompt_template or DEFAULT_TEMPLATE,
        demonstrations=tuple(domain.demonstrations or ()),
        max_tokens=domain.max_tokens,
        config_version=domain.config_version,
        description=domain.description,
    )


class RoutingTable:
    def __init__(self, base_model: str):
        self.base_model = base_model
        self._routes: dict[str, DomainRoute] = {}

    def load(self, session: Session) -> None:
        domains = session.scalars(select(Domain).options(
            selectinload(Domain.adapter_version).selectinload(AdapterVersion.adapter)))
        self._routes = {d.name: route_of(d, self.base_model) for d in domains}

    def get(self, name: str) -> DomainRoute | None:
        return self._routes.get(name)

    def require(self, name: str, *, param: str = "domain", named: str | None = None) -> DomainRoute:
        """The domain's route, or 404: the one answer for a domain that does not exist. `named`: the
        name as the request gave it, for the message (default: the stored name)."""
        route = self._routes.get(name)
        if route is None:
            raise NotFound(f"domain {named or name!r} does not exist", param=param, code="domain_not_found")
        return route

    def put(self, route: DomainRoute) -> None:
        self._routes[route.name] = route

    def remove(self, name: str) -> DomainRoute | None:
        return self._routes.pop(name, None)

    def all(self) -> list[DomainRoute]:
        return sorted(self._routes.values(), key=lambda r: r.name)

    def may_read(self, principal: Principal, corpus: str) -> bool:
        """Whether a key may retrieve from the corpus: its tenant's, and for a key limited to some
        domains, a corpus one of them binds."""
        if not principal.sees(corpus):
            return False
        if principal.domains is None:
            return True
        return any(corpus in route.corpora for d in principal.domains if (route := self._routes.get(d)))

    def using_corpus(self, corpus: str) -> list[str]:
        return [r.name for r in self._routes.values() if corpus in r.corpora]

    def routed_adapters(self) -> dict[str, str]:
        """Adapter name → folder for every adapter a domain routes to (SwapService.needed_adapters
        adds the versions kept loaded for runs: what each engine must hold)."""
        return {r.engine_model: r.adapter_path for r in self._routes.values() if r.adapter_path}
