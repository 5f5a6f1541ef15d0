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
