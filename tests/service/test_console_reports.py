"""The console's Evaluations page shows a domain's reports (the table, with the intervals and the rows
that are not available) and starts one. A real headless Chromium against a gateway over the fake
engine scripted per route of test_reports_api."""

import pytest

from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.console_browser import KEY, Console, browser, screenshots, step  # noqa: F401  (fixtures)
from tests.service.test_reports_api import lore, report, scripted


@pytest.fixture
async def ui(make_settings, fake_engine, good_lora, browser, screenshots):  # noqa: F811
    fake_engine.script = scripted
    async with running_gateway(make_settings(engine_urls=[fake_engine.url], api_keys=[KEY])) as url, \
            client(url, KEY) as http:
        await lore(http)
        assert (await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
        await report(http, routes={"reader": {"name": "tone", "version": 1}})
        yield Console(browser, url, screenshots), http


def _reports(ui: Console) -> None:
    from selenium.webdriver.common.keys import Keys

    ui.open("#evals")
    ui.field("Admin API key").send_keys(KEY + Keys.ENTER)
    ui.css("#evals-h")
    ui.select("Domain", "lore")
    table = ui.css("table[aria-label='Report table']")
    closed = ui.css("tr[data-route='closed_book']", within=table).text
    assert "closed book" in closed and "no retrieval" in closed and "-0.500 [" in closed, closed
    assert "tone@1 (request)" in ui.css("tr[data-route='reader']", within=table).text
    assert "not available: the domain has no configuration version" in ui.css("tr[data-route='tuned']", within=table).text
    assert len(ui.all("table[aria-label='Reports'] tbody tr")) == 1

    form = ui.css("form[aria-labelledby='report-start-h']")
    ui.select("Report set", "lore-qa", within=form)
    ui.select("Reader adapter", "none", within=form)
    ui.button("Start report", within=form).click()
    ui.wait(lambda _: ui.all(".job[data-status='succeeded']", within=form), 60, "the report to finish")
    ui.wait(lambda _: len(ui.all("table[aria-label='Reports'] tbody tr")) == 2, 30, "the new report listed")
    newest = ui.css("table[aria-label='Reports'] tbody tr")
    ui.all("button", within=newest)[0].click()
    reader = ui.css("table[aria-label='Report table'] tr[data-route='reader']")
    ui.wait(lambda _: "left out by the request" in reader.text, 30, "the newest report shown")
    assert not ui.unlabelled(), ui.unlabelled()
    ui.shot("reports")
    assert not ui.js_errors(), ui.js_errors()


async def test_the_evaluations_page_shows_a_domains_reports_and_starts_one(ui):
    console, _ = ui
    await step(_reports, console)
