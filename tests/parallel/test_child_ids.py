"""Child identity: stable sha256 ids per parent step and position, explicit ids."""

import hashlib

import pytest
from fanwise.core import ApplicationBuilder, Result, State, action, expr
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import (
    ChildFailedError,
    MapStates,
    SubGraphTask,
    TaskBasedParallelAction,
    child_app_id,
)

from conftest import completed_app_ids, expected_child_id, run_fan


def recording_fan(record, fail_once=None, n=3):
    """A MapStates over `n` children that record (lap, position, own app id)."""

    @action(reads=["x", "lap"], writes=["y"])
    def child(state, __context):
        key = (state["lap"], state["x"])
        if fail_once is not None and key in fail_once:
            fail_once.discard(key)
            raise ValueError(f"child {key} fails once")
        record.append((*key, __context.app_id))
        return state.update(y=state["x"] + 100 * state["lap"])

    class Fan(MapStates):
        reads = ["lap"]
        writes = ["lap", "ys"]
        max_concurrency = 1

        def action(self):
            return child

        def states(self, state):
            for x in range(n):
                yield State({"x": x, "lap": state["lap"]})

        def reduce(self, state, states):
            ys = [*state.get("ys", []), [s["y"] for s in states]]
            return state.update(lap=state["lap"] + 1, ys=ys)

    return Fan()


def loop_app(parallel, persister=None, resume=False, rounds=2):
    builder = (
        ApplicationBuilder()
        .with_actions(fan=parallel, done=Result("ys"))
        .with_transitions(("fan", "fan", expr(f"lap < {rounds}")), ("fan", "done"))
        .with_identifiers(app_id="looping")
    )
    if persister is not None:
        builder.with_state_persister(persister)
    if resume:
        return builder.initialize_from(
            persister, default_state={"lap": 0}, default_entrypoint="fan"
        ).build()
    return builder.with_state(lap=0).with_entrypoint("fan").build()


def test_child_ids_are_sha256_of_parent_app_id_parent_sequence_id_and_position():
    record = []

    @action(reads=[], writes=["lap"])
    def start(state):
        return state.update(lap=0)

    app = (
        ApplicationBuilder()
        .with_actions(start, fan=recording_fan(record), done=Result("ys"))
        .with_transitions(("start", "fan"), ("fan", "done"))
        .with_state()
        .with_entrypoint("start")
        .with_identifiers(app_id="parent-app")
        .build()
    )
    app.run(halt_after=["done"])
    for _, position, app_id in record:
        key = f"parent-app\x1f1\x1f{position}".encode()
        assert app_id == hashlib.sha256(key).hexdigest()
        assert app_id == child_app_id("parent-app", 1, position)
    assert sorted(position for _, position, _ in record) == [0, 1, 2]


def test_two_loop_iterations_of_one_parallel_action_give_different_children(tmp_path):
    record = []
    persister = SQLitePersister(tmp_path / "state.db")
    _, result, _ = loop_app(recording_fan(record), persister).run(halt_after=["done"])
    assert result == {"ys": [[0, 1, 2], [100, 101, 102]]}
    first = {app_id for lap, _, app_id in record if lap == 0}
    second = {app_id for lap, _, app_id in record if lap == 1}
    assert first == {expected_child_id("looping", 0, p) for p in range(3)}
    assert second == {expected_child_id("looping", 1, p) for p in range(3)}
    assert completed_app_ids(tmp_path / "state.db") >= first | second


def test_a_rerun_after_a_crash_gives_the_same_children(tmp_path):
    record = []
    persister = SQLitePersister(tmp_path / "state.db")
    crashing = recording_fan(record, fail_once={(1, 1)})
    with pytest.raises(ChildFailedError):
        loop_app(crashing, persister).run(halt_after=["done"])
    before_crash = list(record)
    assert [(r, x) for r, x, _ in before_crash] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    record.clear()
    _, result, _ = loop_app(crashing, persister, resume=True).run(halt_after=["done"])
    assert result == {"ys": [[0, 1, 2], [100, 101, 102]]}
    assert [(r, x) for r, x, _ in record] == [(1, 1), (1, 2)]
    ids = {(r, x): app_id for r, x, app_id in before_crash + record}
    assert ids == {(r, x): expected_child_id("looping", r, x) for r in (0, 1) for x in range(3)}


def test_two_parallel_actions_of_one_app_give_different_children():
    record = []
    app = (
        ApplicationBuilder()
        .with_actions(first=recording_fan(record), second=recording_fan(record), done=Result("ys"))
        .with_transitions(("first", "second"), ("second", "done"))
        .with_state(lap=0)
        .with_entrypoint("first")
        .with_identifiers(app_id="two-fans")
        .build()
    )
    app.run(halt_after=["done"])
    first = {app_id for lap, _, app_id in record if lap == 0}
    second = {app_id for lap, _, app_id in record if lap == 1}
    assert len(first) == len(second) == 3
    assert first.isdisjoint(second)


def test_explicit_application_ids_are_used_and_must_be_unique(tmp_path):
    @action(reads=["x"], writes=["y"])
    def copy_x(state):
        return state.update(y=state["x"])

    class Named(TaskBasedParallelAction):
        reads = ["names"]
        writes = ["ys"]

        def tasks(self, state):
            for x, name in enumerate(state["names"]):
                yield SubGraphTask(action=copy_x, state=State({"x": x}), application_id=name)

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    persister = SQLitePersister(tmp_path / "state.db")
    final = run_fan(Named(), {"names": ["a", "b"]}, app_id="p", persister=persister)
    assert final["ys"] == [0, 1]
    assert completed_app_ids(tmp_path / "state.db") == {"p", "a", "b"}
    with pytest.raises(ValueError, match="'a' is used by tasks 0 and 2"):
        run_fan(Named(), {"names": ["a", "b", "a"]})
