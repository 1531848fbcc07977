"""Every route's key scope, read from the app's own route table (a route added tomorrow is checked
the day it is added), enforced over HTTP; revoked keys; the `graft keys` CLI end to end.

A route's scope is what its dependencies say: `admin_principal` (service/state.py) makes it an
admin route, `inference_principal` an inference route. A route with neither must be one of the
public ones below, and an inference route one of the few the design names; anything else must be
admin, or this test fails until someone decides what the new route is.
"""

import asyncio
import functools
import hashlib
import os
import re
import subprocess
import sys
import uuid

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as graft_app
from service.state import admin_principal, inference_principal
from tests.harness import client, running_gateway

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

# DESIGN.md gives these scope "none": load balancers probe them and Prometheus scrapes /metrics
# without a key; the ops console's page and static assets hold no data (the page sends a key
# with each API call it makes).
PUBLIC = {"/healthz", "/readyz", "/metrics", "/console", "/console/", "/console/static/{path:path}"}
# DESIGN.md's table: what an application (not an operator) calls. Every other /v1 route is admin.
INFERENCE = {("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
             ("POST", "/v1/corpora/{name}/search"), ("POST", "/v1/responses"),
             ("GET", "/mcp"), ("POST", "/mcp"), ("DELETE", "/mcp")}
# Plain ASGI routes that check the key themselves, with the scope they ask for: the MCP endpoint
# (service/mcp_server.py McpEndpoint authenticates before the MCP SDK sees the request).
ASGI_SCOPES = {"/mcp": "inference"}
BOOT_KEY = "boot-admin-key"


def fastapi_docs_paths(app: FastAPI) -> set[str]:
    """FastAPI's own schema and docs pages: they describe the API and hold no data."""
    return {p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p}


def dependency_calls(route: APIRoute) -> set:
    """Every callable the route depends on: its own dependencies, its router's, and theirs."""
    calls, stack = set(), list(route.dependant.dependencies)
    while stack:
        dependant = stack.pop()
        calls.add(dependant.call)
        stack.extend(dependant.dependencies)
    return calls


def route_scopes(app: FastAPI) -> dict[tuple[str, str], str]:
    """(method, path template) → "admin" | "inference" | "public", from the route table."""
    docs = fastapi_docs_paths(app)
    scopes = {}
    for route in app.routes:
        if route.path in ASGI_SCOPES:
            for method in route.methods - {"HEAD"}:  # Starlette adds HEAD beside GET
                scopes[(method, route.path)] = ASGI_SCOPES[route.path]
            continue
        if not isinstance(route, APIRoute):
            assert route.path in docs, f"{route!r} is not an API route: decide its scope and test it"
            continue
        calls = dependency_calls(route)
        admin, inference = admin_principal in calls, inference_principal in calls
        assert not (admin and inference), f"{route.path} asks for both scopes"
        scope = "admin" if admin else "inference" if inference else "public"
        assert scope != "public" or route.path in PUBLIC, (
            f"{sorted(route.methods)} {route.path} checks no key: add admin_principal or "
            f"inference_principal to it (or, if it must be public, to PUBLIC here with the reason)")
        for method in route.methods:
            scopes[(method, route.path)] = scope
    return scopes


def concrete_path(route_path: str) -> str:
    """The template with each parameter filled by a value its convertor accepts."""
    def fill(match: re.Match) -> str:
        convertor = (match.group(2) or "str").lstrip(":")
        return {"int": "1", "float": "1.0", "uuid": str(uuid.uuid4())}.get(convertor, "x1")
    return re.sub(r"{(\w+)(:\w+)?}", fill, route_path)


def test_the_route_table_is_classified_and_every_scope_occurs(make_settings):
    scopes = route_scopes(create_app(make_settings(engine_urls=["http://127.0.0.1:9"])))
    assert {path for (_, path), scope in scopes.items() if scope == "public"} == PUBLIC
    assert {route for route, scope in scopes.items() if scope == "inference"} == INFERENCE, (
        "an admin route became an inference one, or a new inference route is not in INFERENCE")
    assert sum(scope == "admin" for scope in scopes.values()) >= 30


class Run:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def graft_keys(env: dict, *args: str, process: bool = False) -> Run:
    """`graft keys ARGS` on the database of env's GRAFT_DATA_DIR: as its own process (the real
    entry point), or in this one (the same typer app, without a second interpreter's start-up)."""
    if process:
        done = subprocess.run([sys.executable, "-m", "service", "keys", *args], env=env, capture_output=True,
                              text=True, timeout=180)
        return Run(done.returncode, done.stdout, done.stderr)
    result = CliRunner().invoke(graft_app, ["keys", *args], env=env)
    return Run(result.exit_code, result.stdout, result.stderr)


def created_key(result: Run) -> tuple[str, int]:
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"(graft-\S+)\t\(id (\d+), scope \w+; shown once\)", result.stdout.strip())
    assert match, result.stdout
    return match.group(1), int(match.group(2))


def assert_error(response, status: int, code: str, where: str) -> None:
    assert response.status_code == status, (where, response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, (where, response.text)


@pytest.mark.databases("sqlite")  # it reads the SQLite file to show no key is stored in the clear
async def test_every_route_enforces_its_scope_and_keys_come_from_the_cli(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT_KEY])
    env = {"GRAFT_DATA_DIR": str(settings.data_dir), "GRAFT_DATABASE_URL": None, "GRAFT_API_KEYS": None}
    cli = functools.partial(graft_keys, env)

    # `graft keys create`: shown once, stored as a hash only.
    process_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    inference_key, _ = created_key(await asyncio.to_thread(
        graft_keys, process_env, "create", "app", "--scope", "inference", process=True))
    admin_key, _ = created_key(cli("create", "ops", "--scope", "admin"))
    doomed_key, doomed_id = created_key(cli("create", "leaver", "--scope", "admin"))
    refused = cli("create", "root", "--scope", "root")
    assert refused.returncode != 0 and "scope must be one of" in refused.stderr
    stored = b"".join(p.read_bytes() for p in settings.data_dir.glob("graft.db*"))
    for key in (inference_key, admin_key, doomed_key):
        assert key.encode() not in stored and hashlib.sha256(key.encode()).hexdigest().encode() in stored

    scopes = route_scopes(create_app(settings))
    async with running_gateway(settings) as url:
        async with client(url) as anonymous, client(url, "graft-wrong") as wrong, \
                client(url, inference_key) as app, client(url, admin_key) as ops, \
                client(url, doomed_key) as doomed, client(url, BOOT_KEY) as boot:
            assert (await doomed.get("/v1/corpora")).status_code == 200  # works before it is revoked
            revoked = cli("revoke", str(doomed_id))
            assert revoked.returncode == 0, revoked.stderr
            assert cli("revoke", "999").returncode != 0
            listed = cli("list").stdout.splitlines()
            rows = {int(line.split("\t")[0]): line.split("\t")[1:] for line in listed}
            assert [(s, state, name) for _, s, state, name in rows.values()] == [
                ("inference", "active", "app"), ("admin", "active", "ops"), ("admin", "revoked", "leaver")]
            assert all(key not in "\n".join(listed) for key in (inference_key, admin_key, doomed_key))

            basic = {"Authorization": f"Basic {admin_key}"}
            for (method, template), scope in sorted(scopes.items()):
                path = concrete_path(template)
                where = f"{method} {path} ({scope})"

                async def call(http, **kwargs):
                    return await http.request(method, path, **kwargs)

                if scope == "public":
                    assert (await call(anonymous)).status_code not in (401, 403), where
                    continue
                assert_error(await call(anonymous), 401, "invalid_api_key", where + " without a key")
                assert_error(await call(wrong), 401, "invalid_api_key", where + " with a wrong key")
                assert_error(await call(anonymous, headers=basic), 401, "invalid_api_key", where + " Basic")
                assert_error(await call(doomed), 401, "invalid_api_key", where + " with a revoked key")
                for allowed in (ops, boot):  # both admin keys pass the check (whatever comes after)
                    assert (await call(allowed)).status_code not in (401, 403), where
                if scope == "admin":
                    assert_error(await call(app), 403, "insufficient_scope", where + " with an inference key")
                else:
                    assert (await call(app)).status_code not in (401, 403), where
