"""The ops console (GET /console) in a real headless Chromium, driven by selenium, against a real
gateway and the real CPU vLLM: sign in (a wrong key shows an error), create a corpus, upload files
and watch the job, search, bind a domain, swap (a refused gate, then a real swap) and roll back,
chat in the playground and open a citation; every section renders; the page weighs under 300 kB.

One browser and one gateway for the module. Each test stands alone, in any order: the gateway
fixture makes over REST what a test reads but does not make itself (the corpus `handbook`, the
domains `chat` and `swapper`, evaluation runs), and each test signs in or out as it needs. The
gateway serves from the test's event loop, so each browser step runs in a thread
(`asyncio.to_thread`) and never blocks it. Screenshots go to $GRAFT_TEST_SCREENSHOTS, else to a
temporary folder (printed). Waits are explicit and generous: CI is a loaded 2-core machine.
"""

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from migrations.runner import upgrade
from service.settings import Settings
from tests.harness import client, free_port, running_gateway
from tests.service.console_browser import (KEY, WAIT_S, Console, browser, screenshots, signed_in,  # noqa: F401
                                           signed_out, step)
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job

pytestmark = pytest.mark.engine

ENGINE_WAIT_S = 120  # anything that goes through the engine (swap, gate, chat) on a loaded machine
MAX_PAGE_BYTES = 300_000
DOCS = {"refunds.md": "Refunds are paid back within 14 days of the returned item's arrival.\n",
        "shipping.txt": "Orders ship from the Quenmoor warehouse every weekday at noon.\n",
        "empty.txt": ""}  # empty: a per-file error while the other two are indexed


@pytest.fixture(scope="module")
async def gateway(local_engine, base_model_dir, embedding_cache_dir, good_lora, tmp_path_factory):
    """A gateway with an admin key, two versions of the adapter `console-tone`, a one-item evaluation
    set, the corpus `handbook` (DOCS' two documents), the domains `chat` and `swapper` on it (both on
    console-tone@1, untouched by the tests that drive the page, which make their own) and two
    evaluation runs of `chat`."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("console"), base_model=str(base_model_dir),
                        port=free_port(), api_keys=[KEY], embedding_cache_dir=embedding_cache_dir,
                        max_lora_rank=16, drain_timeout_s=10)
    upgrade(settings.resolved_database_url)
    async with running_gateway(settings, local_engine=local_engine) as url, client(url, KEY) as http:
        for _ in range(2):
            uploaded = await http.post("/v1/adapters/console-tone/versions", files=adapter_files(good_lora))
            assert uploaded.status_code == 201, uploaded.text
        evalset = await http.post("/v1/evalsets", json={"name": "support-qa", "items": [
            {"id": "refunds", "question": "How long do refunds take?", "answers": ["14 days"],
             "document_ids": ["refunds.md"]}]})
        assert evalset.status_code == 201, evalset.text
        assert (await http.post("/v1/corpora", json={"name": "handbook"})).status_code == 201
        job = (await http.post("/v1/corpora/handbook/documents", json={"documents": [
            {"id": name, "text": text} for name, text in DOCS.items() if text]})).json()
        assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
        for domain in ("chat", "swapper"):
            bound = await http.put(f"/v1/domains/{domain}", json={
                "corpora": ["handbook"], "adapter": {"name": "console-tone", "version": 1}, "retrieval": {"k": 2}})
            assert bound.status_code == 201, bound.text
        for _ in range(2):  # two points on the Evaluations page's chart
            run = await http.post("/v1/evals", json={"domain": "chat", "evalset": "support-qa", "max_tokens": 8})
            assert run.status_code == 202, run.text
            assert (await wait_job(http, run.json()["job_id"], timeout=ENGINE_WAIT_S))["status"] == "succeeded"
        yield url


@pytest.fixture(scope="module")
def ui(browser, gateway, screenshots) -> Console:
    return Console(browser, gateway, screenshots)



# ---------------------------------------------------------------------------------------------

def _wrong_key(ui: Console) -> None:
    from selenium.webdriver.common.keys import Keys

    signed_out(ui)
    ui.field("Admin API key").send_keys("not-the-key" + Keys.ENTER)  # Enter submits
    error = ui.css(".signin [role=alert]")
    assert "refused" in error.text and "invalid" in error.text.lower(), error.text
    assert ui.all("form [type=submit]"), "the sign-in form is gone: the page went blank"
    assert ui.driver.execute_script("return sessionStorage.getItem('graft.key')") is None
    ui.shot("00-sign-in-wrong-key")


async def test_a_wrong_key_shows_an_error_not_a_blank_page(ui):
    await step(_wrong_key, ui)


def _sign_in(ui: Console) -> dict:
    from selenium.webdriver.common.keys import Keys

    signed_out(ui)
    key = ui.field("Admin API key")
    key.clear()
    key.send_keys(KEY + Keys.ENTER)
    ui.css("nav a[aria-current=page]")
    assert ui.driver.execute_script("return sessionStorage.getItem('graft.key')") == KEY
    assert not ui.driver.get_cookies(), "the console must not use cookies"
    # First render of a fresh load (key in this tab's session): Navigation Timing and the mark
    # app.js sets once the console is on screen.
    ui.open("#corpora")
    ui.css("#corpora-h")
    timing = ui.driver.execute_script("""
        const nav = performance.getEntriesByType('navigation')[0];
        const mark = performance.getEntriesByName('graft-console-rendered')[0];
        const paint = performance.getEntriesByName('first-contentful-paint')[0];
        return {rendered_ms: mark ? mark.startTime : null, dom_content_loaded_ms: nav.domContentLoadedEventEnd,
                load_ms: nav.loadEventEnd, first_contentful_paint_ms: paint ? paint.startTime : null};""")
    ui.shot("01-corpora-empty")
    # The keyboard reaches the skip link, every section and sign-out, then the page's first field.
    assert ui.tab_through(9) == ["Skip to content", "Corpora", "Domains", "Adapters", "Evaluations", "Playground",
                                 "Health", "Sign out", "New corpus name"]
    return timing


async def test_sign_in_and_first_render(ui):
    timing = await step(_sign_in, ui)
    print(f"\nconsole first render: {timing}")
    assert timing["rendered_ms"] is not None and timing["rendered_ms"] < 10_000, timing


def _corpus_upload_search(ui: Console, folder: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    signed_in(ui, "#corpora")
    ui.field("New corpus name").send_keys("lore" + Keys.ENTER)
    ui.css("tr[data-corpus=lore]")
    ui.css("#corpus-detail-h")
    assert ui.driver.execute_script("return location.hash") == "#corpora/lore"

    paths = []
    for name, text in DOCS.items():
        (folder / name).write_text(text)
        paths.append(str(folder / name))
    ui.field("Files to upload").send_keys("\n".join(paths))
    ui.button("Upload").click()
    job = ui.css(".job[data-status=succeeded], .job[data-status=failed]", timeout=ENGINE_WAIT_S)
    assert job.get_attribute("data-status") == "succeeded", job.text
    assert "Ingestion succeeded" in job.text and "2 of 3 documents" in job.text, job.text  # 3 files, 2 indexed
    errors = ui.css(".file-errors", within=job).text
    assert "empty.txt" in errors, errors
    ui.wait(lambda _: [c.text for c in ui.all("tr[data-corpus=lore] td")][1:3] == ["2", "2"],
            WAIT_S, "the corpus row did not re-read its counts")
    ui.css("tr[data-document='refunds.md']")
    ui.shot("02-corpus-upload")

    # Drag and drop: a file dropped on the zone is uploaded the same way.
    ui.driver.execute_script("""
        const zone = document.querySelector('[data-dropzone]');
        const data = new DataTransfer();
        data.items.add(new File(['Every kettle has a two-year warranty.'], 'warranty.txt', {type: 'text/plain'}));
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));""")
    ui.css("tr[data-document='warranty.txt']", timeout=ENGINE_WAIT_S)
    assert "1 of 1 documents" in ui.css(".job[data-status=succeeded]").text

    query = ui.field("Query")
    query.send_keys("how long do refunds take" + Keys.ENTER)
    hit = ui.css("ol.hits li.hit")
    assert "refunds.md" in hit.text and "14 days" in hit.text, hit.text
    assert "filename" in hit.text and "content_type" in hit.text, hit.text  # the hit's metadata
    ui.shot("03-corpus-search")

    # Deletes ask first, then the lists are re-read.
    ui.button("Delete", ui.css("tr[data-document='warranty.txt']")).click()
    ui.confirm("Delete document")
    ui.wait(lambda _: not ui.all("tr[data-document='warranty.txt']"), WAIT_S, "the document is still listed")
    ui.field("New corpus name").send_keys("scratch" + Keys.ENTER)
    ui.button("Delete", ui.css("tr[data-corpus=scratch]")).click()
    ui.confirm("Delete corpus")
    ui.wait(lambda _: not ui.all("tr[data-corpus=scratch]"), WAIT_S, "the corpus is still listed")


async def test_create_a_corpus_upload_files_watch_the_job_and_search(ui, tmp_path):
    await step(_corpus_upload_search, ui, tmp_path)


def _bind_domain(ui: Console) -> None:
    signed_in(ui, "#domains")
    ui.button("Bind a domain").click()
    form = ui.css("form[aria-label='Domain binding']")
    ui.field("Domain name", form).send_keys("support")
    ui.css("#bind-corpus-handbook", within=form).click()
    ui.select("Adapter version", "console-tone@1", form)
    ui.field("System prompt", form).send_keys("Answer from the passages.")
    k = ui.field("Passages (k)", form)
    k.clear()
    k.send_keys("2")
    ui.button("Save binding", form).click()
    ui.css("tr[data-domain=support] td.adapter[data-engine-model='console-tone@1']", timeout=ENGINE_WAIT_S)
    ui.css("[data-current-adapter='console-tone@1']")
    assert "create" in ui.text_of("ol.timeline")
    ui.shot("04-domain-bound")


async def test_bind_a_domain(ui):
    await step(_bind_domain, ui)


def _swap_and_rollback(ui: Console) -> None:
    signed_in(ui, "#domains/swapper")
    ui.css("#domain-detail-h")
    swap_form = ui.css("form[aria-labelledby=swap-h]")
    ui.select("Adapter", "console-tone", swap_form)
    ui.select("Version", "2", swap_form)

    # A gate that cannot pass (same retrieval, so no gain of 0.5): refused, its numbers shown, the
    # domain left on console-tone@1.
    ui.css("#swap-gate", within=swap_form).click()
    ui.select("Evaluation set", "support-qa", swap_form)
    ui.select("Metric", "hit_at_k", swap_form)
    gain = ui.field("Minimum gain", swap_form)
    gain.clear()
    gain.send_keys("0.5")
    ui.button("Swap", swap_form).click()
    ui.confirm("Swap")
    error = ui.css("form[aria-labelledby=swap-h] [role=alert]", timeout=ENGINE_WAIT_S)
    assert "gate refused" in error.text and "gate_failed" in error.text, error.text
    refused = ui.css("ol.timeline li.event-swap_refused .gate")
    assert "refused" in refused.text and "hit_at_k" in refused.text, refused.text
    assert ui.css("[data-current-adapter]").get_attribute("data-current-adapter") == "console-tone@1"
    ui.shot("05-domain-gate-refused")

    ui.css("#swap-gate", within=swap_form).click()  # no gate this time
    ui.button("Swap", swap_form).click()
    ui.confirm("Swap")
    ui.css("[data-current-adapter='console-tone@2']", timeout=ENGINE_WAIT_S)
    assert "Swapped to console-tone@2" in ui.css(".outcome .ok").text
    ui.css("tr[data-domain=swapper] td.adapter[data-engine-model='console-tone@2']")
    assert "swap" in ui.css("ol.timeline li.event-swap").text
    ui.shot("06-domain-swapped")

    ui.button("Roll back", swap_form).click()
    ui.confirm("Roll back")
    ui.css("[data-current-adapter='console-tone@1']", timeout=ENGINE_WAIT_S)
    assert "Rolled back to console-tone@1" in ui.css(".outcome .ok").text
    ui.css("ol.timeline li.event-rollback")
    ui.shot("07-domain-rolled-back")


async def test_swap_and_roll_back_an_adapter(ui, gateway):
    await step(_swap_and_rollback, ui)
    async with client(gateway, KEY) as http:  # what the page showed is what the gateway serves
        domain = (await http.get("/v1/domains/swapper")).json()
        actions = [h["action"] for h in (await http.get("/v1/domains/swapper/history")).json()["data"]]
    assert domain["engine_model"] == "console-tone@1"
    assert actions == ["create", "swap_refused", "swap", "rollback"], actions


def _playground(ui: Console) -> None:
    from selenium.webdriver.common.keys import Keys

    signed_in(ui, "#playground")
    ui.select("Domain", "chat")
    max_tokens = ui.field("Max tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")
    ui.field("Message").send_keys("How long do refunds take?" + Keys.ENTER)  # Enter sends
    answer = ui.css("li.turn.assistant[aria-busy=false]", timeout=ENGINE_WAIT_S)
    assert not ui.all("section [role=alert]"), ui.text_of("section [role=alert]")
    assert "console-tone@1" in ui.css(".who", within=answer).text
    assert ui.css(".content", within=answer).text.strip(), "no streamed answer"
    citation = ui.css("button.citation", within=answer)
    assert "refunds.md" in citation.text, citation.text
    citation.click()
    chunk = ui.css("aside .chunk")
    assert "14 days" in chunk.text and "refunds.md" in chunk.text, chunk.text
    assert citation.get_attribute("aria-pressed") == "true"
    ui.shot("08-playground")


async def test_chat_in_the_playground_and_open_a_citation(ui):
    await step(_playground, ui)


def _other_sections(ui: Console) -> None:
    signed_in(ui, "#adapters")
    versions = ui.css("[data-adapter=console-tone] table")
    rows = ui.all("tr[data-version]", within=versions)
    assert [r.get_attribute("data-version") for r in rows] == ["1", "2"]
    assert "q_proj" in rows[0].text and "v_proj" in rows[0].text and " 8 " in f" {rows[0].text} "
    ui.shot("09-adapters")

    ui.go("#evals")
    ui.css("figure.chart canvas")  # the evaluation runs, over time
    run = ui.css("table[aria-label='Evaluation runs'] tbody tr a")
    run.click()
    item = ui.css("table[aria-label='Items of the run'] tbody tr")
    assert "How long do refunds take?" in item.text, item.text
    ui.shot("10-evaluations")

    ui.go("#health")
    engine = ui.css("tr[data-engine]")
    ui.wait(lambda _: "console-tone@1" in ui.css("tr[data-engine] td.adapters").text, WAIT_S,
            "the engine does not list the bound adapter")
    assert "yes" in engine.text
    assert ui.css("[data-ready=yes]").text == "ready"
    ui.css("figure.chart canvas", timeout=WAIT_S)  # after a second /metrics scrape
    ui.shot("11-health")

    ui.go("#corpora/handbook")
    ui.css("#corpus-detail-h")
    ui.shot("12-corpora")
    assert not ui.js_errors(), ui.js_errors()


async def test_every_section_renders_its_data(ui):
    await step(_other_sections, ui)


def _every_control_has_a_label(ui: Console) -> None:
    signed_in(ui)
    for section, ready in (("#corpora/handbook", "#corpus-detail-h"), ("#domains/chat", "#domain-detail-h"),
                           ("#adapters", "#trainings-h"), ("#evals", "#run-start-h"), ("#playground", "#passage-h"),
                           ("#health", "#engines-h")):
        ui.go(section)
        ui.css(ready)
        assert not ui.unlabelled(), (section, ui.unlabelled())
    ui.go("#domains/chat")
    ui.button("Edit binding of chat").click()
    ui.css("form[aria-label='Domain binding']")
    assert not ui.unlabelled(), ui.unlabelled()


async def test_every_form_control_has_a_label(ui):
    await step(_every_control_has_a_label, ui)


def _loaded_files(ui: Console) -> list[str]:
    signed_in(ui, "#health")
    ui.css("#health-h")
    return ui.driver.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")


async def test_the_page_weighs_under_300_kb_and_loads_nothing_from_elsewhere(ui, gateway):
    loaded = await step(_loaded_files, ui)
    files = sorted({u.split("#")[0] for u in loaded if urlsplit(u).path.startswith("/console")})
    assert all(u.startswith(gateway) for u in loaded), f"the page loaded from elsewhere: {loaded}"
    assert any(u.endswith("/app.js") for u in files) and any("vendor/" in u for u in files), files
    sizes = {}
    async with httpx.AsyncClient() as http:  # the page's files need no key
        for url in files:
            response = await http.get(url)
            assert response.status_code == 200, url
            sizes[urlsplit(url).path] = len(response.content)
    total = sum(sizes.values())
    print("\nconsole page weight:\n" + "\n".join(f"{n:>8} {p}" for p, n in sizes.items()) + f"\n{total:>8} total")
    assert total < MAX_PAGE_BYTES, sizes


async def test_the_console_files_are_served_safely(gateway):
    async with httpx.AsyncClient(base_url=gateway) as http:
        page = await http.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = await http.get("/console/static/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        for bad in ("/console/static/../app.py", "/console/static/..%2Fapp.py", "/console/static/nothing.js"):
            missing = await http.get(bad)
            assert missing.status_code == 404 and missing.json()["error"]["code"] in (None, "not_found"), bad
        assert (await http.get("/v1/engines")).status_code == 401  # the data is behind the key
