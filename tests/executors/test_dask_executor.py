"""DaskExecutor on a real LocalCluster: results, shipping, resume, registry, ownership."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter

import cloudpickle
import distributed
import pytest
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.executors.dask import DaskExecutor
from fanwise.parallel import ChildFailedError, MapStates

# One xdist worker owns this module: its module-scoped cluster must not start twice.
pytestmark = pytest.mark.xdist_group("dask")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def executor(client):
    executor = DaskExecutor(client=client)
    try:
        yield executor
    finally:
        executor.shutdown()


def _worker_address() -> str | None:
    try:
        return distributed.get_worker().address
    except ValueError:
        return None


@action(reads=["x", "delay", "counts", "fail_flag"], writes=["y", "worker"])
def square(state: State, __context) -> State:
    with open(state["counts"], "a") as counts:
        counts.write(f"{__context.app_id}\n")
    time.sleep(state["delay"])
    flag = state["fail_flag"]
    if flag is not None and state["x"] == 5 and os.path.exists(flag):
        raise ValueError("child 5 fails while the flag file exists")
    return state.update(y=state["x"] ** 2, worker=_worker_address())


class Squares(MapStates):
    reads = ["xs", "delay", "counts", "fail_flag"]
    writes = ["ys", "workers"]

    def action(self):
        return square

    def states(self, state: State):
        for x in state["xs"]:
            yield State({
                "x": x, "delay": state["delay"], "counts": state["counts"],
                "fail_flag": state["fail_flag"],
            })

    def reduce(self, state: State, states) -> State:
        children = list(states)
        return state.update(
            ys=[child["y"] for child in children], workers=[child["worker"] for child in children]
        )


def squares_app(executor, tmp_path, xs, delay=0.0, fail_flag=None, persister=None,
                app_id="squares"):
    builder = ApplicationBuilder().with_actions(fan=Squares()).with_transitions()
    state = {
        "xs": list(xs), "delay": delay, "counts": str(tmp_path / "counts.txt"),
        "fail_flag": fail_flag,
    }
    if persister is not None:
        builder = builder.initialize_from(
            persister, default_state=state, default_entrypoint="fan"
        ).with_state_persister(persister)
    else:
        builder = builder.with_state(**state).with_entrypoint("fan")
    return builder.with_identifiers(app_id=app_id).with_executor(executor).build()


def executions(tmp_path) -> Counter:
    path = tmp_path / "counts.txt"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_fan_out_gives_results_in_task_order_from_both_workers(executor, client, tmp_path):
    xs = [7, 3, 9, 1, 4, 8, 2, 6, 5, 0]
    app = squares_app(executor, tmp_path, xs, delay=0.05)
    _, _, state = app.run(halt_after=["fan"])
    assert state["ys"] == [x * x for x in xs]
    assert set(state["workers"]) == set(client.scheduler_info()["workers"])


def test_window_defaults_to_worker_threads_and_chunk_size_is_exposed(client):
    executor = DaskExecutor(client=client, chunk_size=16)
    assert executor.max_concurrency == 2
    assert executor.chunk_size == 16
    assert DaskExecutor(client=client).chunk_size == "auto"
    assert DaskExecutor(client=client, max_concurrency=5).max_concurrency == 5


def test_locally_defined_action_and_closure_run_on_workers(executor):
    offset = 100

    @action(reads=["x"], writes=["y", "worker"])
    def shift(state: State) -> State:
        return state.update(y=state["x"] + offset, worker=_worker_address())

    class Shifts(MapStates):
        reads = ["xs"]
        writes = ["ys", "workers"]

        def action(self):
            return shift

        def states(self, state: State):
            for x in state["xs"]:
                yield State({"x": x})

        def reduce(self, state: State, states) -> State:
            children = list(states)
            return state.update(
                ys=[c["y"] for c in children], workers=[c["worker"] for c in children]
            )

    app = (
        ApplicationBuilder().with_actions(fan=Shifts()).with_transitions()
        .with_state(xs=[1, 2, 3, 4]).with_entrypoint("fan").with_executor(executor).build()
    )
    _, _, state = app.run(halt_after=["fan"])
    assert state["ys"] == [101, 102, 103, 104]
    assert None not in state["workers"]


def test_resume_after_child_failure_reruns_no_finished_child(executor, tmp_path):
    flag = tmp_path / "fail.flag"
    flag.touch()
    persister = SQLitePersister(tmp_path / "state.db")
    xs = list(range(12))
    app = squares_app(executor, tmp_path, xs, delay=0.05, fail_flag=str(flag),
                      persister=persister)
    with pytest.raises(ChildFailedError, match="child 5") as failure:
        app.run(halt_after=["fan"])
    assert isinstance(failure.value.__cause__, ValueError)
    failed_child = failure.value.app_id
    assert executions(tmp_path)[failed_child] == 1, "a child's own error is not retried by Dask"
    finished = [a for a, n in executions(tmp_path).items() if a != failed_child]

    flag.unlink()
    resumed = squares_app(executor, tmp_path, xs, fail_flag=str(flag),
                          persister=SQLitePersister(tmp_path / "state.db"))
    _, _, state = resumed.run(halt_after=["fan"])
    assert state["ys"] == [x * x for x in xs]
    counts = executions(tmp_path)
    assert len(counts) == len(xs)
    assert all(counts[app_id] == 1 for app_id in finished)
    assert counts[failed_child] == 2


def test_nested_fan_out_joins_the_cluster_without_deadlock(executor):
    @action(reads=["x"], writes=["y", "worker"])
    def double(state: State) -> State:
        return state.update(y=2 * state["x"], worker=_worker_address())

    class Inner(MapStates):
        reads = ["x"]
        writes = ["y", "workers"]

        def action(self):
            return double

        def states(self, state: State):
            for i in range(3):
                yield State({"x": 10 * state["x"] + i})

        def reduce(self, state: State, states) -> State:
            children = list(states)
            return state.update(
                y=sum(c["y"] for c in children), workers=[c["worker"] for c in children]
            )

    class Outer(MapStates):
        reads = ["n"]
        writes = ["ys", "workers"]

        def action(self):
            return Inner().with_name("inner")

        def states(self, state: State):
            for x in range(state["n"]):
                yield State({"x": x})

        def reduce(self, state: State, states) -> State:
            children = list(states)
            return state.update(
                ys=[c["y"] for c in children], workers=[w for c in children for w in c["workers"]]
            )

    app = (
        ApplicationBuilder().with_actions(fan=Outer()).with_transitions()
        .with_state(n=4).with_entrypoint("fan").with_executor(executor).build()
    )
    _, _, state = app.run(halt_after=["fan"])
    assert state["ys"] == [sum(2 * (10 * x + i) for i in range(3)) for x in range(4)]
    assert None not in state["workers"], "grandchildren ran as Dask tasks"


def test_unshippable_state_field_is_named_at_submit(executor, tmp_path):
    class WithLock(Squares):
        def states(self, state: State):
            yield State({"x": 1, "delay": 0, "counts": state["counts"], "fail_flag": None,
                         "lock": threading.Lock()})

    app = (
        ApplicationBuilder().with_actions(fan=WithLock()).with_transitions()
        .with_state(xs=[1], delay=0, counts=str(tmp_path / "counts.txt"), fail_flag=None)
        .with_entrypoint("fan").with_executor(executor).build()
    )
    with pytest.raises(TypeError, match="state field 'lock' of child 0"):
        app.run(halt_after=["fan"])
    assert not executions(tmp_path)


def test_with_executor_by_name_starts_and_closes_a_local_cluster(tmp_path):
    app = squares_app("dask", tmp_path, [1, 2, 3])
    _, _, state = app.run(halt_after=["fan"])
    assert state["ys"] == [1, 4, 9]
    assert None not in state["workers"]


def test_given_client_is_not_closed_by_shutdown(client):
    executor = DaskExecutor(client=client)
    assert executor.submit(pow, 2, 10).result() == 1024
    executor.shutdown()
    assert client.status == "running"
    assert client.submit(pow, 3, 2).result() == 9


def test_executor_on_an_address_closes_only_its_own_client(client):
    executor = DaskExecutor(address=client.scheduler.address)
    assert executor.submit(pow, 2, 3).result() == 8
    executor.shutdown()
    assert executor.client.status == "closed"
    assert client.submit(pow, 3, 3).result() == 27


def test_survives_cloudpickle_by_joining_the_same_scheduler(executor, client):
    copy = cloudpickle.loads(cloudpickle.dumps(executor))
    try:
        assert copy.client.scheduler.address == client.scheduler.address
        assert copy.submit(pow, 2, 5).result() == 32
    finally:
        copy.shutdown()
    assert executor.submit(pow, 2, 6).result() == 64


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'fanwise\[dask\]'"):
        DaskExecutor()


# The executor on its own (no fan-out): batching over the cluster's two worker threads.

WAIT = 30.0
"""Seconds to wait for Dask tasks before the test fails as hung."""


class CountingDaskExecutor(DaskExecutor):
    """Records the size of every batch task it sends, in order."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sizes = []

    def _send_batch(self, batch):
        self.sizes.append(len(batch.calls))
        super()._send_batch(batch)


class Failing(Exception):
    def __init__(self, code):
        super().__init__(f"failed with code {code}")
        self.code = code


def note(log, label):
    with open(log, "a") as f:
        f.write(f"{label}\n")


def runs(log) -> Counter:
    return Counter(open(log).read().split()) if os.path.exists(log) else Counter()


def hold(label, log, release):
    """Notes `label`, then keeps its worker thread busy until the file `release` exists."""
    note(log, label)
    deadline = time.monotonic() + WAIT
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released this call")
        time.sleep(0.005)
    return label


def record(label, log):
    note(log, label)
    if label == "fail":
        raise Failing(7)
    return label


def wait_until(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def occupy_both_threads(executor, log, release):
    held = [executor.submit(hold, f"h{i}", log, release) for i in range(2)]
    wait_until(lambda: {"h0", "h1"} <= set(runs(log)), "both held calls to start")
    return held


def test_calls_beyond_the_threads_wait_and_go_out_together_capped_by_chunk_size(
    client, tmp_path
):
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    executor = CountingDaskExecutor(client=client, chunk_size=8)
    try:
        held = occupy_both_threads(executor, log, release)
        waiting = [executor.submit(record, f"c{i}", log) for i in range(20)]
        assert executor.sizes == [1, 1], "while both threads are busy, calls wait"
        open(release, "w").close()

        assert [f.result(timeout=WAIT) for f in waiting] == [f"c{i}" for i in range(20)]
        assert [f.result(timeout=WAIT) for f in held] == ["h0", "h1"]
    finally:
        executor.shutdown()
    assert executor.sizes == [1, 1, 8, 8, 4]


def test_a_call_that_raises_fails_alone_and_is_not_retried(client, tmp_path):
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    executor = CountingDaskExecutor(client=client, chunk_size=8)
    try:
        occupy_both_threads(executor, log, release)
        before, failing, after = [executor.submit(record, x, log) for x in ("a", "fail", "b")]
        open(release, "w").close()

        error = failing.exception(timeout=WAIT)
        assert type(error) is Failing and error.code == 7
        assert any("failed with code 7" in line for line in error.__notes__)
        assert (before.result(timeout=WAIT), after.result(timeout=WAIT)) == ("a", "b")
    finally:
        executor.shutdown()
    assert executor.sizes == [1, 1, 3]
    assert runs(log)["fail"] == 1


def test_buffered_calls_can_be_cancelled_and_shutdown_cancels_the_others(client, tmp_path):
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    executor = CountingDaskExecutor(client=client, chunk_size=8)
    try:
        held = occupy_both_threads(executor, log, release)
        waiting = [executor.submit(record, f"c{i}", log) for i in range(4)]

        assert waiting[1].cancel() is True
        assert held[0].cancel() is False, "a sent call counts as running"
        executor.shutdown(wait=False, cancel_futures=True)
        assert all(future.cancelled() for future in waiting)
    finally:
        open(release, "w").close()
        executor.shutdown()
    for future in held:
        future.exception(timeout=WAIT)  # cancelled on Dask, or finished: either way, done
    assert executor.sizes == [1, 1]
    assert not any(label.startswith("c") for label in runs(log))
    assert client.submit(pow, 2, 4).result(timeout=WAIT) == 16


def test_many_tiny_calls_share_few_tasks(client):
    executor = CountingDaskExecutor(client=client)
    try:
        futures = [executor.submit(pow, x, 2) for x in range(2000)]
        assert [f.result(timeout=WAIT) for f in futures] == [x * x for x in range(2000)]
    finally:
        executor.shutdown()
    assert sum(executor.sizes) == 2000
    assert max(executor.sizes) <= 512
    assert len(executor.sizes) < 2000 / 4


def test_a_fan_out_window_wider_than_the_threads_batches_children(client, tmp_path):
    class WideSquares(Squares):
        max_concurrency = 200

    executor = CountingDaskExecutor(client=client)
    state = {"xs": list(range(100)), "delay": 0.0, "counts": str(tmp_path / "counts.txt"),
             "fail_flag": None}
    app = (
        ApplicationBuilder().with_actions(fan=WideSquares()).with_transitions()
        .with_state(**state).with_entrypoint("fan").with_executor(executor).build()
    )
    try:
        _, _, final = app.run(halt_after=["fan"])
    finally:
        executor.shutdown()
    assert final["ys"] == [x * x for x in range(100)]
    assert sum(executor.sizes) == 100
    assert len(executor.sizes) < 100


def test_stream_fanout_on_dask_reports_every_child_in_order_of_positions(executor, tmp_path):
    app = squares_app(executor, tmp_path, range(8), delay=0.01)
    events = list(app.stream_fanout(halt_after=["fan"]))
    done = [e for e in events if e.kind == "child_done"]
    assert sorted(e.position for e in done) == list(range(8))
    assert all(e.path == (e.position,) and e.seq == 1 for e in done)
    assert events[-1].kind == "done" and events[-1].data[2]["ys"] == [x * x for x in range(8)]
