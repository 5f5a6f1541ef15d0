"""The tracking UI in a real browser: Playwright for Python driving the system's headless
Chromium (Debian's `chromium-headless-shell`, never a downloaded one) against uvicorn on
127.0.0.1, on a project with a 10,000-child fan-out made by a real fan-out on threads.

`make test` installs the browser package when it is missing and it runs as root (as CI
does); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi", reason="the tracking UI needs the `ui` extra")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Playwright for Python is in the `dev` extra")

import ui_project  # noqa: E402
from fanwise.core.tracking.index import RunIndex  # noqa: E402
from fanwise.ui import PAGE_SIZE  # noqa: E402

CHILDREN = 10_000
BROWSER_NAMES = ("chromium-headless-shell", "chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.integration


def _browser_binary() -> str | None:
    for name in BROWSER_NAMES:
        found = shutil.which(name) or shutil.which(name, path="/usr/lib/chromium")
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def storage(tmp_path_factory) -> str:
    """A tracking folder holding the 10,000-child fan-out (made once per session)."""
    folder = str(tmp_path_factory.mktemp("ui-browser"))
    ui_project.big_fanout(folder, CHILDREN)
    return folder


@pytest.fixture(scope="module")
def base_url(storage):
    """The UI served by uvicorn in a process of its own; stopped by its pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (f"from fanwise.ui import serve; serve({ui_project.PROJECT!r}, {storage!r}, "
            f"port={port})")
    server = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert server.poll() is None, f"the UI server exited with {server.returncode}"
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the UI server did not answer in 30 s"
            time.sleep(0.1)
    yield url
    os.kill(server.pid, signal.SIGINT)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)


@pytest.fixture(scope="module")
def browser():
    binary = _browser_binary()
    if binary is None:
        pytest.skip("no system Chromium (apt-get install chromium-headless-shell; "
                    "`make test` does it as root)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, headless=True,
                                              args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    opened = browser.new_page()
    yield opened
    opened.close()


def _counts(page, scope: str) -> dict[str, int]:
    cells = page.locator(f"{scope} .count[data-part]")
    return {cells.nth(i).get_attribute("data-part"): int(cells.nth(i).inner_text())
            for i in range(cells.count())}


def test_the_apps_page_lists_the_root_app_not_its_children(page, base_url):
    page.goto(f"{base_url}/")
    page.click(f"ul.projects a:text-is('{ui_project.PROJECT}')")
    page.wait_for_selector("#apps-table")
    links = page.locator("#apps-table tbody tr a")
    shown = [links.nth(i).inner_text() for i in range(links.count())]
    # the live fan-out's app is there too once its test has run
    assert ui_project.BIG_APP in shown and set(shown) <= {ui_project.BIG_APP, "live-sweep"}
    assert page.locator("#apps-counts").inner_text().startswith(f"{len(shown)} apps")


def test_the_apps_filter_form_searches_by_prefix_and_status(page, base_url):
    page.goto(f"{base_url}/p/{ui_project.PROJECT}")
    page.fill("input[name=prefix]", "big-")
    page.click("button[type=submit]")
    page.wait_for_url("**prefix=big-**")
    links = page.locator("#apps-table tbody tr a")
    assert [links.nth(i).inner_text() for i in range(links.count())] == [ui_project.BIG_APP]
    page.select_option("select[name=status]", "failed")
    page.click("button[type=submit]")
    page.wait_for_url("**status=failed**")
    assert page.locator("#apps-table tbody").inner_text().strip() == "no apps match"


def test_the_fanout_panel_loads_with_the_right_counts_and_one_page_of_rows(page, base_url):
    page.goto(f"{base_url}/p/{ui_project.PROJECT}")
    page.click(f"text={ui_project.BIG_APP}")
    page.wait_for_selector("#fanout-0")
    failed = ui_project.failing(CHILDREN)
    assert _counts(page, "#bar-0") == {"done": CHILDREN - failed, "resumed": 0, "running": 0,
                                       "pending": 0, "failed": failed}
    assert f"{CHILDREN} children:" in page.locator("#bar-0").inner_text()
    assert page.locator("#children-0 tbody tr").count() == PAGE_SIZE
    assert page.locator("svg.graph .node").count() == 1


def test_failed_only_shows_exactly_the_failed_children(page, base_url, storage):
    page.goto(f"{base_url}/p/{ui_project.PROJECT}/a/{ui_project.BIG_APP}")
    page.click("#children-0 >> text=failed only")
    page.wait_for_selector("#children-0 a.filter.on:has-text('failed only')")
    shown: list[str] = []
    while True:
        rows = page.locator("#children-0 tbody tr")
        assert rows.count() <= PAGE_SIZE
        assert {rows.nth(i).get_attribute("class") for i in range(rows.count())} == {"failed"}
        shown.extend(rows.nth(i).locator("a").get_attribute("title")
                     for i in range(rows.count()))
        following = page.locator("#children-0 a.next")
        if following.count() == 0:
            break
        before = rows.first.locator("a").get_attribute("title")
        following.click()
        page.wait_for_function(
            "before => document.querySelector('#children-0 tbody tr a').title !== before",
            arg=before)
    with RunIndex.open(ui_project.PROJECT, storage) as index:
        failed = [row.app_id for row in index.iter_children(ui_project.BIG_APP,
                                                            status="failed")]
    assert shown == failed and len(failed) == ui_project.failing(CHILDREN)


def test_a_child_row_links_to_the_childs_own_page(page, base_url):
    page.goto(f"{base_url}/p/{ui_project.PROJECT}/a/{ui_project.BIG_APP}")
    child = page.locator("#children-0 tbody tr a").first
    child_id = child.get_attribute("title")
    child.click()
    page.wait_for_selector("#app-header")
    assert page.locator("h1.app-id").inner_text() == child_id
    assert ui_project.BIG_APP in page.locator("#app-header").inner_text()


def test_a_running_fanouts_bar_moves_without_a_reload(page, base_url, storage):
    app = ui_project.gated_fanout(storage, "live-sweep", 30)
    ui_project.GATE.clear()
    runner = threading.Thread(target=app.run, kwargs={"halt_after": ["sweep"]})
    runner.start()
    try:
        with RunIndex.open(ui_project.PROJECT, storage) as index:
            deadline = time.monotonic() + 30
            while not index.fanout_steps("live-sweep"):
                assert time.monotonic() < deadline, "the gated fan-out did not start"
                time.sleep(0.05)
        page.goto(f"{base_url}/p/{ui_project.PROJECT}/a/live-sweep")
        page.wait_for_selector("#bar-0 .count[data-part='running']")
        page.evaluate("window.loadedOnce = true")
        assert _counts(page, "#bar-0")["done"] == 0
        assert "running for" in page.locator("#bar-0").inner_text()
        ui_project.GATE.set()
        page.wait_for_function(
            "document.querySelector(\"#bar-0 .count[data-part='done']\").textContent === '30'",
            timeout=30_000)
        assert page.evaluate("window.loadedOnce") is True  # the same page, not reloaded
        page.wait_for_function(
            "document.querySelector('#app-status').textContent === 'completed'",
            timeout=30_000)
    finally:
        ui_project.GATE.set()
        runner.join(60)
