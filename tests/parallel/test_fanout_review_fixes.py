"""Edges found by review: a slow head child, cancellation not by the fan-out, nested async
fan-outs, async fail-fast, retries after a timeout, streams, and clear errors."""

import asyncio
import collections
import threading
import time

import pytest
from fanout_testing import WAIT, completed_app_ids, fan_app, map_fan, run_fan
from fanwise.core import (
    ApplicationBuilder,
    AsyncMismatchError,
    GraphBuilder,
    GraphError,
    State,
    action,
)
from fanwise.core.persistence import BaseStateSaver, SQLitePersister
from fanwise.executors import InlineExecutor, MultiProcessExecutor
from fanwise.parallel import (
    ChildFailedError,
    MapStates,
    RunnableGraph,
    SubGraphTask,
    TaskBasedParallelAction,
)
from fanwise.parallel.errors import ChildCancelledError


def async_fan(child, n, **settings):
    class Fan(MapStates):
        reads = []
        writes = ["ys"]

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(n)]

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def test_rows_are_committed_while_a_slow_first_child_still_runs(tmp_path):
    db = tmp_path / "s.db"
    n, done, committed_meanwhile = 3000, [0], []

    def child(x):
        if x == 0:
            deadline = time.monotonic() + WAIT
            while done[0] < n - 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
            committed_meanwhile.append(len(completed_app_ids(db)))
        else:
            done[0] += 1
        return x

    final = run_fan(map_fan(child, n, max_concurrency=4), app_id="p",
                    persister=SQLitePersister(db))
    assert final["ys"] == list(range(n))
    assert committed_meanwhile[0] > n // 2


@pytest.mark.parametrize("order", ["task", "completion"])
def test_a_child_cancelled_by_its_own_code_is_a_failure_not_a_silent_drop(order):
    @action(reads=["x"], writes=["y"])
    async def child(state):
        await asyncio.sleep(0.01)
        if state["x"] == 1:
            raise asyncio.CancelledError()
        return state.update(y=state["x"])

    app = fan_app(async_fan(child, 3, reduce_order=order))
    with pytest.raises(ChildFailedError) as caught:
        asyncio.run(asyncio.wait_for(app.arun(halt_after=["done"]), WAIT))
    assert caught.value.position == 1
    assert isinstance(caught.value.__cause__, ChildCancelledError)


def test_nested_async_fan_outs_with_a_small_window_do_not_deadlock():
    @action(reads=["x"], writes=["y"])
    async def leaf(state):
        await asyncio.sleep(0.005)
        return state.update(y=state["x"])

    class Inner(MapStates):
        reads = ["base"]
        writes = ["ys"]

        def action(self):
            return leaf

        def states(self, state):
            return [State({"x": state["base"] + i}) for i in range(3)]

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    class Outer(MapStates):
        reads = []
        writes = ["all"]
        max_concurrency = 2

        def action(self):
            return Inner().with_name("inner")

        def states(self):
            return [State({"base": 10 * b}) for b in range(4)]

        async def reduce(self, state, states):
            return state.update(all=[s["ys"] async for s in states])

    final = asyncio.run(asyncio.wait_for(fan_app(Outer()).arun(halt_after=["done"]), WAIT))[2]
    assert final["all"] == [[0, 1, 2], [10, 11, 12], [20, 21, 22], [30, 31, 32]]


def test_async_fail_fast_lets_running_siblings_finish_and_keeps_them(tmp_path):
    db = tmp_path / "s.db"

    @action(reads=["x"], writes=["y"])
    async def child(state):
        if state["x"] == 0:
            await asyncio.sleep(0.05)
            raise ValueError("boom")
        await asyncio.sleep(0.3)
        return state.update(y=state["x"])

    async def main():
        app = fan_app(async_fan(child, 8, max_concurrency=4), app_id="p",
                      persister=SQLitePersister(db))
        with pytest.raises(ChildFailedError, match="boom"):
            await app.arun(halt_after=["done"])
        app.close()

    asyncio.run(main())
    assert len(completed_app_ids(db)) == 3  # children 1-3 were running: they finished


def test_a_retry_after_an_async_timeout_does_not_rerun_the_last_completed_step(tmp_path):
    runs = collections.Counter()

    @action(reads=["x"], writes=["a"])
    async def one(state):
        runs["one"] += 1
        return state.update(a=1)

    @action(reads=["a"], writes=["b"])
    async def two(state):
        runs["two"] += 1
        return state.update(b=2)

    @action(reads=["b"], writes=["c"])
    async def three(state):
        runs["three"] += 1
        if runs["three"] == 1:
            await asyncio.sleep(5)
        return state.update(c=3)

    graph = (GraphBuilder().with_actions(one, two, three)
             .with_transitions(("one", "two"), ("two", "three")).build())

    class Fan(TaskBasedParallelAction):
        reads = []
        writes = ["ys"]
        retries = 1
        retry_backoff = 0.0
        child_timeout = 0.3

        async def tasks(self, state, context, inputs):
            yield SubGraphTask(graph=RunnableGraph(graph, "one", ["three"]),
                               state=State({"x": 0}))

        async def reduce(self, state, states):
            return state.update(ys=[s["c"] async for s in states])

    app = fan_app(Fan(), app_id="p", persister=SQLitePersister(tmp_path / "s.db"))
    assert asyncio.run(app.arun(halt_after=["done"]))[2]["ys"] == [3]
    assert dict(runs) == {"one": 1, "two": 1, "three": 2}


def test_astream_fanout_of_a_sync_parallel_action_is_a_clear_error():
    app = fan_app(map_fan(lambda x: x, 3))

    async def consume():
        return [e async for e in app.astream_fanout(halt_after=["done"])]

    with pytest.raises(AsyncMismatchError, match="use stream_fanout"):
        asyncio.run(consume())


def test_closing_a_stream_runs_no_further_step():
    steps = [0]

    @action(reads=[], writes=["n"])
    def tick(state):
        steps[0] += 1
        time.sleep(0.05)
        return state.update(n=state.get("n", 0) + 1)

    app = (ApplicationBuilder().with_actions(fan=map_fan(lambda x: x, 3), tick=tick)
           .with_transitions(("fan", "tick"), ("tick", "tick"))
           .with_state({}).with_entrypoint("fan").build())
    stream = app.stream_fanout()
    for event in stream:
        if event.kind == "done":
            break
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert steps[0] <= 2


def test_an_inline_executor_for_an_async_action_is_a_clear_error():
    @action(reads=["x"], writes=["y"])
    async def child(state):
        return state.update(y=state["x"])

    app = fan_app(async_fan(child, 2), executor=InlineExecutor())
    with pytest.raises(AsyncMismatchError, match="InlineExecutor runs the children of sync"):
        asyncio.run(app.arun(halt_after=["done"]))


def test_a_timeout_with_children_queued_beyond_the_workers_is_a_clear_error():
    with MultiProcessExecutor(max_concurrency=2) as executor:
        fan = map_fan(lambda x: x, 4, max_concurrency=8, child_timeout=1.0)
        with pytest.raises(GraphError, match="use max_concurrency <= 2"):
            run_fan(fan, executor=executor)


def test_retries_with_a_persister_that_cannot_load_start_the_child_afresh():
    class Rows(BaseStateSaver):
        def __init__(self):
            self.rows = []

        def save(self, partition_key, app_id, sequence_id, position, state, status, **kw):
            self.rows.append((sequence_id, status))

    tries = collections.Counter()

    def child(x):
        tries[x] += 1
        if tries[x] == 1:
            raise ConnectionError("flaky")
        return x

    saver = Rows()
    fan = map_fan(child, 2, max_concurrency=1, retries=2, retry_backoff=0.0)
    type(fan).persister = lambda self, context: saver
    assert run_fan(fan)["ys"] == [0, 1]
    assert dict(tries) == {0: 2, 1: 2}
