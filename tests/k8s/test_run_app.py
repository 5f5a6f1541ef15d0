"""k8s/base/app/run_app.py, the job entrypoint: a runner killed mid-fan-out and started
again with the same app id (a RayJob retry, a restarted DaskJob runner) loads the children
that had finished instead of computing them again, and ends with the full result."""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fanwise.core.persistence import PostgreSQLPersister, SQLitePersister
from fanwise.parallel import child_app_id

APP = Path(__file__).resolve().parents[2] / "k8s" / "base" / "app"
POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
SIZE, SECONDS, WINDOW = 40, 0.1, 4
"""40 children of 0.1 s, 4 at a time: about a second of work, killed a quarter in."""
WAIT = 30.0


@functools.cache
def postgres_unavailable() -> str | None:
    try:
        import psycopg

        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except Exception as exc:
        return f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}"
    return None


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    return POSTGRES_DSN


def command(app_id: str, db: str, tracking: Path) -> list[str]:
    return [
        sys.executable,
        str(APP / "run_app.py"),
        "sweep:build",
        "--app-id",
        app_id,
        "--db",
        db,
        "--tracking",
        str(tracking),
        "--project",
        "sweep",
        "--max-concurrency",
        str(WINDOW),
        "--arg",
        f"size={SIZE}",
        "--arg",
        f"seconds={SECONDS}",
    ]


def saved_children(db: str, app_id: str) -> dict[int, str]:
    """x -> computed_by of every child saved as completed (the sweep is step 0)."""
    store = PostgreSQLPersister(db) if db.startswith("postgresql://") else SQLitePersister(db)
    try:
        found = {}
        for position in range(SIZE):
            row = store.load(None, child_app_id(app_id, 0, position))
            if row is not None and row["status"] == "completed":
                found[row["state"]["x"]] = row["state"]["computed_by"]
        return found
    finally:
        if isinstance(store, PostgreSQLPersister):
            store.close()


def final_state(db: str, app_id: str) -> dict:
    store = PostgreSQLPersister(db) if db.startswith("postgresql://") else SQLitePersister(db)
    try:
        return store.load(None, app_id)["state"]
    finally:
        if isinstance(store, PostgreSQLPersister):
            store.close()


def test_a_killed_runner_resumes_without_recomputing_saved_children(db, tmp_path):
    app_id = f"run-app-{uuid.uuid4().hex[:12]}"
    first = subprocess.Popen(command(app_id, db, tmp_path / "tracking"), cwd=tmp_path)
    try:
        deadline = time.monotonic() + WAIT
        while len(saved_children(db, app_id)) < SIZE // 4:
            assert first.poll() is None, "the runner ended before it could be killed"
            assert time.monotonic() < deadline, "no children saved in time"
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.wait()
    before = saved_children(db, app_id)
    assert SIZE // 4 <= len(before) < SIZE

    second = subprocess.run(
        command(app_id, db, tmp_path / "tracking"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )

    assert second.returncode == 0, second.stderr
    assert '"last_action": "summarize"' in second.stdout
    state = final_state(db, app_id)
    results = {row["x"]: row for row in state["results"]}
    assert sorted(results) == list(range(SIZE))
    for x, row in results.items():
        assert row["y"] == pytest.approx(math.sin(x) * math.exp(-x / 50))
    assert {x: results[x]["computed_by"] for x in before} == before
    assert all(by.endswith(f":{first.pid}") for by in before.values())
    first_run = {x for x, row in results.items() if row["computed_by"].endswith(f":{first.pid}")}
    assert first_run == set(before), "only children saved before the kill come from run 1"
    assert state["total"] == pytest.approx(sum(row["y"] for row in results.values()))
    assert (tmp_path / "tracking" / "sweep" / app_id).is_dir()


def test_a_bad_app_reference_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, str(APP / "run_app.py"), "sweep", "--app-id", "x", "--db",
         str(tmp_path / "db"), "--tracking", str(tmp_path)],
        capture_output=True,
        text=True,
    )

    assert done.returncode != 0
    assert "'sweep' is not MODULE:FUNC" in done.stderr
