"""The path resolvers (service/routes/resolve.py) on a small app of their own: a name as a tenant's
key and a global key name it, another tenant's thing answered exactly as a missing one, and which
jobs and evaluation runs a key sees. The key is chosen per request (`X-Tenant`); the store is a
migrated SQLite."""

from datetime import datetime, timezone
from types import SimpleNamespace

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from adapters_store.db import make_engine, make_session_factory
from adapters_store.models import Eval, Job
from indexer import filters
from migrations.runner import upgrade
from service.auth import Principal
from service.domains import DomainRoute, RoutingTable
from service.errors import install_error_handlers
from service.routes import resolve
from service.state import admin_principal, get_state

JOBS = {"job-acme": "acme", "job-beta": "beta", "job-global": None}
EVALS = {"eval-acme": "acme:support", "eval-beta": "beta:support", "eval-global": "support"}


@pytest.fixture
def state(tmp_path):
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with sessions() as session, session.begin():
        session.add_all(Job(id=job_id, kind="eval", tenant=tenant) for job_id, tenant in JOBS.items())
        session.add_all(Eval(id=eval_id, domain=domain, evalset="set", evalset_sha256="0" * 64, engine_model="base",
                             max_tokens=8, created_at=datetime.now(timezone.utc)) for eval_id, domain in EVALS.items())
    routing = RoutingTable("base")
    for name in ("acme:support", "beta:support", "support"):
        routing.put(DomainRoute(name=name, corpora=(), engine_model="base", adapter_path=None, system_prompt=None))
    yield SimpleNamespace(sessions=sessions, routing=routing)
    engine.dispose()


@pytest.fixture
async def call(state):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/corpora/{name}")
    async def corpus_name(request: Request, name: str = Depends(resolve.corpus_name)):
        return {"name": name, "stored_name": request.state.stored_name}

    @app.get("/domains/{name}")
    async def domain(route: DomainRoute = Depends(resolve.domain_route)):
        return {"name": route.name}

    @app.get("/jobs/{job_id}")
    async def job(row: Job = Depends(resolve.job)):
        return {"id": row.id}

    @app.get("/jobs/{job_id}/examples", dependencies=[Depends(resolve.reads_whole_corpora("a training's examples"))])
    async def examples(row: Job = Depends(resolve.job)):
        return {"id": row.id}

    @app.get("/evals/{eval_id}")
    async def eval_run(row: Eval = Depends(resolve.eval_run)):
        return {"id": row.id}

    async def principal(request: Request) -> Principal:
        document_filter = request.headers.get("x-filter")
        return Principal(1, "admin", tenant=request.headers.get("x-tenant"),
                         filter=filters.parse({"group": document_filter}) if document_filter else None)

    async def fake_state() -> SimpleNamespace:
        return state

    app.dependency_overrides[admin_principal] = principal
    app.dependency_overrides[get_state] = fake_state
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://resolve") as http:
        async def get(path: str, tenant: str | None = None, **headers) -> httpx.Response:
            return await http.get(path, headers={**({"x-tenant": tenant} if tenant else {}), **headers})
        yield get


async def test_a_tenant_key_names_its_own_things_short_or_in_full(call):
    for path in ("/corpora/handbook", "/corpora/acme:handbook"):
        answer = await call(path, "acme")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": "acme:handbook", "stored_name": "acme:handbook"}  # left for the audit log
    assert (await call("/domains/support", "acme")).json() == {"name": "acme:support"}


async def test_a_global_key_names_its_own_things_plainly_and_a_tenants_in_full(call):
    assert (await call("/corpora/handbook")).json()["name"] == "handbook"
    assert (await call("/corpora/beta:handbook")).json()["name"] == "beta:handbook"
    assert (await call("/domains/support")).json() == {"name": "support"}
    assert (await call("/domains/beta:support")).json() == {"name": "beta:support"}


def _without(answer: httpx.Response, name: str) -> tuple[int, dict]:
    """The answer with the name it is about left out: what tells one 404 from another."""
    body = answer.json()
    body["error"]["message"] = body["error"]["message"].replace(name, "NAME")
    return answer.status_code, body


async def test_another_tenants_domain_is_answered_as_a_missing_one(call):
    other = await call("/domains/beta:support", "acme")  # exists, but beta's
    missing = await call("/domains/gone", "acme")
    assert other.status_code == 404
    assert _without(other, "'beta:support'") == _without(missing, "'acme:gone'")
    assert other.json()["error"]["code"] == "domain_not_found" and other.json()["error"]["param"] == "domain"


@pytest.mark.parametrize(("kind", "ids", "code"), [("jobs", JOBS, "job_not_found"), ("evals", EVALS, "eval_not_found")])
async def test_a_tenant_key_sees_its_tenants_jobs_and_runs_only(call, kind, ids, code):
    mine, theirs, global_one = ids
    assert (await call(f"/{kind}/{mine}", "acme")).json() == {"id": mine}
    missing = await call(f"/{kind}/nothing-here", "acme")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == code
    for hidden in (theirs, global_one):
        refused = await call(f"/{kind}/{hidden}", "acme")
        assert _without(refused, hidden) == _without(missing, "nothing-here"), hidden
    for every in ids:  # a global key sees them all
        assert (await call(f"/{kind}/{every}")).json() == {"id": every}


async def test_a_filtered_key_is_refused_before_the_job_is_looked_up(call):
    refused = await call("/jobs/nothing-here/examples", "acme", **{"x-filter": "hr"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "document_filter", refused.text
    assert (await call("/jobs/job-acme/examples", "acme", **{"x-filter": "hr"})).status_code == 403
    assert (await call("/jobs/job-acme/examples", "acme")).json() == {"id": "job-acme"}
