"""Resume: finished children never re-run, half-finished ones continue, results match."""

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fanout_testing import Peak, expected_child_id, fan_app, run_fan
from fanwise.core import GraphBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import (
    ChildFailedError,
    MapStates,
    RunnableGraph,
    SubGraphTask,
    TaskBasedParallelAction,
)


def counted_fan(tally, fail_once=(), items=None, via_inputs=False, **settings):
    """Children append their item to `tally` and fail once for items in `fail_once`."""
    armed = set(fail_once)

    @action(reads=["item"], writes=["y"])
    def child(state, item=None):
        value = state["item"] if item is None else item
        tally.hit(value)
        if value in armed:
            armed.discard(value)
            raise ValueError(f"item {value} fails once")
        return state.update(y=f"{value}!")

    class Fan(MapStates):
        reads = ["n"]
        writes = ["ys"]

        def action(self):
            return child

        def states(self, state):
            for value in items if items is not None else range(state["n"]):
                if via_inputs:
                    yield State({"item": None}), {"item": value}
                else:
                    yield State({"item": value})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def resume_run(parallel, persister, state=None, app_id="resumed", **kwargs):
    app = fan_app(parallel, state, app_id=app_id, persister=persister, resume=True, **kwargs)
    return app.run(halt_after=["done"])[2]


@pytest.fixture
def persister(tmp_path):
    return SQLitePersister(tmp_path / "state.db")


def test_resume_after_a_child_raises_runs_every_finished_child_exactly_once(persister, tally):
    n = 30
    fan = counted_fan(tally, fail_once={17}, max_concurrency=3)
    with pytest.raises(ChildFailedError, match="item 17 fails once"):
        resume_run(fan, persister, {"n": n})
    first = tally.counts()
    # (usually fewer than n ran; all may have, if the thread running child 17 was descheduled
    # while the two other slots went through the rest)
    assert first["17"] == 1 and len(first) <= n
    final = resume_run(fan, persister, {"n": n})
    assert final["ys"] == [f"{x}!" for x in range(n)]
    counts = tally.counts()
    assert counts == {str(x): 2 if x == 17 else 1 for x in range(n)}


def test_the_resumed_result_equals_an_uninterrupted_run(tmp_path, tally):
    interrupted = SQLitePersister(tmp_path / "interrupted.db")
    fan = counted_fan(tally, fail_once={5, 9}, max_concurrency=1)
    for _ in range(2):
        with pytest.raises(ChildFailedError):
            resume_run(fan, interrupted, {"n": 12})
    resumed = resume_run(fan, interrupted, {"n": 12})
    straight = resume_run(counted_fan(tally), SQLitePersister(tmp_path / "straight.db"),
                          {"n": 12})
    assert resumed == straight


def test_resume_continues_a_half_finished_multi_step_child_at_its_next_action(persister, tally):
    armed = {"fail": True}

    def step(name, fails=False):
        @action(reads=["x", "trail"], writes=["trail"])
        def run(state):
            tally.hit(f"{name}:{state['x']}")
            if fails and state["x"] == 2 and armed.pop("fail", False):
                raise ValueError("third step of child 2 fails once")
            return state.update(trail=[*state["trail"], name])

        return run.with_name(name)

    graph = (
        GraphBuilder()
        .with_actions(step("one"), step("two"), step("three", fails=True))
        .with_transitions(("one", "two"), ("two", "three"))
        .build()
    )
    chain = RunnableGraph(graph, "one", ["three"])

    class Chains(TaskBasedParallelAction):
        reads = []
        writes = ["trails"]
        max_concurrency = 1

        def tasks(self, state):
            for x in range(4):
                yield SubGraphTask(graph=chain, state=State({"x": x, "trail": []}))

        def reduce(self, state, states):
            return state.update(trails=[s["trail"] for s in states])

    with pytest.raises(ChildFailedError):
        resume_run(Chains(), persister)
    final = resume_run(Chains(), persister)
    assert final["trails"] == [["one", "two", "three"]] * 4
    counts = tally.counts()
    expected = {f"{name}:{x}": 1 for name in ("one", "two", "three") for x in range(4)}
    expected["three:2"] = 2
    assert counts == expected


@pytest.mark.parametrize("via_inputs", [False, True], ids=["items-in-state", "items-in-inputs"])
@pytest.mark.parametrize(
    "new_items",
    [list("fedcba"), list("bcdef"), list("zabcde")],
    ids=["reordered", "filtered", "shifted"],
)
def test_resume_never_pairs_a_saved_child_with_another_input(tmp_path, tally, via_inputs,
                                                           new_items):
    persister = SQLitePersister(tmp_path / "state.db")
    first = counted_fan(tally, fail_once={"d"}, items=list("abcdef"), via_inputs=via_inputs,
                        max_concurrency=1)
    with pytest.raises(ChildFailedError):
        resume_run(first, persister)
    assert tally.counts() == {"a": 1, "b": 1, "c": 1, "d": 1}
    again = counted_fan(tally, items=new_items, via_inputs=via_inputs)
    resumed = resume_run(again, persister)
    fresh = resume_run(again, SQLitePersister(tmp_path / "fresh.db"))
    assert resumed["ys"] == fresh["ys"] == [f"{item}!" for item in new_items]


class CountingPersister(SQLitePersister):
    """Records every load / load_many call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loads = []
        self.batches = []

    def copy(self):
        return self

    def load(self, partition_key, app_id, sequence_id=None):
        self.loads.append(app_id)
        return super().load(partition_key, app_id, sequence_id)

    def load_many(self, partition_key, app_ids):
        self.batches.append(list(app_ids))
        return super().load_many(partition_key, app_ids)

    def load_children(self, partition_key, parent_app_id, parent_sequence_id, ids):
        self.batches.append(list(ids.values()))
        return super().load_children(partition_key, parent_app_id, parent_sequence_id, ids)

    def replay_children(self, partition_key, parent_app_id, parent_sequence_id, start, stop):
        self.batches.append([expected_child_id(parent_app_id, parent_sequence_id, p)
                             for p in range(start, stop)])
        return super().replay_children(partition_key, parent_app_id, parent_sequence_id,
                                       start, stop)


def test_resume_skips_finished_children_with_batched_loads_and_no_per_child_load(
    tmp_path, tally, caplog, recwarn
):
    db = tmp_path / "state.db"
    n = 300
    with pytest.raises(ChildFailedError):
        resume_run(counted_fan(tally, fail_once={250}, max_concurrency=4),
                   SQLitePersister(db), {"n": n})
    counting = CountingPersister(db)
    final = resume_run(counted_fan(tally, max_concurrency=4), counting, {"n": n})
    assert final["ys"] == [f"{x}!" for x in range(n)]
    assert set(counting.loads) == {"resumed"}
    requested = {app_id for batch in counting.batches for app_id in batch}
    assert requested >= {expected_child_id("resumed", 0, p) for p in range(n)}
    assert len(counting.batches) <= 4
    assert max(len(batch) for batch in counting.batches) > 100
    assert tally.counts()["0"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not recwarn.list


def test_resume_keeps_the_concurrency_window(persister, tally):
    peak = Peak()
    armed = {"fail": True}

    @action(reads=["item"], writes=["y"])
    def child(state):
        with peak:
            time.sleep(0.005)
        if state["item"] == 10 and armed.pop("fail", False):
            raise ValueError("fails once")
        return state.update(y=state["item"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 2

        def action(self):
            return child

        def states(self, state):
            return [State({"item": x}) for x in range(40)]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    with ThreadPoolExecutor(max_workers=8) as pool:
        with pytest.raises(ChildFailedError):
            resume_run(Fan(), persister, executor=pool)
        peak.most = 0
        final = resume_run(Fan(), persister, executor=pool)
    assert final["ys"] == list(range(40))
    assert 1 <= peak.most <= 2  # the 8-thread pool never runs more than the window


def test_resume_of_a_nested_fan_out_reruns_no_finished_grandchild(persister, tally):
    armed = {"fail": True}

    @action(reads=["group", "x"], writes=["y"])
    def leaf(state):
        tally.hit(f"{state['group']}:{state['x']}")
        if (state["group"], state["x"]) == (1, 3) and armed.pop("fail", False):
            raise ValueError("grandchild 1:3 fails once")
        return state.update(y=state["x"])

    class Inner(MapStates):
        reads = ["group"]
        writes = ["total"]
        max_concurrency = 1

        def action(self):
            return leaf

        def states(self, state):
            return [State({"group": state["group"], "x": x}) for x in range(5)]

        def reduce(self, state, states):
            return state.update(total=sum(s["y"] for s in states))

    class Outer(MapStates):
        reads = []
        writes = ["totals"]
        max_concurrency = 1

        def action(self):
            return Inner().with_name("inner")

        def states(self, state):
            return [State({"group": group}) for group in range(3)]

        def reduce(self, state, states):
            return state.update(totals=[s["total"] for s in states])

    with pytest.raises(ChildFailedError):
        resume_run(Outer(), persister)
    final = resume_run(Outer(), persister)
    assert final["totals"] == [10, 10, 10]
    expected = {f"{group}:{x}": 1 for group in range(3) for x in range(5)}
    expected["1:3"] = 2
    assert tally.counts() == expected


def test_a_finished_fan_out_is_not_run_again(persister, tally):
    assert run_fan(counted_fan(tally), {"n": 3}, app_id="once", persister=persister)["ys"] == [
        "0!", "1!", "2!"
    ]
    app = fan_app(counted_fan(tally), {"n": 3}, app_id="once", persister=persister, resume=True)
    assert app.get_next_action() is None
    assert app.state["ys"] == ["0!", "1!", "2!"]
    assert tally.counts() == {"0": 1, "1": 1, "2": 1}
