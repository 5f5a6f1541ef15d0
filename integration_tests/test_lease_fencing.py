"""Exactly once across drivers on PostgreSQL (issue 11, items 1-3): two real driver processes
on one table and one app id. A driver frozen past its lease's expiry is replaced, and when it
wakes its writes are refused (`LeaseLostError`); a driver whose sessions are terminated keeps
its lease and finishes, while a second one is refused. No child runs twice."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import lease_driver
import pytest
from fanwise.core.persistence._rows import store_tables

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
DRIVER = Path(__file__).with_name("lease_driver.py")
TTL = 1.5


@pytest.fixture
def psycopg():
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    return psycopg


@pytest.fixture
def trial(psycopg, tmp_path):
    """A fresh table (dropped after) whose sessions carry its name as application_name, an
    executions log, and `start(tag, *args)` for driver processes (killed by pid at the end)."""
    table = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    dsn = f"{POSTGRES_DSN}{'&' if '?' in POSTGRES_DSN else '?'}application_name={table}"
    log = tmp_path / "executions.log"
    started = []

    def start(tag, *args):
        process = subprocess.Popen(
            [sys.executable, str(DRIVER), dsn, table, "app", tag, str(log), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(process)
        return process

    yield table, log, start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.communicate(timeout=30)
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for each in store_tables(table):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


def executions(log):
    """(tag, position) of every child execution, in the order they happened."""
    if not log.exists():
        return []
    return [(tag, int(i)) for tag, i in (line.split() for line in log.read_text().split("\n")
                                          if line)]


def finished_children(table):
    """How many children have both steps durable."""
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        return connection.execute(
            f'SELECT count(*) FROM "{table}_child" WHERE sequence_id = 1 AND position = %s',
            ["finish"],
        ).fetchone()[0]


def writers(table):
    """Which driver ran each child whose steps are durable: the `by` of its stored state."""
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        rows = connection.execute(
            f'SELECT state FROM "{table}_child" WHERE sequence_id = 1 AND position = %s',
            ["finish"],
        ).fetchall()
    return Counter(json.loads(state)["by"] for (state,) in rows)


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def finish(process, timeout=60):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_a_driver_frozen_past_its_lease_is_replaced_and_refused_when_it_wakes(trial):
    table, log, start = trial
    gate = log.with_name("gate")
    gate.touch()
    first = start("1", "--gate", str(gate), "--ttl", str(TTL))
    assert first.stdout.readline() == "HELD\n"
    wait_until(lambda: len(executions(log)) >= 8, what="driver 1's first children")

    gate.unlink()  # driver 1's next children wait before doing any work
    settled = []
    wait_until(lambda: settled.append(len(executions(log))) or settled[-6:] == [settled[-1]] * 6,
               what="driver 1's running children")
    wait_until(lambda: finished_children(table) == len(executions(log)),
               what="driver 1's finished children to be durable")
    os.kill(first.pid, signal.SIGSTOP)
    done_by_first = {i for _, i in executions(log)}
    time.sleep(TTL + 0.5)  # past the expiry of its lease

    second = start("2", "--ttl", str(TTL))
    code, out, err = finish(second)
    assert code == 0, err
    os.kill(first.pid, signal.SIGCONT)
    first_code, first_out, first_err = finish(first)

    ran = executions(log)
    assert out.splitlines() == ["HELD", f"DONE {lease_driver.expected_total(30)}"]
    assert first_code == lease_driver.LOST_EXIT, first_err
    assert "LOST app 'app' lost its lease" in first_out
    assert Counter(i for _, i in ran) == Counter(range(30))  # every child ran exactly once
    assert {i for tag, i in ran if tag == "2"} == set(range(30)) - done_by_first
    assert 8 <= len(done_by_first) < 30
    # each durable child was written by the driver that ran it, and once the second driver
    # took over, nothing of the first landed
    assert writers(table) == {"1": len(done_by_first), "2": 30 - len(done_by_first)}


def test_a_driver_whose_sessions_are_terminated_keeps_its_lease_and_finishes(trial, psycopg):
    table, log, start = trial
    stop, ended = threading.Event(), []

    def terminate_sessions():
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            while not stop.wait(0.1):
                ended.extend(connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s", [table]
                ).fetchall())

    first = start("1", "--children", "60")
    assert first.stdout.readline() == "HELD\n"
    killer = threading.Thread(target=terminate_sessions)
    killer.start()
    try:
        wait_until(lambda: len(executions(log)) >= 4, what="driver 1's first children")
        second = start("2", "--children", "60")
        second_code, second_out, _ = finish(second)
        code, out, err = finish(first)
    finally:
        stop.set()
        killer.join()

    assert second_code == lease_driver.LOCKED_EXIT
    assert f"LOCKED pid {first.pid} on host" in second_out and "expires at" in second_out
    assert code == 0, err
    assert out.splitlines() == [f"DONE {lease_driver.expected_total(60)}"]
    assert len(ended) >= 5  # sessions of driver 1 and its workers were terminated
    assert Counter(tag for tag, _ in executions(log)) == {"1": 60}
    assert Counter(i for _, i in executions(log)) == Counter(range(60))
