"""Children in worker processes carry their tracking records in the rows they save, and a
resumed child takes them back without writing a step twice (the kills are in
integration_tests/test_tracking_after_driver_kill.py)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from contextlib import closing
from typing import Any

import pytest
from fanwise.core import ApplicationBuilder, GraphBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor
from fanwise.parallel import ChildFailedError, MapStates, RunnableGraph, child_app_id
from fanwise.parallel._carried_tracking import TRACKING_META, carried_records


@action(reads=["x"], writes=["a"])
def first(state: State) -> State:
    return state.update(a=state["x"] + 1)


@action(reads=["a"], writes=["b"])
def second(state: State) -> State:
    return state.update(b=state["a"] * 2)


@action(reads=["b", "fail_while"], writes=["c"])
def third(state: State) -> State:
    if os.path.exists(state["fail_while"]):
        raise RuntimeError("third fails while its flag file exists")
    return state.update(c=state["b"] + 1)


CHILD = RunnableGraph(
    GraphBuilder().with_actions(first=first, second=second, third=third)
    .with_transitions(("first", "second"), ("second", "third")).build(),
    entrypoint="first",
    halt_after=["third"],
)


class Sweep(MapStates):
    reads = ["fail_while"]
    writes = ["cs"]

    def action(self) -> Any:
        return CHILD

    def states(self, state: State) -> Any:
        yield State({"x": 1, "fail_while": state["fail_while"]})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(cs=[child["c"] for child in states])


def sweep(executor: Any, folder: Any) -> Any:
    persister = SQLitePersister(folder / "state.db")
    state = {"fail_while": str(folder / "fail")}
    return (
        ApplicationBuilder()
        .with_actions(fan=Sweep())
        .with_transitions(("fan", "fan"))
        .initialize_from(persister, default_state=state, default_entrypoint="fan")
        .with_state_persister(persister)
        .with_tracker(LocalTrackingClient("proj", storage_dir=folder / "tracking"))
        .with_identifiers(app_id="sweep")
        .with_executor(executor)
        .build()
    )


def saved_rows(db: Any, app_id: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT sequence_id, meta FROM fanwise_state WHERE app_id = ? UNION ALL"
            " SELECT sequence_id, meta FROM fanwise_state_child WHERE app_id = ?"
            " ORDER BY sequence_id",
            [app_id, app_id],
        ).fetchall()
    return [{"sequence_id": seq, "meta": json.loads(meta) if meta else None}
            for seq, meta in rows]


def tracked_ends(tracking: Any, app_id: str) -> Counter:
    log = tracking / "proj" / app_id / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return Counter(r["sequence_id"] for r in records if r["type"] == "end_entry")


def test_rows_saved_in_a_worker_carry_the_records_of_the_steps_up_to_them(tmp_path):
    (tmp_path / "fail").touch()
    child = child_app_id("sweep", 0, 0)
    with MultiProcessExecutor(max_concurrency=1) as executor, pytest.raises(ChildFailedError):
        with sweep(executor, tmp_path) as app:
            app.step()

    rows = saved_rows(tmp_path / "state.db", child)
    assert [row["sequence_id"] for row in rows] == [0, 1, 2]  # the failed step's row too
    for row in rows:
        [record] = carried_records(row)
        steps = {json.loads(line)["sequence_id"] for line in record["log"]}
        assert steps == set(range(row["sequence_id"] + 1))
        assert record["app_id"] == child and "app" in record


def test_a_resumed_child_writes_no_carried_step_the_tracking_has_already(tmp_path):
    db, tracking = tmp_path / "state.db", tmp_path / "tracking"
    (tmp_path / "fail").touch()
    child = child_app_id("sweep", 0, 0)
    with MultiProcessExecutor(max_concurrency=1) as executor, pytest.raises(ChildFailedError):
        with sweep(executor, tmp_path) as app:
            app.step()
    assert tracked_ends(tracking, child) == Counter({0: 1, 1: 1, 2: 1})  # shipped on failure
    (tmp_path / "fail").unlink()

    with MultiThreadedExecutor(max_concurrency=1) as executor:
        with sweep(executor, tmp_path) as app:
            app.step()

    assert app.state["cs"] == [5]
    # steps 0 and 1 once; step 2 failed, then succeeded
    assert tracked_ends(tracking, child) == Counter({0: 1, 1: 1, 2: 2})
    assert saved_rows(db, child)[-1]["meta"].get(TRACKING_META) is None  # saved in the driver
