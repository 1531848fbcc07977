"""SQL access for adapters, their versions, domains and the domain history."""

from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from adapters_store.errors import Conflict, NotFound
from adapters_store.models import Adapter, AdapterVersion, Domain, DomainHistory, utcnow


def get_or_create_adapter(session: Session, name: str) -> Adapter:
    adapter = session.scalar(select(Adapter).where(Adapter.name == name))
    if adapter is None:
        adapter = Adapter(name=name)
        session.add(adapter)
        session.flush()
    return adapter


def add_version(session: Session, adapter: Adapter, sha256: str, path: str, rank: int,
                target_modules: list[str], provenance: dict | None = None) -> AdapterVersion:
    # Deleted versions keep their rows, so max() never hands out a number twice.
    latest = session.scalar(select(func.max(AdapterVersion.version))
                            .where(AdapterVersion.adapter_id == adapter.id)) or 0
    version = AdapterVersion(adapter_id=adapter.id, version=latest + 1, sha256=sha256, path=path,
                             rank=rank, target_modules=target_modules, provenance=provenance)
    session.add(version)
    session.flush()
    version.adapter = adapter
    return version


def get_version(session: Session, name: str, version: int) -> AdapterVersion:
    row = session.scalar(select(AdapterVersion).join(Adapter)
                         .options(selectinload(AdapterVersion.adapter))
                         .where(Adapter.name == name, AdapterVersion.version == version,
                                AdapterVersion.deleted.is_(False)))
    if row is None:
        raise NotFound(f"adapter version {name}@{version} does not exist", param="version",
                       code="adapter_not_found")
    return row


def list_adapters(session: Session) -> list[Adapter]:
    return list(session.scalars(select(Adapter).options(selectinload(Adapter.versions))
                                .order_by(Adapter.name)))


def get_adapter(session: Session, name: str) -> Adapter:
    adapter = session.scalar(select(Adapter).options(selectinload(Adapter.versions))
                             .where(Adapter.name == name))
    if adapter is None:
        raise NotFound(f"adapter {name!r} does not exist", param="adapter", code="adapter_not_found")
    return adapter


def version_as_dict(version: AdapterVersion, adapter_name: str) -> dict:
    return {"object": "adapter.version", "adapter": adapter_name, "version": version.version,
            "sha256": version.sha256, "rank": version.rank, "target_modules": version.target_modules,
            "engine_model": f"{adapter_name}@{version.version}", "provenance": version.provenance,
            "bytes": stored_bytes(version.path), "created_at": int(version.created_at.timestamp())}


def stored_bytes(path: str) -> int | None:
    """The size of a version's files in the store (None when its folder is gone)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def delete_version(session: Session, version: AdapterVersion) -> None:
    """Soft-delete; refused while a domain uses the version or could roll back to it."""
    users = session.scalars(select(Domain.name).where(Domain.adapter_version_id == version.id)).all()
    if users:
        raise Conflict(f"{version.engine_name} is used by domain(s) {', '.join(users)}",
                       param="version", code="adapter_in_use")
    in_history = session.scalar(select(DomainHistory.id).where(or_(
        DomainHistory.from_version_id == version.id, DomainHistory.to_version_id == version.id)).limit(1))
    if in_history is not None:
        raise Conflict(f"{version.engine_name} is in a domain's rollback history", param="version",
                       code="adapter_in_use")
    version.deleted = True


def get_domain(session: Session, name: str) -> Domain:
    domain = session.scalar(select(Domain).options(
        selectinload(Domain.adapter_version).selectinload(AdapterVersion.adapter))
        .where(Domain.name == name))
    if domain is None:
        raise NotFound(f"domain {name!r} does not exist", param="domain", code="domain_not_found")
    return domain


def record(session: Session, domain: Domain, action: str, from_id: int | None, to_id: int | None,
           key_id: int | None, details: dict | None = None) -> None:
    session.add(DomainHistory(domain_id=domain.id, action=action, from_version_id=from_id,
                              to_version_id=to_id, api_key_id=key_id, at=utcnow(), details=details))


def history(session: Session, domain: Domain) -> list[dict]:
    rows = session.scalars(select(DomainHistory).where(DomainHistory.domain_id == domain.id)
                           .order_by(DomainHistory.id)).all()
    names = _engine_names(session, {i for r in rows for i in (r.from_version_id, r.to_version_id) if i})
    return [{"at": int(r.at.timestamp()), "action": r.action,
             "from": names.get(r.from_version_id), "to": names.get(r.to_version_id),
             "api_key_id": r.api_key_id, "details": r.details} for r in rows]


def previous_version_id(session: Session, domain: Domain) -> tuple[bool, int | None]:
    """The version the domain had before its current one: (found, version id or None for none).

    Like `kubectl rollout undo`, a second rollback returns to where the first one started.
    """
    rows = session.scalars(select(DomainHistory).where(DomainHistory.domain_id == domain.id)
                           .order_by(DomainHistory.id.desc()))
    for row in rows:
        if row.to_version_id == domain.adapter_version_id and row.from_version_id != row.to_version_id \
                and row.action != "create":
            return True, row.from_version_id
    return False, None


def _engine_names(session: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.scalars(select(AdapterVersion).options(selectinload(AdapterVersion.adapter))
                           .where(AdapterVersion.id.in_(ids)))
    return {v.id: v.engine_name for v in rows}


def sha_in_use(session: Session, sha256: str) -> bool:
    """Whether a live version still stores its files under `sha256` (content is shared)."""
    return session.scalar(select(AdapterVersion.id).where(
        AdapterVersion.sha256 == sha256, AdapterVersion.deleted.is_(False)).limit(1)) is not None
