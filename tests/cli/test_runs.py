"""`fanwise ls|show|children|failed|watch|export|ui` against a project a real fan-out wrote."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from fanwise.cli.main import main
from fanwise.core.persistence import SQLitePersister

from tests.cli._pipeline import PIPELINE


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project where app 'sweep' ran 30 children, 3 of them failed, with a SQLite store."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNS_LOG", str(tmp_path / "runs.log"))
    monkeypatch.setenv("FAIL", "1")
    reads = ["--tracking", str(tmp_path / "tracking")]
    assert main(["run", "pipeline:build", "--app-id", "sweep", "--db", str(tmp_path / "s.db"),
                 *reads, "--project", "demo"]) == 1
    return tmp_path, reads


def lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_ls_lists_root_apps_only_with_counts(project, capsys):
    work, reads = project
    assert main(["ls", *reads, "--json"]) == 0
    *apps, summary = lines(capsys)
    assert [app["app_id"] for app in apps] == ["sweep"]
    assert summary == {"type": "summary", "counts": {"failed": 1}, "total": 1,
                       "next_cursor": None}


def test_show_prints_status_next_action_and_the_fanout_counts(project, capsys):
    work, reads = project
    assert main(["show", "sweep", *reads, "--db", str(work / "s.db")]) == 1
    out = capsys.readouterr().out
    assert "status       failed" in out and "next action  fan" in out
    assert "30 children: 27 done, 0 resumed, 0 running, 0 pending, 3 failed" in out
    assert "last saved step 0 'fan' (failed)" in out


def test_children_pages_and_filters_by_status(project, capsys):
    work, reads = project
    assert main(["children", "sweep", *reads, "--limit", "10", "--json"]) == 1
    *first, summary = lines(capsys)
    assert len(first) == 10 and summary["counts"] == {"completed": 27, "failed": 3}
    assert main(["children", "sweep", *reads, "--limit", "10", "--json",
                 "--cursor", str(summary["next_cursor"])]) == 1
    *second, _ = lines(capsys)
    assert not {c["app_id"] for c in first} & {c["app_id"] for c in second}
    assert main(["children", "sweep", *reads, "--status", "failed", "--json"]) == 1
    *failed, _ = lines(capsys)
    assert sorted(c["error_line"] for c in failed) == [
        "x=17 is unlucky", "x=27 is unlucky", "x=7 is unlucky"]


def test_failed_groups_failures_by_exception_with_child_ids(project, capsys):
    work, reads = project
    assert main(["failed", "sweep", *reads, "--json"]) == 1
    groups = lines(capsys)
    assert {(g["error_type"], g["count"]) for g in groups} == {("ValueError", 1)}
    assert len({g["app_ids"][0] for g in groups}) == 3


def test_export_writes_one_row_per_child_from_the_store(project, capsys):
    work, reads = project
    assert main(["export", "sweep", *reads, "--db", str(work / "s.db"), "--format", "csv",
                 "--fields", "x,y"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 30
    assert sorted(int(r["y"]) for r in rows if r["status"] == "completed") == sorted(
        x * x for x in range(30) if x % 10 != 7)


def test_export_to_parquet(project):
    pq = pytest.importorskip("pyarrow.parquet")
    work, reads = project
    target = work / "children.parquet"
    assert main(["export", "sweep", *reads, "--format", "parquet", "-o", str(target)]) == 0
    table = pq.read_table(target)
    assert table.num_rows == 30 and {"app_id", "status", "x", "y"} <= set(table.column_names)


def test_watch_follows_a_running_fanout_until_it_ends(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    env = {**os.environ, "RUNS_LOG": str(tmp_path / "runs.log"), "SLOW": "0.05"}
    reads = ["--tracking", str(tmp_path / "tracking"), "--project", "demo"]
    run = subprocess.Popen(
        [sys.executable, "-m", "fanwise.cli", "run", "pipeline:build", "--app-id", "w",
         "--db", str(tmp_path / "s.db"), *reads, "--executor", "threads",
         "--max-concurrency", "2", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(run.stdout.readline())["type"] == "progress"  # children running
        watch = subprocess.run(
            [sys.executable, "-m", "fanwise.cli", "watch", "w", *reads, "--interval", "0.2",
             "--json"], capture_output=True, text=True, timeout=120)
    finally:
        run.communicate(timeout=120)
    progress = [json.loads(line) for line in watch.stdout.splitlines()]
    assert watch.returncode == 0, watch.stderr
    assert progress[0]["status"] == "running" and progress[0]["done"] < 30
    assert progress[-1]["status"] == "completed" and progress[-1]["done"] == 30


def test_watch_reads_the_total_a_fanout_recorded_and_shows_an_eta(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    # slow enough for the index (written every half second) to move while it is watched
    env = {**os.environ, "RUNS_LOG": str(tmp_path / "runs.log"), "SLOW": "0.15"}
    reads = ["--tracking", str(tmp_path / "tracking"), "--project", "demo"]
    run = subprocess.Popen(  # build_fail_fast's tasks are a list: the fan-out records 30
        [sys.executable, "-m", "fanwise.cli", "run", "pipeline:build_fail_fast", "--app-id",
         "w", *reads, "--executor", "threads", "--max-concurrency", "2", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(run.stdout.readline())["type"] == "progress"
        watch = subprocess.run(
            [sys.executable, "-m", "fanwise.cli", "watch", "w", *reads, "--interval", "0.1",
             "--json"], capture_output=True, text=True, timeout=120)
    finally:
        run.communicate(timeout=120)
    progress = [json.loads(line) for line in watch.stdout.splitlines()]
    assert watch.returncode == 0, watch.stderr
    running = [line for line in progress  # (no step yet: no child indexed yet)
               if line["status"] == "running" and line["step"] is not None]
    assert running and all(line["total"] == 30 for line in running)
    assert any(line["eta_seconds"] is not None for line in running)


def test_watch_of_an_app_whose_driver_is_gone_exits_4(project, capsys):
    work, reads = project
    db = str(work / "s.db")
    # a driver killed mid-step leaves its app 'running' in the index and no live lease
    from fanwise.core.tracking.index import RunIndex

    with RunIndex("demo", str(work / "tracking")) as index:
        index.apply([("b", None, "sweep", 5, "fan", "2026-01-01T00:00:00+00:00")])
    SQLitePersister(db).initialize()
    assert main(["watch", "sweep", *reads, "--db", db, "--interval", "0.1"]) == 4
    assert "no driver holds its lease" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["show", "nope", "--tracking", "{t}"], "no app 'nope'"),
    (["ls", "--tracking", "{t}", "--project", "other"], "no tracking project 'other'"),
    (["children", "sweep", "--tracking", "{t}", "--limit", "0"], "limit 0"),
    (["export", "sweep", "--tracking", "{t}", "--format", "parquet"], "--output FILE"),
    (["watch", "sweep", "--tracking", "{t}", "--interval", "0"], "--interval"),
])
def test_read_commands_say_what_to_do_on_bad_input(project, capsys, argv, message):
    work, _ = project
    assert main([arg.format(t=work / "tracking") for arg in argv]) == 2
    assert message in capsys.readouterr().err


def test_ls_without_project_names_the_projects_to_choose_from(tmp_path, capsys):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert main(["ls", "--tracking", str(tmp_path)]) == 2
    assert "projects in" in capsys.readouterr().err


def test_ui_serves_the_tracking_ui_on_loopback(project):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fanwise.ui")
    work, reads = project
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "fanwise.cli", "ui", *reads, "--project",
                               "demo", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert f"http://127.0.0.1:{port}/" in server.stdout.readline()
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/p/demo", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fanwise ui did not answer"
                time.sleep(0.2)
        assert answer.status_code == 200 and "sweep" in answer.text
    finally:
        server.kill()
        server.communicate(timeout=30)


def test_jobs_of_an_address_where_no_cluster_answers_exits_1(capsys):
    pytest.importorskip("ray")
    assert main(["jobs", "--address", "http://127.0.0.1:9"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err
