"""A persisted one-step child runs without an application around it; what it saves must be
exactly what its application would save (the same rows, the same failed step)."""

import sqlite3
from contextlib import closing

import pytest
from fanout_testing import map_fan, run_fan
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.parallel import ChildrenFailedError


def child_rows(db):
    """Every child row but its time, in key order."""
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(
            "SELECT child, sequence_id, app_id, position, state, status, meta"
            " FROM fanwise_state_child ORDER BY fanout, child, sequence_id"
        ).fetchall()


def fails_at_3(x):
    if x == 3:
        raise ValueError("three")
    return x * 10


@pytest.mark.parametrize("child_fn", [lambda x: x * 10, fails_at_3], ids=["ok", "one fails"])
def test_the_direct_path_saves_the_rows_an_application_saves(tmp_path, child_fn):
    results = {}
    for path in ("direct", "application"):
        db = tmp_path / f"{path}.db"
        # a tracker makes each child build its application; the rows must not differ
        tracker = (LocalTrackingClient("p", storage_dir=tmp_path / "tracking")
                   if path == "application" else None)
        fan = map_fan(child_fn, 6, on_failure="continue")
        try:
            results[path] = run_fan(fan, app_id="same", persister=SQLitePersister(db),
                                    tracker=tracker)["ys"]
        except ChildrenFailedError as exc:
            results[path] = str(exc)
        results[path, "rows"] = child_rows(db)

    assert results["direct"] == results["application"]
    assert results["direct", "rows"] == results["application", "rows"]
    statuses = {row[0]: row[5] for row in results["direct", "rows"]}
    assert len(statuses) == 6
    if child_fn is fails_at_3:
        # the failed child's row is its state before the step, as "failed"
        failed = next(row for row in results["direct", "rows"] if row[0] == 3)
        assert failed[5] == "failed" and failed[4] == '{"x":3}'
