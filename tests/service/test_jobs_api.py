"""Listing jobs (`GET /v1/jobs`, `graft jobs ls|show|cancel`): newest first, filtered by kind and
status, paged with `after`, a tenant's admin sees its own; and every CLI command has help text."""

import asyncio

import pytest
import typer
from typer.testing import CliRunner

from service.cli import app
from tests.harness import client, running_gateway
from tests.service.test_corpora_api import wait_job
from tests.service.test_hostile_input import refused

pytestmark = pytest.mark.databases("sqlite", "postgresql")

BOOT = "boot-admin"


async def graft(url: str, key: str, *args: str) -> str:
    """One CLI command in a thread (it calls the gateway this test's loop serves)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--url", url, "--key", key],
                                     env={"COLUMNS": "200"})
    assert result.exit_code == 0, (args, result.output)
    return result.output


async def upload(http, corpus: str, text: str) -> str:
    job = (await http.post(f"/v1/corpora/{corpus}/documents", json={"documents": [{"text": text}]})).json()
    assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
    return job["job_id"]


async def test_jobs_are_listed_newest_first_filtered_paged_and_per_tenant(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    async with running_gateway(settings) as url, client(url, BOOT) as boot:
        assert (await boot.post("/v1/tenants", json={"name": "acme"})).status_code == 201
        acme_key = (await boot.post("/v1/keys", json={"name": "a", "scope": "admin", "tenant": "acme"})).json()["key"]
        assert (await boot.post("/v1/corpora", json={"name": "notes"})).status_code == 201
        ingests = [await upload(boot, "notes", f"Note number {i}.") for i in range(3)]
        rebuild = (await boot.post("/v1/corpora/notes/rebuild", json={})).json()["job_id"]
        assert (await wait_job(boot, rebuild))["status"] == "succeeded"
        async with client(url, acme_key) as acme:
            assert (await acme.post("/v1/corpora", json={"name": "notes"})).status_code == 201
            acme_job = await upload(acme, "notes", "Acme's own note.")

            listed = (await boot.get("/v1/jobs")).json()
            assert [j["id"] for j in listed["data"]] == [acme_job, rebuild, *reversed(ingests)]
            assert listed["has_more"] is False
            assert [j["id"] for j in (await acme.get("/v1/jobs")).json()["data"]] == [acme_job]
            hidden = refused(await acme.get("/v1/jobs", params={"after": rebuild}), 400)
            missing = refused(await acme.get("/v1/jobs", params={"after": "nope"}), 400)
            assert hidden["message"].replace(rebuild, "nope") == missing["message"]

        rebuilds = (await boot.get("/v1/jobs", params={"kind": "rebuild"})).json()["data"]
        assert [j["id"] for j in rebuilds] == [rebuild]
        assert (await boot.get("/v1/jobs", params={"status": "failed"})).json()["data"] == []
        pages, after = [], None
        while True:
            page = (await boot.get("/v1/jobs", params={"limit": 2, **({"after": after} if after else {})})).json()
            pages.append([j["id"] for j in page["data"]])
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        assert pages == [[acme_job, rebuild], list(reversed(ingests))[:2], [ingests[0]]]
        for params in ({"kind": "sleep"}, {"status": "done"}, {"limit": 0}, {"limit": 1001}):
            refused(await boot.get("/v1/jobs", params=params), 400)

        shown = await graft(url, BOOT, "jobs", "ls", "--kind", "rebuild")
        assert rebuild in shown and ingests[0] not in shown
        assert '"status": "succeeded"' in await graft(url, BOOT, "jobs", "show", ingests[0])


def commands(group, path: tuple[str, ...] = ()):
    """Every command and group under `group` (typer carries a click of its own: duck-typed)."""
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))


@pytest.mark.databases("sqlite")
def test_every_cli_command_and_option_has_help_text():
    root = typer.main.get_command(app)
    found = list(commands(root))
    assert len(found) > 30
    for path, command in found:
        assert (command.help or "").strip(), f"graft {' '.join(path)} has no help text"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"graft {' '.join(path)} {param.opts[0]} has no help text"
