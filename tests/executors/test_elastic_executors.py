"""Elastic executors on a real in-process Dask cluster that grows and shrinks: capacity
follows the workers, a fan-out's window follows the capacity, and neither goes above a
max_concurrency the user gave (the executor's or the parallel action's)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import distributed
import pytest
from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.executors.dask import DaskExecutor
from fanwise.executors.protocols import CAPACITY_POLL_SECONDS, ElasticExecutor
from fanwise.parallel import MapStates

pytestmark = pytest.mark.xdist_group("dask")


@pytest.fixture
def cluster():
    cluster = distributed.LocalCluster(
        n_workers=0, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
        scheduler_port=0, dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def client(cluster):
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()


def workers_become(client: Any, n: int) -> None:
    deadline = time.monotonic() + 30
    while len(client.nthreads()) != n:
        assert time.monotonic() < deadline, f"the cluster never had {n} workers"
        time.sleep(0.05)


@action(reads=["sleep"], writes=["ran"])
def nap(state: State) -> State:
    started = time.time()
    time.sleep(state["sleep"])
    return state.update(ran=[started, time.time()])


class Naps(MapStates):
    reads = ["n"]
    writes = ["ran"]

    def __init__(self, max_concurrency: int | None = None) -> None:
        super().__init__()
        self.max_concurrency = max_concurrency

    def action(self) -> Any:
        return nap

    def states(self, state: State) -> Any:
        for _ in range(state["n"]):
            yield State({"sleep": 0.4})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(ran=[child["ran"] for child in states])


def peak_concurrency(executor: Any, n: int, action_max: int | None = None) -> int:
    app = (
        ApplicationBuilder()
        .with_actions(fan=Naps(action_max), done=Result("ran"))
        .with_transitions(("fan", "done"))
        .with_state(n=n)
        .with_entrypoint("fan")
        .with_executor(executor)
        .build()
    )
    intervals = app.run(halt_after=["done"])[2]["ran"]
    assert len(intervals) == n
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_dask_executor_is_elastic_and_has_capacity_one_while_the_cluster_is_empty(client):
    executor = DaskExecutor(client=client)

    assert isinstance(executor, ElasticExecutor)
    assert executor.capacity() == 1


def test_capacity_follows_workers_joining_and_leaving(cluster, client):
    executor = DaskExecutor(client=client)
    cluster.scale(3)
    workers_become(client, 3)
    time.sleep(CAPACITY_POLL_SECONDS)

    assert executor.capacity() == 3

    cluster.scale(1)
    workers_become(client, 1)
    time.sleep(CAPACITY_POLL_SECONDS)

    assert executor.capacity() == 1


def test_a_fan_out_started_on_an_empty_cluster_widens_as_workers_join(cluster, client):
    threading.Timer(1.0, cluster.scale, args=(3,)).start()

    assert peak_concurrency(DaskExecutor(client=client), 12) == 3


def test_the_window_never_exceeds_the_executors_max_concurrency(cluster, client):
    cluster.scale(3)
    workers_become(client, 3)

    assert peak_concurrency(DaskExecutor(client=client, max_concurrency=2), 8) == 2


def test_an_actions_max_concurrency_bounds_the_window_while_the_executor_grows(
    cluster, client
):
    threading.Timer(1.0, cluster.scale, args=(3,)).start()

    assert peak_concurrency(DaskExecutor(client=client), 8, action_max=2) == 2


def test_a_fan_out_completes_while_workers_leave(cluster, client):
    cluster.scale(3)
    workers_become(client, 3)
    executor = DaskExecutor(client=client)
    threading.Timer(1.0, cluster.scale, args=(1,)).start()

    assert peak_concurrency(executor, 12) == 3
    assert executor.capacity() == 1
