"""Task order without head-of-line blocking: a slow child does not stop the others, memory
stays bounded, and reduce sees stored states the same whether a child ran or resumed."""

import threading
import time

import pytest
from fanout_testing import WAIT, fan_app, run_fan
from fanwise.core import State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import MapStates
from fanwise.parallel.cascade import AHEAD

IN_FLIGHT = 4 + 4 * AHEAD
"""Children in flight with `max_concurrency = 4`: running, and queued ahead in the pool
(those may still finish after the slow child once it is released)."""


def straggler_fan(n, slow, release, done, **settings):
    """Child `slow` waits for `release`; every child appends its x to `done` when it ends."""

    @action(reads=["x"], writes=["y"])
    def child(state):
        if state["x"] == slow:
            if not release.wait(WAIT):
                raise TimeoutError("the slow child was never released")
        done.append(state["x"])
        return state.update(y={0: state["x"], "pair": (state["x"], 1)})

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4

        def action(self):
            return child

        def states(self):
            for x in range(n):
                if x == n - 1:  # every other child finished while the slow one waited
                    release.set()
                yield State({"x": x})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def test_a_slow_child_does_not_stop_later_children_with_a_persister(tmp_path):
    release, done = threading.Event(), []
    n = 3000
    fan = straggler_fan(n, 0, release, done)
    final = run_fan(fan, persister=SQLitePersister(tmp_path / "s.db"))
    assert done[-1] == 0 or done.index(0) >= n - IN_FLIGHT - 2
    assert [y["0"] for y in final["ys"]] == list(range(n))


def test_a_slow_child_does_not_stop_later_children_without_a_persister():
    release, done = threading.Event(), []
    n = 2000
    final = run_fan(straggler_fan(n, 0, release, done))
    assert done.index(0) >= n - IN_FLIGHT - 2
    assert [y[0] for y in final["ys"]] == list(range(n))


def test_without_a_persister_pulling_stops_once_held_states_fill_their_budget():
    release, done = threading.Event(), []
    fan = straggler_fan(400, 0, release, done, held_bytes_budget=50_000)
    finished_when_released = []

    def unblock():
        finished_when_released.append(len(done))
        release.set()

    timer = threading.Timer(1.0, unblock)
    timer.start()
    try:
        final = run_fan(fan)
    finally:
        timer.cancel()
    assert [y[0] for y in final["ys"]] == list(range(400))
    assert 20 < finished_when_released[0] < 120  # ~50 states fit the budget, plus the window


def test_reduce_sees_the_stored_form_of_a_child_whether_it_ran_or_resumed(tmp_path):
    uninterrupted = run_fan(straggler_fan(300, 5, threading.Event(), []), app_id="a",
                            persister=SQLitePersister(tmp_path / "a.db"))
    assert uninterrupted["ys"][0] == {"0": 0, "pair": [0, 1]}  # JSON's form: str keys, lists

    persister = SQLitePersister(tmp_path / "b.db")
    armed = {250}

    @action(reads=["x"], writes=["y"])
    def child(state):
        if state["x"] in armed:
            armed.clear()
            raise ValueError("once")
        return state.update(y={0: state["x"], "pair": (state["x"], 1)})

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(300)]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    with pytest.raises(Exception, match="once"):
        fan_app(Fan(), app_id="b", persister=persister, resume=True).run(halt_after=["done"])
    resumed = fan_app(Fan(), app_id="b", persister=persister, resume=True).run(
        halt_after=["done"])[2]
    assert resumed["ys"] == uninterrupted["ys"]


def test_fast_durable_children_are_committed_and_reduced_in_bounded_groups(tmp_path):
    """Group commit must not gather for ever while children keep finishing: the 1000th state
    reaches reduce (committed) while most children have not run yet."""
    ran, seen_at_1000 = [], []

    @action(reads=["x"], writes=["y"])
    def child(state):
        ran.append(state["x"])
        return state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4

        def action(self):
            return child

        def states(self):
            return (State({"x": x}) for x in range(5000))

        def reduce(self, state, states):
            ys = []
            for s in states:
                if len(ys) == 1000:
                    seen_at_1000.append(len(ran))
                ys.append(s["y"])
            return state.update(ys=ys)

    class SlowStore(SQLitePersister):
        """Commits take 20 ms, so group commit would keep waiting for more children."""

        def save_many(self, rows):
            time.sleep(0.02)
            return super().save_many(rows)

        def copy(self):
            return SlowStore(self._db_path)

    final = run_fan(Fan(), persister=SlowStore(tmp_path / "s.db"))
    assert final["ys"] == list(range(5000))
    assert seen_at_1000[0] < 2500
