"""`fanwise ls|show|children|failed --db URL` with no tracking folder: runs read from the
state store itself (SQLite and PostgreSQL), after a real fan-out that tracked nothing."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from fanwise.cli.main import main
from fanwise.core.persistence._rows import store_tables

from tests.cli._pipeline import PIPELINE

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_store():
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    table = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    yield ["--db", POSTGRES_DSN, "--table", table]
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for each in store_tables(table):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, monkeypatch):
    """A store where app 'sweep' ran 30 children, 3 failed, and app 'done' ran 30, with no
    tracking at all; its `--db` options."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNS_LOG", str(tmp_path / "runs.log"))
    if request.param == "sqlite":
        options = iter([["--db", str(tmp_path / "s.db")]])
    else:
        options = postgres_store()
    db = next(options)
    monkeypatch.setenv("FAIL", "1")
    assert main(["run", "pipeline:build", "--app-id", "sweep", *db, "--no-tracking"]) == 1
    monkeypatch.setenv("FAIL", "0")
    assert main(["run", "pipeline:build", "--app-id", "done", *db, "--no-tracking"]) == 0
    assert not (tmp_path / "tracking").exists()
    yield db
    next(options, None)


def lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_ls_lists_the_root_apps_newest_first_with_counts(store, capsys):
    assert main(["ls", *store, "--json"]) == 0
    *apps, summary = lines(capsys)
    assert [(app["app_id"], app["status"], app["position"]) for app in apps] == [
        ("done", "completed", "report"), ("sweep", "failed", "fan")]
    assert summary["counts"] == {"completed": 1, "failed": 1}
    assert main(["ls", *store, "--json", "--status", "failed", "--limit", "1"]) == 0
    *apps, summary = lines(capsys)
    assert [app["app_id"] for app in apps] == ["sweep"] and summary["next_cursor"] is None


def test_show_counts_each_fanout_step_by_status(store, capsys):
    assert main(["show", "sweep", *store, "--json"]) == 1
    shown = lines(capsys)[0]
    assert shown["app"]["status"] == "failed" and shown["app"]["next_action"] == "fan"
    assert shown["fanouts"] == [{"sequence_id": 0, "counts": {"completed": 27, "failed": 3},
                                 "resumed": 0, "total": 30}]
    assert shown["store"]["saved"]["position"] == "fan"
    assert main(["show", "done", *store]) == 0
    assert "fan-out at step 0: 30 children: 30 done" in capsys.readouterr().out


def test_children_are_paged_in_position_order_and_filtered_by_status(store, capsys):
    assert main(["children", "sweep", *store, "--limit", "20", "--json"]) == 1
    *first, summary = lines(capsys)
    assert len(first) == 20 and summary["counts"] == {"completed": 27, "failed": 3}
    assert {child["parent_app_id"] for child in first} == {"sweep"}
    assert main(["children", "sweep", *store, "--limit", "20", "--json",
                 "--cursor", str(summary["next_cursor"])]) == 1
    *second, summary = lines(capsys)
    assert len(second) == 10 and summary["next_cursor"] is None
    assert not {c["app_id"] for c in first} & {c["app_id"] for c in second}
    assert main(["children", "sweep", *store, "--status", "failed", "--json"]) == 1
    *failed, _ = lines(capsys)
    assert len(failed) == 3 and {c["status"] for c in failed} == {"failed"}

    child = failed[0]["app_id"]  # a child is found by id too
    assert main(["show", child, *store, "--json"]) == 1
    assert lines(capsys)[0]["app"]["position"] == "square"


def test_failed_groups_the_failed_children_by_the_step_they_failed_at(store, capsys):
    assert main(["failed", "sweep", *store, "--json"]) == 1
    (group,) = lines(capsys)
    assert group["count"] == 3 and len(group["app_ids"]) == 3
    assert "failed at step 'square'" in group["error_line"]


def test_an_app_the_store_does_not_hold_is_an_error_naming_the_store(store, capsys):
    assert main(["show", "nope", *store]) == 2
    err = capsys.readouterr().err
    assert "no app 'nope' in store" in err and "password" not in err
