"""The `graft` command line: serve, db, model, keys (and the REST-backed corpus/adapter/domain groups)."""

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import sys

import typer
import uvicorn
import uvloop

from adapters_store.db import make_engine, make_session_factory, session_scope
from migrations.runner import SchemaBehind, head_revision, require_head, upgrade
from service import cli_report  # noqa: F401  (`graft domain report`)
from service import cli_tune  # noqa: F401  (`graft domain tune|configs|config|apply`)
from service.cli_client import adapter_app, corpus_app, domain_app
from service.cli_eval import eval_app, evalset_app
from service.cli_jobs import jobs_app
from service.cli_ray import ray_app
from service.cli_snapshot import snapshot_app
from service.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="graft: knowledge injection for LLMs")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
model_app = typer.Typer(no_args_is_help=True, help="Base model")
keys_app = typer.Typer(no_args_is_help=True, help="API keys")
tenants_app = typer.Typer(no_args_is_help=True, help="tenants: teams or customers whose resources are kept apart")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(corpus_app, name="corpus")
app.add_typer(adapter_app, name="adapter")
app.add_typer(domain_app, name="domain")
app.add_typer(evalset_app, name="evalset")
app.add_typer(eval_app, name="eval")
app.add_typer(jobs_app, name="jobs")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(ray_app, name="ray")


def fail(message: str) -> None:
    typer.echo(f"graft: error: {message}", err=True)
    raise typer.Exit(1)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the latest migration."""
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    typer.echo(f"database at revision {head_revision()}")


@model_app.command("prepare")
def model_prepare() -> None:
    """Convert the packaged SmolLM2 GGUF into a safetensors folder in the data dir, and export the
    embedding model for its backend (each once)."""
    from service.app import embedder_loader
    from service.basemodel import BaseModelError, prepare_base_model

    settings = Settings()
    try:
        path = prepare_base_model(settings.prepared_model_dir)
    except BaseModelError as exc:
        fail(str(exc))
    typer.echo(f"base model ready: {path}")
    try:
        embedder = embedder_loader(settings)(settings.embedding_model)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"embedding model ready: {embedder.name} ({embedder.backend})")


@app.command()
def serve(host: str = typer.Option(None, help="bind address (default GRAFT_HOST)"),
          port: int = typer.Option(None, help="port (default GRAFT_PORT)")) -> None:
    """Run the gateway; with no GRAFT_ENGINE_URLS it starts and supervises a local vLLM."""
    from service.auth import any_key_configured
    from service.basemodel import BaseModelError, check_model_folder
    from service.engine.supervisor import port_is_free

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    db = make_engine(settings.resolved_database_url)
    try:
        _require_head(db)
        with session_scope(make_session_factory(db)) as session:
            keyed = any_key_configured(session, settings.api_keys)
    finally:
        db.dispose()
    if not keyed and not _is_loopback(settings.host):
        fail(f"no API key is configured, so graft only binds loopback, not {settings.host}: "
             "create one with `graft keys create` or set GRAFT_API_KEYS")
    if not port_is_free(settings.host, settings.port):
        fail(f"port {settings.port} on {settings.host} is already in use")
    if settings.resolved_engine_backend == "local":
        try:
            check_model_folder(settings.resolved_base_model)
        except BaseModelError as exc:
            fail(str(exc))
    # uvloop: the gateway's own share of each request (HTTP hop, relaying) is about 1 ms less.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(_serve(settings))
    raise typer.Exit(code)


async def _serve(settings: Settings) -> int:
    from service.app import create_app
    from service.engine.supervisor import EngineStartError, LocalEngine

    local = LocalEngine(settings) if settings.resolved_engine_backend == "local" else None
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main.cancel)  # uvicorn takes over once serving
    try:
        if local is not None:
            typer.echo(f"starting vLLM on {local.url} (log: {local.log_path}) ...", err=True)
            try:
                await local.start()
            except EngineStartError as exc:
                last = exc.log_tail.strip().splitlines()[-1:] or [""]
                typer.echo(f"graft: error: {exc}; last log line: {last[0]}", err=True)
                return 1
        loop.remove_signal_handler(signal.SIGTERM)
        app = create_app(settings, local_engine=local)
        server = _Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                               log_level="info", timeout_graceful_shutdown=30))
        await server.serve()
        return 0 if server.started else 1
    except asyncio.CancelledError:
        return 130
    finally:
        if local is not None:
            await local.stop()


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, which would kill us before
    the engine is stopped; here the signal only asks the server to exit."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@keys_app.command("create")
def keys_create(name: str = typer.Argument(..., help="who or what uses the key"),
                scope: str = typer.Option("inference", help="inference | admin"),
                tenant: str = typer.Option(None, help="the tenant the key belongs to (default: a global key)"),
                domains: str = typer.Option(None, help="comma-separated domains an inference key may call"),
                metadata_filter: str = typer.Option(
                    None, "--filter", help='JSON metadata filter: the documents the key may read, e.g. '
                                           '\'{"group": ["hr", "all"]}\''),
                limits: str = typer.Option(None, help='JSON limits, e.g. \'{"requests_per_minute": 60, '
                                                      '"tokens_per_minute": 20000, "concurrent": 4}\'')) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from adapters_store.errors import GraftError
    from service import audit
    from service.keys import create_key

    try:
        with _session() as session:
            row, key = create_key(session, name, scope, _json_option(metadata_filter, "--filter"), tenant=tenant,
                                  domains=[d.strip() for d in domains.split(",")] if domains is not None else None,
                                  limits=_json_option(limits, "--limits"))
            audit.record(session, "key.create", str(row.id), tenant=tenant,  # whose key: that tenant's event
                         details={"name": name, "scope": scope, "tenant": tenant})
            typer.echo(f"{key}\t(id {row.id}, scope {scope}{_key_details(row, ', ')}; shown once)")
    except GraftError as exc:
        fail(exc.message)


def _json_option(text: str | None, option: str):
    from adapters_store import strict_json

    if text is None:
        return None
    try:
        return strict_json.loads(text)
    except ValueError as exc:
        fail(f"{option} is not valid JSON: {exc}")


def _key_details(row, separator: str) -> str:
    shown = {"tenant": row.tenant, "domains": row.domains, "filter": row.metadata_filter, "limits": row.limits}
    return "".join(f"{separator}{field} {value if isinstance(value, str) else json.dumps(value)}"
                   for field, value in shown.items() if value)


@keys_app.command("list")
def keys_list() -> None:
    """List every key: id, name, scope, tenant, domains, filter, limits, revoked (never the secret)."""
    from service.keys import list_keys

    with _session() as session:
        for row in list_keys(session):
            state = "revoked" if row.revoked else "active"
            typer.echo(f"{row.id}\t{row.prefix}…\t{row.scope}\t{state}\t{row.name}{_key_details(row, chr(9))}")


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke the key with this id: it is refused from the next request on."""
    from adapters_store.errors import NotFound
    from service import audit
    from service.keys import revoke_key

    try:
        with _session() as session:
            revoked = revoke_key(session, key_id)
            audit.record(session, "key.revoke", str(key_id), tenant=revoked.tenant)
    except NotFound:
        fail(f"no key with id {key_id}")
    typer.echo(f"revoked key {key_id}")


@tenants_app.command("create")
def tenants_create(name: str = typer.Argument(..., help="letters, digits, `_`, `-`"),
                   limits: str = typer.Option(None, help="JSON limits shared by all the tenant's keys")) -> None:
    """Create a tenant; give it keys with `graft keys create --tenant NAME`."""
    from adapters_store.errors import GraftError
    from service import audit
    from service.keys import create_tenant

    try:
        with _session() as session:
            create_tenant(session, name, _json_option(limits, "--limits"))
            audit.record(session, "tenant.create", name, tenant=name)
    except GraftError as exc:
        fail(exc.message)
    typer.echo(f"created tenant {name}")


@tenants_app.command("list")
def tenants_list() -> None:
    """List every tenant with its limits."""
    from service.keys import list_tenants

    with _session() as session:
        for row in list_tenants(session):
            typer.echo(f"{row.name}" + (f"\tlimits {json.dumps(row.limits)}" if row.limits else ""))


def _session():
    settings = Settings()
    db = make_engine(settings.resolved_database_url)
    _require_head(db)
    return session_scope(make_session_factory(db))


def _require_head(db) -> None:
    try:
        require_head(db)
    except SchemaBehind as exc:
        fail(str(exc))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
