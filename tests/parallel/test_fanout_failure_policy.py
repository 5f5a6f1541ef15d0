"""Failure policy: fail-fast or continue, failures in state, retries with backoff and a
predicate, per-child timeouts, and the outcomes `reduce` can ask for."""

import asyncio
import threading
import time

import pytest
from fanout_testing import Tally, expected_child_id, fan_app, run_fan
from fanwise.core import GraphError, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import (
    ChildFailedError,
    ChildrenFailedError,
    ChildTimeoutError,
    MapStates,
)


def fan_of(child_fn, n, reduce_outcomes=None, fields=("ys",), **settings):
    """A MapStates running `child_fn(x)` for x in range(n); reduce collects the ys."""

    @action(reads=["x"], writes=["y"])
    def child(state):
        return state.update(y=child_fn(state["x"]))

    class Fan(MapStates):
        reads = []
        writes = list(fields)

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(n)]

        if reduce_outcomes is None:
            def reduce(self, state, states):
                return state.update(ys=[s["y"] for s in states])
        else:
            def reduce(self, state, states, outcomes):
                ys = [s["y"] for s in states]
                reduce_outcomes.extend(outcomes)
                return state.update(ys=ys)

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def fails_at(*positions):
    def child(x):
        if x in positions:
            raise ValueError(f"bad {x}")
        return x

    return child


def test_continue_runs_every_child_then_names_every_failed_one():
    with pytest.raises(ChildrenFailedError) as caught:
        run_fan(fan_of(fails_at(3, 7, 11), 20, on_failure="continue", max_concurrency=4),
                app_id="p")
    group = caught.value
    assert [e.position for e in group.exceptions] == [3, 7, 11]
    assert all(isinstance(e, ChildFailedError) for e in group.exceptions)
    assert [str(e.__cause__) for e in group.exceptions] == ["bad 3", "bad 7", "bad 11"]
    assert group.exceptions[0].app_id == expected_child_id("p", 0, 3)
    assert "3 children of parallel action 'fan' failed (positions 3, 7, 11)" in str(group)


def test_continue_hands_reduce_the_successful_children_in_task_order():
    seen = []

    def child(x):
        if x in (2, 5):
            raise ValueError("no")
        return x

    class Keep(Exception):
        pass

    fan = fan_of(child, 8, on_failure="continue")
    original = type(fan).reduce

    def reduce(self, state, states):
        result = original(self, state, states)
        seen.extend(result["ys"])
        return result

    type(fan).reduce = reduce
    with pytest.raises(ChildrenFailedError):
        run_fan(fan)
    assert seen == [0, 1, 3, 4, 6, 7]


def test_failures_field_records_failed_children_in_state_instead_of_raising():
    fan = fan_of(fails_at(1), 4, fields=("ys", "failed"), on_failure="continue",
                 failures_field="failed")
    final = run_fan(fan, app_id="p")
    assert final["ys"] == [0, 2, 3]
    assert final["failed"] == [{
        "position": 1, "app_id": expected_child_id("p", 0, 1), "attempts": 1,
        "error": "ValueError: bad 1",
    }]


def test_a_failures_field_outside_writes_is_a_clear_error():
    with pytest.raises(GraphError, match="failures_field 'nope' must be one of its writes"):
        run_fan(fan_of(fails_at(), 2, failures_field="nope"))


def test_fail_fast_keeps_every_failure_of_the_same_moment_in_the_error():
    barrier = threading.Barrier(3, timeout=10)

    def child(x):
        if x < 3:
            barrier.wait()
            raise ValueError(f"bad {x}")
        return x

    with pytest.raises(ChildFailedError) as caught:
        run_fan(fan_of(child, 30, max_concurrency=3))
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    others = {0, 1, 2} - {caught.value.position}
    assert all(f"child {p} " in notes for p in others)


def test_rerunning_a_continue_fan_out_reruns_only_the_failed_children(tmp_path):
    tally = Tally(tmp_path / "runs.txt")
    armed = {4, 9}

    def child(x):
        tally.hit(x)
        if x in armed:
            raise ValueError("once")
        return x

    persister = SQLitePersister(tmp_path / "s.db")
    fan = fan_of(child, 12, on_failure="continue", max_concurrency=3)
    with pytest.raises(ChildrenFailedError):
        fan_app(fan, app_id="p", persister=persister, resume=True).run(halt_after=["done"])
    armed.clear()
    final = fan_app(fan, app_id="p", persister=persister, resume=True).run(
        halt_after=["done"])[2]
    assert final["ys"] == list(range(12))
    counts = tally.counts()
    assert {x: counts[str(x)] for x in range(12)} == {
        x: 2 if x in (4, 9) else 1 for x in range(12)
    }


def test_retries_back_off_exponentially_and_are_counted_in_outcomes():
    attempts_at = []

    def child(x):
        if x == 0:
            attempts_at.append(time.monotonic())
            if len(attempts_at) < 4:
                raise ConnectionError("flaky")
        return x

    outcomes = []
    fan = fan_of(child, 2, reduce_outcomes=outcomes, retries=3, retry_backoff=0.05,
                 retry_backoff_max=0.05, retry_on=(ConnectionError,))
    assert run_fan(fan)["ys"] == [0, 1]
    assert len(attempts_at) == 4
    assert [(o.position, o.status, o.attempts) for o in outcomes] == [
        (0, "done", 4), (1, "done", 1),
    ]
    assert outcomes[0].seconds >= 0 and outcomes[0].error is None


def test_retry_on_may_be_a_predicate():
    calls = []

    def child(x):
        calls.append(x)
        raise RuntimeError("status 429" if len(calls) == 1 else "status 400")

    fan = fan_of(child, 1, retries=5, retry_backoff=0.001,
                 retry_on=lambda exc: "429" in str(exc))
    with pytest.raises(ChildFailedError, match="after 2 attempts.*status 400"):
        run_fan(fan)
    assert len(calls) == 2


def test_a_sync_child_past_its_timeout_fails_and_the_fan_out_goes_on():
    release = threading.Event()

    def child(x):
        if x == 1:
            release.wait(10)
        return x

    outcomes = []
    fan = fan_of(child, 5, reduce_outcomes=outcomes, child_timeout=0.2, max_concurrency=2,
                 on_failure="continue")
    started = time.monotonic()
    with MultiThreadedExecutor(3) as executor:
        with pytest.raises(ChildrenFailedError) as caught:
            run_fan(fan, executor=executor)
        release.set()
    assert time.monotonic() - started < 5
    (error,) = caught.value.exceptions
    assert error.position == 1 and isinstance(error.__cause__, ChildTimeoutError)
    assert [(o.position, o.status) for o in outcomes] == [
        (0, "done"), (1, "failed"), (2, "done"), (3, "done"), (4, "done"),
    ]


def test_an_async_child_past_its_timeout_is_cancelled_and_retried():
    calls = []

    @action(reads=["x"], writes=["y"])
    async def child(state):
        calls.append(state["x"])
        if state["x"] == 0 and len(calls) < 3:
            await asyncio.sleep(10)
        return state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        child_timeout = 0.1
        retries = 2
        retry_backoff = 0.001

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(2)]

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    app = fan_app(Fan())
    final = asyncio.run(app.arun(halt_after=["done"]))[2]
    assert final["ys"] == [0, 1]
    assert calls.count(0) >= 2


def test_an_unknown_on_failure_is_a_clear_error():
    with pytest.raises(GraphError, match="on_failure must be 'raise' or 'continue'"):
        run_fan(fan_of(fails_at(), 1, on_failure="ignore"))


def test_resumed_children_are_reported_as_resumed_in_outcomes(tmp_path):
    persister = SQLitePersister(tmp_path / "s.db")
    with pytest.raises(ChildFailedError):
        fan_app(fan_of(fails_at(2), 3, max_concurrency=1), app_id="p", persister=persister,
                resume=True).run(halt_after=["done"])
    outcomes = []
    again = fan_of(fails_at(), 3, reduce_outcomes=outcomes, max_concurrency=1)
    fan_app(again, app_id="p", persister=persister, resume=True).run(halt_after=["done"])
    assert [(o.position, o.status) for o in outcomes] == [
        (0, "resumed"), (1, "resumed"), (2, "done"),
    ]
