"""What each row of a domain report runs (service/reports.py): the routes to a domain's knowledge, and
which adapter version or configuration version feeds each one.

A row's ingredient is the one the request names (`routes`), else the newest one the domain's records
point at: for `reader` and `memorize`, the newest version of an adapter trained with that recipe on
one of the domain's corpora (its provenance); for `composed`, the newest composed version with a
source trained on one of them; for `tuned`, the domain's newest configuration version a tuning
stored. A route with no ingredient, or one the request leaves out (`false`), is a row that is not
available, with the reason: never dropped.
"""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from adapters_store import adapter_repo, config_repo, tenancy
from adapters_store.models import Adapter, AdapterVersion, Domain, DomainConfig


@dataclass(frozen=True)
class Route:
    name: str
    label: str
    ingredient: str | None  # what it needs besides the base model: a routes key of the request
    retrieval: bool  # the domain's retrieval on (its live settings) or off (closed book)


ROUTES = (
    Route("closed_book", "closed book", None, False),
    Route("retrieval", "retrieval", None, True),
    Route("tuned", "tuned configuration", "tuned", True),
    Route("reader", "reader", "reader", True),
    Route("memorize_closed_book", "memorize, closed book", "memorize", False),
    Route("memorize_retrieval", "memorize, retrieval", "memorize", True),
    Route("composed", "composed", "composed", True),
)
REFERENCE = "retrieval"  # the row every other row's difference is against
INGREDIENTS = ("tuned", "reader", "memorize", "composed")
ADAPTER_INGREDIENTS = ("reader", "memorize", "composed")


def plan(session: Session, domain: Domain, routes: dict, base_model: str) -> list[dict]:
    """One row per route, in ROUTES' order: {route, label, available, reason} and, when available,
    what its evaluation run scores: {engine_model, adapter, retrieval, config_version, config, source}.
    `routes` maps an ingredient to {name, version} (an adapter), {version} (`tuned`), False (left out)
    or None (the domain's records decide). Names the request gives are in the domain's namespace and
    must exist (NotFound otherwise)."""
    found = {name: _ingredient(session, domain, name, routes.get(name)) for name in INGREDIENTS}
    rows = []
    for route in ROUTES:
        row = {"route": route.name, "label": route.label, "available": True, "reason": None,
               "engine_model": base_model, "adapter": None, "retrieval": route.retrieval,
               "config_version": None, "config": None, "source": None}
        if route.ingredient is not None:
            ingredient, source, reason = found[route.ingredient]
            if ingredient is None:
                rows.append({"route": route.name, "label": route.label, "available": False, "reason": reason})
                continue
            row["source"] = source
            if route.ingredient == "tuned":
                row["config_version"], row["config"] = ingredient.version, ingredient.config
            else:
                row["adapter"] = {"name": ingredient.adapter.name, "version": ingredient.version,
                                  "recipe": (ingredient.provenance or {}).get("recipe"),
                                  "composed": "compose" in (ingredient.provenance or {})}
                row["engine_model"] = ingredient.engine_name
        rows.append(row)
    return rows


def _ingredient(session: Session, domain: Domain, name: str, choice) -> tuple:
    """(the version or None, where it came from: `request` | `provenance`, the reason when None)."""
    if choice is False:
        return None, None, "left out by the request"
    if name == "tuned":
        if choice is not None:
            return config_repo.get_version(session, domain, choice["version"]), "request", None
        row = session.scalar(select(DomainConfig).where(DomainConfig.domain_id == domain.id,
                                                        DomainConfig.job_id.is_not(None))
                             .order_by(DomainConfig.version.desc()).limit(1))
        return (row, "provenance", None) if row is not None else (
            None, None, "the domain has no configuration version from a tuning (graft domain tune)")
    if choice is not None:
        stored = tenancy.within(domain.name, choice["name"], param=f"routes.{name}.name", kind="adapter")
        return adapter_repo.get_version(session, stored, choice["version"]), "request", None
    versions = _domain_versions(session, domain)
    corpora = set(domain.corpora or ())
    trained = {(v.adapter.name, v.version) for v in versions if (v.provenance or {}).get("corpus") in corpora}
    if name == "composed":
        chosen = [v for v in versions if any((s["adapter"], s["version"]) in trained
                                             for s in (v.provenance or {}).get("compose", {}).get("sources", ()))]
        reason = (f"no composed adapter version with a source trained on the domain's corpora; "
                  f"name one in routes.{name}")
    else:
        chosen = [v for v in versions if (v.adapter.name, v.version) in trained
                  and v.provenance.get("recipe") == name]
        reason = (f"no adapter version trained with recipe {name!r} on the domain's corpora; "
                  f"name one in routes.{name}")
    if not chosen:
        return None, None, reason
    return max(chosen, key=lambda v: (v.created_at, v.id)), "provenance", None


def _domain_versions(session: Session, domain: Domain) -> list[AdapterVersion]:
    """The versions (not deleted, with provenance) of the adapters in the domain's namespace."""
    owner = tenancy.tenant_of(domain.name)
    versions = session.scalars(select(AdapterVersion).join(Adapter)
                               .options(selectinload(AdapterVersion.adapter))
                               .where(AdapterVersion.deleted.is_(False)))
    return [v for v in versions if v.provenance and tenancy.tenant_of(v.adapter.name) == owner]
