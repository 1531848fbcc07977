"""API keys: `Authorization: Bearer <key>`, scope `inference` or `admin`, stored as sha256 hashes.

Keys come from the database (`graft keys create`) and from GRAFT_API_KEYS (bootstrap admin keys).
With no key at all, the gateway is open, and `graft serve` refuses to bind beyond loopback.
"""

import asyncio
import hashlib
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters_store.errors import Forbidden, Unauthenticated
from adapters_store.models import ApiKey

SCOPES = ("inference", "admin")


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # None for bootstrap keys and open mode
    scope: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "graft-" + secrets.token_urlsafe(32)


def create_key(session: Session, name: str, scope: str) -> tuple[ApiKey, str]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    key = new_key()
    row = ApiKey(name=name, prefix=key[:12], key_hash=hash_key(key), scope=scope)
    session.add(row)
    session.flush()
    return row, key


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
            return Principal(None, "admin")
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
        return principal

    def _bootstrap_principal(self, digest: str) -> Principal | None:
        return Principal(None, "admin") if digest in self._bootstrap else None

    def _lookup(self, digest: str) -> Principal | None:
        with self._sessions() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if row is None or row.revoked:
            return None
        return Principal(row.id, row.scope)
