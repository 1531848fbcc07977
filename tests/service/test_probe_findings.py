"""What an adversarial probe of tenants, filters and keys found (issue 27), one test per finding,
each on SQLite and PostgreSQL, plus hostile input on the evaluation-set, evaluation, training,
tenant, key and audit routes and the console's static paths.

Real embedder, FAISS, BM25 and database; the engine is the fake one, which echoes the prompt it
gets, so a hidden passage that reached it would show in an answer (and in an evaluation's score).
"""

import json

import pytest

from indexer.embedding import resolve_model_dir
from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job
from tests.service.test_hostile_input import refused

pytestmark = pytest.mark.databases("sqlite", "postgresql")

BOOT = "boot-admin"
HIDDEN = "ENGSECRET"  # in the eng document, which the hr admin key may not read
DOCUMENTS = [("a-hr", "hr", "HR staff book vacation days in the HR portal."),
             ("eng-notes.txt", "eng", f"The engineering launch code is {HIDDEN}42."),
             ("eng-plan", "eng", "Engineering plans are private.")]
HOSTILE = [5, -1, 1.5, True, None, "", "x", [], {}, [1], {"a": 1}, "\u0000", "é" * 20_000, 2**62,
           "../../etc/passwd", "a:b:c"]


async def make_key(http, **body) -> str:
    made = await http.post("/v1/keys", json={"name": "k", **body})
    assert made.status_code == 201, made.text
    return made.json()["key"]


@pytest.fixture
async def probe(make_settings, fake_engine, good_lora):
    """(url, keys): corpus `handbook` (hr and eng documents), adapter `tone` v1 and v2, domain
    `handbook` on tone@1; keys: `boot` (global admin), `hr` (global admin key with filter group=hr)."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    async with running_gateway(settings) as url, client(url, BOOT) as boot:
        assert (await boot.post("/v1/corpora", json={"name": "handbook"})).status_code == 201
        job = (await boot.post("/v1/corpora/handbook/documents", json={"documents": [
            {"id": i, "text": t, "metadata": {"group": g}} for i, g, t in DOCUMENTS]})).json()
        assert (await wait_job(boot, job["job_id"]))["status"] == "succeeded"
        for version in (1, 2):
            assert (await boot.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
        put = await boot.put("/v1/domains/handbook", json={"corpora": ["handbook"],
                                                            "adapter": {"name": "tone", "version": 1}})
        assert put.status_code == 201, put.text
        keys = {"boot": BOOT, "hr": await make_key(boot, scope="admin", filter={"group": "hr"})}
        yield url, keys


async def documents_as_boot(boot) -> dict:
    return {d["id"]: d for d in (await boot.get("/v1/corpora/handbook/documents")).json()["data"]}


# 1. A filtered key evaluated hidden documents through a swap gate (the 409 carried the scores).
async def test_a_filtered_key_cannot_evaluate_through_any_gate(probe):
    url, keys = probe
    async with client(url, keys["boot"]) as boot, client(url, keys["hr"]) as hr:
        evalset = await hr.post("/v1/evalsets", json={"name": "probe", "items": [
            {"question": "What is the engineering launch code?", "answers": [HIDDEN], "document_ids": ["eng-notes.txt"]}]})
        assert evalset.status_code == 201, evalset.text
        gate = {"evalset": "probe", "metric": "answer_contains", "min_delta": 0.5}
        error = refused(await hr.post("/v1/domains/handbook/adapter", json={"adapter": "tone", "version": 2,
                                                                             "gate": gate}), 403, "document_filter")
        assert HIDDEN not in json.dumps(error) and "1.000" not in error["message"]
        # The domain's own default gate, set by a key without a filter, is a door too.
        put = await boot.put("/v1/domains/handbook", json={"corpora": ["handbook"], "gate": gate,
                                                            "adapter": {"name": "tone", "version": 1}})
        assert put.status_code == 200, put.text
        refused(await hr.post("/v1/domains/handbook/adapter", json={"adapter": "tone", "version": 2}),
                403, "document_filter")
        refused(await hr.post("/v1/evals", json={"domain": "handbook", "evalset": "probe"}), 403, "document_filter")
        assert (await boot.get("/v1/evals")).json()["data"] == []  # nothing was evaluated
        assert (await boot.get("/v1/domains/handbook")).json()["engine_model"] == "tone@1"


# 2. Tenant names that differ in case: SQLite's LIKE ignored case and PTA's admin read pta's runs.
async def test_tenants_whose_names_differ_in_case_see_nothing_of_each_other(probe):
    url, keys = probe
    async with client(url, keys["boot"]) as boot:
        for tenant in ("pta", "PTA"):  # names are case-sensitive: two tenants
            assert (await boot.post("/v1/tenants", json={"name": tenant})).status_code == 201
            keys[tenant] = await make_key(boot, scope="admin", tenant=tenant)
        assert {t["name"] for t in (await boot.get("/v1/tenants")).json()["data"]} >= {"pta", "PTA"}
    async with client(url, keys["pta"]) as lower, client(url, keys["PTA"]) as upper:
        assert (await lower.post("/v1/corpora", json={"name": "notes"})).status_code == 201
        assert (await lower.put("/v1/domains/notes", json={"corpora": ["notes"]})).status_code == 201
        assert (await lower.post("/v1/evalsets", json={"name": "qa", "items": [
            {"question": "Anything?", "answers": ["x"]}]})).status_code == 201
        started = (await lower.post("/v1/evals", json={"domain": "notes", "evalset": "qa"})).json()
        assert (await wait_job(lower, started["job_id"]))["status"] == "succeeded"
        assert [r["id"] for r in (await lower.get("/v1/evals")).json()["data"]] == [started["eval_id"]]
        assert (await upper.get("/v1/evals")).json()["data"] == []
        refused(await upper.get(f"/v1/evals/{started['eval_id']}"), 404, "eval_not_found")
        refused(await upper.get(f"/v1/jobs/{started['job_id']}"), 404, "job_not_found")
        refused(await upper.get("/v1/domains/pta:notes"), 404)


# 3. A filtered admin key deleted or overwrote documents it cannot see.
async def test_a_hidden_document_is_404_to_a_filtered_key_for_every_operation(probe):
    url, keys = probe
    async with client(url, keys["boot"]) as boot, client(url, keys["hr"]) as hr:
        before = await documents_as_boot(boot)
        missing = refused(await hr.delete("/v1/corpora/handbook/documents/nope"), 404, "document_not_found")
        hidden = refused(await hr.delete("/v1/corpora/handbook/documents/eng-plan"), 404, "document_not_found")
        assert hidden["message"] == missing["message"].replace("nope", "eng-plan")  # no tell
        refused(await hr.post("/v1/corpora/handbook/documents", json={"documents": [
            {"id": "eng-plan", "text": "Overwritten.", "metadata": {"group": "hr"}}]}), 404, "document_not_found")
        refused(await hr.post("/v1/corpora/handbook/documents", files=[
            ("files", ("eng-notes.txt", b"Overwritten by a file.", "text/plain"))]), 404, "document_not_found")
        # Ids known only once the job reads the file: the job leaves the hidden one as it is.
        line = json.dumps({"id": "eng-plan", "text": "Overwritten by JSONL.", "metadata": {"group": "hr"}})
        job = (await hr.post("/v1/corpora/handbook/documents",
                             files=[("files", ("more.jsonl", line.encode(), "application/jsonl"))])).json()
        job = await wait_job(hr, job["job_id"])
        assert [e["document_id"] for e in job["errors"]] == ["eng-plan"], job
        assert await documents_as_boot(boot) == before
        hits = (await boot.post("/v1/corpora/handbook/search", json={"query": "Overwritten", "k": 5})).json()["hits"]
        assert all("Overwritten" not in h["text"] for h in hits)
        # What the key may see, it may still change.
        assert (await hr.delete("/v1/corpora/handbook/documents/a-hr")).status_code == 200
        assert set(await documents_as_boot(boot)) == set(before) - {"a-hr"}


# 4. `items` that is not a list was a 500.
async def test_evalset_items_of_the_wrong_type_are_400(probe):
    url, keys = probe
    async with client(url, keys["boot"]) as boot:
        for items in (5, True, 1.5, "x", {"question": "q"}, None):
            refused(await boot.post("/v1/evalsets", json={"name": "bad", "items": items}), 400)
        assert (await boot.get("/v1/evalsets")).json()["data"] == []


# 5. A NUL in a console path was a 500, without a key.
async def test_console_static_paths_answer_404_for_anything_but_its_files(probe):
    url, _ = probe
    async with client(url) as anonymous:
        assert (await anonymous.get("/console/static/app.js")).status_code == 200
        for path in ("%00.js", "app.js%00", "..%2f..%2fsettings.py", "../routes/console.py", "a" * 5000 + ".js",
                     "vendor", "%2e%2e/app.py", "..\\app.js", "nope.js", "%ff%fe.css", "app.js/"):
            refused(await anonymous.get(f"/console/static/{path}"), 404)
        assert (await anonymous.get("/healthz")).status_code == 200


# 6. `embedding_model` told which folders exist, and would load any local model.
async def test_embedding_models_come_from_the_operators_list_only(make_settings, fake_engine):
    packaged = str(resolve_model_dir("all-MiniLM-L6-v2"))
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT], allowed_embedding_models=[packaged])
    async with running_gateway(settings) as url, client(url, BOOT) as boot:
        messages = set()
        for i, model in enumerate(("/etc", "~", "/nonexistent/model", "../..", "/proc/self", "bert-base-uncased",
                                   packaged + "/")):
            error = refused(await boot.post("/v1/corpora", json={"name": f"c{i}", "embedding_model": model}), 400)
            assert error["param"] == "embedding_model" and "/" not in error["message"]
            messages.add(error["message"])
        assert len(messages) == 1  # the same answer whatever the name: nothing to tell folders apart
        assert (await boot.get("/v1/corpora")).json()["data"] == []
        made = await boot.post("/v1/corpora", json={"name": "allowed", "embedding_model": packaged})
        assert made.status_code == 201, made.text
        assert (await boot.post("/v1/corpora", json={"name": "default"})).status_code == 201


# 7. A limited key minted keys with no limits, or higher ones.
async def test_a_minted_key_has_at_most_its_makers_limits(probe):
    url, keys = probe
    async with client(url, keys["boot"]) as boot:
        assert (await boot.post("/v1/tenants", json={"name": "acme"})).status_code == 201
        made = await boot.post("/v1/keys", json={"name": "slow-admin", "scope": "admin", "tenant": "acme",
                                                 "limits": {"requests_per_minute": 2}})
        maker = made.json()["key"]
    async with client(url, maker) as admin:
        assert (await admin.post("/v1/corpora", json={"name": "notes"})).status_code == 201
        asked = [({}, {"requests_per_minute": 2}),
                 ({"limits": {"requests_per_minute": 1_000_000}}, {"requests_per_minute": 2}),
                 ({"limits": {"requests_per_minute": 1, "concurrent": 5}}, {"requests_per_minute": 1, "concurrent": 5})]
        minted = []
        for body, limits in asked:
            made = await admin.post("/v1/keys", json={"name": "bot", "scope": "inference", **body})
            assert made.status_code == 201 and made.json()["limits"] == limits, made.text
            minted.append(made.json()["key"])
    async with client(url, minted[0]) as bot:  # the limit holds over HTTP, not only on paper
        statuses = [(await bot.post("/v1/corpora/notes/search", json={"query": "x"})).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]


# 8a. A global key's changes to a tenant's things were audited with tenant null.
async def test_a_global_keys_changes_to_a_tenants_things_are_that_tenants_events(probe):
    url, keys = probe
    async with client(url, keys["boot"]) as boot:
        assert (await boot.post("/v1/tenants", json={"name": "acme"})).status_code == 201
        acme_key = await make_key(boot, scope="admin", tenant="acme")
        bot = (await boot.post("/v1/keys", json={"name": "bot", "scope": "inference", "tenant": "acme"})).json()
        assert (await boot.post("/v1/corpora", json={"name": "acme:notes"})).status_code == 201
        assert (await boot.delete(f"/v1/keys/{bot['id']}")).status_code == 200
        assert (await boot.post("/v1/corpora", json={"name": "global-notes"})).status_code == 201
    async with client(url, acme_key) as acme:
        seen = {(e["action"], e["target"]) for e in (await acme.get("/v1/audit")).json()["data"]}
    assert {("corpus.create", "acme:notes"), ("key.create", str(bot["id"])), ("key.revoke", str(bot["id"])),
            ("tenant.create", "acme")} <= seen
    assert not any(target == "global-notes" for _, target in seen)


# 8b. NUL characters were accepted in names, filter keys, document ids and metadata.
async def test_nul_characters_are_refused_everywhere_and_nothing_is_stored(probe):
    url, keys = probe
    async with client(url, keys["boot"]) as boot:
        before = await documents_as_boot(boot)
        keys_before = (await boot.get("/v1/keys")).json()["data"]
        bodies = [("POST", "/v1/keys", {"name": "k\u0000", "scope": "inference"}),
                  ("POST", "/v1/keys", {"name": "k", "scope": "inference", "filter": {"gr\u0000": "hr"}}),
                  ("POST", "/v1/keys", {"name": "k", "scope": "inference", "filter": {"group": "h\u0000r"}}),
                  ("POST", "/v1/tenants", {"name": "t\u0000"}),
                  ("POST", "/v1/corpora/handbook/documents", {"documents": [{"id": "a\u0000", "text": "x"}]}),
                  ("POST", "/v1/corpora/handbook/documents", {"documents": [{"text": "x", "metadata": {"k\u0000": 1}}]}),
                  ("POST", "/v1/corpora/handbook/documents", {"documents": [{"text": "x", "metadata": {"k": "\u0000"}}]}),
                  ("POST", "/v1/corpora/handbook/documents", {"documents": [{"text": "a\u0000b"}]}),
                  ("POST", "/v1/corpora/handbook/search", {"query": "x", "filter": {"gr\u0000up": "hr"}}),
                  ("POST", "/v1/evalsets", {"name": "qa", "items": [{"question": "q\u0000"}]}),
                  ("PUT", "/v1/domains/d", {"corpora": ["handbook"], "system_prompt": "\u0000"})]
        for method, path, body in bodies:
            refused(await boot.request(method, path, json=body), 400, "invalid_json")
        part = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="a\x00.txt"\r\n'
                b"Content-Type: text/plain\r\n\r\nx\r\n--b--\r\n")  # a raw NUL: clients escape it
        refused(await boot.post("/v1/corpora/handbook/documents", content=part,
                                headers={"Content-Type": "multipart/form-data; boundary=b"}), 400, "invalid_multipart")
        refused(await boot.delete("/v1/corpora/handbook/documents/eng%00plan"), 404)
        refused(await boot.get("/v1/jobs/a%00b"), 404)
        refused(await boot.get("/v1/corpora/handbook/documents", params={"after": "a\u0000"}), 400)
        refused(await boot.get("/v1/audit", params={"action": "corpus.\u0000"}), 400)
        assert await documents_as_boot(boot) == before
        assert (await boot.get("/v1/keys")).json()["data"] == keys_before
        refused(await boot.get("/v1/domains/d"), 404)
        assert (await boot.post("/v1/corpora/handbook/search", json={"query": "vacation"})).status_code == 200


# 8c. /docs and /redoc loaded Swagger UI from a public CDN, with no CSP.
async def test_api_pages_are_off_unless_the_operator_enables_them(make_settings, fake_engine, probe):
    url, _ = probe
    async with client(url) as anonymous:
        refused(await anonymous.get("/docs"), 404)
        refused(await anonymous.get("/redoc"), 404)
        assert (await anonymous.get("/openapi.json")).status_code == 200
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT], api_docs_pages=True)
    async with running_gateway(settings) as enabled, client(enabled) as anonymous:
        assert (await anonymous.get("/docs")).status_code == 200


# 8d. A filtered key's page said has_more when nothing more was visible to it.
async def test_a_filtered_keys_last_page_says_no_more(probe):
    url, keys = probe
    async with client(url, keys["hr"]) as hr, client(url, keys["boot"]) as boot:
        page = (await hr.get("/v1/corpora/handbook/documents", params={"limit": 1})).json()
        assert [d["id"] for d in page["data"]] == ["a-hr"] and page["has_more"] is False
        page = (await boot.get("/v1/corpora/handbook/documents", params={"limit": 1})).json()
        assert page["has_more"] is True


# Hostile values in every field of the evaluation-set, evaluation, training, tenant and key bodies,
# and in the audit and evaluation queries: 4xx, never 5xx, and the gateway keeps serving.
async def test_hostile_values_on_evaluation_training_tenant_key_and_audit_routes(probe):
    url, keys = probe
    bodies = {
        ("POST", "/v1/evalsets"): {"name": "qa", "items": [{"question": "q", "answers": ["a"], "document_ids": ["a-hr"]}]},
        ("POST", "/v1/evals"): {"domain": "handbook", "evalset": "qa", "max_tokens": 8},
        ("POST", "/v1/adapters/tuned/trainings"): {"corpus": "handbook", "recipe": "reader", "max_examples": 1},
        ("POST", "/v1/tenants"): {"name": "t1"},
        ("PATCH", "/v1/tenants/acme"): {"limits": {"requests_per_minute": 5}},
        ("POST", "/v1/keys"): {"name": "k", "scope": "inference"},
    }
    async with client(url, keys["boot"]) as boot:
        assert (await boot.post("/v1/tenants", json={"name": "acme"})).status_code == 201
        for (method, path), good in bodies.items():
            for field in good:
                for value in HOSTILE:
                    response = await boot.request(method, path, json={**good, field: value})
                    assert response.status_code < 500, (method, path, field, value, response.text)
                    if response.status_code >= 400:
                        refused(response, response.status_code)
        for params in ({"limit": "x"}, {"limit": 0}, {"before": -1}, {"before": "1e99"}, {"action": "a" * 1000}):
            assert 400 <= (await boot.get("/v1/audit", params=params)).status_code < 500
        injected = await boot.get("/v1/audit", params={"action": "'; DROP TABLE audit_events; --"})
        assert injected.status_code == 200 and injected.json()["data"] == []  # a value like any other
        for params in ({"domain": "../x"}, {"domain": "a:b:c"}, {"limit": -1}):
            assert 400 <= (await boot.get("/v1/evals", params=params)).status_code < 500
        for eval_id in ("x" * 5000, "'", "%2e%2e", "1 OR 1=1"):
            refused(await boot.get(f"/v1/evals/{eval_id}"), 404)
            refused(await boot.get(f"/v1/evals/{eval_id}/items"), 404)
            refused(await boot.get(f"/v1/jobs/{eval_id}"), 404)
        assert (await boot.get("/v1/audit")).status_code == 200
        assert (await boot.post("/v1/corpora/handbook/search", json={"query": "vacation"})).status_code == 200
