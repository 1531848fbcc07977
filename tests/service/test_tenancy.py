"""Tenants over the API: two tenants (acme, beta) with the same names for their corpus, domain and
adapter, keys made over REST. On every route that returns text (search, both completion endpoints,
streaming, citations, the documents list, jobs, evaluations, /v1/models, engines) a key of one
tenant never sees anything of the other, also through `retrieval.corpora`, a domain binding or a
full `tenant:name`; an inference key limited to one domain reaches nothing else; with k results
requested, k come back when k exist.

Real embedder, FAISS, BM25 and SQLite; the engine is the fake one, which records the prompts it
receives and echoes them back (so a passage that reached it would show in the answer too).
"""

import json

import pytest
from typer.testing import CliRunner

from service.cli import app as cli
from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

GLOBAL = "global-admin"
QUESTION = "How many vacation days do I get?"


def handbook(tenant: str) -> dict:
    code = tenant.upper() + "SECRET"  # appears in this tenant's documents only
    rows = [(f"leave-{i}", "all", f"Vacation policy part {i}: paid leave and vacation days. Code {code}{i}.")
            for i in range(5)]
    rows += [("hr-only", "hr", f"HR staff vacation days are booked in the HR portal. Code {code}HR.")]
    return {"documents": [{"id": i, "text": t, "metadata": {"group": g}} for i, g, t in rows]}


def ids_of(hits) -> list[str]:
    return [h["document_id"] for h in hits]


def assert_nothing_of(tenant: str, *texts) -> None:
    for text in texts:
        assert tenant.upper() + "SECRET" not in (text if isinstance(text, str) else json.dumps(text))


@pytest.fixture
async def deployment(make_settings, fake_engine, good_lora):
    """(base URL, keys by name): acme and beta, each with corpus `handbook`, domain `support` and
    adapter `tuned`; acme also has corpus `pricing` and domain `sales`."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[GLOBAL])
    async with running_gateway(settings) as url:
        keys = {}
        async with client(url, GLOBAL) as root:
            for tenant in ("acme", "beta"):
                assert (await root.post("/v1/tenants", json={"name": tenant})).status_code == 201
                made = await root.post("/v1/keys", json={"name": f"{tenant}-admin", "scope": "admin",
                                                         "tenant": tenant})
                assert made.status_code == 201, made.text
                keys[f"{tenant}-admin"] = made.json()["key"]
        for tenant in ("acme", "beta"):
            async with client(url, keys[f"{tenant}-admin"]) as admin:
                for name, body in (("app", {}), ("support-only", {"domains": ["support"]}),
                                   ("hr", {"filter": {"group": "hr"}})):
                    made = await admin.post("/v1/keys", json={"name": name, "scope": "inference", **body})
                    assert made.status_code == 201 and made.json()["tenant"] == tenant, made.text
                    keys[f"{tenant}-{name}"] = made.json()["key"]
                assert (await admin.post("/v1/corpora", json={"name": "handbook"})).status_code == 201
                job = (await admin.post("/v1/corpora/handbook/documents", json=handbook(tenant))).json()
                assert (await wait_job(admin, job["job_id"]))["status"] == "succeeded"
                uploaded = await admin.post("/v1/adapters/tuned/versions", files=adapter_files(good_lora))
                assert uploaded.status_code == 201, uploaded.text
                assert uploaded.json()["engine_model"] == f"{tenant}:tuned@1"
                put = await admin.put("/v1/domains/support", json={
                    "corpora": ["handbook"], "adapter": {"name": "tuned", "version": 1}, "retrieval": {"k": 4}})
                assert put.status_code == 201, put.text
                assert put.json()["engine_model"] == f"{tenant}:tuned@1"
        async with client(url, keys["acme-admin"]) as admin:
            assert (await admin.post("/v1/corpora", json={"name": "pricing"})).status_code == 201
            job = (await admin.post("/v1/corpora/pricing/documents", json={"documents": [
                {"id": "price", "text": "Vacation days cost nothing extra. Code PRICEONLY."}]})).json()
            assert (await wait_job(admin, job["job_id"]))["status"] == "succeeded"
            assert (await admin.put("/v1/domains/sales", json={"corpora": ["pricing"]})).status_code == 201
        yield url, keys


async def test_models_and_listings_show_only_the_keys_tenant(deployment):
    url, keys = deployment
    base = "SmolLM2-135M-Instruct"
    async with client(url, keys["acme-app"]) as app, client(url, keys["acme-support-only"]) as one, \
            client(url, keys["beta-app"]) as beta, client(url, GLOBAL) as root:
        assert [m["id"] for m in (await app.get("/v1/models")).json()["data"]] == [base, "acme:sales", "acme:support"]
        assert [m["id"] for m in (await one.get("/v1/models")).json()["data"]] == ["acme:support"]
        assert [m["id"] for m in (await beta.get("/v1/models")).json()["data"]] == [base, "beta:support"]
        everything = [m["id"] for m in (await root.get("/v1/models")).json()["data"]]
        assert {"acme:support", "beta:support", "acme:sales"} <= set(everything)
    async with client(url, keys["acme-admin"]) as admin, client(url, GLOBAL) as root:
        for path, field, mine in (("/v1/corpora", "name", ["acme:handbook", "acme:pricing"]),
                                  ("/v1/domains", "name", ["acme:sales", "acme:support"]),
                                  ("/v1/adapters", "name", ["acme:tuned"])):
            listed = (await admin.get(path)).json()["data"]
            assert sorted(item[field] for item in listed) == mine, path
            assert "beta" not in json.dumps(listed)
            assert any("beta:" in item[field] for item in (await root.get(path)).json()["data"])
        engines = (await admin.get("/v1/engines")).json()["data"]
        held = [a for e in engines for a in e["adapters"]]
        assert held and all(a.startswith("acme:") for a in held), engines
        keys_listed = (await admin.get("/v1/keys")).json()["data"]
        assert {k["tenant"] for k in keys_listed} == {"acme"} and "key" not in keys_listed[0]
        # A short name and the full one are the same resource; another tenant's full name is not found.
        assert (await admin.get("/v1/corpora/handbook")).json()["name"] == "acme:handbook"
        assert (await admin.get("/v1/corpora/acme:handbook")).json()["name"] == "acme:handbook"
        for path in ("/v1/corpora/beta:handbook", "/v1/corpora/beta:handbook/documents",
                     "/v1/domains/beta:support", "/v1/domains/beta:support/history",
                     "/v1/adapters/beta:tuned/versions"):
            missing = await admin.get(path)
            assert missing.status_code == 404, (path, missing.text)
            assert "BETASECRET" not in missing.text
        documents = (await admin.get("/v1/corpora/handbook/documents")).json()["data"]
        assert len(documents) == 6
        assert (await root.get("/v1/corpora/beta:handbook")).json()["name"] == "beta:handbook"


async def test_search_and_completions_never_carry_another_tenants_text(deployment, fake_engine):
    url, keys = deployment
    async with client(url, keys["acme-app"]) as app, client(url, keys["beta-app"]) as beta:
        for mode in ("dense", "bm25", "hybrid"):
            hits = (await app.post("/v1/corpora/handbook/search", json={"query": QUESTION, "k": 4,
                                                                         "mode": mode})).json()["hits"]
            assert len(hits) == 4 and all(h["text"].count("ACMESECRET") == 1 for h in hits)
        assert (await app.post("/v1/corpora/beta:handbook/search", json={"query": QUESTION})).status_code == 404

        for model in ("support", "acme:support"):
            chat = {"model": model, "messages": [{"role": "user", "content": QUESTION}]}
            for path, body in (("/v1/chat/completions", chat),
                               ("/v1/completions", {"model": model, "prompt": QUESTION})):
                fake_engine.requests.clear()
                response = await app.post(path, json=body)
                assert response.status_code == 200, response.text
                assert len(response.json()["citations"]) == 4  # the domain's k, all of acme
                assert response.json()["adapter"] == "acme:tuned@1"
                assert fake_engine.requests[-1]["model"] == "acme:tuned@1"
                assert_nothing_of("beta", response.text, fake_engine.requests)
                assert "ACMESECRET" in response.text

                fake_engine.requests.clear()
                stream = await app.post(path, json={**body, "stream": True})
                assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
                assert_nothing_of("beta", stream.text, fake_engine.requests)

        chat = {"model": "support", "messages": [{"role": "user", "content": QUESTION}]}
        fake_engine.requests.clear()
        for refused in (
                {**chat, "model": "beta:support"},
                {**chat, "retrieval": {"corpora": ["beta:handbook"]}},
                {**chat, "retrieval": {"corpora": ["handbook", "beta:handbook"]}}):
            response = await app.post("/v1/chat/completions", json=refused)
            assert response.status_code == 404, response.text
            assert_nothing_of("beta", response.text)
        assert fake_engine.requests == []  # nothing refused reached the engine
        own = await beta.post("/v1/chat/completions", json=chat)
        assert own.json()["adapter"] == "beta:tuned@1" and "BETASECRET" in own.text
        assert_nothing_of("acme", own.text)


async def test_an_inference_key_limited_to_a_domain_reaches_nothing_else(deployment, fake_engine):
    url, keys = deployment
    chat = {"messages": [{"role": "user", "content": QUESTION}]}
    async with client(url, keys["acme-support-only"]) as one, client(url, keys["acme-hr"]) as hr:
        assert (await one.post("/v1/chat/completions", json={**chat, "model": "support"})).status_code == 200
        for model in ("sales", "SmolLM2-135M-Instruct"):
            assert (await one.post("/v1/chat/completions", json={**chat, "model": model})).status_code == 404
        fake_engine.requests.clear()
        through = await one.post("/v1/chat/completions", json={**chat, "model": "support",
                                                                "retrieval": {"corpora": ["pricing"]}})
        assert through.status_code == 404 and "PRICEONLY" not in json.dumps(fake_engine.requests)
        assert (await one.post("/v1/corpora/pricing/search", json={"query": QUESTION})).status_code == 404
        assert (await one.post("/v1/corpora/handbook/search", json={"query": QUESTION})).status_code == 200

        # A key's filter inside its tenant: the hr key reads the hr document only, with k=4 asked.
        hits = (await hr.post("/v1/corpora/handbook/search", json={"query": QUESTION, "k": 4})).json()["hits"]
        assert ids_of(hits) == ["hr-only"]


async def test_tenant_admins_manage_only_their_tenant(deployment):
    url, keys = deployment
    async with client(url, keys["acme-admin"]) as admin, client(url, keys["beta-admin"]) as beta_admin:
        assert (await admin.post("/v1/tenants", json={"name": "gamma"})).status_code == 403
        assert (await admin.get("/v1/tenants")).status_code == 403
        other = await admin.post("/v1/keys", json={"name": "sneaky", "scope": "admin", "tenant": "beta"})
        assert other.status_code == 403
        # Bindings stay inside the tenant: another tenant's corpus, adapter or set is not found.
        for body in ({"corpora": ["beta:handbook"]}, {"corpora": [], "adapter": {"name": "beta:tuned", "version": 1}}):
            refused = await admin.put("/v1/domains/stolen", json=body)
            assert refused.status_code == 404, refused.text
        assert (await admin.get("/v1/domains/stolen")).status_code == 404  # nothing committed
        swap = await admin.post("/v1/domains/support/adapter", json={"adapter": "beta:tuned", "version": 1})
        assert swap.status_code == 404
        # Jobs and evaluations of the other tenant are not found.
        job = (await beta_admin.post("/v1/corpora/handbook/documents", json={"documents": [
            {"id": "late", "text": "Late vacation requests go to the HR desk."}]})).json()
        assert (await wait_job(beta_admin, job["job_id"]))["status"] == "succeeded"
        assert (await admin.get(f"/v1/jobs/{job['job_id']}")).status_code == 404
        assert (await admin.post(f"/v1/jobs/{job['job_id']}/cancel")).status_code == 404
        made = await beta_admin.post("/v1/evalsets", json={"name": "qs", "items": [{"question": QUESTION}]})
        assert made.status_code == 201 and made.json()["name"] == "beta:qs"
        assert (await admin.get("/v1/evalsets/beta:qs")).status_code == 404
        assert "beta" not in json.dumps((await admin.get("/v1/evalsets")).json())
        run = await admin.post("/v1/evals", json={"domain": "support", "evalset": "beta:qs"})
        assert run.status_code == 404
        assert (await admin.post("/v1/evalsets", json={"name": "qs", "items": [{"question": QUESTION}]})).status_code == 201
        # Evaluating another tenant's domain, or training on its corpus, is as missing as a name never made.
        theirs = await admin.post("/v1/evals", json={"domain": "beta:support", "evalset": "qs"})
        assert theirs.status_code == 404, theirs.text
        training = await admin.post("/v1/adapters/tuned/trainings", json={"corpus": "beta:handbook", "recipe": "reader"})
        assert training.status_code == 404, training.text
        assert "beta" not in json.dumps((await admin.get("/v1/jobs")).json())
        started = await beta_admin.post("/v1/evals", json={"domain": "support", "evalset": "qs", "max_tokens": 4})
        assert started.status_code == 202, started.text
        assert (await wait_job(beta_admin, started.json()["job_id"]))["status"] == "succeeded"
        assert (await admin.get(f"/v1/evals/{started.json()['eval_id']}")).status_code == 404
        assert (await admin.get("/v1/evals")).json()["data"] == []
        assert len((await beta_admin.get("/v1/evals")).json()["data"]) == 1

        # A revoked key is refused at once; a tenant admin cannot revoke another tenant's key.
        beta_keys = (await beta_admin.get("/v1/keys")).json()["data"]
        app_id = next(k["id"] for k in beta_keys if k["name"] == "app")
        assert (await admin.delete(f"/v1/keys/{app_id}")).status_code == 404
        assert (await beta_admin.delete(f"/v1/keys/{app_id}")).status_code == 200
        async with client(url, keys["beta-app"]) as revoked:
            assert (await revoked.get("/v1/models")).status_code == 401


async def test_a_keys_filter_never_widens_through_the_keys_it_makes(deployment, make_settings):
    url, keys = deployment
    async with client(url, keys["acme-admin"]) as admin:
        narrow = (await admin.post("/v1/keys", json={"name": "hr-admin", "scope": "admin",
                                                     "filter": {"group": "hr"}})).json()
        async with client(url, narrow["key"]) as hr_admin:
            made = await hr_admin.post("/v1/keys", json={"name": "wide", "scope": "inference"})
            assert made.status_code == 201 and made.json()["filter"] == {"group": ["hr"]}
        for bad in ({"name": "x", "scope": "root"}, {"name": "x", "scope": "admin", "domains": ["support"]},
                    {"name": "x", "scope": "inference", "domains": []},
                    {"name": "x", "scope": "inference", "limits": {"requests_per_minute": 0}}):
            refused = await admin.post("/v1/keys", json=bad)
            assert refused.status_code == 400, (bad, refused.text)


async def test_tenants_and_tenant_keys_on_the_command_line(make_settings, fake_engine, monkeypatch):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[GLOBAL])
    monkeypatch.setenv("GRAFT_DATA_DIR", str(settings.data_dir))
    if settings.database_url:
        monkeypatch.setenv("GRAFT_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    assert runner.invoke(cli, ["tenants", "create", "acme"]).exit_code == 0
    twice = runner.invoke(cli, ["tenants", "create", "acme"])
    assert twice.exit_code == 1 and "already exists" in twice.output
    for bad in ("a:b", "a.b", "_x"):
        assert runner.invoke(cli, ["tenants", "create", bad]).exit_code == 1
    assert runner.invoke(cli, ["tenants", "list"]).output.split() == ["acme"]
    orphan = runner.invoke(cli, ["keys", "create", "x", "--tenant", "nobody"])
    assert orphan.exit_code == 1 and "tenant 'nobody' does not exist" in orphan.output
    made = runner.invoke(cli, ["keys", "create", "app", "--tenant", "acme", "--domains", "support"])
    assert made.exit_code == 0, made.output
    key = made.output.split("\t")[0].strip()
    assert "tenant acme" in made.output and 'domains ["support"]' in made.output
    async with running_gateway(settings) as url:
        async with client(url, GLOBAL) as root, client(url, key) as app:
            assert (await root.put("/v1/domains/acme:support", json={"corpora": []})).status_code == 201
            assert (await root.put("/v1/domains/support", json={"corpora": []})).status_code == 201
            assert [m["id"] for m in (await app.get("/v1/models")).json()["data"]] == ["acme:support"]
            answered = await app.post("/v1/completions", json={"model": "support", "prompt": "hi"})
            assert answered.status_code == 200 and answered.json()["adapter"] == "SmolLM2-135M-Instruct"


async def test_a_global_admin_changes_a_tenants_limits(deployment):
    url, keys = deployment
    async with client(url, GLOBAL) as root, client(url, keys["acme-admin"]) as admin:
        changed = await root.patch("/v1/tenants/acme", json={"limits": {"requests_per_minute": 5}})
        assert changed.status_code == 200 and changed.json()["limits"] == {"requests_per_minute": 5}
        listed = {t["name"]: t["limits"] for t in (await root.get("/v1/tenants")).json()["data"]}
        assert listed == {"acme": {"requests_per_minute": 5}, "beta": None}
        assert (await admin.patch("/v1/tenants/acme", json={"limits": None})).status_code == 403
        assert (await root.patch("/v1/tenants/gamma", json={"limits": None})).status_code == 404
        assert (await root.patch("/v1/tenants/acme", json={"limits": {"concurrent": 0}})).status_code == 400
        assert (await root.patch("/v1/tenants/acme", json={"limits": None})).json()["limits"] is None
        events = (await root.get("/v1/audit", params={"action": "tenant.update"})).json()["data"]
        assert [e["target"] for e in events] == ["acme", "acme"]


async def test_a_tenants_limit_changes_what_its_keys_get_through(deployment):
    """PATCH /v1/tenants/{t} acts on the requests of every key of that tenant, over HTTP (within the
    limiter's cache time of the tenant row), and on no other tenant's."""
    url, keys = deployment
    ask = {"model": "support", "prompt": "hi", "max_tokens": 2}
    async with client(url, GLOBAL) as root, client(url, keys["acme-app"]) as acme, \
            client(url, keys["acme-support-only"]) as acme_other, client(url, keys["beta-app"]) as beta:
        for _ in range(3):
            assert (await acme.post("/v1/completions", json=ask)).status_code == 200
        assert (await root.patch("/v1/tenants/acme", json={"limits": {"requests_per_minute": 2}})).status_code == 200

        async def refused() -> bool:
            return (await acme.post("/v1/completions", json=ask)).status_code == 429
        await until(refused, "the tenant's new limit to refuse a request", timeout=60)
        # The tenant's minute is shared by all its keys; another tenant is untouched.
        assert (await acme_other.post("/v1/completions", json=ask)).status_code == 429
        assert [(await beta.post("/v1/completions", json=ask)).status_code for _ in range(4)] == [200] * 4

        assert (await root.patch("/v1/tenants/acme", json={"limits": None})).status_code == 200

        async def admitted() -> bool:
            return (await acme.post("/v1/completions", json=ask)).status_code == 200
        await until(admitted, "the lifted limit to admit requests again", timeout=60)
