"""Re-running only some children (`rerunning_only`): the others are not run, and the step
completes only once no child was left unrun."""

import asyncio
from collections import Counter

import pytest
from fanout_testing import expected_child_id, fan_app
from fanwise.core import State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import ChildrenFailedError, MapStates
from fanwise.parallel._rerun import StepRerun, rerunning_only
from fanwise.parallel.errors import ChildrenLeftPendingError

N = 10


def squares(ran, failing, is_async=False):
    """A fan-out of x in range(N) (on_failure="continue"); children of `failing` raise."""

    def square(state):
        ran[state["x"]] += 1
        if state["x"] in failing:
            raise ValueError(f"x={state['x']} fails")
        return state.update(y=state["x"] ** 2)

    async def asquare(state):
        return square(state)

    child = action(reads=["x"], writes=["y"])(asquare if is_async else square)

    class Squares(MapStates):
        reads = []
        writes = ["ys"]
        on_failure = "continue"

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(N)]

        if is_async:
            async def reduce(self, state, states):
                return state.update(ys=[s["y"] async for s in states])
        else:
            def reduce(self, state, states):
                return state.update(ys=[s["y"] for s in states])

    return Squares()


def only(*positions, saved):
    return {0: StepRerun(frozenset(expected_child_id("app", 0, p) for p in positions), saved)}


def run(parallel, persister, is_async):
    app = fan_app(parallel, {}, app_id="app", persister=persister, resume=True)
    if is_async:
        return asyncio.run(app.arun(halt_after=["done"]))[2]
    return app.run(halt_after=["done"])[2]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_only_the_named_children_run_and_a_child_left_unrun_stops_the_step(tmp_path,
                                                                          is_async):
    persister = SQLitePersister(tmp_path / "state.db")
    ran, failing = Counter(), {3, 6}
    with pytest.raises(ChildrenFailedError):
        run(squares(ran, failing, is_async), persister, is_async)
    failing.clear()

    with rerunning_only("app", None, only(3, saved=8)), pytest.raises(
        ChildrenLeftPendingError
    ) as stopped:
        run(squares(ran, failing, is_async), persister, is_async)
    assert (stopped.value.rerun, stopped.value.pending) == (1, 1)  # child 6 is left
    assert ran == Counter({x: 2 if x == 3 else 1 for x in range(N)})

    with rerunning_only("app", None, only(6, saved=9)):
        final = run(squares(ran, failing, is_async), persister, is_async)
    assert final["ys"] == [x * x for x in range(N)]
    assert ran == Counter({x: 2 if x in (3, 6) else 1 for x in range(N)})


def test_a_child_that_fails_again_fails_the_step(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    ran = Counter()
    with pytest.raises(ChildrenFailedError):
        run(squares(ran, {3}), persister, False)
    with rerunning_only("app", None, only(3, saved=9)), pytest.raises(
        ChildrenFailedError, match="positions 3"
    ):
        run(squares(ran, {3}), persister, False)
    assert ran[3] == 2 and sum(ran.values()) == N + 1


def test_the_limit_of_another_app_id_leaves_a_fanout_alone(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    ran = Counter()
    with rerunning_only("other", None, only(3, saved=0)):
        final = run(squares(ran, set()), persister, False)
    assert final["ys"] == [x * x for x in range(N)] and sum(ran.values()) == N
