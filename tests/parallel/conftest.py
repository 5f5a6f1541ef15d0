"""Fixtures of the fan-out tests (the helpers are in fanout_testing.py)."""

import pytest
from fanout_testing import Tally


@pytest.fixture
def tally(tmp_path):
    return Tally(tmp_path / "executions.txt")
