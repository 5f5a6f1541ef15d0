"""Page-load times of the tracking UI on a project with one fan-out of N children.

Makes the project with a real fan-out on threads (`integration_tests/ui_project.py`: trivial
children, one in 97 failing), serves `fanwise.ui` with uvicorn on 127.0.0.1 in a process of
its own, then times (best and median of `--rounds`):

- server: each page's full response over HTTP (httpx), the server's whole work per page;
- browser: the system's headless Chromium (Playwright), from navigation to the page's
  content shown, and the "failed only" filter from click to its rows shown.

Nothing here asserts a time.

    .venv/bin/python benchmarks/ui_pages.py [--children N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration_tests"))
import ui_project  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        ui_project.big_fanout(storage, args.children)
        print(f"{args.children:,}-child fan-out tracked in "
              f"{time.perf_counter() - started:.1f} s\n")
        with _served(storage) as base:
            app = f"{base}/p/{ui_project.PROJECT}/a/{ui_project.BIG_APP}"
            children = f"{app}/fanout/0/children"
            pages = {
                "projects": f"{base}/",
                "apps": f"{base}/p/{ui_project.PROJECT}",
                "app + fan-out panel": app,
                "children, failed only": f"{children}?status=failed",
                "children, longest first": f"{children}?sort=duration",
                "children, longest first, page 100": f"{children}?sort=duration&cursor=4950",
                "children, page after row 9,000": f"{children}?cursor=9000",
                "state at step 0 (10,000-item lists)": f"{app}/steps/0",
            }
            print("| server (HTTP response) | best ms | median ms |\n|---|---:|---:|")
            with httpx.Client(timeout=30) as client:
                for name, url in pages.items():
                    _row(name, args.rounds, lambda url=url: client.get(url).raise_for_status())
            _browser_rows(base, app, args.rounds)
    return 0


def _browser_rows(base: str, app: str, rounds: int) -> None:
    binary = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        binary = None
    if binary is None:
        print("\n(no Playwright or system Chromium: browser times skipped)")
        return
    print("\n| browser (headless Chromium) | best ms | median ms |\n|---|---:|---:|")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=FLAGS)
        page = browser.new_page()

        def apps() -> None:
            page.goto(f"{base}/p/{ui_project.PROJECT}")
            page.wait_for_selector("#apps-table tbody tr")

        def panel() -> None:
            page.goto(app)
            page.wait_for_selector("#children-0 tbody tr")
            page.wait_for_selector("#state table")

        def failed_only() -> None:
            page.goto(app)
            page.wait_for_selector("#children-0 tbody tr")
            started = time.perf_counter()
            page.click("#children-0 >> text=failed only")
            page.wait_for_selector("#children-0 a.filter.on:has-text('failed only')")
            failed_only.seconds = time.perf_counter() - started

        _row("apps page", rounds, apps)
        _row("app page with its fan-out panel", rounds, panel)
        times = []
        for _ in range(rounds):
            failed_only()
            times.append(failed_only.seconds)
        _print("'failed only' click to rows shown", times)
        browser.close()


def _row(name: str, rounds: int, run: Callable[[], None]) -> None:
    run()  # warm: templates compiled, index pages cached
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    _print(name, times)


def _print(name: str, times: list[float]) -> None:
    print(f"| {name} | {min(times) * 1000:.1f} | {statistics.median(times) * 1000:.1f} |")


class _served:
    """uvicorn serving the UI of `storage` in a process of its own, stopped by its pid."""

    def __init__(self, storage: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        code = (f"from fanwise.ui import serve; serve({ui_project.PROJECT!r}, {storage!r}, "
                f"port={self.port})")
        self.process = subprocess.Popen([sys.executable, "-c", code])

    def __enter__(self) -> str:
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                return url
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the UI server did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc_info: object) -> None:
        os.kill(self.process.pid, signal.SIGINT)
        self.process.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
