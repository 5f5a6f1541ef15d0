"""`fanwise run` and `fanwise resume` on real stores: exit codes, resume, JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
from fanwise.cli.main import main
from fanwise.core.persistence import SQLitePersister
from fanwise.core.persistence._rows import store_tables

from tests.cli._pipeline import PIPELINE

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)



@pytest.fixture
def work(tmp_path, monkeypatch):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNS_LOG", str(tmp_path / "runs.log"))
    return tmp_path


def runs(work):
    return [int(x) for x in (work / "runs.log").read_text().split()]


def base(work, *extra):
    return ["--db", str(work / "state.db"), "--tracking", str(work / "tracking"),
            "--project", "demo", *extra]


def test_run_reaches_the_end_and_exits_0_with_a_json_result_line(work, capsys):
    code = main(["run", "pipeline.py:build", "--app-id", "a1", *base(work),
                 "--input", "scale=2", "--json"])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert lines[-1]["type"] == "result" and lines[-1]["status"] == "completed"
    assert lines[-1]["done"] == 30 and lines[-1]["next_action"] is None
    saved = SQLitePersister(str(work / "state.db")).load(None, "a1")
    assert saved["state"]["report"] == 2 * sum(x * x for x in range(30))


def test_a_failed_child_exits_1_and_resume_recomputes_only_the_failures(work, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("FAIL", "1")
    assert main(["run", "pipeline:build", "--app-id", "a1", *base(work)]) == 1
    err = capsys.readouterr().err
    assert "ValueError" in err and "fanwise resume a1 --tracking" in err
    assert sorted(runs(work)) == list(range(30))

    monkeypatch.setenv("FAIL", "0")
    assert main(["resume", "a1", "--tracking", str(work / "tracking"), "--project", "demo"]) == 0
    err = capsys.readouterr().err
    assert "27 saved, 3 to compute" in err
    assert sorted(runs(work)) == sorted([*range(30), 7, 17, 27])  # no finished child twice


def test_resume_only_failed_reruns_the_failed_children_and_leaves_the_pending_unrun(
        work, capsys, monkeypatch):
    monkeypatch.setenv("FAIL", "1")  # child 7 fails; fail-fast: 8..29 never start
    assert main(["run", "pipeline:build_fail_fast", "--app-id", "a1", *base(work),
                 "--executor", "inline"]) == 1
    assert runs(work) == list(range(8))
    capsys.readouterr()

    monkeypatch.setenv("FAIL", "0")
    assert main(["resume", "a1", *base(work)[2:], "--only", "failed"]) == 4
    err = capsys.readouterr().err
    assert err.splitlines()[0].endswith("7 saved, 1 failed to re-run, 22 pending left")
    assert "1 failed children re-ran, 22 pending left" in err
    assert runs(work) == [*range(8), 7]  # the failed child only

    assert main(["resume", "a1", *base(work)[2:]]) == 0  # the pending ones, once each
    assert sorted(runs(work)) == sorted([*range(30), 7])
    saved = SQLitePersister(str(work / "state.db")).load(None, "a1")
    assert saved["state"]["report"] == sum(x * x for x in range(30))


def test_resume_only_failed_with_nothing_pending_completes_the_step_and_halts(
        work, capsys, monkeypatch):
    monkeypatch.setenv("FAIL", "1")  # on_failure="continue": every child runs, 3 fail
    assert main(["run", "pipeline:build", "--app-id", "a1", *base(work)]) == 1
    capsys.readouterr()

    monkeypatch.setenv("FAIL", "0")
    assert main(["resume", "a1", *base(work)[2:], "--only", "failed", "--json"]) == 4
    first, *_, result = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert first == {"type": "resume", "app_id": "a1", "saved": 27, "failed": 3,
                     "pending": 0, "step": 0}
    assert result["status"] == "stopped" and result["next_action"] == "report"
    assert sorted(runs(work)) == sorted([*range(30), 7, 17, 27])

    assert main(["resume", "a1", *base(work)[2:], "--only", "failed"]) == 0
    assert "no failed child of app a1 to re-run" in capsys.readouterr().err
    assert main(["resume", "a1", *base(work)[2:]]) == 0
    assert sorted(runs(work)) == sorted([*range(30), 7, 17, 27])  # no child ran again


def test_a_halt_before_the_end_exits_4_and_resume_goes_on(work, capsys):
    assert main(["run", "pipeline:build", "--app-id", "a2", *base(work),
                 "--halt-after", "fan"]) == 4
    assert "next action 'report'" in capsys.readouterr().err
    assert main(["resume", "a2", *base(work)[2:]]) == 0
    assert sorted(runs(work)) == list(range(30))


def test_a_func_that_takes_its_persister_wires_it_itself(work, capsys):
    assert main(["run", "pipeline:build_with", "--app-id", "a3", *base(work)]) == 0
    assert sorted(runs(work)) == list(range(5))
    assert main(["show", "a3", "--tracking", str(work / "tracking")]) == 0
    assert "5 done" in capsys.readouterr().out


HOLDER = """
import sys
from fanwise.core.persistence import SQLitePersister
lease = SQLitePersister(sys.argv[1]).acquire_lease(None, "a4")
print("HELD", flush=True)
sys.stdin.readline()
"""


def test_an_app_another_driver_holds_exits_3_naming_the_holder(work, capsys):
    db = str(work / "state.db")
    SQLitePersister(db).initialize()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "HELD\n"
        assert main(["run", "pipeline:build", "--app-id", "a4", *base(work)]) == 3
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_ctrl_c_exits_130_and_what_finished_stays_saved(work):
    env = {**os.environ, "SLOW": "0.05"}
    command = [sys.executable, "-m", "fanwise.cli", "run", "pipeline:build", "--app-id", "a5",
               *base(work), "--executor", "threads", "--max-concurrency", "2", "--json"]
    process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line).get("done", 0) >= 2:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 130, err
    assert "fanwise resume a5" in err
    saved = len(runs(work))
    assert 2 <= saved < 30


@pytest.mark.parametrize("argv, message", [
    (["run", "nosuchmodule:build", "--app-id", "x"], "cannot import 'nosuchmodule'"),
    (["run", "pipeline:nothing", "--app-id", "x"], "no function 'nothing'"),
    (["run", "pipeline", "--app-id", "x"], "is not MODULE:FUNC"),
    (["run", "pipeline:build", "--app-id", "x", "--input", "novalue"], "is not KEY=VALUE"),
    (["run", "pipeline:build", "--app-id", "x", "--executor", "warp"], "is not one of"),
    (["resume", "never-ran", "--tracking", "nowhere"], "name it"),
])
def test_usage_errors_exit_2_and_say_what_to_do(work, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_run_and_show_on_postgresql(work, capsys):
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    table = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    store = ["--db", POSTGRES_DSN, "--table", table]
    tracking = ["--tracking", str(work / "tracking"), "--project", "demo"]
    try:
        assert main(["run", "pipeline:build", "--app-id", "pg1", *store, *tracking]) == 0
        assert main(["show", "pg1", *store, *tracking, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert shown["store"]["saved"]["position"] == "report"
        assert shown["fanouts"][0]["counts"] == {"completed": 30}
        assert main(["export", "pg1", *store, *tracking, "--format", "jsonl"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert sorted(row["y"] for row in rows) == [x * x for x in range(30)]
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            for each in store_tables(table):
                connection.execute(f'DROP TABLE IF EXISTS "{each}"')
