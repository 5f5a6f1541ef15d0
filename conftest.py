"""Repository-wide test settings: services that CI must reach instead of skipping."""

from __future__ import annotations

import os

import pytest

POSTGRES_DSN_VAR = "FANWISE_TEST_POSTGRES_DSN"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Under CI (CI=true) a test skipped for want of PostgreSQL fails instead."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and POSTGRES_DSN_VAR in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = (
            f"CI must run the PostgreSQL tests, but they skipped: {report.longrepr}"
        )
