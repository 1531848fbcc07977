"""API keys: `Authorization: Bearer <key>`, scope `inference` or `admin`, stored as sha256 hashes.

Keys come from the database (`graft keys create`) and from GRAFT_API_KEYS (bootstrap admin keys).
With no key at all, the gateway is open, and `graft serve` refuses to bind beyond loopback.

A database key belongs to a tenant or is global (service/keys.py, adapters_store/tenancy.py): it
names and sees its tenant's resources only; an inference key may be limited to some domains.

A database key may carry a metadata filter (`graft keys create --filter '{"group": ["hr"]}'`): every
retrieval made with it (search, completions) reads only documents the filter allows, and so does
its listing of a corpus's documents. Such a key cannot run evaluations or trainings, or read their
items and examples: they read every document of a corpus.
"""

import asyncio
import hashlib
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters_store import tenancy
from adapters_store.errors import Forbidden, Unauthenticated
from adapters_store.models import ApiKey, Job
from indexer import filters
from indexer.filters import MetadataFilter

SCOPES = ("inference", "admin")


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # None for bootstrap keys and open mode
    scope: str
    filter: MetadataFilter | None = None  # the documents this key may read (None: all)
    tenant: str | None = None  # whose resources it works on (None: a global key, adapters_store/tenancy.py)
    domains: tuple[str, ...] | None = None  # the domains (full names) it may call (None: all its tenant's)
    limits: dict | None = None  # the key's own {requests_per_minute, tokens_per_minute, concurrent}

    def full_name(self, name: str, *, param: str = "name", kind: str = "resource") -> str:
        """The stored name of what this key calls `name` (its tenant's, or any in full for a global key)."""
        return tenancy.full_name(self.tenant, name, param=param, kind=kind)

    def sees(self, stored_name: str) -> bool:
        """Whether the key sees the resource of that stored name: its tenant's (a global key: all)."""
        return tenancy.visible(self.tenant, stored_name)

    def sees_job(self, job: Job) -> bool:
        """Whether the key sees the job: one its tenant's keys started (a global key: every job)."""
        return self.tenant is None or job.tenant == self.tenant

    def may_call(self, domain: str) -> bool:
        """Whether the key may send requests to the domain (full name): its tenant's, and in its list."""
        return self.sees(domain) and (self.domains is None or domain in self.domains)

    def check_reads_whole_corpora(self, what: str) -> None:
        """Refuse `what` (an evaluation, a training, their items or examples) to a key with a document
        filter: they read every document of a corpus, and what they keep would show the hidden ones."""
        if self.filter is not None:
            raise Forbidden(f"{what} reads every document of a corpus; this key may read only the documents "
                            "its filter allows: use a key without a filter", code="document_filter")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def any_key_configured(session: Session, bootstrap_keys: list[str]) -> bool:
    if bootstrap_keys:
        return True
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked.is_(False)).limit(1)) is not None


class Authenticator:
    def __init__(self, session_factory, bootstrap_keys: list[str]):
        self._sessions = session_factory
        self._bootstrap = {hash_key(k) for k in bootstrap_keys}
        with session_factory() as session:
            self.open_mode = not any_key_configured(session, bootstrap_keys)

    async def authenticate(self, request: Request, scope: str) -> Principal:
        if self.open_mode:
            request.state.principal = Principal(None, "admin")
            return request.state.principal
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing API key: send Authorization: Bearer <key>",
                                  code="invalid_api_key")
        digest = hash_key(token.strip())
        principal = self._bootstrap_principal(digest) or await asyncio.to_thread(self._lookup, digest)
        if principal is None:
            raise Unauthenticated("invalid API key", code="invalid_api_key")
        if scope == "admin" and principal.scope != "admin":
            raise Forbidden("this key has scope 'inference'; the route needs 'admin'",
                            code="insufficient_scope")
        request.state.principal = principal  # for what runs after the route (rate limits, audit)
        return principal

    def _bootstrap_principal(self, digest: str) -> Principal | None:
        return Principal(None, "admin") if digest in self._bootstrap else None

    def _lookup(self, digest: str) -> Principal | None:
        with self._sessions() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if row is None or row.revoked:
            return None
        # Stored in canonical form by create_key; should it not parse, the request is refused
        # rather than let the key read everything.
        domains = None
        if row.domains is not None:
            domains = tuple(tenancy.full_name(row.tenant, d, param="api_key.domains") for d in row.domains)
        return Principal(row.id, row.scope, filters.parse(row.metadata_filter, param="api_key.filter"),
                         tenant=row.tenant, domains=domains, limits=row.limits)
