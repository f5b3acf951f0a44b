"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium.

A real server runs as a child process (``python -m supervisor serve``) with an
echo model and a model whose handler fails to load. The tests look at the page
as a person does: what text is on it, what a click does, whether it fits the
window. With ``DASHBOARD_SCREENSHOTS=docs/images`` they also save the
screenshots that docs/dashboard.md shows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, make_mar

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LISTENING = re.compile(r"listening: inference (\S+), management (\S+), metrics (\S+)")
SIZES = ((1280, 800), (390, 844))

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "the browser tests need Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.common.exceptions import (  # noqa: E402  (only once the browser is known to exist)
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow


@attrs.define
class Server:
    process: subprocess.Popen[bytes]
    inference: str
    management: str
    keys: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.keys["management"]["key"])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def describe(self, name: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.management}/models/{name}", headers=self.headers, timeout=10)
        answer.raise_for_status()
        return answer.json()[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("dashboard")
    for name, handler in (("echo", ECHO_HANDLER), ("broken", CRASH_AT_LOAD_HANDLER)):
        (root / name).mkdir()
        (root / name / f"{name}_handler.py").write_text(handler)
    make_mar(root / "store", "echo", ECHO_HANDLER, version="2.0")
    log = root / "server.log"
    args = [
        *(
            "--models",
            f"echo=echo_handler@{root / 'echo'}",
            f"broken=broken_handler@{root / 'broken'}",
        ),
        *(f"--{kind}-address=127.0.0.1:0" for kind in ("inference", "management", "metrics")),
        *("--ncs", "--max-restarts", "2", "--backoff-initial", "0.1", "--backoff-max", "0.2"),
        *("--model-store", str(root / "store"), "--enable-model-api"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "serve", *args],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        match = _wait_for(lambda: LISTENING.search(log.read_text()), 60, "the server to listen")
        keys = json.loads((root / "key_file.json").read_text())
        yield Server(process, match.group(1), match.group(2), keys)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        _viewport(driver, *SIZES[0])
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """The dashboard, signed in, with the browser's log emptied first."""
    browser.get(f"{server.management}/dashboard")
    _sign_in(browser, server.key)
    _console_errors(browser)  # start from an empty log
    yield browser
    assert _console_errors(browser) == []


def _wait_for(predicate: Callable[[], Any], within: float, what: str) -> Any:
    """Poll a condition in another process (a log file) under a hard deadline."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what} after {within} s")


def _until(driver: Any, condition: Callable[[Any], Any], within: float = 15.0) -> Any:
    """Wait until ``condition(driver)`` holds; elements replaced meanwhile are looked up again."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, within, poll_frequency=0.05, ignored_exceptions=ignored).until(
        condition
    )


def _viewport(driver: Any, width: int, height: int) -> None:
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def _sign_in(driver: Any, key: str) -> None:
    _until(driver, lambda d: d.find_element(By.ID, "signin").is_displayed() or _signed_in(d))
    if not _signed_in(driver):
        driver.find_element(By.ID, "key").send_keys(key)
        driver.find_element(By.ID, "signin-button").click()
    _until(driver, _signed_in)


def _signed_in(driver: Any) -> bool:
    return bool(driver.find_element(By.ID, "main").is_displayed())


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _card(driver: Any, model: str, version: str = "1.0") -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'article[data-model="{model}/{version}"]')


def _cell(driver: Any, model: str, worker: str, name: str) -> str:
    row = _card(driver, model).find_element(By.CSS_SELECTOR, f'tr[data-worker="{worker}"]')
    return str(row.find_element(By.CSS_SELECTOR, f"td.cell-{name}").text)


def _confirm(driver: Any) -> None:
    _until(driver, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None)
    driver.find_element(By.ID, "confirm-ok").click()


def test_sign_in_is_required_and_a_wrong_key_is_refused(browser, server):
    browser.get(f"{server.management}/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    _until(browser, lambda d: d.find_element(By.ID, "signin").is_displayed())
    assert not browser.find_element(By.ID, "main").is_displayed()
    assert "echo" not in browser.find_element(By.TAG_NAME, "body").text
    browser.find_element(By.ID, "key").send_keys("not-the-key")
    browser.find_element(By.ID, "signin-button").click()
    _until(browser, lambda d: "refused" in d.find_element(By.ID, "signin-error").text)
    assert not _signed_in(browser)
    _console_errors(browser)  # the refused stream's 401 is logged by the browser
    browser.find_element(By.ID, "key").send_keys(server.key)
    browser.find_element(By.ID, "signin-button").click()
    _until(browser, _signed_in)
    assert _console_errors(browser) == []
    assert server.key not in browser.current_url


def test_models_and_worker_pids_appear(page, server):
    pid = server.describe("echo")["workers"][0]["pid"]
    _until(page, lambda d: _cell(d, "echo", "w1", "pid") == str(pid))
    assert f"pid {server.process.pid}" in page.find_element(By.ID, "server").text
    assert _cell(page, "echo", "w1", "label").startswith("w1#")
    assert _card(page, "echo").find_element(By.CSS_SELECTOR, ".pill.default").is_displayed()
    assert "READY" in _card(page, "echo").text
    log = 'tr[data-worker="w1"] button[data-action="log"]'
    _card(page, "echo").find_element(By.CSS_SELECTOR, log).click()  # the log tail on demand
    _until(page, lambda d: d.find_element(By.ID, "logs").get_attribute("open") is not None)
    assert "echo handler ready" in page.find_element(By.ID, "logs-text").text
    assert f"(pid {pid})" in page.find_element(By.ID, "logs-title").text
    page.find_element(By.ID, "logs-close").click()


def test_a_killed_worker_shows_its_signal_and_incarnation_2_within_3_seconds(page, server):
    worker = server.describe("echo")["workers"][0]
    assert worker["incarnation"] == 1
    _until(page, lambda d: _cell(d, "echo", "w1", "pid") == str(worker["pid"]))
    os.kill(worker["pid"], signal.SIGKILL)
    killed = time.monotonic()
    _until(
        page,
        lambda d: (
            _cell(d, "echo", "w1", "label") == "w1#2"
            and "signal 9" in _cell(d, "echo", "w1", "exit")
        ),
        within=3.0,
    )
    assert time.monotonic() - killed < 3.0
    assert "#1:" in _cell(page, "echo", "w1", "exit")  # the incarnation that died
    timeline = page.find_element(By.ID, "timeline").text
    assert "worker.died" in timeline
    assert "killed by signal 9 (SIGKILL)" in timeline


def test_a_crash_looping_model_shows_failed_with_its_log_tail(page, server):
    _until(page, lambda d: "FAILED" in _card(d, "broken").text)
    failure = _card(page, "broken").find_element(By.CSS_SELECTOR, ".failure")
    assert failure.is_displayed()
    assert "more than 2 restarts" in failure.text
    assert "weights file is corrupt (on purpose)" in failure.text  # the worker's last lines
    assert "model.failed" in page.find_element(By.ID, "timeline").text


def test_scaling_from_the_page_adds_a_worker(page, server):
    count = _card(page, "echo").find_element(By.CSS_SELECTOR, "input.count")
    count.clear()
    count.send_keys("2")
    _card(page, "echo").find_element(By.CSS_SELECTOR, 'button[data-action="scale"]').click()
    assert "Scale echo/1.0 to 2 worker(s)?" in page.find_element(By.ID, "confirm-text").text
    _confirm(page)
    _until(page, lambda d: _cell(d, "echo", "w2", "state") == "READY", within=30)
    pids = {w["id"]: w["pid"] for w in server.describe("echo")["workers"]}
    assert _cell(page, "echo", "w2", "pid") == str(pids["w2"])
    assert "Processing worker updates" in page.find_element(By.ID, "notice").text


def test_restarting_a_worker_from_the_page_asks_first(page, server):
    _until(page, lambda d: _cell(d, "echo", "w1", "state") == "READY")
    label = _cell(page, "echo", "w1", "label")
    incarnation = int(label.split("#")[1])
    restart = 'tr[data-worker="w1"] button[data-action="restart"]'
    _card(page, "echo").find_element(By.CSS_SELECTOR, restart).click()
    page.find_element(By.ID, "confirm-cancel").click()  # cancelled: nothing happens
    assert page.find_element(By.ID, "confirm").get_attribute("open") is None
    _card(page, "echo").find_element(By.CSS_SELECTOR, restart).click()
    _confirm(page)
    after = f"w1#{incarnation + 1}"
    _until(page, lambda d: _cell(d, "echo", "w1", "label") == after, within=30)
    assert "restart requested" in page.find_element(By.ID, "timeline").text


def _traffic(server: Server, seconds: float) -> None:
    """Requests from four threads for ``seconds``, so that the charts have something to show."""
    headers = {"Authorization": f"Bearer {server.keys['inference']['key']}"}
    deadline = time.monotonic() + seconds

    def send() -> None:
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                client.post(f"{server.inference}/predictions/echo", content=b"hi", headers=headers)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_page_is_usable_at_desktop_and_phone_sizes(page, server, width, height):
    _viewport(page, width, height)
    try:
        _traffic(server, 5.0)
        _until(page, lambda d: _card(d, "echo").find_elements(By.CSS_SELECTOR, "polyline"))
        overflow = page.execute_script("return document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the window"
        for selector in ('button[data-action="scale"]', "input.count", ".model-head"):
            element = _card(page, "echo").find_element(By.CSS_SELECTOR, selector)
            page.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            rect = element.rect
            assert element.is_displayed(), selector
            assert rect["x"] >= 0, selector
            assert rect["x"] + rect["width"] <= width, selector
        if width > 600:  # the model under load, its workers and the timeline
            page.execute_script("arguments[0].scrollIntoView()", _card(page, "echo"))
        else:  # the top of the page: the server and the FAILED model
            page.execute_script("window.scrollTo(0, 0)")
        if directory := os.environ.get("DASHBOARD_SCREENSHOTS"):
            Path(directory).mkdir(parents=True, exist_ok=True)
            assert page.save_screenshot(str(Path(directory) / f"dashboard-{width}x{height}.png"))
    finally:
        _viewport(page, *SIZES[0])


def test_making_a_version_the_default_from_the_page(page, server):
    params = {"url": "echo.mar", "initial_workers": 1, "synchronous": "true"}
    url = f"{server.management}/models"
    registered = httpx.post(url, params=params, headers=server.headers, timeout=60)
    assert registered.status_code == 200, registered.text
    _until(page, lambda d: "READY" in _card(d, "echo", "2.0").text, within=30)
    default = 'button[data-action="default"]'
    assert not _card(page, "echo").find_element(By.CSS_SELECTOR, default).is_displayed()
    _card(page, "echo", "2.0").find_element(By.CSS_SELECTOR, default).click()
    assert "Make version 2.0 the default of echo?" in page.find_element(By.ID, "confirm-text").text
    _confirm(page)
    _until(
        page,
        lambda d: d.find_element(
            By.CSS_SELECTOR, '[data-model="echo/2.0"] .default'
        ).is_displayed(),
    )
    assert not _card(page, "echo").find_element(By.CSS_SELECTOR, ".pill.default").is_displayed()
    assert server.describe("echo")["modelVersion"] == "2.0"
    assert "update.switched" in page.find_element(By.ID, "timeline").text
