"""`fanwise lease show|break`: a lease's holder and expiry, breaking it, exit codes."""

import json
import os
import subprocess
import sys
import uuid

import pytest
from fanwise.cli.main import main
from fanwise.core.persistence import PostgreSQLPersister, SQLitePersister
from fanwise.core.persistence._rows import store_tables

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

HOLDER = """
import sys
from fanwise.core.persistence import SQLitePersister
lease = SQLitePersister(sys.argv[1]).acquire_lease(None, "app")
print("HELD", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path):
    """A live driver process holding the lease on 'app' in a SQLite file; ended by its pid."""
    db = str(tmp_path / "state.db")
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "HELD\n"
    yield db, process
    process.kill()
    process.communicate(timeout=30)


def test_show_names_the_holder_and_its_expiry_and_exits_3_while_it_is_held(holder, capsys):
    db, process = holder

    assert main(["lease", "show", "--db", db, "app"]) == 3
    out = capsys.readouterr().out
    assert f"held by pid {process.pid} on host" in out and "expires at" in out
    assert main(["lease", "show", "--db", db, "app", "--json"]) == 3
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "held" and shown["lease"]["pid"] == process.pid
    assert shown["lease"]["live"] is True and shown["lease"]["expires_in"] > 0


def test_break_refuses_a_live_lease_without_force_and_breaks_it_with_force(holder, capsys):
    db, process = holder

    assert main(["lease", "break", "--db", db, "app"]) == 3
    assert f"pid {process.pid}" in capsys.readouterr().err
    assert main(["lease", "break", "--db", db, "app", "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "broken"
    assert SQLitePersister(db).lease_info(None, "app") is None
    assert main(["lease", "show", "--db", db, "app"]) == 0
    assert "no lease" in capsys.readouterr().out


def test_the_lease_of_a_driver_that_died_here_is_shown_free_and_broken_without_force(
    holder, capsys
):
    db, process = holder
    process.kill()
    process.wait(timeout=30)

    assert main(["lease", "show", "--db", db, "app", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lease"]["live"] is False
    assert main(["lease", "break", "--db", db, "app"]) == 0


@pytest.mark.parametrize(
    "argv",
    [["lease"], ["lease", "show", "app"], ["lease", "show", "--db", "missing.db", "app"],
     ["lease", "show", "--db", "{db}", "app", "--table", "bad-name"],
     ["lease", "show", "--db", "{db}", "app", "--partition-key", ""]],
)
def test_usage_errors_exit_2(argv, tmp_path, capsys):
    db = tmp_path / "state.db"
    SQLitePersister(db).initialize()

    assert main([arg.format(db=db) for arg in argv]) == 2


def test_an_unreachable_server_exits_1_naming_it_without_the_password(capsys):
    pytest.importorskip("psycopg")
    code = main(["lease", "show", "--db", "postgresql://fan:s3cret@127.0.0.1:1/runs", "app"])

    err = capsys.readouterr().err
    assert code == 1 and "127.0.0.1:1/runs" in err and "s3cret" not in err


def test_show_and_break_on_postgresql(capsys):
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    table = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
    try:
        assert main(["lease", "show", "--db", POSTGRES_DSN, "app", "--table", table]) == 0
        assert "no lease" in capsys.readouterr().out
        lease = persister.acquire_lease("pk", "app")
        args = ["--db", POSTGRES_DSN, "app", "--table", table, "--partition-key", "pk"]

        assert main(["lease", "show", *args, "--json"]) == 3
        assert json.loads(capsys.readouterr().out)["lease"]["pid"] == os.getpid()
        assert main(["lease", "break", *args]) == 3
        assert main(["lease", "break", *args, "--force"]) == 0
        assert persister.lease_info("pk", "app") is None
        lease.release()
    finally:
        persister.close()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            for each in store_tables(table):
                connection.execute(f'DROP TABLE IF EXISTS "{each}"')
