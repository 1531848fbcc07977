"""Composed adapter versions over the API (`POST /v1/adapters/{a}/versions` with a JSON `compose`
body) on the fake engine, SQLite and PostgreSQL: stored, validated and content-addressed as an upload,
with provenance; bound to a domain, swapped, audited; hostile bodies refused with nothing stored.
The composition's arithmetic is tests/adapters_store/test_compose.py's; the real engine's answer is
tests/service/test_adapters_engine.py's."""

import json

import pytest
from safetensors import safe_open

from adapters_store.validation import BaseModelShapes, validate_adapter
from tests.adapters_store.lora_factory import make_lora
from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_hostile_input import refused

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ADMIN = "admin-key"


@pytest.fixture(scope="module")
def rank4_lora(base_model_dir, tmp_path_factory):
    return make_lora(base_model_dir, tmp_path_factory.mktemp("rank4"), rank=4, seed=4,
                     target_modules=("q_proj", "k_proj"))


@pytest.fixture
async def gateway(make_settings, fake_engine, good_lora, rank4_lora):
    """Adapters `tone` (v1: rank 8 q,v; v2: rank 4 q,k; v3: as v1) and `style` (v1: the rank 4 one); yields
    (client with the admin key, settings)."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN], max_lora_rank=16)
    async with running_gateway(settings) as url, client(url, ADMIN) as http:
        for adapter, folder in (("tone", good_lora), ("tone", rank4_lora), ("tone", good_lora), ("style", rank4_lora)):
            assert (await http.post(f"/v1/adapters/{adapter}/versions", files=adapter_files(folder))).status_code == 201
        yield http, settings


def stored_folders(settings) -> set[str]:
    return {p.name for p in (settings.adapters_dir / "store").iterdir() if not p.name.startswith(".")}


def staging_left(settings) -> list:
    return list((settings.adapters_dir / "store" / ".staging").iterdir())


async def test_a_composed_version_is_stored_validated_with_provenance_and_serves(gateway, fake_engine, base_model_dir):
    http, settings = gateway
    sources = (await http.get("/v1/adapters/tone/versions")).json()["data"]
    body = {"compose": {"method": "cat", "sources": [{"adapter": "tone", "version": 1, "weight": 0.5},
                                                     {"adapter": "tone", "version": 2, "weight": 1.5}]}}
    made = await http.post("/v1/adapters/mix/versions", json=body)
    assert made.status_code == 201, made.text
    answer = made.json()
    assert (answer["adapter"], answer["version"], answer["rank"], answer["engine_model"]) == ("mix", 1, 12, "mix@1")
    provenance = {"compose": {"method": "cat", "sources": [
        {"adapter": "tone", "version": v["version"], "sha256": v["sha256"], "weight": w}
        for v, w in zip(sources, (0.5, 1.5))]}}
    assert answer["provenance"] == provenance
    listed = (await http.get("/v1/adapters/mix/versions")).json()["data"]
    assert listed == [{**listed[0], "sha256": answer["sha256"], "rank": 12, "provenance": provenance,
                       "target_modules": ["k_proj", "q_proj", "v_proj"]}]
    # Content-addressed like an upload, and valid as one.
    folder = settings.adapters_dir / "store" / answer["sha256"]
    info = validate_adapter(folder, BaseModelShapes(base_model_dir), settings.max_lora_rank)
    assert info.rank == 12 and json.loads((folder / "adapter_config.json").read_text())["lora_alpha"] == 12
    with safe_open(folder / "adapter_model.safetensors", framework="numpy") as f:
        assert len(list(f.keys())) == 30 * 3 * 2
    # Each version shows its size: its files' bytes in the store (the console's adapters page lists it).
    assert listed[0]["bytes"] == sum(f.stat().st_size for f in folder.iterdir()) > 0
    # The same composition again: a new version, the same files.
    again = await http.post("/v1/adapters/mix/versions", content=json.dumps(body),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})  # curl -d
    assert again.status_code == 201 and again.json()["version"] == 2 and again.json()["sha256"] == answer["sha256"]

    # An ordinary version: bound, answering, swapped to and from, audited.
    assert (await http.put("/v1/domains/blend", json={"adapter": {"name": "mix", "version": 1}})).status_code == 201
    assert "mix@1" in fake_engine.loaded
    completion = await http.post("/v1/chat/completions", json={
        "model": "blend", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    assert completion.status_code == 200 and completion.json()["adapter"] == "mix@1", completion.text
    assert fake_engine.requests[-1]["model"] == "mix@1"
    # Evaluated and promoted through a gate, as any version is (the fake engine echoes the question).
    assert (await http.post("/v1/evalsets", json={"name": "echo", "items": [
        {"question": "hello", "answers": ["hello"]}]})).status_code == 201
    swapped = await http.post("/v1/domains/blend/adapter", json={
        "adapter": "mix", "version": 2, "gate": {"evalset": "echo", "metric": "answer_contains", "min_delta": 0}})
    assert swapped.status_code == 200, swapped.text
    assert swapped.json()["gate_result"]["passed"] is True and swapped.json()["gate_result"]["candidate"] == 1.0
    completion = await http.post("/v1/chat/completions", json={
        "model": "blend", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    assert completion.json()["adapter"] == "mix@2"
    events = (await http.get("/v1/audit", params={"action": "adapter.upload"})).json()["data"]
    assert [(e["target"], e["details"]) for e in events[:2]] == [
        ("mix@2", {"sha256": answer["sha256"], "rank": 12}), ("mix@1", {"sha256": answer["sha256"], "rank": 12})]


async def test_linear_svd_and_ties_over_the_api(gateway):
    http, _ = gateway
    shas = {(v["adapter"], v["version"]): v["sha256"] for a in ("tone", "style")
            for v in (await http.get(f"/v1/adapters/{a}/versions")).json()["data"]}
    linear = await http.post("/v1/adapters/mix/versions", json={"compose": {"method": "linear", "sources": [
        {"adapter": "tone", "version": 2, "weight": 1}, {"adapter": "style", "version": 1, "weight": 2}]}})
    assert linear.status_code == 201 and linear.json()["rank"] == 4, linear.text
    svd = await http.post("/v1/adapters/mix/versions", json={"compose": {"method": "svd", "svd_rank": 6, "sources": [
        {"adapter": "tone", "version": 1}, {"adapter": "style", "version": 1, "weight": 0.25}]}})
    assert svd.status_code == 201 and svd.json()["rank"] == 6, svd.text
    assert svd.json()["provenance"] == {"compose": {"method": "svd", "svd_rank": 6, "sources": [
        {"adapter": "tone", "version": 1, "sha256": shas["tone", 1], "weight": 1.0},
        {"adapter": "style", "version": 1, "sha256": shas["style", 1], "weight": 0.25}]}}
    ties = await http.post("/v1/adapters/mix/versions", json={"compose": {
        "method": "ties", "density": 0.5, "majority_sign_method": "frequency",
        "sources": [{"adapter": "tone", "version": 2}, {"adapter": "style", "version": 1, "weight": 0.5}]}})
    assert ties.status_code == 201 and ties.json()["rank"] == 4, ties.text
    assert {k: v for k, v in ties.json()["provenance"]["compose"].items() if k != "sources"} == {
        "method": "ties", "density": 0.5, "majority_sign_method": "frequency"}
    assert [v["version"] for v in (await http.get("/v1/adapters/mix/versions")).json()["data"]] == [1, 2, 3]


def composition(*sources, method="cat", **params) -> dict:
    return {"compose": {"method": method, "sources": [
        {"adapter": a, "version": v, **({"weight": w} if w is not None else {})} for a, v, w in sources], **params}}


HOSTILE = [
    (composition(("ghost", 1, 1.0)), 404, "adapter_not_found", "compose.sources[0]"),
    (composition(("tone", 1, 1.0), ("tone", 9, 1.0)), 404, "adapter_not_found", "compose.sources[1]"),
    (composition(("tone", 1, 1.0), ("tone", 1, 2.0)), 400, "duplicate_source", "compose.sources[1]"),
    (composition(("tone", 1, -0.5)), 400, "invalid_parameter", "compose.sources[0].weight"),
    (composition(("tone", 1, 0)), 400, "invalid_parameter", "compose.sources[0].weight"),
    (composition(("tone", 1, 1e12)), 400, "invalid_parameter", "compose.sources[0].weight"),
    (composition(*[("tone", v, 1.0) for v in range(1, 10)]), 400, "invalid_parameter", "compose.sources"),
    (composition(), 400, "invalid_parameter", "compose.sources"),
    (composition(("tone", 1, 1.0), method="blend"), 400, "invalid_parameter", "compose.method"),
    (composition(("tone", 1, 1.0), ("tone", 2, 1.0), method="linear"), 400, "rank_mismatch", "compose.method"),
    (composition(("tone", 1, 1.0), ("tone", 2, 1.0), method="ties"), 400, "invalid_parameter", "compose.density"),
    (composition(("tone", 1, 1.0), ("style", 1, 1.0), method="dare_ties", density=1.5), 400, "invalid_parameter",
     "compose.density"),
    (composition(("tone", 1, 1.0), method="svd", svd_rank=17), 400, "rank_too_high", "compose.svd_rank"),
    (composition(("tone", 1, 1.0), ("tone", 2, 1.0), ("tone", 3, 1.0)), 400, "rank_too_high", "compose.sources"),
    ({"compose": {"method": "cat", "sources": [{"adapter": "../tone", "version": 1}]}}, 400, "invalid_parameter",
     "compose.sources[0].adapter"),
    ({"compose": {"method": "cat", "sources": [{"adapter": "tone", "version": 1}]}, "extra": 1}, 400,
     "invalid_parameter", "extra"),
    ({"sources": [{"adapter": "tone", "version": 1}], "method": "cat"}, 400, "invalid_parameter", None),
]


@pytest.mark.parametrize("body,status,code,param", HOSTILE)
async def test_hostile_compositions_are_refused_and_nothing_is_stored(gateway, body, status, code, param):
    http, settings = gateway
    before = stored_folders(settings)
    error = refused(await http.post("/v1/adapters/mix/versions", json=body), status, code=code, param=param)
    if code == "rank_too_high":
        assert "rank 20" in error["message"] or "rank 17" in error["message"], error
    refused(await http.get("/v1/adapters/mix/versions"), 404, code="adapter_not_found")
    assert stored_folders(settings) == before and staging_left(settings) == []
    assert (await http.get("/v1/audit", params={"action": "adapter.upload"})).json()["data"][0]["target"] == "style@1"


async def test_bodies_that_are_not_json_compositions(gateway):
    http, settings = gateway
    for raw in (b'{"compose": {"method": "cat", "sources": [{"adapter": "tone", "version": 1, "weight": NaN}]}}',
                b"{not json", b"", b"[1]"):
        refused(await http.post("/v1/adapters/mix/versions", content=raw), 400, code="invalid_json")
    refused(await http.get("/v1/adapters/mix/versions"), 404)


async def test_sources_live_in_the_composed_adapters_namespace(make_settings, fake_engine, good_lora):
    """A tenant composes from its own adapters: another tenant's is 404, named short or in full; a
    global key names a tenant's adapters in full, and only into that tenant's namespace."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN])
    async with running_gateway(settings) as url, client(url, ADMIN) as root:
        keys = {}
        for tenant in ("acme", "beta"):
            assert (await root.post("/v1/tenants", json={"name": tenant})).status_code == 201
            made = await root.post("/v1/keys", json={"name": tenant, "scope": "admin", "tenant": tenant})
            keys[tenant] = made.json()["key"]
        async with client(url, keys["acme"]) as acme, client(url, keys["beta"]) as beta:
            assert (await acme.post("/v1/adapters/own/versions", files=adapter_files(good_lora))).status_code == 201
            before = stored_folders(settings)
            for name in ("own", "acme:own"):
                refused(await beta.post("/v1/adapters/mix/versions", json=composition((name, 1, 1.0))), 404,
                        code="adapter_not_found")
            refused(await root.post("/v1/adapters/mix/versions", json=composition(("acme:own", 1, 1.0))), 404,
                    code="adapter_not_found")  # a global adapter from a tenant's
            refused(await root.post("/v1/adapters/beta:mix/versions", json=composition(("acme:own", 1, 1.0))), 404,
                    code="adapter_not_found")
            assert stored_folders(settings) == before
            made = await acme.post("/v1/adapters/mix/versions", json=composition(("own", 1, 2.0)))
            assert made.status_code == 201 and made.json()["adapter"] == "acme:mix", made.text
            assert made.json()["provenance"]["compose"]["sources"][0]["adapter"] == "acme:own"
            by_root = await root.post("/v1/adapters/acme:mix/versions", json=composition(("acme:own", 1, 3.0)))
            assert by_root.status_code == 201 and by_root.json()["version"] == 2, by_root.text
