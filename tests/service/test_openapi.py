"""The OpenAPI document tells the truth (issue 17): every request body and every error status is in
it, and schemathesis (its CLI, with its default checks and phases), run over every operation with
bounded examples and deterministic generation (a fixed, derandomized seed), finds no 5xx and no
answer the document does not allow.

A real gateway (uvicorn, SQLite, FAISS, embedder, tokenizer) over the fake engine.
"""

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from service.app import create_app
from service.openapi import declared_body
from service.state import admin_principal, inference_principal
from service.training import TrainingService
from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job

ADMIN = "admin-key"
NAME = "lore"
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
MAX_EXAMPLES = 10  # per operation and phase; generation is deterministic (derandomized), so runs repeat
RUN_TIMEOUT_S = 600  # the run takes 2 minutes on a busy 2-core machine
# Operations where a body that fits the schema may still be refused with 400, for a rule that a
# JSON schema cannot state: there `positive_data_acceptance` takes 400 too. Every other check, and
# this one everywhere else, runs as schemathesis's defaults have it.
RULES_PAST_THE_SCHEMA = {
    ("POST", "/v1/corpora"): "chunk_overlap < chunk_size; embedding_model is the default or an allowed one",
    ("POST", "/v1/corpora/{name}/rebuild"): "chunk_overlap < chunk_size (the corpus's own when one is left out)",
    ("POST", "/v1/adapters/{name}/versions"): "the files are a PEFT LoRA of the base model; a composition's sources "
                                              "exist, are distinct, fit the method and the max LoRA rank",
    ("POST", "/v1/evalsets"): "the file is JSONL of items; item ids are unique",
    ("POST", "/v1/adapters/{name}/trainings"): "rank, max_examples and base within this gateway's settings; "
                                                "evalset with promote; teacher.url is http(s) without credentials",
    ("GET", "/v1/jobs"): "after names a job the key can see",
    ("POST", "/v1/domains/{name}/tunings"): "budget.trials within this gateway's tuning_max_trials; the set has "
                                            "items in its tuning split",
    ("POST", "/v1/domains/{name}/reports"): "the set's and the adapters' names, in the domain's namespace, fit 128 "
                                            "characters",
    ("POST", "/v1/chat/completions"): "the prompt and max_tokens fit the model's context",
    ("POST", "/v1/completions"): "the prompt and max_tokens fit the model's context",
}
POSITIVE_STATUSES = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]


def schemathesis_config(job_id: str) -> str:
    """Half the names drawn are things that exist (`lore` is a corpus, a domain, an adapter and an
    evaluation set), so requests get past 404 into the routes' own logic; the rest are generated."""
    known = {"path.name": NAME, "path.job_id": job_id, "path.document_id": "zorblax", "path.version": 1,
             "body.model": NAME, "body.domain": NAME, "body.evalset": NAME, "body.corpora[*]": NAME}
    lines = []
    for i, (key, value) in enumerate(known.items()):
        lines += [f"[dictionaries.known{i}]", f"values = [{json.dumps(value)}]"]
    lines.append("[parameters]")
    lines += [f'"{key}" = {{ dictionary = "known{i}", probability = 0.5 }}' for i, key in enumerate(known)]
    for method, path in RULES_PAST_THE_SCHEMA:
        lines += ["[[operations]]", f'include-method = "{method}"', f'include-path = "{path}"',
                  f"checks.positive_data_acceptance.expected-statuses = {json.dumps(POSITIVE_STATUSES)}"]
    return "\n".join(lines) + "\n"


async def openapi(url: str) -> dict:
    async with client(url) as http:
        return (await http.get("/openapi.json")).json()


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def test_every_body_and_every_error_status_is_documented(make_settings):
    app = create_app(make_settings())
    schema = app.openapi()
    routes = {(method, route.path_format): route for route in app.routes
              if isinstance(route, APIRoute) and route.include_in_schema for method in route.methods}
    documented = {(method, path): operation for method, path, operation in operations(schema)}
    assert set(documented) == set(routes)
    with_body = {key for key, route in routes.items() if declared_body(route) is not None}
    # Every route that reads a body declares it, and only those.
    assert with_body == {key for key, operation in documented.items() if "requestBody" in operation}
    assert {("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/corpora/{name}/documents"),
            ("POST", "/v1/adapters/{name}/versions"), ("POST", "/v1/evalsets"), ("PUT", "/v1/domains/{name}"),
            ("POST", "/v1/domains/{name}/adapter"), ("POST", "/v1/corpora"), ("POST", "/v1/corpora/{name}/search"),
            ("POST", "/v1/evals"), ("POST", "/v1/adapters/{name}/trainings"),
            ("POST", "/v1/corpora/{name}/rebuild")} <= with_body
    bodies = {key: documented[key]["requestBody"]["content"] for key in with_body}
    assert bodies[("POST", "/v1/chat/completions")]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert bodies[("POST", "/v1/completions")]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CompletionRequest"}
    for key in (("POST", "/v1/corpora/{name}/documents"), ("POST", "/v1/adapters/{name}/versions"),
                ("POST", "/v1/evalsets")):
        files = bodies[key]["multipart/form-data"]["schema"]["properties"]["files"]
        assert files["type"] == "array" and files["items"] == {"type": "string", "format": "binary"}, key
    assert "application/json" in bodies[("POST", "/v1/corpora/{name}/documents")]
    assert "application/json" in bodies[("POST", "/v1/evalsets")]
    item = schema["components"]["schemas"]["EvalItemIn"]["properties"]["unanswerable"]
    assert item["type"] == "boolean" and item["default"] is False and "abstention" in item["description"]
    composition = bodies[("POST", "/v1/adapters/{name}/versions")]["application/json"]["schema"]
    assert composition == {"$ref": "#/components/schemas/ComposeIn"}
    sources = schema["components"]["schemas"]["Composition"]["properties"]["sources"]
    assert (sources["minItems"], sources["maxItems"]) == (1, 8)

    for (method, path), operation in documented.items():
        responses = operation["responses"]
        assert "422" not in responses, (method, path)  # invalid input is 400 on every route
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (method, path, status)
        assert "500" in responses, (method, path)
        calls = {dependency.call for dependency in routes[(method, path)].dependant.dependencies}
        if calls & {admin_principal, inference_principal}:
            assert {"400", "401", "403"} <= set(responses), (method, path)
            assert operation["security"] == [{"bearer": []}], (method, path)
        if admin_principal in calls:
            assert "admin" in operation["description"], (method, path)
        if "{" in path or "requestBody" in operation:
            assert "404" in responses or not path.startswith("/v1/"), (method, path)
    error = schema["components"]["schemas"]["ErrorResponse"]
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert error["required"] == ["error"] and set(detail["required"]) == {"message", "type", "param", "code"}
    bearer = schema["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")


@pytest.fixture
async def gateway(make_settings, fake_engine, good_lora, monkeypatch):
    """A gateway with something to find: corpus, domain, adapter and evaluation set `lore`.
    A training the run starts goes as far as its examples; the trainer process is not started
    (minutes of CPU; tests/training and test_training_* run it)."""

    async def no_trainer(*_):
        raise RuntimeError("the trainer is not run in this test")

    monkeypatch.setattr(TrainingService, "_train", no_trainer)
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN])
    async with running_gateway(settings) as url:
        async with client(url, ADMIN) as http:
            await http.post("/v1/corpora", json={"name": NAME})
            job = (await http.post(f"/v1/corpora/{NAME}/documents", json={"documents": [
                {"id": "zorblax", "text": "The Zorblax Institute was founded in 1847."}]})).json()
            assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
            assert (await http.post(f"/v1/adapters/{NAME}/versions", files=adapter_files(good_lora))).status_code == 201
            assert (await http.put(f"/v1/domains/{NAME}", json={"corpora": [NAME]})).status_code == 201
            assert (await http.post("/v1/evalsets", json={"name": NAME, "items": [
                {"question": "When was the institute founded?", "answers": ["1847"],
                 "document_ids": ["zorblax"]}]})).status_code == 201
        yield url, job["job_id"]


async def test_schemathesis_finds_no_server_error_and_no_answer_the_schema_forbids(gateway, tmp_path):
    url, job_id = gateway
    st = Path(sys.executable).parent / "st"
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config(job_id))
    command = [str(st), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--header", f"Authorization: Bearer {ADMIN}",
               "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
               "--workers", "1", "--request-timeout", "60",
               "--no-color", "--report", "junit", "--report-dir", str(tmp_path / "report")]
    # A process of its own, so this loop keeps serving the gateway while schemathesis calls it.
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-30000:]
    selected, total = map(int, re.search(r"Operations:\s+(\d+) selected / (\d+) total", text).groups())
    tested = int(re.search(r"Tested:\s+(\d+)", text).group(1))
    assert selected == total == tested == len(list(operations(await openapi(url)))), text[-3000:]
