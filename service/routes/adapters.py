"""Adapter versions over REST: validated, content-addressed uploads or compositions of stored versions; list;
delete."""

import asyncio
import pathlib
import shutil

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse, JSONResponse

from adapters_store import adapter_repo, compose
from adapters_store.artifacts import unpack_upload
from adapters_store.errors import Invalid, NotFound
from adapters_store.validation import AdapterInfo, validate_adapter
from service.auth import Principal
from service.compose_request import ComposeIn, read_composition, recipe_of, resolve_sources
from service.http_body import request_body
from service.responses import AdapterCreated, AdapterList, AdapterVersionList, Deleted, answers
from service.routes import resolve
from service.routes.domains import MAX_VERSION
from service.state import GatewayState, admin_principal, get_state
from service.uploads import multipart_boundary, receive_files

router = APIRouter()


@router.post("/v1/adapters/{name}/versions", status_code=201, responses=answers(AdapterCreated, 201))
@request_body(json=ComposeIn, files="files", max_files=4,
              description="an upload: multipart/form-data, adapter_config.json and adapter_model.safetensors, "
              "or one .tar.gz/.zip of them; or a composition of stored versions: JSON "
              "`{compose: {sources: [{adapter, version, weight}], method, ...}}` (PEFT's weighted combinations)")
async def upload_version(request: Request, name: str = Depends(resolve.adapter_name),
                         state: GatewayState = Depends(get_state)):
    boundary = multipart_boundary(request)
    if boundary is None:  # JSON, whatever the Content-Type: a composition
        return await _compose_version(request, name, state)
    settings = state.settings
    staging = state.artifacts.new_staging()
    try:
        received = await receive_files(request, boundary, staging / "upload", field_name="files",
                                       max_bytes=settings.max_adapter_bytes, max_files=4)
        if not received:
            raise Invalid("no files: send adapter_config.json and adapter_model.safetensors, "
                          "or one .tar.gz/.zip of them", param="files", code="no_files")
        folder = staging / "adapter"
        info = await asyncio.to_thread(_unpack_and_validate, state, received, folder)
        sha256, path = await asyncio.to_thread(state.artifacts.store, name, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _created(state, name, sha256, path, info)


async def _compose_version(request: Request, name: str, state: GatewayState) -> JSONResponse:
    """A new version computed from stored ones (adapters_store/compose.py), then validated and stored
    exactly as an upload is; its provenance names the sources (with their sha256) and the method."""
    settings = state.settings
    spec = await read_composition(request, settings.max_request_bytes)
    recipe = recipe_of(spec)
    sources = resolve_sources(state.sessions, state.artifacts, name, spec)
    compose.check(recipe, sources, settings.max_lora_rank)  # refused here, before any file is read
    staging = state.artifacts.new_staging()
    try:
        folder = staging / "adapter"
        info, provenance = await asyncio.to_thread(_compose_and_validate, state, sources, recipe, folder)
        sha256, path = await asyncio.to_thread(state.artifacts.store, name, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _created(state, name, sha256, path, info, provenance)


def _created(state: GatewayState, name: str, sha256: str, path, info: AdapterInfo,
             provenance: dict | None = None) -> JSONResponse:
    with state.sessions() as session, session.begin():
        adapter = adapter_repo.get_or_create_adapter(session, name)
        version = adapter_repo.add_version(session, adapter, sha256, str(path), info.rank,
                                           list(info.target_modules), provenance=provenance)
        body = {"adapter": name, "version": version.version, "sha256": sha256,
                "engine_model": f"{name}@{version.version}", "rank": info.rank}
    if provenance is not None:
        body["provenance"] = provenance
    return JSONResponse(body, status_code=201)


def _unpack_and_validate(state: GatewayState, received, folder):
    unpack_upload([(f.filename, f.path) for f in received], folder,
                  max_members=state.settings.max_archive_members,
                  max_total_bytes=state.settings.max_adapter_bytes)
    return _validate(state, folder)


def _compose_and_validate(state: GatewayState, sources, recipe, folder):
    provenance = compose.compose(sources, recipe, folder, state.base_shapes(), state.settings.max_lora_rank)
    return _validate(state, folder), provenance


def _validate(state: GatewayState, folder):
    return validate_adapter(folder, state.base_shapes(), state.settings.max_lora_rank,
                            state.settings.lora_target_modules)


@router.get("/v1/adapters", responses=answers(AdapterList))
async def list_adapters(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        return {"object": "list", "data": [
            {"object": "adapter", "name": a.name,
             "versions": [v.version for v in a.versions if not v.deleted]}
            for a in adapter_repo.list_adapters(session) if principal.sees(a.name)]}


@router.get("/v1/adapters/{name}/versions", responses=answers(AdapterVersionList))
async def list_versions(name: str = Depends(resolve.adapter_name), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        adapter = adapter_repo.get_adapter(session, name)
        return {"object": "list", "data": [adapter_repo.version_as_dict(v, name)
                                           for v in adapter.versions if not v.deleted]}


@router.delete("/v1/adapters/{name}/versions/{version}", responses=answers(Deleted))
async def delete_version(name: str = Depends(resolve.adapter_name), version: int = Path(ge=1, le=MAX_VERSION),
                         state: GatewayState = Depends(get_state)):
    with state.sessions() as session, session.begin():
        row = adapter_repo.get_version(session, name, version)
        adapter_repo.delete_version(session, row)
        sha256 = row.sha256
        still_used = adapter_repo.sha_in_use(session, sha256)
    if not still_used:
        await asyncio.to_thread(state.artifacts.remove, sha256)
    return {"object": "adapter.version.deleted", "adapter": name, "version": version, "deleted": True}


# For the engine fleet's replicas on machines without the gateway's folder (service/engine/adapter_fetch.py);
# out of the OpenAPI document: it answers a version's raw files.
@router.get("/v1/adapters/{name}/versions/{version}/files/{path:path}", include_in_schema=False)
async def version_file(path: str, name: str = Depends(resolve.adapter_name), version: int = Path(ge=1, le=MAX_VERSION),
                       state: GatewayState = Depends(get_state)):
    """One file of a stored version, looked up among the version's files (never a path handed to the filesystem)."""
    with state.sessions() as session:
        folder = adapter_repo.get_version(session, name, version).path
    files = await asyncio.to_thread(_files_of, folder)
    if path not in files:
        raise NotFound(f"{name}@{version} has no file {path[:200]!r}", param="path", code="not_found")
    return FileResponse(files[path], media_type="application/octet-stream")


def _files_of(folder: str) -> dict[str, pathlib.Path]:
    root = pathlib.Path(folder)
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
