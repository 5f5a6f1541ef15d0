"""Child failures: one error naming the child, pending children cancelled, per-child retries."""

import asyncio
import threading
from collections import Counter

import pytest
from fanout_testing import WAIT, completed_app_ids, expected_child_id, fan_app, run_fan
from fanwise.core import FanwiseError, GraphBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import (
    ChildFailedError,
    MapStates,
    RunnableGraph,
    SubGraphTask,
    TaskBasedParallelAction,
)


def failing_fan(child_fn, n, **settings):
    @action(reads=["x"], writes=["y"])
    def child(state):
        return state.update(y=child_fn(state["x"]))

    class Fan(MapStates):
        reads = []
        writes = ["ys"]

        def action(self):
            return child

        def states(self, state):
            for x in range(n):
                yield State({"x": x})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def test_a_child_failure_raises_one_error_naming_the_child_with_its_exception_as_cause():
    raised = []

    def child(x):
        if x == 3:
            raised.append(ValueError("boom at 3"))
            raise raised[0]
        return x

    with pytest.raises(ChildFailedError) as caught:
        run_fan(failing_fan(child, 10, max_concurrency=1), app_id="failing")
    error = caught.value
    child_id = expected_child_id("failing", 0, 3)
    assert (error.position, error.app_id, error.action_name) == (3, child_id, "fan")
    assert child_id in str(error) and "child 3" in str(error) and "boom at 3" in str(error)
    assert error.__cause__ is raised[0]
    assert isinstance(error, FanwiseError)


def test_a_failure_cancels_pending_children_and_keeps_finished_ones_persisted(tmp_path):
    finished, started = [], []
    lock = threading.Lock()
    one_running, zero_failing = threading.Event(), threading.Event()

    def child(x):
        with lock:
            started.append(x)
        if x == 0:
            if not one_running.wait(WAIT):
                raise TimeoutError("child 1 never started")
            zero_failing.set()
            raise ValueError("first child fails")
        if x == 1:
            one_running.set()
            if not zero_failing.wait(WAIT):
                raise TimeoutError("child 0 never failed")
        with lock:
            finished.append(x)
        return x

    persister = SQLitePersister(tmp_path / "state.db")
    with pytest.raises(ChildFailedError) as caught:
        run_fan(failing_fan(child, 100, max_concurrency=4), app_id="p", persister=persister)
    assert caught.value.position == 0
    assert len(started) < 100
    assert 1 in finished
    saved = completed_app_ids(tmp_path / "state.db")
    assert {expected_child_id("p", 0, x) for x in finished} <= saved
    assert expected_child_id("p", 0, 0) not in saved


@pytest.mark.parametrize("persisted", [False, True], ids=["no-persister", "sqlite"])
def test_per_child_retries_let_a_child_that_fails_twice_succeed(tmp_path, persisted):
    attempts = Counter()

    def child(x):
        attempts[x] += 1
        if x == 2 and attempts[x] <= 2:
            raise ValueError(f"attempt {attempts[x]} fails")
        return x * 10

    persister = SQLitePersister(tmp_path / "state.db") if persisted else None
    fan = failing_fan(child, 4, retries=2, retry_on=(ValueError,), max_concurrency=2)
    final = run_fan(fan, app_id="retrying", persister=persister)
    assert final["ys"] == [0, 10, 20, 30]
    assert attempts == {0: 1, 1: 1, 2: 3, 3: 1}


def test_a_child_that_keeps_failing_raises_after_its_retries():
    attempts = Counter()

    def child(x):
        attempts[x] += 1
        raise ValueError("always")

    with pytest.raises(ChildFailedError) as caught:
        run_fan(failing_fan(child, 1, retries=2, retry_on=(ValueError,)))
    assert isinstance(caught.value.__cause__, ValueError)
    assert attempts == {0: 3}


def test_an_exception_type_outside_retry_on_is_not_retried():
    attempts = Counter()

    def child(x):
        attempts[x] += 1
        raise TypeError("not retryable")

    with pytest.raises(ChildFailedError) as caught:
        run_fan(failing_fan(child, 1, retries=2, retry_on=(ValueError,)))
    assert isinstance(caught.value.__cause__, TypeError)
    assert attempts == {0: 1}


def test_a_retried_multi_step_child_with_a_persister_continues_at_the_failed_step(tmp_path):
    steps = Counter()

    @action(reads=["x"], writes=["x"])
    def prepare(state):
        steps["prepare"] += 1
        return state.update(x=state["x"] + 1)

    @action(reads=["x"], writes=["y"])
    def compute(state):
        steps["compute"] += 1
        if steps["compute"] == 1:
            raise ValueError("compute fails once")
        return state.update(y=state["x"] * 2)

    graph = GraphBuilder().with_actions(prepare, compute).with_transitions(
        ("prepare", "compute")
    ).build()

    class Retrying(TaskBasedParallelAction):
        reads = []
        writes = ["ys"]
        retries = 1
        retry_on = (ValueError,)

        def tasks(self, state):
            yield SubGraphTask(graph=RunnableGraph(graph, "prepare", ["compute"]),
                               state=State({"x": 1}))

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    persister = SQLitePersister(tmp_path / "state.db")
    assert run_fan(Retrying(), app_id="p", persister=persister)["ys"] == [4]
    assert steps == {"prepare": 1, "compute": 2}


def test_an_async_child_failure_raises_child_failed_error_and_cancels_pending():
    started = []

    @action(reads=["x"], writes=["y"])
    async def child(state):
        started.append(state["x"])
        await asyncio.sleep(0)
        if state["x"] == 1:
            raise KeyError("async boom")
        return state.update(y=state["x"])

    class AsyncFan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 2

        def action(self):
            return child

        async def states(self, state):
            for x in range(50):
                yield State({"x": x})

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    app = fan_app(AsyncFan(), app_id="async-failing")
    with pytest.raises(ChildFailedError) as caught:
        asyncio.run(app.arun(halt_after=["done"]))
    assert caught.value.position == 1
    assert caught.value.app_id == expected_child_id("async-failing", 0, 1)
    assert isinstance(caught.value.__cause__, KeyError)
    assert len(started) < 50


def test_a_failure_of_the_last_child_after_the_generator_ran_out_is_not_swallowed():
    def child(x):
        if x == 4:
            raise ValueError("the last child fails")
        return x

    with pytest.raises(ChildFailedError) as caught:
        run_fan(failing_fan(child, 5, max_concurrency=8))
    assert caught.value.position == 4
