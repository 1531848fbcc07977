"""The console in a real headless Chromium, driven by selenium: the browser and screenshot fixtures, the page
as a user sees it (`Console`: fields by their label, buttons by their text), signing in and out, and `step`,
which runs a blocking browser step off the event loop that serves the gateway."""

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import pytest

KEY = "console-test-admin-key"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 60  # everything that does not go through the engine


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("GRAFT_TEST_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:  # an error, not a skip: `make test` installs them
        raise RuntimeError(f"the console test needs {missing}: sudo apt-get install -y chromium chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The page as a user sees it: fields found by their label text, buttons by theirs."""

    def __init__(self, driver, url: str, screenshots: Path):
        self.driver, self.url, self.screenshots = driver, url, screenshots

    def open(self, hash_: str = "") -> None:
        self.driver.get(f"{self.url}/console{hash_}")

    def go(self, hash_: str) -> None:
        """Follow an in-page link, as a click on the navigation does (no reload)."""
        self.driver.execute_script("location.hash = arguments[0]", hash_)

    def wait(self, condition, timeout: float = WAIT_S, message: str = ""):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(condition, message)

    def css(self, selector: str, timeout: float = WAIT_S, within=None):
        """The first visible element matching `selector`, waited for."""
        from selenium.webdriver.common.by import By

        root = within or self.driver

        def visible(_):
            found = [e for e in root.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]
            return found[0] if found else False
        return self.wait(visible, timeout, f"no visible {selector!r}")

    def all(self, selector: str, within=None) -> list:
        from selenium.webdriver.common.by import By

        return (within or self.driver).find_elements(By.CSS_SELECTOR, selector)

    def field(self, label: str, within=None):
        """The control a <label> with this text names (so every field the test uses has a label)."""
        from selenium.webdriver.common.by import By

        root = within or self.driver

        def labelled(_):
            for element in root.find_elements(By.XPATH, f".//label[normalize-space()={_xpath_literal(label)}]"):
                target = element.get_attribute("for")
                if target and element.is_displayed():
                    return self.driver.find_element(By.ID, target)
            return False
        return self.wait(labelled, WAIT_S, f"no field labelled {label!r}")

    def button(self, text: str, within=None):
        from selenium.webdriver.common.by import By

        root = within or self.driver

        def enabled(_):
            for element in root.find_elements(By.XPATH, f".//button[normalize-space()={_xpath_literal(text)}]"):
                if element.is_displayed() and element.is_enabled():
                    return element
            return False
        return self.wait(enabled, WAIT_S, f"no enabled button {text!r}")

    def select(self, label: str, value: str, within=None) -> None:
        from selenium.webdriver.support.ui import Select

        control = self.field(label, within)
        self.wait(lambda _: any(o.get_attribute("value") == value for o in Select(control).options),
                  WAIT_S, f"{label!r} has no option {value!r}")
        Select(control).select_by_value(value)

    def confirm(self, ok_label: str) -> None:
        """Answer the page's confirmation dialog with its OK button."""
        dialog = self.css("dialog.confirm[open]")
        self.button(ok_label, within=dialog).click()
        self.wait(lambda _: not self.all("dialog.confirm[open]"), WAIT_S, "the dialog stayed open")

    def text_of(self, selector: str) -> str:
        return self.css(selector).text

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))

    def unlabelled(self) -> list[str]:
        """Form controls on the page with no <label> and no aria-label."""
        return self.driver.execute_script("""
            return [...document.querySelectorAll('input, select, textarea')]
              .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
              .map(e => e.outerHTML.slice(0, 120));""")

    def tab_through(self, count: int) -> list[str]:
        """The text or label of each element the Tab key reaches, from the top of the page."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        reached = []
        for _ in range(count + 2):  # the first Tab may only move focus from the browser into the page
            ActionChains(self.driver).send_keys(Keys.TAB).perform()
            reached.append(self.driver.execute_script(
                "const e = document.activeElement; if (e === document.body) return null;"
                "return (e.labels && e.labels[0] ? e.labels[0] : e).textContent.trim()"))
        return [r for r in reached if r is not None][:count]

    def js_errors(self) -> list[str]:
        """Severe browser log entries other than HTTP errors the page shows itself (a refused key)."""
        return [e["message"] for e in self.driver.get_log("browser")
                if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def _xpath_literal(text: str) -> str:
    return f'"{text}"' if '"' not in text else "concat('" + text.replace("'", "', \"'\", '") + "')"


def signed_in(ui: Console, hash_: str = "") -> None:
    """The console open at `hash_` with the test key in this tab's session, as after a sign-in."""
    ui.open()
    ui.driver.execute_script("sessionStorage.setItem('graft.key', arguments[0])", KEY)
    ui.open(hash_)
    ui.driver.refresh()  # a new load reads the key; a change of the hash alone does not
    ui.css("nav a[aria-current=page]")


def signed_out(ui: Console) -> None:
    ui.open()
    ui.driver.execute_script("sessionStorage.clear()")
    ui.driver.refresh()


def step(function, ui: Console, *args):
    """Run a blocking browser step off the event loop that serves the gateway; a failed step
    leaves a screenshot of the page as it was."""
    def run():
        try:
            return function(ui, *args)
        except BaseException:
            with contextlib.suppress(Exception):
                ui.shot(f"FAILED-{function.__name__.strip('_')}")
            raise
    return asyncio.to_thread(run)
