"""Real headless browsers on a page, behind one small interface, so the control surface's checks run
unchanged in each: Debian's ``chromium`` through selenium and ``chromedriver`` (package
``chromium-driver``), and Debian's ``firefox-esr`` through Mozilla's own Marionette client
(``marionette_driver``, which talks to ``firefox --marionette`` directly: no geckodriver).

A :class:`Page` runs scripts in the page's own JavaScript context (``window.vaesynth`` is
visible), clicks, drags with a real pointer, and closes the browser. ``BROWSERS`` names them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FIREFOX = "/usr/bin/firefox-esr"
START_TIMEOUT_S = 60


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is missing: apt-get install {package}")


class Page(ABC):
    """One headless browser window; subclasses drive a real browser."""

    name = ""
    version = ""

    @abstractmethod
    def open(self, url: str) -> None:
        ...

    @abstractmethod
    def js(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body: ``return`` gives the value) in the page; ``arguments``
        holds ``args``."""
        ...

    @abstractmethod
    def click(self, css: str) -> None:
        ...

    @abstractmethod
    def drag(self, css: str, moves: list[tuple[int, int]], at: tuple[int, int] = (0, 0)) -> None:
        """Press the pointer at the element's centre + ``at`` (CSS px), move it by each of ``moves``
        in turn (each one step), release."""
        ...

    @property
    @abstractmethod
    def title(self) -> str:
        ...

    @property
    @abstractmethod
    def pid(self) -> int:
        """The process that started the browser: it and its descendants are the browser."""

    @abstractmethod
    def close(self) -> None:
        ...

    def wait_js(self, script: str, timeout: float = 10.0) -> Any:
        """Poll ``script`` in the page until it returns something truthy; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: page never satisfied: {script}")
            time.sleep(0.02)

    def text(self, css: str) -> list[str]:
        """The text of every element ``css`` selects."""
        return self.js("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", css)


class ChromiumPage(Page):
    """Debian's chromium, headless, through chromedriver; ``driver`` is selenium's."""

    name = "chromium"

    def __init__(self, width: int, height: int) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        _need(CHROMIUM, "chromium")
        _need(CHROMEDRIVER, "chromium-driver")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.version = str(self.driver.capabilities.get("browserVersion", "?"))

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def _element(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def click(self, css: str) -> None:
        self._element(css).click()

    def drag(self, css: str, moves: list[tuple[int, int]], at: tuple[int, int] = (0, 0)) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.driver, duration=0).move_to_element_with_offset(self._element(css), *at)
        chain.click_and_hold()
        for dx, dy in moves:
            chain.move_by_offset(dx, dy)
        chain.release().perform()

    @property
    def title(self) -> str:
        return self.driver.title

    @property
    def pid(self) -> int:
        return int(self.driver.service.process.pid)  # chromedriver, chromium's parent

    def close(self) -> None:
        self.driver.quit()


class FirefoxPage(Page):
    """Debian's firefox-esr, headless (``MOZ_HEADLESS=1``), on a fresh profile, through Marionette."""

    name = "firefox"

    def __init__(self, width: int, height: int) -> None:
        from marionette_driver.marionette import Marionette

        _need(FIREFOX, "firefox-esr")
        # Profiles and firefox's log go in a folder of ours, removed on close (by default the log lands
        # in the working directory, and mozprofile's own removal runs in __del__, which may come after
        # the interpreter has started to shut down).
        self._workspace = tempfile.mkdtemp(prefix="vaesynth-firefox-")
        try:
            self.client = Marionette(bin=FIREFOX, headless=True, port=0, startup_timeout=START_TIMEOUT_S,
                                     workspace=self._workspace, gecko_log=os.path.join(self._workspace, "gecko.log"))
        except BaseException:
            shutil.rmtree(self._workspace, ignore_errors=True)
            raise
        try:
            self.client.start_session()
            self.client.set_window_rect(width=width, height=height)
        except BaseException:
            self.close()
            raise
        self.version = str(self.client.session_capabilities.get("browserVersion", "?"))

    def open(self, url: str) -> None:
        self.client.navigate(url)

    def js(self, script: str, *args: Any) -> Any:
        # sandbox=None: the page's own global, not Marionette's privileged view of it
        return self.client.execute_script(script, script_args=args, sandbox=None)

    def _element(self, css: str) -> Any:
        return self.client.find_element("css selector", css)

    def click(self, css: str) -> None:
        self._element(css).click()

    def drag(self, css: str, moves: list[tuple[int, int]], at: tuple[int, int] = (0, 0)) -> None:
        mouse = self.client.actions.sequence("pointer", "mouse", {"pointerType": "mouse"})
        mouse.pointer_move(*at, origin=self._element(css)).pointer_down()
        for dx, dy in moves:
            mouse.pointer_move(dx, dy, origin="pointer")
        mouse.pointer_up().perform()
        self.client.actions.release()

    @property
    def title(self) -> str:
        return self.client.title

    @property
    def pid(self) -> int:
        return int(self.client.instance.runner.process_handler.pid)

    def close(self) -> None:
        try:
            self.client.cleanup()  # ends the session, stops firefox
        finally:
            shutil.rmtree(self._workspace, ignore_errors=True)


BROWSERS: dict[str, type[Page]] = {"chromium": ChromiumPage, "firefox": FirefoxPage}
