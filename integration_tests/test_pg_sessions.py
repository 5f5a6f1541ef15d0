"""PostgreSQL sessions of a 1,000-child fan-out whose children save steps from their
workers: at most 2 per worker process (a reachability check and one pooled connection),
on processes, a Dask cluster from the `dask` CLI and a Ray cluster from `ray start`.

Sessions are counted exactly: the children's store is a database of its own, created here,
and `pg_stat_database.sessions` counts every session ever established to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dask_cluster import DaskCluster, worker_env
from ray_cluster import HEAD_IP, RayCluster, parse_result

pytestmark = pytest.mark.integration

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
DRIVER = Path(__file__).resolve().parent / "pg_fanout_driver.py"
CHILDREN = 1000
WORKERS = 2
SESSIONS_PER_WORKER = 2
WAIT = 240.0


@pytest.fixture
def children_dsn():
    """A database of our own for the children's rows (dropped afterwards)."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import make_conninfo

    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    name = f"fanwise_sessions_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(POSTGRES_DSN, dbname=name)
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sessions_of(dsn: str) -> int:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        return connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s",
            [conninfo_to_dict(dsn)["dbname"]],
        ).fetchone()[0]


def run_driver(executor: str, dsn: str, env: dict[str, str], address: str | None = None) -> dict:
    args = [sys.executable, str(DRIVER), "--executor", executor, "--dsn", dsn,
            "--stats-dsn", POSTGRES_DSN, "--n", str(CHILDREN), "--workers", str(WORKERS)]
    if address:
        args += ["--address", address]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=WAIT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "cannot join current thread" not in done.stderr, done.stderr[-3000:]
    return parse_result(done.stdout)


def check_sessions(result: dict, dsn: str) -> None:
    workers = len(result["pids"])
    worker_sessions = sessions_of(dsn) - result["driver_sessions"]
    assert 1 <= workers <= 2 * WORKERS, result
    assert worker_sessions <= SESSIONS_PER_WORKER * workers, (
        f"{worker_sessions} sessions for {workers} worker processes ({CHILDREN} children)"
    )


def test_processes_open_at_most_two_sessions_per_worker(children_dsn):
    check_sessions(run_driver("processes", children_dsn, dict(os.environ)), children_dsn)


def test_dask_workers_open_at_most_two_sessions_each(children_dsn, tmp_path):
    cluster = DaskCluster(tmp_path / "dask")
    try:
        cluster.start(n_workers=WORKERS)
        result = run_driver("dask", children_dsn, worker_env(), cluster.address)
    finally:
        cluster.stop()
    check_sessions(result, children_dsn)


def test_ray_workers_open_at_most_two_sessions_each(children_dsn):
    cluster = RayCluster()
    try:
        cluster.start_head(HEAD_IP, num_cpus=WORKERS)
        result = run_driver("ray", children_dsn, cluster.env, cluster.address)
    finally:
        cluster.stop()
    check_sessions(result, children_dsn)
