"""One PostgreSQL pool per process and settings (`_pools.POOLS`): persisters unpickled in
a worker share it, it closes once nobody holds it and at exit, without noise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import cloudpickle
import pytest
from fanwise.core.persistence import PostgreSQLPersister
from fanwise.core.persistence._pools import POOLS
from fanwise.core.persistence._rows import store_tables
from fanwise.core.state import State

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def dsn_and_table() -> Iterator[tuple[str, str]]:
    """A dsn naming a fresh application_name (its sessions can be counted), and a table."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import make_conninfo

    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    tag = uuid.uuid4().hex[:12]
    yield make_conninfo(POSTGRES_DSN, application_name=f"fw_pools_{tag}"), f"fw_pools_{tag}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for each in store_tables(f"fw_pools_{tag}"):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


def open_sessions(dsn: str) -> int:
    """Sessions open now with the dsn's application_name."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        return connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [conninfo_to_dict(dsn)["application_name"]],
        ).fetchone()[0]


def sessions_become(dsn: str, n: int) -> int:
    """The open sessions, once they are `n` (a closed session leaves within a moment)."""
    deadline = time.monotonic() + 10
    while (found := open_sessions(dsn)) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_persisters_unpickled_in_one_process_share_one_pool_and_one_session(dsn_and_table):
    dsn, table = dsn_and_table
    shipped = cloudpickle.dumps(PostgreSQLPersister(dsn, table_name=table))
    pools_before = POOLS.open_count()
    persisters = [cloudpickle.loads(shipped) for _ in range(50)]
    try:
        for i, persister in enumerate(persisters):
            persister.save(None, f"app-{i}", 0, "start", State({"i": i}), "completed")

        assert POOLS.open_count() == pools_before + 1
        assert open_sessions(dsn) == 1
        assert persisters[-1].list_app_ids(None) == sorted(f"app-{i}" for i in range(50))
    finally:
        for persister in persisters:
            persister.close()
    assert sessions_become(dsn, 0) == 0


def test_closing_one_persister_leaves_the_pool_to_the_others(dsn_and_table):
    dsn, table = dsn_and_table
    first = PostgreSQLPersister(dsn, table_name=table)
    second = PostgreSQLPersister(dsn, table_name=table)
    first.save(None, "a", 0, "start", State(), "completed")
    second.save(None, "b", 0, "start", State(), "completed")

    first.close()

    assert second.load(None, "a")["sequence_id"] == 0
    second.close()
    assert sessions_become(dsn, 0) == 0


def test_a_table_is_set_up_once_per_pool(dsn_and_table):
    dsn, table = dsn_and_table
    persister = PostgreSQLPersister(dsn, table_name=table)
    key = (dsn, 10, 30.0)
    assert not POOLS.ready(key, table)

    persister.save(None, "a", 0, "start", State(), "completed")

    assert POOLS.ready(key, table)
    persister.close()
    assert not POOLS.ready(key, table)  # forgotten with the pool


AT_EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    import psycopg
    from fanwise.core.persistence import PostgreSQLPersister
    from fanwise.core.state import State

    dsn, table, stats_dsn, name = sys.argv[1:]
    PostgreSQLPersister(dsn, table_name=table).save(None, "a", 0, "start", State(), "completed")
    atexit._run_exitfuncs()  # what the interpreter runs at exit, while we can still look
    with psycopg.connect(stats_dsn, autocommit=True) as connection:
        print(connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
        ).fetchone()[0])
    """
)


def test_the_exit_hook_closes_the_pools_of_the_process(dsn_and_table, tmp_path):
    from psycopg.conninfo import conninfo_to_dict

    dsn, table = dsn_and_table
    script = tmp_path / "at_exit.py"
    script.write_text(AT_EXIT_SCRIPT)
    name = conninfo_to_dict(dsn)["application_name"]

    done = subprocess.run([sys.executable, str(script), dsn, table, POSTGRES_DSN, name],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"  # its pool closed, the process still alive


WORKERS_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    from fanwise.core.persistence import PostgreSQLPersister
    from fanwise.core.state import State

    def work(dsn, table, i):
        PostgreSQLPersister(dsn, table_name=table).save(
            None, f"w{i}", 0, "start", State(), "completed")

    if __name__ == "__main__":
        dsn, table, method = sys.argv[1:]
        work(dsn, table, 0)  # the script's own pool (a forked worker inherits it)
        with multiprocessing.get_context(method).Pool(2) as pool:
            pool.starmap(work, [(dsn, table, i) for i in range(1, 9)])
            pool.close()
            pool.join()
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_processes_with_pools_exit_without_noise(dsn_and_table, tmp_path, method):
    dsn, table = dsn_and_table
    script = tmp_path / "workers.py"
    script.write_text(WORKERS_SCRIPT)

    done = subprocess.run([sys.executable, str(script), dsn, table, method],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    reader = PostgreSQLPersister(dsn, table_name=table)
    assert reader.list_app_ids(None) == sorted(f"w{i}" for i in range(9))
    reader.close()
