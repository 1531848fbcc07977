"""The console's Evaluations page shows a domain's tunings: its configuration versions with their
scores, and a version's trials and winner (its diff against the live configuration). A real headless
Chromium against a gateway over the scripted fake engine of test_tunings_api."""

import pytest

from tests.harness import client, running_gateway
from tests.service.console_browser import KEY, Console, browser, screenshots, step  # noqa: F401  (fixtures)
from tests.service.test_corpora_api import wait_job
from tests.service.test_tunings_api import FACTS, ITEMS, SMALL_SPACE, scripted, tune


@pytest.fixture
async def ui(make_settings, fake_engine, browser, screenshots):  # noqa: F811
    fake_engine.script = scripted
    async with running_gateway(make_settings(engine_urls=[fake_engine.url], api_keys=[KEY])) as url, \
            client(url, KEY) as http:
        await http.post("/v1/corpora", json={"name": "lore"})
        documents = [{"id": word.lower(), "text": text} for word, (text, _) in FACTS.items()]
        job = (await http.post("/v1/corpora/lore/documents", json={"documents": documents})).json()
        assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
        assert (await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 3}})).status_code == 201
        assert (await http.post("/v1/evalsets", json={"name": "lore-qa", "items": ITEMS})).status_code == 201
        await tune(http, SMALL_SPACE, trials=8)
        yield Console(browser, url, screenshots)


def _tunings(ui: Console) -> None:
    from selenium.webdriver.common.keys import Keys

    ui.open("#evals")
    ui.field("Admin API key").send_keys(KEY + Keys.ENTER)
    ui.css("#evals-h")
    ui.select("Domain", "lore")
    version = ui.css("table[aria-label='Configuration versions'] tr[data-config='1']")
    assert "answer_contains 1 1 0 quote_then_answer 1 hybrid" in version.text, version.text  # tuning, holdout, live
    ui.button("1", within=version).click()
    trials = ui.css("table[aria-label='Trials of the tuning']")
    assert len(ui.all("tbody tr", within=trials)) == 8
    assert "complete" in trials.text
    diff = ui.css("#tunings-h ~ dl.binding").text
    assert "prompt_template" in diff and "quote_then_answer" in diff and "retrieval.k" in diff, diff
    assert not ui.unlabelled(), ui.unlabelled()
    ui.shot("tunings")
    assert not ui.js_errors(), ui.js_errors()


async def test_the_evaluations_page_shows_a_domains_tunings_trials_and_winner(ui):
    await step(_tunings, ui)
