"""The audit log (service/audit.py, GET /v1/audit): every admin change over REST and through the
`graft keys|tenants` CLI is recorded once, with the key, the tenant and the time; a refused change
is not; every admin write route of the app has its action in the one table; a tenant's admin reads
its tenant's events only; paging by id. A real gateway (uvicorn, SQLite) over the fake engine."""

import asyncio
import json
import re
import time
from contextlib import contextmanager

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select
from typer.testing import CliRunner

from adapters_store.db import make_engine, make_session_factory, session_scope
from adapters_store.models import AuditEvent
from service import audit
from service.app import create_app
from service.cli import app as graft_app
from service.keys import create_key, create_tenant
from service.state import admin_principal
from service.training import TrainingService
from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job
from tests.service.test_scopes import dependency_calls

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

BOOT = "boot-admin-key"


@contextmanager
def database(settings):
    engine = make_engine(settings.resolved_database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def make_key(settings, name: str, scope: str = "admin", tenant: str | None = None) -> tuple[str, int]:
    """A key made straight in the database, as `graft keys create` does (not itself audited)."""
    with database(settings) as sessions, session_scope(sessions) as session:
        row, secret = create_key(session, name, scope, tenant=tenant)
        return secret, row.id


def stored_events(settings) -> list[tuple]:
    with database(settings) as sessions, sessions() as session:
        return [(e.action, e.target, e.api_key_id, e.tenant, e.details)
                for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


async def all_events(http, **params) -> list[dict]:
    """GET /v1/audit page after page (newest first), checking each page's shape."""
    events, before = [], None
    while True:
        page = await http.get("/v1/audit", params={**params, **({"before": before} if before else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["object"] == "list" and set(body) == {"object", "data", "has_more"}
        events += body["data"]
        if not body["has_more"]:
            return events
        before = body["data"][-1]["id"]


def test_every_admin_write_route_is_in_the_table(make_settings):
    app = create_app(make_settings(engine_urls=["http://127.0.0.1:9"]))
    writes = {(method, route.path_format) for route in app.routes
              if isinstance(route, APIRoute) and admin_principal in dependency_calls(route)
              for method in route.methods & audit.WRITE_METHODS}
    missing = sorted(writes - set(audit.AUDITED))
    assert not missing, f"admin write routes with no action in service/audit.py AUDITED: {missing}"
    assert set(audit.AUDITED) <= writes, f"AUDITED names routes the app lacks: {sorted(set(audit.AUDITED) - writes)}"
    actions = [a.action for a in audit.AUDITED.values()] + [a.created for a in audit.AUDITED.values() if a.created]
    assert len(actions) == len(set(actions)), "two routes record the same action"
    for audited in audit.AUDITED.values():
        assert re.fullmatch(r"[a-z_]+\.[a-z_]+", audited.action), audited
        assert "key" not in audited.details, "the key's secret is never recorded"


@pytest.fixture
def hanging_trainings(monkeypatch):
    """A training stays queued until cancelled (the trainer is tested elsewhere)."""

    async def hang(*_):
        await asyncio.Event().wait()

    monkeypatch.setattr(TrainingService, "_run", hang)


async def test_each_change_records_one_event_and_a_refused_one_none(make_settings, fake_engine, good_lora,
                                                                    hanging_trainings):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    ops_key, ops_id = make_key(settings, "ops")
    app_key, _ = make_key(settings, "app", "inference")
    expected: list[tuple] = []  # (action, target, api_key_id)
    started = time.time()
    async with running_gateway(settings) as url, client(url, ops_key) as ops, client(url, BOOT) as boot, \
            client(url, app_key) as app, client(url) as anonymous:

        async def change(http, method: str, path: str, status: int, action: str, target: str, **kwargs):
            response = await http.request(method, path, **kwargs)
            assert response.status_code == status, (method, path, response.text)
            expected.append((action, target, ops_id if http is ops else None))
            assert len(stored_events(settings)) == len(expected), "a 2xx means its event is committed"
            return response.json()

        await change(ops, "POST", "/v1/corpora", 201, "corpus.create", "lore", json={"name": "lore"})
        upload = await change(ops, "POST", "/v1/corpora/lore/documents", 202, "document.upload", "lore",
                              json={"documents": [{"id": "zorblax", "text": "The Zorblax Institute, 1847."},
                                                  {"id": "other", "text": "Something else entirely."}]})
        assert (await wait_job(ops, upload["job_id"]))["status"] == "succeeded"
        rebuild = await change(ops, "POST", "/v1/corpora/lore/rebuild", 202, "corpus.rebuild", "lore", json={})
        assert (await wait_job(ops, rebuild["job_id"]))["status"] == "succeeded"
        for version in (1, 2):
            await change(ops, "POST", "/v1/adapters/tone/versions", 201, "adapter.upload", f"tone@{version}",
                         files=adapter_files(good_lora))
        binding = {"corpora": ["lore"], "adapter": {"name": "tone", "version": 1}}
        await change(ops, "PUT", "/v1/domains/lore", 201, "domain.create", "lore", json=binding)
        await change(ops, "PUT", "/v1/domains/lore", 200, "domain.update", "lore", json=binding)
        await change(ops, "POST", "/v1/domains/lore/adapter", 200, "domain.swap", "lore",
                     json={"adapter": "tone", "version": 2})
        await change(ops, "POST", "/v1/domains/lore/rollback", 200, "domain.rollback", "lore")
        await change(ops, "POST", "/v1/evalsets", 201, "evalset.create", "lore", json={"name": "lore", "items": [
            {"question": "When was the institute founded?", "answers": ["1847"], "document_ids": ["zorblax"]}]})
        started_eval = (await ops.post("/v1/evals", json={"domain": "lore", "evalset": "lore"})).json()
        expected.append(("eval.start", started_eval["eval_id"], ops_id))
        assert (await wait_job(ops, started_eval["job_id"]))["status"] == "succeeded"
        training = await change(ops, "POST", "/v1/adapters/tuned/trainings", 202, "training.start", "tuned",
                                json={"corpus": "lore", "recipe": "reader"})
        await change(ops, "POST", f"/v1/jobs/{training['job_id']}/cancel", 200, "job.cancel", training["job_id"])
        assert (await wait_job(ops, training["job_id"]))["status"] == "cancelled"
        await change(boot, "POST", "/v1/tenants", 201, "tenant.create", "acme", json={"name": "acme"})
        made = await ops.post("/v1/keys", json={"name": "temp", "scope": "inference"})
        assert made.status_code == 201, made.text
        expected.append(("key.create", str(made.json()["id"]), ops_id))
        await change(ops, "DELETE", f"/v1/keys/{made.json()['id']}", 200, "key.revoke", str(made.json()["id"]))
        await change(ops, "DELETE", "/v1/corpora/lore/documents/zorblax", 200, "document.delete", "lore/zorblax")
        await change(ops, "DELETE", "/v1/evalsets/lore", 200, "evalset.delete", "lore")
        await change(ops, "DELETE", "/v1/domains/lore", 200, "domain.delete", "lore")
        await change(ops, "DELETE", "/v1/adapters/tone/versions/2", 200, "adapter.delete", "tone@2")
        count = len(expected)

        # Refused changes, reads, and inference writes record nothing.
        refused = [(ops, "POST", "/v1/corpora", {"json": {"name": "lore"}}, 409),
                   (ops, "DELETE", "/v1/corpora/nope", {}, 404),
                   (ops, "PUT", "/v1/domains/bad", {"json": {"corpora": "lore"}}, 400),
                   (ops, "DELETE", "/v1/keys/999999", {}, 404),
                   (app, "POST", "/v1/corpora", {"json": {"name": "sneaky"}}, 403),
                   (anonymous, "DELETE", "/v1/corpora/lore", {}, 401)]
        for http, method, path, kwargs, status in refused:
            assert (await http.request(method, path, **kwargs)).status_code == status, (method, path)
        assert (await app.post("/v1/corpora/lore/search", json={"query": "institute"})).status_code == 200
        assert (await ops.get("/v1/corpora/lore")).status_code == 200
        await change(ops, "DELETE", "/v1/corpora/lore", 200, "corpus.delete", "lore")

        events = await all_events(ops, limit=4)  # newest first, 4 a page
        assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
        assert [(e["action"], e["target"], e["api_key_id"]) for e in reversed(events)] == expected
        assert len(stored_events(settings)) == count + 1  # the refused ones are not there either
        assert all(started - 1 <= e["at"] <= time.time() + 1 for e in events)
        # Whose thing changed: the global things are no tenant's; the tenant made is its own.
        assert {e["action"]: e["tenant"] for e in events if e["tenant"] is not None} == {"tenant.create": "acme"}
        by_action = {e["action"]: e for e in events}
        assert by_action["domain.swap"]["details"]["adapter"] == {"name": "tone", "version": 2}
        assert by_action["domain.rollback"]["details"]["adapter"] == {"name": "tone", "version": 1}
        assert by_action["document.upload"]["details"] == {"job_id": upload["job_id"]}
        assert by_action["eval.start"]["details"] == {"job_id": started_eval["job_id"]}
        assert by_action["key.create"]["details"] == {"name": "temp", "scope": "inference", "tenant": None}
        assert made.json()["key"] not in json.dumps(events), "the new key's secret is not in the log"
        assert by_action["adapter.delete"]["details"] is None

        uploads = await all_events(ops, action="adapter.upload")
        assert [e["target"] for e in uploads] == ["tone@2", "tone@1"]
        first_page = (await ops.get("/v1/audit", params={"limit": 1})).json()
        assert first_page["has_more"] is True and first_page["data"] == events[:1]
        older = (await ops.get("/v1/audit", params={"before": events[1]["id"]})).json()
        assert older["data"] == events[2:] and older["has_more"] is False
        for bad in ({"limit": 0}, {"limit": 1001}, {"before": 0}, {"action": ""}):
            assert (await ops.get("/v1/audit", params=bad)).status_code == 400, bad
        assert (await app.get("/v1/audit")).status_code == 403
        assert (await anonymous.get("/v1/audit")).status_code == 401


async def test_a_tenant_admin_reads_its_own_events_and_a_global_admin_all(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    with database(settings) as sessions, session_scope(sessions) as session:
        create_tenant(session, "acme")
        create_tenant(session, "beta")
    acme_key, acme_id = make_key(settings, "acme-ops", tenant="acme")
    beta_key, beta_id = make_key(settings, "beta-ops", tenant="beta")
    ops_key, ops_id = make_key(settings, "ops")
    async with running_gateway(settings) as url, client(url, acme_key) as acme, client(url, beta_key) as beta, \
            client(url, ops_key) as ops:
        assert (await acme.post("/v1/corpora", json={"name": "notes"})).status_code == 201
        made = await acme.post("/v1/keys", json={"name": "bot", "scope": "inference"})
        assert made.status_code == 201, made.text
        assert (await beta.post("/v1/corpora", json={"name": "memos"})).status_code == 201
        assert (await ops.post("/v1/tenants", json={"name": "gamma"})).status_code == 201
        assert (await acme.post("/v1/tenants", json={"name": "delta"})).status_code == 403  # not recorded

        seen = {name: [(e["action"], e["target"], e["api_key_id"], e["tenant"]) for e in await all_events(http)]
                for name, http in (("acme", acme), ("beta", beta), ("ops", ops))}
        acme_events = [("key.create", str(made.json()["id"]), acme_id, "acme"),
                       ("corpus.create", "acme:notes", acme_id, "acme")]
        beta_events = [("corpus.create", "beta:memos", beta_id, "beta")]
        assert seen["acme"] == acme_events
        assert seen["beta"] == beta_events
        assert seen["ops"] == [("tenant.create", "gamma", ops_id, "gamma"), *beta_events, *acme_events]
        assert await all_events(acme, action="corpus.create") == (await all_events(acme))[1:]
        key_event = (await acme.get("/v1/audit", params={"action": "key.create"})).json()["data"][0]
        assert key_event["details"] == {"name": "bot", "scope": "inference", "tenant": "acme"}


async def test_a_change_whose_event_cannot_be_written_answers_500_not_2xx(make_settings, fake_engine,
                                                                           monkeypatch):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])

    def broken(*_):
        raise RuntimeError("disk full")

    async with running_gateway(settings) as url, client(url, BOOT) as boot:
        monkeypatch.setattr(audit, "_write", broken)
        answer = await boot.post("/v1/tenants", json={"name": "acme"})
        assert answer.status_code == 500, answer.text
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert "audit" in answer.json()["error"]["message"]
        monkeypatch.undo()
        assert (await boot.get("/v1/audit")).json()["data"] == []
        assert (await boot.post("/v1/tenants", json={"name": "beta"})).status_code == 201
        assert [e["target"] for e in (await boot.get("/v1/audit")).json()["data"]] == ["beta"]


def test_the_cli_records_key_and_tenant_changes_in_their_transaction(make_settings):
    settings = make_settings()
    env = {"GRAFT_DATA_DIR": str(settings.data_dir), "GRAFT_DATABASE_URL": settings.database_url,
           "GRAFT_API_KEYS": None}

    def graft(*args: str):
        return CliRunner().invoke(graft_app, list(args), env=env)

    assert graft("tenants", "create", "acme").exit_code == 0
    created = graft("keys", "create", "ops", "--scope", "admin", "--tenant", "acme")
    assert created.exit_code == 0, created.stderr
    key_id = re.search(r"\(id (\d+),", created.stdout).group(1)
    assert graft("keys", "revoke", key_id).exit_code == 0
    # Refused: nothing recorded.
    assert graft("tenants", "create", "acme").exit_code != 0
    assert graft("keys", "revoke", "999").exit_code != 0
    assert graft("keys", "create", "root", "--scope", "root").exit_code != 0
    assert graft("keys", "create", "x", "--tenant", "nobody").exit_code != 0
    assert stored_events(settings) == [
        ("tenant.create", "acme", None, "acme", None),  # each the event of the tenant whose thing changed
        ("key.create", key_id, None, "acme", {"name": "ops", "scope": "admin", "tenant": "acme"}),
        ("key.revoke", key_id, None, "acme", None)]
