"""MultiProcessExecutor: children really run in worker processes, shipped with cloudpickle."""

import dataclasses
import json
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
from collections import Counter

import cloudpickle
import fanwise.executors
import psutil
import pytest
from fanwise.core import Action, ApplicationBuilder, GraphBuilder, Result, State, action, serde
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiProcessExecutor
from fanwise.parallel import ChildFailedError, MapStates, RunnableGraph, child_app_id

WAIT = 10.0
"""Seconds a child waits for a sibling before giving up (a hang is a failure, not a pass)."""


class Tally:
    """Appends one line per execution to a file: counts across processes and re-runs."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def hit(self, label):
        with open(self.path, "a") as f:
            f.write(f"{label}\n")

    def lines(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [line.strip() for line in f if line.strip()]

    def counts(self):
        return Counter(self.lines())

    def runs(self):
        """Executions per label (a line is `label` or `label@pid`)."""
        return Counter(line.split("@")[0] for line in self.lines())

    def pid_of(self, label):
        """The pid of the process where `label` first ran (written as `label@pid`)."""
        for line in self.lines():
            if line.startswith(f"{label}@"):
                return int(line.split("@")[1])
        return None


@pytest.fixture
def tally(tmp_path):
    return Tally(tmp_path / "executions.txt")


class CountingExecutor(MultiProcessExecutor):
    """Records the size of every batch task it sends to its pool, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes = []

    def _send_batch(self, batch):
        self.sizes.append(len(batch.calls))
        super()._send_batch(batch)


def wait_until(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def hold(label, tally, release):
    """Records `label@pid`, then keeps its worker busy until the file `release` exists."""
    tally.hit(f"{label}@{os.getpid()}")
    deadline = time.monotonic() + WAIT
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released this call")
        time.sleep(0.005)
    return label


def record(label, tally):
    tally.hit(label)
    return label


def map_fan(child, n, *, key="x", window=None):
    """A MapStates running `child` on states {key: 0..n-1}; reduces to ys (and pids).

    `window` is the action's `max_concurrency` (None: the executor's)."""

    class Fan(MapStates):
        max_concurrency = window
        reads = ["n"]
        writes = ["ys", "pids"]

        def action(self):
            return child

        def states(self, state):
            return [State({key: x}) for x in range(state["n"])]

        def reduce(self, state, states):
            done = list(states)
            return state.update(ys=[s["y"] for s in done], pids=[s.get("pid") for s in done])

    return Fan(), {"n": n}


def fan_app(parallel, state, *, executor=None, persister=None, resume=False, tracker=None,
            app_id=None):
    """An app `fan -> done` whose `fan` is `parallel`."""
    builder = (
        ApplicationBuilder()
        .with_actions(fan=parallel, done=Result(*parallel.writes))
        .with_transitions(("fan", "done"))
        .with_identifiers(app_id=app_id)
    )
    if executor is not None:
        builder.with_executor(executor)
    if persister is not None:
        builder.with_state_persister(persister)
    if tracker is not None:
        builder.with_tracker(tracker)
    if resume:
        return builder.initialize_from(
            persister, default_state=state, default_entrypoint="fan"
        ).build()
    return builder.with_state(state).with_entrypoint("fan").build()


def run_fan(parallel, state, **kwargs):
    return fan_app(parallel, state, **kwargs).run(halt_after=["done"])[2]


@pytest.fixture(scope="module")
def two_workers():
    with MultiProcessExecutor(max_concurrency=2, chunk_size=1) as executor:
        yield executor


def rendezvous_action(meeting_dir, compute):
    """A locally defined child that waits until two worker processes have shown up."""

    @action(reads=["x"], writes=["y", "pid"])
    def child(state):
        open(os.path.join(meeting_dir, str(os.getpid())), "w").close()
        deadline = time.monotonic() + WAIT
        while len(os.listdir(meeting_dir)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        return state.update(y=compute(state["x"]), pid=os.getpid())

    return child


def test_locally_defined_action_runs_in_several_worker_processes(two_workers, tmp_path):
    child = rendezvous_action(str(tmp_path), lambda x: x * x)
    parallel, state = map_fan(child, 8)

    result = run_fan(parallel, state, executor=two_workers)

    assert result["ys"] == [x * x for x in range(8)]
    pids = set(result["pids"])
    assert os.getpid() not in pids
    assert len(pids) == 2


def test_lambda_and_closure_captured_values_travel_to_the_workers(two_workers, tmp_path):
    offset = 1000
    scale = lambda x: 3 * x + offset  # noqa: E731 - a lambda is the point of this test
    child = rendezvous_action(str(tmp_path), scale)
    parallel, state = map_fan(child, 6)

    result = run_fan(parallel, state, executor=two_workers)

    assert result["ys"] == [3 * x + 1000 for x in range(6)]
    assert os.getpid() not in result["pids"]


def test_bound_action_runs_with_its_bound_inputs_in_the_workers(two_workers):
    @action(reads=["x"], writes=["y", "pid"])
    def shifted(state, shift, factor=1):
        return state.update(y=(state["x"] + shift) * factor, pid=os.getpid())

    parallel, state = map_fan(shifted.bind(shift=5, factor=2), 6)

    result = run_fan(parallel, state, executor=two_workers)

    assert result["ys"] == [(x + 5) * 2 for x in range(6)]
    assert os.getpid() not in result["pids"]


def test_results_come_back_in_task_order_although_children_finish_out_of_order(two_workers):
    @action(reads=["x"], writes=["y", "pid"])
    def slow_first(state):
        time.sleep(0.02 * (6 - state["x"]) if state["x"] < 6 else 0)
        return state.update(y=state["x"], pid=os.getpid())

    parallel, state = map_fan(slow_first, 12)

    assert run_fan(parallel, state, executor=two_workers)["ys"] == list(range(12))


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_each_start_method_runs_the_fan_out(method):
    @action(reads=["x"], writes=["y", "pid"])
    def double(state):
        return state.update(y=2 * state["x"], pid=os.getpid())

    parallel, state = map_fan(double, 4)
    with MultiProcessExecutor(max_concurrency=2, mp_context=method) as executor:
        result = run_fan(parallel, state, executor=executor)

    assert result["ys"] == [0, 2, 4, 6]
    assert os.getpid() not in result["pids"]


def test_a_start_method_given_as_a_context_is_used():
    context = multiprocessing.get_context("spawn")

    @action(reads=["x"], writes=["y", "pid"])
    def method(state):
        return state.update(y=multiprocessing.get_start_method(), pid=os.getpid())

    parallel, state = map_fan(method, 2)
    with MultiProcessExecutor(max_concurrency=1, mp_context=context) as executor:
        assert run_fan(parallel, state, executor=executor)["ys"] == ["spawn", "spawn"]


def tiny_child():
    @action(reads=["x"], writes=["y", "pid"])
    def tiny(state):
        return state.update(y=state["x"] ** 2 - 1, pid=None)

    return tiny


WIDE = 200
"""A fan-out window wider than the workers: children beyond them wait in the executor."""


def test_chunk_sizes_give_identical_results():
    results = {}
    for chunk_size in (1, 50, "auto"):
        parallel, state = map_fan(tiny_child(), 120, window=WIDE)
        with MultiProcessExecutor(max_concurrency=2, chunk_size=chunk_size) as executor:
            results[chunk_size] = run_fan(parallel, state, executor=executor)["ys"]

    assert results[1] == [x * x - 1 for x in range(120)]
    assert results[50] == results[1]
    assert results["auto"] == results[1]


def test_a_fan_out_window_of_the_workers_sends_each_child_as_its_own_task():
    parallel, state = map_fan(tiny_child(), 60)
    with CountingExecutor(max_concurrency=2, chunk_size=50) as executor:
        run_fan(parallel, state, executor=executor)

    assert executor.sizes == [1] * 60


def test_chunk_size_1_sends_each_child_as_its_own_task_even_in_a_wide_window():
    parallel, state = map_fan(tiny_child(), 120, window=WIDE)
    with CountingExecutor(max_concurrency=2, chunk_size=1) as executor:
        run_fan(parallel, state, executor=executor)

    assert executor.sizes == [1] * 120


def test_a_wide_window_groups_children_into_tasks_of_at_most_chunk_size():
    parallel, state = map_fan(tiny_child(), 120, window=WIDE)
    with CountingExecutor(max_concurrency=2, chunk_size=50) as executor:
        assert run_fan(parallel, state, executor=executor)["ys"] == [x * x - 1 for x in range(120)]

    assert sum(executor.sizes) == 120
    assert max(executor.sizes) <= 50
    assert len(executor.sizes) < 120


def test_automatic_chunking_groups_tiny_children_in_a_wide_window():
    parallel, state = map_fan(tiny_child(), 300, window=300)
    with CountingExecutor(max_concurrency=2) as executor:
        assert run_fan(parallel, state, executor=executor)["ys"] == [x * x - 1 for x in range(300)]

    assert sum(executor.sizes) == 300
    assert len(executor.sizes) < 300 / 2


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, "big", True])
def test_an_invalid_chunk_size_is_a_clear_error(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be 'auto' or an int >= 1"):
        MultiProcessExecutor(max_concurrency=1, chunk_size=chunk_size)


def counted_child(tally):
    @action(reads=["x"], writes=["y", "pid"])
    def counted(state):
        tally.hit(state["x"])
        return state.update(y=state["x"], pid=os.getpid())

    return counted


@pytest.mark.parametrize("chunk_size", [1, 50])
def test_a_lock_in_a_state_field_is_named_before_any_child_runs(tally, chunk_size):
    lock = threading.Lock()

    class Guarded(MapStates):
        reads = ["n"]
        writes = ["ys", "pids"]

        def action(self):
            return counted_child(tally)

        def states(self, state):
            return [State({"x": x, "guard": lock}) for x in range(state["n"])]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states], pids=[])

    with MultiProcessExecutor(max_concurrency=2, chunk_size=chunk_size) as executor:
        with pytest.raises(TypeError, match="state field 'guard'") as caught:
            run_fan(Guarded(), {"n": 4}, executor=executor)

    assert "child 0" in str(caught.value)
    assert tally.counts() == Counter()


def test_a_closure_variable_holding_a_lock_is_named_before_any_child_runs(tally):
    guard = threading.Lock()

    @action(reads=["x"], writes=["y", "pid"])
    def locked(state):
        tally.hit(state["x"])
        with guard:
            return state.update(y=state["x"], pid=os.getpid())

    parallel, state = map_fan(locked, 4)
    with MultiProcessExecutor(max_concurrency=2) as executor:
        with pytest.raises(TypeError, match="closure variable 'guard'"):
            run_fan(parallel, state, executor=executor)

    assert tally.counts() == Counter()


def test_a_bound_input_holding_a_lock_is_named_before_any_child_runs(tally):
    @action(reads=["x"], writes=["y", "pid"])
    def with_guard(state, guard):
        tally.hit(state["x"])
        return state.update(y=state["x"], pid=os.getpid())

    parallel, state = map_fan(with_guard.bind(guard=threading.Lock()), 4)
    with MultiProcessExecutor(max_concurrency=2) as executor:
        with pytest.raises(TypeError, match="bound input 'guard'"):
            run_fan(parallel, state, executor=executor)

    assert tally.counts() == Counter()


@pytest.mark.parametrize("make", [threading.Lock, socket.socket], ids=["lock", "socket"])
def test_an_action_attribute_that_cannot_be_shipped_is_named_before_any_child_runs(tally, make):
    held = make()

    class Holder(Action):
        def __init__(self):
            self.connection = held

        @property
        def reads(self):
            return ["x"]

        @property
        def writes(self):
            return ["y", "pid"]

        def run(self, state, **run_kwargs):
            tally.hit(state["x"])
            return {"y": state["x"], "pid": os.getpid()}

        def update(self, result, state):
            return state.update(**result)

    parallel, state = map_fan(Holder().with_name("holder"), 4)
    try:
        with MultiProcessExecutor(max_concurrency=2) as executor:
            with pytest.raises(TypeError, match="attribute 'connection'") as caught:
                run_fan(parallel, state, executor=executor)
    finally:
        if isinstance(held, socket.socket):
            held.close()

    assert "action 'holder'" in str(caught.value)
    assert tally.counts() == Counter()


def test_resume_after_a_child_failure_reruns_no_finished_child(tmp_path, tally):
    persister = SQLitePersister(tmp_path / "state.db")
    fail_flag = tmp_path / "fail"
    fail_flag.touch()
    slow_started = tmp_path / "slow-started"

    @action(reads=["x"], writes=["y", "pid"])
    def flaky(state):
        x = state["x"]
        if x == 5:
            open(slow_started, "w").close()
            time.sleep(0.5)
        if x == 4 and os.path.exists(fail_flag):
            deadline = time.monotonic() + WAIT
            while not os.path.exists(slow_started) and time.monotonic() < deadline:
                time.sleep(0.005)
            raise RuntimeError("child 4 breaks")
        tally.hit(x)
        return state.update(y=10 * x, pid=os.getpid())

    parallel, state = map_fan(flaky, 12)
    with MultiProcessExecutor(max_concurrency=2, chunk_size=1) as executor:
        with pytest.raises(ChildFailedError, match="child 4") as caught:
            run_fan(parallel, state, executor=executor, persister=persister, app_id="parent")
        assert isinstance(caught.value.__cause__, RuntimeError)
        finished_before = set(tally.counts())
        fail_flag.unlink()

        result = run_fan(
            parallel, state, executor=executor, persister=persister, app_id="parent",
            resume=True,
        )

    assert result["ys"] == [10 * x for x in range(12)]
    assert {"0", "1", "2", "3", "5"} <= finished_before
    assert tally.counts() == Counter(str(x) for x in range(12))


def test_children_tracking_records_end_up_in_the_driver_storage(tmp_path):
    storage = tmp_path / "tracking"
    tracker = LocalTrackingClient("procs", storage_dir=str(storage))

    @action(reads=["x"], writes=["y", "pid"])
    def tracked(state):
        return state.update(y=state["x"] + 1, pid=os.getpid())

    parallel, state = map_fan(tracked, 7)
    with MultiProcessExecutor(max_concurrency=2) as executor:
        app = fan_app(parallel, state, executor=executor, tracker=tracker, app_id="parent")
        app.run(halt_after=["done"])

    child_ids = [child_app_id("parent", 0, position) for position in range(7)]
    listed = [entry["child_app_id"] for entry in tracker.children("parent")]
    assert sorted(listed) == sorted(child_ids)
    for position, child_id in enumerate(child_ids):
        folder = storage / "procs" / child_id
        metadata = json.loads((folder / "metadata.json").read_text())
        assert metadata["spawning_parent_pointer"]["app_id"] == "parent"
        assert metadata["spawning_parent_pointer"]["sequence_id"] == 0
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert [record["type"] for record in log] == ["begin_entry", "end_entry"]
        assert log[-1]["state"]["y"] == position + 1
        assert log[-1]["state"]["pid"] != os.getpid()


def test_processes_is_found_by_name_in_the_registry():
    assert {"threads", "processes", "async"} <= set(fanwise.executors.available())
    assert fanwise.executors.executor_class("processes") is MultiProcessExecutor


def test_with_executor_processes_runs_children_in_other_processes():
    @action(reads=["x"], writes=["y", "pid"])
    def named(state):
        return state.update(y=-state["x"], pid=os.getpid())

    parallel, state = map_fan(named, 5)
    result = run_fan(parallel, state, executor="processes")

    assert result["ys"] == [0, -1, -2, -3, -4]
    assert os.getpid() not in result["pids"]


@pytest.mark.parametrize("mp_context", [None, "spawn", multiprocessing.get_context("fork")])
def test_executor_configuration_survives_a_cloudpickle_round_trip(mp_context):
    executor = MultiProcessExecutor(max_concurrency=3, mp_context=mp_context, chunk_size=7)
    try:
        twin = pickle.loads(cloudpickle.dumps(executor))
        try:
            assert isinstance(twin, MultiProcessExecutor)
            assert twin.max_concurrency == 3
            assert twin.chunk_size == 7
            assert twin._context.get_start_method() == executor._context.get_start_method()
            assert twin.submit(pow, 2, 5).result(timeout=WAIT) == 32
        finally:
            twin.shutdown()
    finally:
        executor.shutdown()


def test_a_running_task_cannot_be_cancelled_and_its_result_still_arrives(tmp_path):
    started = str(tmp_path / "started")

    def task():
        open(started, "w").close()
        time.sleep(0.3)
        return "finished"

    with MultiProcessExecutor(max_concurrency=1) as executor:
        future = executor.submit(task)
        deadline = time.monotonic() + WAIT
        while not os.path.exists(started) and time.monotonic() < deadline:
            time.sleep(0.005)

        assert future.cancel() is False
        assert future.result(timeout=WAIT) == "finished"


def test_submit_after_shutdown_is_an_error():
    executor = MultiProcessExecutor(max_concurrency=1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 2)


# The executor on its own (no fan-out): batching, failures, cancellation, shutdown.


def occupy_both_workers(executor, tally, release):
    """Two calls that keep the two workers busy until `release`; they have started on return."""
    held = [executor.submit(hold, f"h{i}", tally, release) for i in range(2)]
    wait_until(lambda: {"h0", "h1"} <= set(tally.runs()), "both held calls to start")
    return held


def test_each_call_gets_its_own_future_with_its_own_result():
    with MultiProcessExecutor(max_concurrency=2) as executor:
        futures = [executor.submit(pow, x, 2) for x in range(500)]

        assert len({id(f) for f in futures}) == 500
        assert [f.result(timeout=WAIT) for f in futures] == [x * x for x in range(500)]


def test_calls_beyond_the_workers_wait_and_go_out_together_capped_by_chunk_size(
    tally, tmp_path
):
    release = str(tmp_path / "release")
    with CountingExecutor(max_concurrency=2, chunk_size=8) as executor:
        held = occupy_both_workers(executor, tally, release)
        waiting = [executor.submit(record, f"c{i}", tally) for i in range(20)]
        assert executor.sizes == [1, 1], "while both workers are busy, calls wait"
        open(release, "w").close()

        assert [f.result(timeout=WAIT) for f in waiting] == [f"c{i}" for i in range(20)]
        assert [f.result(timeout=WAIT) for f in held] == ["h0", "h1"]

    assert executor.sizes == [1, 1, 8, 8, 4]
    assert tally.runs() == Counter(["h0", "h1", *(f"c{i}" for i in range(20))])


def test_auto_batches_grow_at_most_twofold_per_task_up_to_512(tally, tmp_path):
    release = str(tmp_path / "release")
    with CountingExecutor(max_concurrency=2) as executor:
        occupy_both_workers(executor, tally, release)
        futures = [executor.submit(pow, x, 2) for x in range(3000)]
        open(release, "w").close()

        assert [f.result(timeout=WAIT) for f in futures] == [x * x for x in range(3000)]

    sizes = executor.sizes
    assert sum(sizes[2:]) == 3000
    assert all(size <= max(1, 2 * max(sizes[:k], default=0)) for k, size in enumerate(sizes))
    assert max(sizes) <= 512
    assert len(sizes) < 100


def test_auto_keeps_batches_of_slow_calls_near_50_ms(tally, tmp_path):
    release = str(tmp_path / "release")
    with CountingExecutor(max_concurrency=2) as executor:
        occupy_both_workers(executor, tally, release)
        futures = [executor.submit(time.sleep, 0.02) for _ in range(16)]
        open(release, "w").close()
        for future in futures:
            future.result(timeout=WAIT)

    assert max(executor.sizes) <= 2, "a 20 ms call fills 50 ms in two"


class HoldsALock(Exception):
    def __init__(self):
        super().__init__("it holds a lock")
        self.lock = threading.Lock()


def misbehave(kind):
    if kind == "raise":
        raise KeyError("this call breaks")
    if kind == "unpicklable result":
        return threading.Lock()
    if kind == "unpicklable error":
        raise HoldsALock()
    return kind


def test_each_call_of_a_batch_fails_or_succeeds_on_its_own(tally, tmp_path):
    release = str(tmp_path / "release")
    kinds = ["first", "raise", "unpicklable result", "unpicklable error", "last"]
    with CountingExecutor(max_concurrency=2, chunk_size=8) as executor:
        occupy_both_workers(executor, tally, release)
        first, raises, bad_result, bad_error, last = [
            executor.submit(misbehave, kind) for kind in kinds
        ]
        open(release, "w").close()

        assert first.result(timeout=WAIT) == "first"
        assert last.result(timeout=WAIT) == "last"
        error = raises.exception(timeout=WAIT)
        assert isinstance(error, KeyError)
        assert any("this call breaks" in note and "misbehave" in note for note in error.__notes__)
        with pytest.raises(TypeError, match="result of misbehave cannot be pickled"):
            bad_result.result(timeout=WAIT)
        with pytest.raises(RuntimeError, match="HoldsALock: it holds a lock .not picklable"):
            bad_error.result(timeout=WAIT)

    assert executor.sizes == [1, 1, 5], "the five calls shared one task"


class Guarded:
    """An argument that cannot be pickled and says which part of it is the problem."""

    def __init__(self):
        self.lock = threading.Lock()

    def shipping_problem(self):
        return "the field 'lock' of this argument holds a lock"


def test_an_argument_that_cannot_be_pickled_is_named_at_submit_and_nothing_runs(tally):
    with CountingExecutor(max_concurrency=2) as executor:
        with pytest.raises(TypeError, match="the field 'lock' of this argument"):
            executor.submit(record, Guarded(), tally)
        with pytest.raises(TypeError, match="the task record cannot be shipped to a worker"):
            executor.submit(record, threading.Lock(), tally)

    assert executor.sizes == []
    assert tally.lines() == []


def test_a_buffered_call_can_be_cancelled_and_never_runs(tally, tmp_path):
    release = str(tmp_path / "release")
    with CountingExecutor(max_concurrency=2, chunk_size=8) as executor:
        held = occupy_both_workers(executor, tally, release)
        before, cancelled, after = [executor.submit(record, x, tally) for x in "abc"]

        assert cancelled.cancel() is True
        assert held[0].cancel() is False, "a sent call counts as running"
        open(release, "w").close()

        assert (before.result(timeout=WAIT), after.result(timeout=WAIT)) == ("a", "c")
        assert cancelled.cancelled()

    assert executor.sizes == [1, 1, 2]
    assert "b" not in tally.runs()


def test_with_chunk_size_1_calls_go_out_at_once_and_an_unstarted_one_can_be_cancelled(
    tally, tmp_path
):
    release = str(tmp_path / "release")
    with CountingExecutor(max_concurrency=1, chunk_size=1) as executor:
        held = executor.submit(hold, "h0", tally, release)
        queued = [executor.submit(record, f"q{i}", tally) for i in range(5)]
        assert executor.sizes == [1] * 6, "no buffer: the pool queues them"
        wait_until(lambda: "h0" in tally.runs(), "the held call to start")

        assert queued[-1].cancel() is True, "the pool had not started it"
        assert held.cancel() is False
        open(release, "w").close()

        assert [f.result(timeout=WAIT) for f in queued[:-1]] == [f"q{i}" for i in range(4)]
        assert queued[-1].cancelled()

    assert "q4" not in tally.runs()


def test_shutdown_with_cancel_futures_cancels_buffered_calls_and_lets_sent_ones_finish(
    tally, tmp_path
):
    release = str(tmp_path / "release")
    executor = CountingExecutor(max_concurrency=2, chunk_size=8)
    held = occupy_both_workers(executor, tally, release)
    waiting = [executor.submit(record, f"c{i}", tally) for i in range(3)]

    executor.shutdown(wait=False, cancel_futures=True)
    assert all(future.cancelled() for future in waiting)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(record, "late", tally)
    open(release, "w").close()

    assert [f.result(timeout=WAIT) for f in held] == ["h0", "h1"]
    assert executor.sizes == [1, 1]
    assert set(tally.runs()) == {"h0", "h1"}


def test_shutdown_waits_for_sent_and_buffered_calls(tally, tmp_path):
    release = str(tmp_path / "release")
    executor = CountingExecutor(max_concurrency=2, chunk_size=8)
    held = occupy_both_workers(executor, tally, release)
    waiting = [executor.submit(record, f"c{i}", tally) for i in range(5)]
    releaser = threading.Timer(0.2, lambda: open(release, "w").close())
    releaser.start()
    try:
        executor.shutdown(wait=True)
    finally:
        releaser.join()

    assert all(future.done() for future in [*held, *waiting])
    assert [f.result() for f in waiting] == [f"c{i}" for i in range(5)]


def test_shutdown_without_waiting_still_runs_buffered_calls(tally, tmp_path):
    release = str(tmp_path / "release")
    executor = CountingExecutor(max_concurrency=2, chunk_size=8)
    occupy_both_workers(executor, tally, release)
    waiting = [executor.submit(record, f"c{i}", tally) for i in range(5)]

    executor.shutdown(wait=False)
    open(release, "w").close()

    assert [f.result(timeout=WAIT) for f in waiting] == [f"c{i}" for i in range(5)]


def test_a_killed_worker_reruns_only_the_batches_that_were_in_flight(tally, tmp_path):
    gate, release = str(tmp_path / "gate"), str(tmp_path / "release")
    with CountingExecutor(max_concurrency=2, chunk_size=4) as executor:
        gates = [executor.submit(hold, f"g{i}", tally, gate) for i in range(2)]
        # Buffered behind the gates; they go out as [a1 a2 a3 V] and [W x1 x2 x3], x4..x7 wait.
        first = [executor.submit(record, f"a{i}", tally) for i in (1, 2, 3)]
        victim = executor.submit(hold, "V", tally, release)
        other = executor.submit(hold, "W", tally, release)
        later = [executor.submit(record, f"x{i}", tally) for i in range(1, 8)]
        open(gate, "w").close()
        wait_until(lambda: {"V", "W"} <= set(tally.runs()), "V and W to start")
        assert executor.sizes == [1, 1, 4, 4]

        pid = tally.pid_of("V")
        assert pid in {p.pid for p in psutil.Process().children(recursive=True)}
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: tally.runs()["V"] == 2, "V to run again on a new pool")
        open(release, "w").close()

        assert [f.result(timeout=WAIT) for f in first] == ["a1", "a2", "a3"]
        assert (victim.result(timeout=WAIT), other.result(timeout=WAIT)) == ("V", "W")
        assert [f.result(timeout=WAIT) for f in later] == [f"x{i}" for i in range(1, 8)]
        assert all(f.result(timeout=WAIT) for f in gates)

    runs = tally.runs()
    assert {label: runs[label] for label in ("a1", "a2", "a3", "V", "W")} == dict.fromkeys(
        ("a1", "a2", "a3", "V", "W"), 2
    ), "both batches in flight on the broken pool ran again"
    assert all(runs[f"x{i}"] == 1 for i in range(1, 8)), "x1..x3 had not started, x4..x7 waited"
    assert runs["g0"] == runs["g1"] == 1
    assert executor.sizes == [1, 1, 4, 4, 4, 4, 4]


# What the user defines travels both ways: exceptions, results, serdes.


class Coded(Exception):
    """An exception whose `__init__` takes other arguments than the `args` it stores."""

    def __init__(self, code, reason):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclasses.dataclass
class Refused(Exception):
    """A dataclass exception: its `args` are empty, its fields are attributes."""

    reason: str


def raise_coded(code, reason):
    raise Coded(code, reason)


def raise_refused(reason):
    raise Refused(reason)


def test_an_exception_whose_init_takes_other_arguments_arrives_as_itself():
    with MultiProcessExecutor(max_concurrency=1) as executor:
        coded = executor.submit(raise_coded, 7, "too big").exception(timeout=WAIT)
        refused = executor.submit(raise_refused, "no").exception(timeout=WAIT)

    assert type(coded) is Coded
    assert (coded.code, coded.reason, str(coded)) == (7, "too big", "7: too big")
    assert any("raise_coded" in note for note in coded.__notes__), "the worker's traceback"
    assert type(refused) is Refused and refused.reason == "no"


def test_a_childs_exception_whose_init_takes_other_arguments_is_the_cause_of_its_failure():
    @action(reads=["x"], writes=["y", "pid"])
    def strict(state):
        if state["x"] == 3:
            raise Coded(state["x"], "three is refused")
        return state.update(y=state["x"], pid=os.getpid())

    parallel, state = map_fan(strict, 6)
    with MultiProcessExecutor(max_concurrency=2, chunk_size=1) as executor:
        with pytest.raises(ChildFailedError) as caught:
            run_fan(parallel, state, executor=executor)

    assert caught.value.position == 3
    cause = caught.value.__cause__
    assert type(cause) is Coded and (cause.code, cause.reason) == (3, "three is refused")


def test_a_child_result_that_cannot_be_pickled_back_names_the_part_and_the_child():
    @action(reads=["x"], writes=["y", "pid", "guard"])
    def locking(state):
        guard = threading.Lock() if state["x"] == 2 else None
        return state.update(y=state["x"], pid=os.getpid(), guard=guard)

    parallel, state = map_fan(locking, 4)
    with MultiProcessExecutor(max_concurrency=2, chunk_size=1) as executor:
        with pytest.raises(ChildFailedError, match="child 2 ") as caught:
            run_fan(parallel, state, executor=executor)

    assert isinstance(caught.value.__cause__, TypeError)
    assert "its .state['guard'], a _thread.lock" in str(caught.value.__cause__)


def test_a_serde_registered_in_the_driver_saves_a_childs_steps_in_the_workers(tmp_path):
    @dataclasses.dataclass
    class Reading:  # defined here, it travels by value, as a class of the user's script does
        value: int

    serde.register_type(Reading, dataclasses.asdict, lambda stored: Reading(**stored))

    @action(reads=["x"], writes=["reading"])
    def measure(state):
        return state.update(reading=Reading(state["x"]))

    @action(reads=["reading"], writes=["y", "pid"])
    def double(state):
        return state.update(y=Reading(2 * state["reading"].value), pid=os.getpid())

    graph = GraphBuilder().with_actions(measure, double).with_transitions(
        ("measure", "double")).build()
    parallel, state = map_fan(RunnableGraph(graph, "measure", ["double"]), 4)
    persister = SQLitePersister(tmp_path / "state.db")
    with MultiProcessExecutor(max_concurrency=2, chunk_size=1) as executor:
        result = run_fan(parallel, state, executor=executor, persister=persister)

    assert result["ys"] == [Reading(2 * x) for x in range(4)]
    assert all(type(y) is Reading for y in result["ys"])
    assert os.getpid() not in result["pids"]


def test_a_childs_exception_that_cannot_be_pickled_back_is_quoted_in_its_childs_failure():
    @action(reads=["x"], writes=["y", "pid"])
    def holding(state):
        if state["x"] == 1:
            raise HoldsALock()
        return state.update(y=state["x"], pid=os.getpid())

    parallel, state = map_fan(holding, 3)
    with MultiProcessExecutor(max_concurrency=2, chunk_size=1) as executor:
        with pytest.raises(ChildFailedError, match="child 1 ") as caught:
            run_fan(parallel, state, executor=executor)

    message = str(caught.value.__cause__)
    assert "its .error.lock, a _thread.lock; .error is HoldsALock: it holds a lock" in message
