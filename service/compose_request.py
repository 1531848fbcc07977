"""The JSON body of `POST /v1/adapters/{a}/versions` that composes a version from stored ones, and
what it names: the source versions, looked up in the composed adapter's namespace."""

from typing import Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters_store import adapter_repo, tenancy
from adapters_store.artifacts import AdapterArtifactStore
from adapters_store.compose import MAX_SOURCES, MAX_WEIGHT, METHODS, Recipe, Source
from adapters_store.errors import NotFound
from adapters_store.tenancy import FULL_NAME_PATTERN
from service.errors import invalid_from
from service.http_body import integral_numbers_as_ints, read_json_object

MAX_VERSION = 2**31 - 1  # as service.routes.domains: a SQL INTEGER


class ComposeSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    version: int = Field(ge=1, le=MAX_VERSION)
    weight: float = Field(default=1.0, gt=0, le=MAX_WEIGHT, allow_inf_nan=False)


class Composition(BaseModel):
    """PEFT's weighted combinations of LoRAs (`add_weighted_adapter`): `cat` is exact (ranks add up);
    `linear`, `ties`, `dare_*`, `magnitude_prune` need sources of one rank; the `*svd` methods take
    `svd_rank` (default: the largest source rank); all but cat, linear and svd need `density`."""
    model_config = ConfigDict(extra="forbid")
    sources: list[ComposeSource] = Field(min_length=1, max_length=MAX_SOURCES)
    method: Literal[METHODS]
    density: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    svd_rank: int | None = Field(default=None, ge=1, le=1024)
    majority_sign_method: Literal["total", "frequency"] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class ComposeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    compose: Composition


async def read_composition(request: Request, limit: int) -> Composition:
    body = await read_json_object(request, limit)
    try:
        return ComposeIn.model_validate(integral_numbers_as_ints(body), strict=True).compose
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def recipe_of(spec: Composition) -> Recipe:
    return Recipe(method=spec.method, density=spec.density, svd_rank=spec.svd_rank,
                  majority_sign_method=spec.majority_sign_method, seed=spec.seed)


def resolve_sources(sessions, artifacts: AdapterArtifactStore, adapter: str, spec: Composition) -> list[Source]:
    """The stored versions the sources name; they live in the composed adapter's namespace (a tenant
    composes its own adapters only: another tenant's is 404, as an unknown one is)."""
    sources = []
    with sessions() as session:
        for i, ref in enumerate(spec.sources):
            param = f"compose.sources[{i}]"
            name = tenancy.within(adapter, ref.adapter, param=f"{param}.adapter", kind="adapter")
            try:
                row = adapter_repo.get_version(session, name, ref.version)
            except NotFound as exc:
                raise NotFound(exc.message, param=param, code=exc.code) from None
            sources.append(Source(adapter=name, version=ref.version, sha256=row.sha256,
                                  folder=artifacts.path_for(row.sha256), weight=ref.weight, rank=row.rank))
    return sources
