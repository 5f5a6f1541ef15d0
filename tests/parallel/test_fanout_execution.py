"""Execution semantics: streaming reduce and its order, the concurrency window, lazy pulls."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fanout_testing import WAIT, Peak, fan_app, run_fan
from fanwise.core import GraphError, State, action
from fanwise.executors import InlineExecutor, MultiThreadedExecutor
from fanwise.executors.protocols import traits_of
from fanwise.executors.threads import default_concurrency
from fanwise.parallel import MapStates
from fanwise.parallel.cascade import AHEAD, queue_ahead


def fan_of(child_fn, n, reduce_fn=None, **settings):
    """A MapStates running `child_fn(x)` for x in range(n); reduce collects (x, y) pairs."""

    @action(reads=["x"], writes=["y"])
    def child(state):
        return state.update(y=child_fn(state["x"]))

    class Fan(MapStates):
        reads = []
        writes = ["pairs"]

        def action(self):
            return child

        def states(self, state):
            for x in range(n):
                yield State({"x": x})

        def reduce(self, state, states):
            if reduce_fn is not None:
                states = reduce_fn(states)
            return state.update(pairs=[(s["x"], s["y"]) for s in states])

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def wait_for(event, what):
    if not event.wait(WAIT):
        raise TimeoutError(f"timed out waiting for {what}")


def test_reduce_receives_states_in_task_order_when_children_finish_in_reverse():
    n = 4
    finished = [threading.Event() for _ in range(n)]
    finish_order = []

    def child(x):
        if x + 1 < n:
            wait_for(finished[x + 1], f"child {x + 1}")
        finish_order.append(x)
        finished[x].set()
        return x * 10

    final = run_fan(fan_of(child, n, max_concurrency=n))
    assert finish_order == [3, 2, 1, 0]
    assert final["pairs"] == [(0, 0), (1, 10), (2, 20), (3, 30)]


def test_reduce_receives_states_in_completion_order_when_asked():
    release = threading.Event()

    def child(x):
        if x == 0:
            wait_for(release, "reduce to see child 1")
        return x

    def reduce_fn(states):
        for s in states:
            release.set()
            yield s

    final = run_fan(fan_of(child, 2, reduce_fn, max_concurrency=2, reduce_order="completion"))
    assert final["pairs"] == [(1, 1), (0, 0)]


def test_reduce_runs_while_later_children_are_still_in_flight():
    release = threading.Event()
    seen_while_blocked = []

    def child(x):
        if x == 1:
            wait_for(release, "reduce to see state 0 (it got a list, not a stream)")
        return x

    def reduce_fn(states):
        for s in states:
            if s["x"] == 0:
                seen_while_blocked.append(not release.is_set())
                release.set()
            yield s

    final = run_fan(fan_of(child, 3, reduce_fn, max_concurrency=3))
    assert final["pairs"] == [(0, 0), (1, 1), (2, 2)]
    assert seen_while_blocked == [True]


def peak_fan(peak, parties, n, **settings):
    barrier = threading.Barrier(parties, timeout=WAIT)

    def child(x):
        with peak:
            barrier.wait()
        return x

    return fan_of(child, n, **settings)


def test_exactly_max_concurrency_children_run_at_once_on_a_larger_pool():
    peak = Peak()
    with ThreadPoolExecutor(max_workers=8) as pool:
        final = run_fan(peak_fan(peak, 3, 12, max_concurrency=3), executor=pool)
    assert final["pairs"] == [(x, x) for x in range(12)]
    assert peak.most == 3


def test_the_window_defaults_to_the_executor_size():
    peak = Peak()
    with MultiThreadedExecutor(max_concurrency=4) as executor:
        final = run_fan(peak_fan(peak, 4, 16), executor=executor)
    assert len(final["pairs"]) == 16
    assert peak.most == 4


def lazy_fan(n, done, ahead, **settings):
    """Children append to `done`; the generator records how far ahead of them it is pulled.

    (`list.append` and `len` are atomic, so no lock slows the 200k-children test.)
    """

    @action(reads=["x"], writes=["y"])
    def child(state):
        done.append(None)
        return state.update(y=state["x"])

    class Lazy(MapStates):
        reads = []
        writes = ["total"]

        def action(self):
            return child

        def states(self, state):
            for x in range(n):
                ahead[0] = max(ahead[0], x - len(done))
                yield State({"x": x})

        def reduce(self, state, states):
            total = 0
            for s in states:
                total += s["y"]
            return state.update(total=total)

    for name, value in settings.items():
        setattr(Lazy, name, value)
    return Lazy()


SLACK = 2


def in_flight(capacity):
    """The most children a window of `capacity` keeps in flight on a pool of that size:
    the running ones and those queued ahead in the pool (`queue_ahead`)."""
    return capacity + capacity * AHEAD


def test_the_task_generator_is_never_pulled_far_ahead_of_completions():
    done, ahead = [], [0]
    final = run_fan(lazy_fan(500, done, ahead, max_concurrency=4))
    assert final["total"] == sum(range(500))
    assert 0 < ahead[0] <= in_flight(4) + SLACK


def test_the_default_window_is_bounded():
    done, ahead = [], [0]
    final = run_fan(lazy_fan(300, done, ahead))
    assert final["total"] == sum(range(300))
    assert ahead[0] <= in_flight(default_concurrency()) + SLACK


def test_two_hundred_thousand_trivial_children_stream_through_a_bounded_window():
    n = 200_000
    done, ahead = [], [0]
    final = run_fan(lazy_fan(n, done, ahead, max_concurrency=8))
    assert final["total"] == n * (n - 1) // 2
    assert len(done) == n
    assert ahead[0] <= in_flight(8) + SLACK


def test_a_pool_of_the_window_size_gets_children_queued_ahead_and_still_runs_its_size():
    """Children wait in the pool's own queue (a worker that finishes one starts the next
    at once), and no more than the pool's size ever run together."""
    peak, seen, queued, want = Peak(), threading.Event(), [], 3 * AHEAD
    with MultiThreadedExecutor(max_concurrency=3) as pool:

        def child(x):
            with peak:
                if x == 0:  # the other running children wait: the queue only grows
                    deadline = time.monotonic() + WAIT
                    while pool._work_queue.qsize() < want and time.monotonic() < deadline:
                        time.sleep(0.001)
                    queued.append(pool._work_queue.qsize())
                    seen.set()
                else:
                    wait_for(seen, "child 0 to see the queue")
            return x

        final = run_fan(fan_of(child, 12), executor=pool)
    assert final["pairs"] == [(x, x) for x in range(12)]
    assert queued == [want]
    assert peak.most == 3


def test_nothing_is_queued_ahead_where_the_window_is_what_caps_or_a_start_is_counted():
    pool = traits_of(ThreadPoolExecutor(4))
    assert queue_ahead(pool, 4, None, watched=False) == 4 * AHEAD > 0
    assert queue_ahead(pool, 2, None, watched=False) == 0  # the window caps, not the pool
    assert queue_ahead(pool, 4, 1.0, watched=False) == 0  # a timeout counts from submission
    assert queue_ahead(pool, 4, None, watched=True) == 0  # so does a child_started event
    assert queue_ahead(traits_of(InlineExecutor()), 1, None, watched=False) == 0

    class Smaller(MultiThreadedExecutor):  # declares less than its pool runs
        def __init__(self):
            super().__init__(8)
            self.max_concurrency = 4

    assert queue_ahead(traits_of(Smaller()), 4, None, watched=False) == 0


def threads_of(n, executor):
    """Run n children on `executor`; the thread each ran on, and the driver's thread."""
    ran_on = {}

    def child(x):
        ran_on[x] = threading.get_ident()
        return x

    final = run_fan(fan_of(child, n), executor=executor)
    assert final["pairs"] == [(x, x) for x in range(n)]
    return ran_on, threading.get_ident()


def test_the_inline_executor_runs_every_child_on_the_driver_thread_one_at_a_time():
    peak = Peak()

    def child(x):
        with peak:
            return x

    ran_on, driver = threads_of(50, InlineExecutor())
    assert set(ran_on.values()) == {driver}
    assert run_fan(fan_of(child, 20), executor="inline")["pairs"] == [(x, x) for x in range(20)]
    assert peak.most == 1


def test_children_never_run_on_the_driver_thread_of_a_thread_pool():
    with MultiThreadedExecutor(4) as executor:
        ran_on, driver = threads_of(400, executor)
    assert driver not in ran_on.values()
    with ThreadPoolExecutor(4) as pool:
        ran_on, driver = threads_of(200, pool)
    assert driver not in ran_on.values()


def test_an_inline_executor_refuses_a_larger_window():
    with pytest.raises(ValueError, match="one child at a time"):
        InlineExecutor(max_concurrency=4)
    fan = fan_of(lambda x: x, 3, max_concurrency=4)
    with pytest.raises(GraphError, match="max_concurrency=4.*at most 1"):
        run_fan(fan, executor=InlineExecutor())


def test_the_default_executor_runs_exactly_the_window_the_action_asks_for():
    n = default_concurrency() + 6
    peak = Peak()
    final = run_fan(peak_fan(peak, n, 2 * n, max_concurrency=n))
    assert len(final["pairs"]) == 2 * n
    assert peak.most == n


def test_a_window_larger_than_a_given_pool_is_a_clear_error():
    with MultiThreadedExecutor(4) as executor:
        with pytest.raises(GraphError, match="asks for max_concurrency=16.*at most 4"):
            run_fan(fan_of(lambda x: x, 3, max_concurrency=16), executor=executor)


def test_the_default_async_executor_runs_exactly_the_window_the_action_asks_for():
    import asyncio

    from fanwise.executors.asyncio import AsyncExecutor

    n = 4 * default_concurrency() + 10
    running, most = [0], [0]

    @action(reads=["x"], writes=["y"])
    async def child(state):
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.05)
        running[0] -= 1
        return state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = n

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(2 * n)]

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    app = fan_app(Fan())
    final = asyncio.run(app.arun(halt_after=["done"]))[2]
    assert final["ys"] == list(range(2 * n))
    assert most[0] == n
    with pytest.raises(GraphError, match=f"max_concurrency={n}.*at most 3"):
        asyncio.run(fan_app(Fan(), executor=AsyncExecutor(3)).arun(halt_after=["done"]))
