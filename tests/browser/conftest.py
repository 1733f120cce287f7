"""Browser tests against a running WebUI's page (A1111 with Gradio 3, Forge with Gradio 4), skipped
unless `HIRES_UI_URL` is set.

Start a host *with* its web UI (no `--nowebui`) and this extension installed (../shared/HOSTS.md), then
e.g. `HIRES_UI_URL=http://127.0.0.1:7861 bash tests/run.sh tests/browser -v`. It drives Debian's
chromium with chromium-driver (`apt-get install chromium chromium-driver`) through Selenium, headless.
Set `HIRES_SCREENSHOTS=docs/images` to (re)write the screenshots the docs show; they are named after
the host (`a1111-...png`, `forge-...png`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

URL = os.environ.get("HIRES_UI_URL", "").rstrip("/")
SHOTS = os.environ.get("HIRES_SCREENSHOTS", "")
T = TypeVar("T")


class Page:
    """The WebUI page, with the few interactions the tests need written once for both Gradio versions."""

    def __init__(self, driver: Any) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.by = By
        self.host = "forge" if driver.execute_script("return !!document.querySelector('.model_selection')") \
            else "a1111"

    # --- finding and waiting ---

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def wait(self, condition: Callable[[], T], timeout: float = 20, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = condition()
                if last:
                    return last
            except Exception as error:  # the element may be re-rendered while we look
                last = error
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")

    def ours(self, tab: str, item: str) -> Any:
        """One of our controls by its elem_id (`Script.elem_id`: script_<tab>_hires_methods_<item>)."""
        return self.find(f"#script_{tab}_hires_methods_{item}")

    def shown(self, tab: str, item: str) -> bool:
        elements = self.all(f"#script_{tab}_hires_methods_{item}")
        return bool(elements) and elements[0].is_displayed()

    # --- actions ---

    def tab(self, name: str) -> None:
        button = next(b for b in self.all("#tabs .tab-nav button, #tabs [role=tab]")
                      if b.text.strip().lower() == name)
        button.click()
        self.wait(lambda: self.find(f"#tab_{name}").is_displayed(), what=f"tab {name}")

    def open_accordion(self, tab: str) -> None:
        accordion = self.ours(tab, "enabled")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", accordion)
        if not self.shown(tab, "method"):
            accordion.find_element(self.by.CSS_SELECTOR, ".label-wrap").click()
        self.wait(lambda: self.shown(tab, "method"), what="the accordion to open")

    def type_number(self, css: str, value: int | float) -> None:
        """Type into a slider's number box key by key, as fast as a person can't (each key fires an event)."""
        box = self.find(f"{css} input[type=number]")
        box.click()
        box.send_keys("\ue009a")  # ctrl+a
        box.send_keys(str(value))

    def type_text(self, element: Any, text: str) -> None:
        area = element.find_element(self.by.CSS_SELECTOR, "textarea, input")
        area.click()
        area.send_keys("\ue009a")
        area.send_keys(text if text else "\ue003")  # backspace clears
        area.send_keys("\ue004")  # tab: blur, so the value is committed

    def choose(self, element: Any, label: str) -> None:
        """Pick a dropdown option by its label (`element`: the dropdown, or a CSS selector for one that the
        page may re-render meanwhile)."""
        def dropdown() -> Any:
            return self.find(element) if isinstance(element, str) else element

        box = dropdown().find_element(self.by.CSS_SELECTOR, "input")
        self.open_menu(box)
        option = self.wait(lambda: next((li for li in dropdown().find_elements(self.by.CSS_SELECTOR, "ul.options li")
                                         if self.option_label(li) == label), None), what=f"option {label!r}")
        option.click()
        self.wait(lambda: self.value(dropdown()) == label, what=f"{label!r} to be chosen")

    def options(self, element: Any) -> list[str]:
        element = self.find(element) if isinstance(element, str) else element
        box = element.find_element(self.by.CSS_SELECTOR, "input")
        self.open_menu(box)
        items = self.wait(lambda: element.find_elements(self.by.CSS_SELECTOR, "ul.options li"), what="options")
        texts = [self.option_label(li) for li in items]
        box.send_keys("\ue00c")  # escape
        return texts

    def open_menu(self, box: Any) -> None:
        """Open a dropdown's options (a focused dropdown does not reopen on a click: blur it first)."""
        self.driver.execute_script("document.activeElement && document.activeElement.blur();"
                                   "arguments[0].scrollIntoView({block: 'center'})", box)
        box.click()

    @staticmethod
    def option_label(item: Any) -> str:
        """A dropdown option's label, without the check mark Gradio puts before the selected one."""
        return str(item.get_attribute("textContent")).replace("\u2713", "").strip()

    def value(self, element: Any) -> str:
        element = self.find(element) if isinstance(element, str) else element
        box = element.find_element(self.by.CSS_SELECTOR, "textarea, input:not([type=checkbox])")
        return str(box.get_attribute("value"))

    def label(self, element: Any) -> str:
        return str(element.find_element(self.by.CSS_SELECTOR, "label span, span[data-testid=block-info]").text)

    def summary(self, tab: str) -> str:
        return str(self.ours(tab, "summary").get_attribute("textContent")).strip()

    def screenshot(self, name: str, element: Any | None = None) -> None:
        if not SHOTS:
            return
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        path = str(Path(SHOTS) / f"{self.host}-{name}.png")
        if element is None:
            self.driver.save_screenshot(path)
        else:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
            element.screenshot(path)


@pytest.fixture(scope="session")
def page() -> Iterator[Page]:
    if not URL:
        pytest.skip("HIRES_UI_URL is not set: no WebUI page to test against")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = os.environ.get("HIRES_CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,2600", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(os.environ.get("HIRES_CHROMEDRIVER", "/usr/bin/chromedriver")),
                              options=options)
    try:
        driver.get(URL + "/")
        deadline = time.monotonic() + 120
        while not driver.execute_script("return !!document.getElementById('script_txt2img_hires_methods_summary')"):
            if time.monotonic() > deadline:
                raise AssertionError("the page did not load within 120 s")
            time.sleep(0.5)
        yield Page(driver)
    finally:
        driver.quit()
