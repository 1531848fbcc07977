"""The operator CLI (`graft corpus|adapter|domain ...`) against a real gateway over a fake engine."""

import asyncio
import json

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.harness import running_gateway


@pytest.fixture
async def gateway_url(make_settings, fake_engine):
    async with running_gateway(make_settings(engine_urls=[fake_engine.url], api_keys=["admin-key"])) as url:
        yield url


async def graft(url: str, *args: str, ok: bool = True) -> str:
    """Run one CLI command in a thread (it calls the gateway served by this test's loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--url", url, "--key", "admin-key"],
                                     env={"COLUMNS": "200"})  # tables unwrapped
    assert (result.exit_code == 0) == ok, (args, result.output)
    return result.output


async def test_corpus_domain_and_adapter_commands(gateway_url, tmp_path, good_lora, fake_engine):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "zorblax.txt").write_text("The Zorblax Institute was founded in 1847 by Elira Vantress.")
    (pages / "ignored.bin").write_bytes(b"\x00\x01")
    await graft(gateway_url, "corpus", "create", "lore")
    await graft(gateway_url, "corpus", "upload", "lore", str(pages))
    assert "zorblax.txt" in await graft(gateway_url, "corpus", "search", "lore", "who founded the institute")
    assert "1 docs" in await graft(gateway_url, "corpus", "ls")

    await graft(gateway_url, "adapter", "push", "tone", str(good_lora))
    await graft(gateway_url, "domain", "set", "lore", "--corpus", "lore", "--adapter", "tone@1", "--k", "2")
    assert "tone@1" in await graft(gateway_url, "domain", "ls")
    assert "tone@1" in fake_engine.loaded
    await graft(gateway_url, "domain", "set", "lore", "--adapter", "tone", ok=False)  # no version
    assert "create" in await graft(gateway_url, "domain", "history", "lore")

    await graft(gateway_url, "domain", "rm", "lore")
    assert "lore" not in await graft(gateway_url, "domain", "ls")
    assert "404" in await graft(gateway_url, "domain", "rm", "lore", ok=False)
    await graft(gateway_url, "corpus", "rm", "lore")


async def test_eval_commands_run_show_and_compare(gateway_url, tmp_path, good_lora, fake_engine):
    fake_engine.script = lambda body: "Elira Vantress [1]" if body["model"] == "tone@1" else "nobody"
    (tmp_path / "qa.jsonl").write_text(
        '{"id": "founder", "question": "Who founded the institute?", "answers": ["Elira Vantress"], '
        '"document_ids": ["zorblax.txt"]}\n{"id": "year", "question": "When?", "answers": ["Elira"]}\n')
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "zorblax.txt").write_text("The Zorblax Institute was founded in 1847 by Elira Vantress.")
    await graft(gateway_url, "corpus", "create", "lore")
    await graft(gateway_url, "corpus", "upload", "lore", str(pages))
    await graft(gateway_url, "adapter", "push", "tone", str(good_lora))
    await graft(gateway_url, "adapter", "push", "tone", str(good_lora))
    await graft(gateway_url, "domain", "set", "lore", "--corpus", "lore", "--adapter", "tone@1")
    assert "2 items" in await graft(gateway_url, "evalset", "create", "qa", str(tmp_path / "qa.jsonl"))

    current = await graft(gateway_url, "eval", "run", "lore", "qa")
    candidate = await graft(gateway_url, "eval", "run", "lore", "qa", "--adapter", "tone@2")
    ids = [out.strip().splitlines()[-1].removeprefix("eval ") for out in (current, candidate)]
    assert "answer_contains" in current and "1.000" in current
    shown = await graft(gateway_url, "eval", "show", ids[1], "--items")
    assert '"output": "nobody"' in shown
    compared = await graft(gateway_url, "eval", "compare", ids[0], ids[1])
    # answer_contains: 1.0 -> 0.0 on both items: delta -1, both items lost
    row = next(line for line in compared.splitlines() if "answer_contains" in line and "-1.000" in line)
    assert "[-1.000, -1.000]" in row
    assert "3 items" not in await graft(gateway_url, "evalset", "ls")


async def test_domain_tune_follows_the_job_and_apply_makes_the_version_live(gateway_url, tmp_path, fake_engine):
    from tests.service.test_tunings_api import FACTS, ITEMS, SMALL_SPACE, scripted

    fake_engine.script = scripted
    pages = tmp_path / "pages"
    pages.mkdir()
    for word, (text, _) in FACTS.items():
        (pages / f"{word.lower()}.txt").write_text(text)
    (tmp_path / "qa.jsonl").write_text("".join(
        json.dumps({**item, "document_ids": [f"{item['id']}.txt"]}) + "\n" for item in ITEMS))
    await graft(gateway_url, "corpus", "create", "lore")
    await graft(gateway_url, "corpus", "upload", "lore", str(pages))
    await graft(gateway_url, "domain", "set", "lore", "--corpus", "lore", "--k", "3")
    await graft(gateway_url, "evalset", "create", "lore-qa", str(tmp_path / "qa.jsonl"))
    out = await graft(gateway_url, "domain", "tune", "lore", "--evalset", "lore-qa", "--trials", "8",
                      "--space", json.dumps(SMALL_SPACE))
    assert "trials 8/8, best 1.000" in out, out  # the last line, whenever the polls fell
    assert "config version 1: answer_contains tuning 1.000, holdout 1.000 (current 0.000)" in out, out
    assert 'prompt_template: "numbered" -> "quote_then_answer"' in out and "retrieval.k: 3 -> 1" in out, out
    assert "quote_then_answer" in await graft(gateway_url, "domain", "configs", "lore")
    out = await graft(gateway_url, "domain", "apply", "lore", "1", "--gate", "lore-qa", "--min-delta", "0.5")
    assert "configuration version 1 applied" in out and "gate: answer_contains 1.000 vs 0.000" in out, out
    assert "same as the live configuration" in await graft(gateway_url, "domain", "config", "lore", "1")
    assert "config_apply" in await graft(gateway_url, "domain", "history", "lore")
    assert "404" in await graft(gateway_url, "domain", "tune", "lore", "--evalset", "nope", ok=False)
