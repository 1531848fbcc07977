"""SQL access for domain configuration versions: what a configuration holds, its versions, their
diff against a domain's live configuration, and the configuration a rollback returns to.

A configuration is {retrieval: {k, mode, min_score}, system_prompt, prompt_template,
demonstrations, max_tokens}; the domain's enforced filter, corpora and adapter are not part of it.
"""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters_store.errors import NotFound
from adapters_store.models import Domain, DomainConfig, DomainHistory

FIELDS = ("retrieval", "system_prompt", "prompt_template", "demonstrations", "max_tokens")
RETRIEVAL_FIELDS = ("k", "mode", "min_score")
DEFAULTS = {"retrieval": {"k": 4, "mode": "hybrid", "min_score": None}, "system_prompt": None,
            "prompt_template": "numbered", "demonstrations": [], "max_tokens": None}


def normalised(config: dict) -> dict:
    """Every field present, defaults filled in (so two configurations compare field by field)."""
    retrieval = {**DEFAULTS["retrieval"], **{k: v for k, v in (config.get("retrieval") or {}).items()
                                             if k in RETRIEVAL_FIELDS}}
    return {"retrieval": retrieval, "system_prompt": config.get("system_prompt"),
            "prompt_template": config.get("prompt_template") or DEFAULTS["prompt_template"],
            "demonstrations": list(config.get("demonstrations") or []), "max_tokens": config.get("max_tokens")}


def snapshot(domain: Domain) -> dict:
    """The domain's live configuration."""
    return normalised({"retrieval": domain.retrieval, "system_prompt": domain.system_prompt,
                       "prompt_template": domain.prompt_template, "demonstrations": domain.demonstrations,
                       "max_tokens": domain.max_tokens})


def assign(domain: Domain, config: dict, version: int | None) -> None:
    """Make `config` the domain's live configuration (its enforced filter is kept)."""
    config = normalised(config)
    domain.retrieval = {**(domain.retrieval or {}), **config["retrieval"]}
    domain.system_prompt = config["system_prompt"]
    domain.prompt_template = config["prompt_template"]
    domain.demonstrations = config["demonstrations"]
    domain.max_tokens = config["max_tokens"]
    domain.config_version = version


def diff(current: dict, config: dict) -> dict:
    """{field: {current, config}} for each field that differs (retrieval's as `retrieval.k`, ...)."""
    current, config = normalised(current), normalised(config)
    changes = {}
    for name in FIELDS:
        if name == "retrieval":
            for key in RETRIEVAL_FIELDS:
                if current["retrieval"][key] != config["retrieval"][key]:
                    changes[f"retrieval.{key}"] = {"current": current["retrieval"][key],
                                                   "config": config["retrieval"][key]}
        elif current[name] != config[name]:
            changes[name] = {"current": current[name], "config": config[name]}
    return changes


def add_version(session: Session, domain: Domain, config: dict, **fields) -> DomainConfig:
    latest = session.scalar(select(func.max(DomainConfig.version)).where(DomainConfig.domain_id == domain.id)) or 0
    row = DomainConfig(domain_id=domain.id, version=latest + 1, config=normalised(config), **fields)
    session.add(row)
    session.flush()
    return row


def list_versions(session: Session, domain: Domain) -> list[DomainConfig]:
    return list(session.scalars(select(DomainConfig).where(DomainConfig.domain_id == domain.id)
                                .order_by(DomainConfig.version)))


def get_version(session: Session, domain: Domain, version: int) -> DomainConfig:
    row = session.scalar(select(DomainConfig).where(DomainConfig.domain_id == domain.id,
                                                    DomainConfig.version == version))
    if row is None:
        raise NotFound(f"domain {domain.name!r} has no configuration version {version}", param="version",
                       code="config_not_found")
    return row


def version_as_dict(row: DomainConfig, domain: Domain, with_trials: bool = False) -> dict:
    body = {"object": "domain.config", "domain": domain.name, "version": row.version, "config": row.config,
            "applied": domain.config_version == row.version, "metric": row.metric, "evalset": row.evalset,
            "holdout": row.holdout, "tuning_score": row.tuning_score, "holdout_score": row.holdout_score,
            "current_score": row.current_score, "job_id": row.job_id,
            "created_at": int(row.created_at.timestamp())}
    if with_trials:
        body["trials"] = row.trials or []
    return body


def rollback_config(session: Session, domain: Domain) -> tuple[bool, dict | None, int | None]:
    """Whether the domain's last change that a rollback undoes was a configuration change, and if so
    the configuration (and its version) to return to. Like the adapter's rollback, a second one
    returns to where the first one started: the newest history row whose adapter or configuration
    change led to the live state decides."""
    live = snapshot(domain)
    rows = session.scalars(select(DomainHistory).where(DomainHistory.domain_id == domain.id)
                           .order_by(DomainHistory.id.desc()))
    for row in rows:
        change = (row.details or {}).get("config")
        if change and change["from"] != change["to"] and normalised(change["to"]) == live:
            return True, change["from"], change.get("from_version")
        if row.to_version_id == domain.adapter_version_id and row.from_version_id != row.to_version_id \
                and row.action != "create":
            return False, None, None  # an adapter change: adapter_repo.previous_version_id
    return False, None, None
