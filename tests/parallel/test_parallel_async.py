"""Async parallel actions: async generators, async reduce over an async stream, the bound."""

import asyncio

import pytest
from fanout_testing import WAIT, Peak, fan_app
from fanwise.core import (
    ApplicationBuilder,
    AsyncMismatchError,
    GraphBuilder,
    GraphError,
    State,
    action,
)
from fanwise.core.persistence import SQLitePersister
from fanwise.executors import AsyncExecutor
from fanwise.parallel import (
    MapActions,
    MapStates,
    RunnableGraph,
    SubGraphTask,
    TaskBasedParallelAction,
)


@action(reads=["x"], writes=["y"])
async def slow_square(state):
    await asyncio.sleep(0)
    return state.update(y=state["x"] ** 2)


@action(reads=["x"], writes=["y"])
def sync_negate(state):
    return state.update(y=-state["x"])


@action(reads=["x"], writes=["y"])
async def scale(state, factor):
    return state.update(y=state["x"] * factor)


async def arun_fan(parallel, state=None, inputs=None, **kwargs):
    app = fan_app(parallel, state, **kwargs)
    return (await app.arun(halt_after=["done"], inputs=inputs))[2]


class AsyncSquares(MapStates):
    reads = ["xs"]
    writes = ["ys"]

    def action(self):
        return slow_square

    async def states(self, state):
        for x in state["xs"]:
            await asyncio.sleep(0)
            yield State({"x": x})

    async def reduce(self, state, states):
        assert hasattr(states, "__anext__")
        return state.update(ys=[s["y"] async for s in states])


def test_async_map_states_with_async_generator_and_async_reduce():
    parallel = AsyncSquares()
    assert parallel.is_async()
    final = asyncio.run(arun_fan(parallel, {"xs": list(range(10))}))
    assert final["ys"] == [x * x for x in range(10)]


def test_async_reduce_over_sync_children_and_a_plain_states_list():
    class SyncChildren(MapStates):
        reads = ["xs"]
        writes = ["ys"]

        def action(self):
            return sync_negate

        def states(self, state):
            return [State({"x": x}) for x in state["xs"]]

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    assert asyncio.run(arun_fan(SyncChildren(), {"xs": [1, 2, 3]}))["ys"] == [-1, -2, -3]


def test_async_task_based_action_runs_async_multi_step_graphs():
    @action(reads=["x"], writes=["x"])
    async def add_one(state):
        return state.update(x=state["x"] + 1)

    @action(reads=["x"], writes=["y"])
    async def times_ten(state):
        return state.update(y=state["x"] * 10)

    graph = (
        GraphBuilder()
        .with_actions(add_one, times_ten)
        .with_transitions(("add_one", "times_ten"))
        .build()
    )
    chain = RunnableGraph(graph, "add_one", ["times_ten"])

    class Tasks(TaskBasedParallelAction):
        reads = ["xs"]
        writes = ["ys"]

        async def tasks(self, state, context, inputs):
            for x in state["xs"]:
                yield SubGraphTask(graph=chain, state=State({"x": x}))
                yield SubGraphTask(action=slow_square, state=State({"x": x}))

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    final = asyncio.run(arun_fan(Tasks(), {"xs": [1, 2]}))
    assert final["ys"] == [20, 1, 30, 4]


def test_async_generators_may_yield_state_inputs_pairs():
    class Scaled(MapStates):
        reads = ["xs"]
        writes = ["ys"]

        def action(self):
            return scale

        async def states(self, state):
            for factor, x in enumerate(state["xs"], start=1):
                yield State({"x": x}), {"factor": factor}

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    assert asyncio.run(arun_fan(Scaled(), {"xs": [5, 5, 5]}))["ys"] == [5, 10, 15]


def test_async_map_actions_with_async_actions_generator():
    class Both(MapActions):
        reads = ["x"]
        writes = ["ys"]

        async def actions(self, state):
            yield slow_square
            yield sync_negate

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    assert asyncio.run(arun_fan(Both(), {"x": 3}))["ys"] == [9, -3]


def _bounded_fan_out(peak, parties, children=12, max_concurrency=None):
    barrier_box = {}

    @action(reads=["x"], writes=["y"])
    async def meet(state):
        with peak:
            await asyncio.wait_for(barrier_box["barrier"].wait(), WAIT)
        return state.update(y=state["x"])

    class Bounded(MapStates):
        reads = ["n"]
        writes = ["ys"]

        def action(self):
            return meet

        async def states(self, state):
            barrier_box.setdefault("barrier", asyncio.Barrier(parties))
            for x in range(state["n"]):
                yield State({"x": x})

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    Bounded.max_concurrency = max_concurrency
    return Bounded(), {"n": children}


def test_async_fan_out_runs_exactly_max_concurrency_children_at_once():
    peak = Peak()
    parallel, state = _bounded_fan_out(peak, parties=3, max_concurrency=3)
    final = asyncio.run(arun_fan(parallel, state))
    assert final["ys"] == list(range(12))
    assert peak.most == 3


def test_async_fan_out_takes_its_bound_from_the_app_async_executor():
    peak = Peak()
    parallel, state = _bounded_fan_out(peak, parties=2)
    final = asyncio.run(arun_fan(parallel, state, executor=AsyncExecutor(max_concurrency=2)))
    assert final["ys"] == list(range(12))
    assert peak.most == 2


def test_async_fan_out_persists_children_and_resumes_without_rerunning_them(tmp_path, tally):
    persister = SQLitePersister(tmp_path / "state.db")
    armed = {"fail": True}

    @action(reads=["x"], writes=["y"])
    async def flaky(state):
        if state["x"] == 3 and armed.pop("fail", False):
            raise ValueError("first attempt fails")
        tally.hit(state["x"])
        return state.update(y=state["x"] + 100)

    class Flaky(AsyncSquares):
        max_concurrency = 1

        def action(self):
            return flaky

    start = {"xs": list(range(6))}
    with pytest.raises(Exception, match="first attempt fails"):
        asyncio.run(arun_fan(Flaky(), start, app_id="async-resume", persister=persister))
    assert tally.counts() == {"0": 1, "1": 1, "2": 1}
    final = asyncio.run(
        arun_fan(Flaky(), start, app_id="async-resume", persister=persister, resume=True)
    )
    assert final["ys"] == [x + 100 for x in range(6)]
    assert tally.counts() == {str(x): 1 for x in range(6)}


def test_async_plan_with_a_sync_reduce_is_a_graph_error_at_build_time():
    class SyncReduce(AsyncSquares):
        def reduce(self, state, states):
            return state

    with pytest.raises(GraphError, match="async def reduce"):
        ApplicationBuilder().with_actions(fan=SyncReduce()).with_entrypoint("fan").build()


def test_an_async_parallel_action_in_a_sync_run_is_a_clear_error():
    app = fan_app(AsyncSquares(), {"xs": [1]})
    with pytest.raises(AsyncMismatchError, match="arun"):
        app.run(halt_after=["done"])
