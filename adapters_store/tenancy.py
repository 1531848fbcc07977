"""Tenant namespaces: how a tenant's corpora, adapters, domains and evaluation sets are named.

A tenant's resource is stored, routed and loaded on the engines under its full name
`tenant:name` (e.g. `acme:support`, engine model `acme:support@3`); a global resource under its
plain name. Names themselves never hold a `:` (corpus_repo.NAME_PATTERN), so a full name says whose
it is, names are unique per tenant, and every layer below the gateway (routing table, indexes,
engines, evaluation runs) keeps working on one string per resource.

A tenant's key names its own resources by the short name or the full one; a global key names a
tenant's resource by its full name and its own ones by their plain name.
"""

import re
from typing import Annotated

from pydantic import StringConstraints

from adapters_store.errors import Invalid, NotFound

SEPARATOR = ":"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # no `.`: keeps full names unambiguous
FULL_NAME_PATTERN = re.compile(r"^(?:([A-Za-z0-9][A-Za-z0-9_-]{0,62}):)?([A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
MAX_FULL_NAME = 128  # the name columns' width
# A name in a request body or query (short or full), as its schema states it.
NameRef = Annotated[str, StringConstraints(pattern=FULL_NAME_PATTERN.pattern)]


def check_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not TENANT_PATTERN.match(name):
        raise Invalid("a tenant name is 1 to 63 letters, digits, `_` or `-`, starting with a letter or digit",
                      param="name", code="invalid_name")
    return name


def split(full_name: str) -> tuple[str | None, str]:
    """(tenant or None, short name) of a stored name."""
    tenant, sep, short = full_name.partition(SEPARATOR)
    return (tenant, short) if sep else (None, full_name)


def tenant_of(full_name: str) -> str | None:
    return split(full_name)[0]


def full_name(tenant: str | None, name: str, *, param: str = "name", kind: str = "resource") -> str:
    """The stored name of `name` as a key of `tenant` (None: a global key) names it.

    Refuses a full name of another tenant (NotFound: a tenant does not learn what others hold);
    a global key may name any tenant's resource in full."""
    match = FULL_NAME_PATTERN.match(name) if isinstance(name, str) else None
    if match is None:
        raise Invalid(f"{param} {name!r} is not a name: letters, digits, `.`, `_`, `-`, optionally after "
                      f"`tenant{SEPARATOR}`", param=param, code="invalid_name")
    owner, short = match.groups()
    if owner is not None and tenant is not None and owner != tenant:
        raise NotFound(f"{kind} {name!r} does not exist", param=param, code=f"{kind}_not_found")
    owner = owner if owner is not None else tenant
    stored = f"{owner}{SEPARATOR}{short}" if owner is not None else short
    if len(stored) > MAX_FULL_NAME:
        raise Invalid(f"{param}: the full name {stored!r} is longer than {MAX_FULL_NAME} characters",
                      param=param, code="invalid_name")
    return stored


def visible(tenant: str | None, stored_name: str) -> bool:
    """Whether a key of `tenant` sees the resource: a tenant's key its own, a global key all."""
    return tenant is None or tenant_of(stored_name) == tenant


def within(owner_of: str, name: str, *, param: str, kind: str) -> str:
    """The stored name of `name` as the resource `owner_of` (a stored name) refers to it: in the same
    namespace, so that a tenant's domain binds only that tenant's corpora and adapters."""
    owner = tenant_of(owner_of)
    stored = full_name(owner, name, param=param, kind=kind)
    if tenant_of(stored) != owner:
        raise NotFound(f"{kind} {name!r} does not exist", param=param, code=f"{kind}_not_found")
    return stored
