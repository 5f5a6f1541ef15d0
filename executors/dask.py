"""`DaskExecutor`: children as tasks, in batches, on a Dask cluster (a Client, an address,
or a local one).

    submit -> buffer (while every worker thread is busy) -> batch -> client.submit(run_batch)
        -> done callback -> each caller's future

Batching is shared with processes and Ray (`executors/_batching.py`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from fanwise.executors._batching import Batch, ClusterBatchingExecutor, run_batch

_SUBMIT_OPTIONS = frozenset({"workers", "resources", "allow_other_workers"})


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"DaskExecutor needs dask.distributed ({exc}): pip install 'fanwise[dask]'"
        ) from exc
    return distributed


class DaskExecutor(ClusterBatchingExecutor):
    """Runs calls as Dask tasks, in batches; `shutdown()` closes only what this executor created.

    At most `max_concurrency` tasks are outstanding. By default that is the cluster's worker
    threads, followed while a fan-out runs as workers come and go (at least 1: while the
    workers are still starting, one child waits for the first). Calls beyond that wait in the
    executor and, when a task ends, go out together as the next one (`chunk_size` calls at
    most, or with "auto" as many as take about 50 ms). So for tiny children, give the
    fan-out a window larger than the threads (the parallel action's `max_concurrency`, e.g.
    512); with a window of `max_concurrency`, each child is its own task. `chunk_size=1`
    turns batching off: every call is its own Dask task, sent at once, and Dask queues them.

    Give a `distributed.Client` (left open), a scheduler `address` (joined), or neither (a
    `LocalCluster` of worker processes is started). `retries` re-runs a batch after a system
    failure: a worker that died (on the local cluster; an external scheduler applies its own
    `allowed-failures`) or an error outside the calls. A call's own exception is never
    retried here: the parallel action's `retries`/`retry_on` decide, as on every executor.
    `Future.cancel()` succeeds while a call waits in the executor; once sent it counts as
    running (Dask cannot tell queued from started), so a fan-out that fails lets every sent
    child finish and keep its row.
    """

    _ships_to = "a Dask worker"

    def __init__(
        self,
        address: str | None = None,
        client: Any = None,
        max_concurrency: int | None = None,
        chunk_size: int | str = "auto",
        retries: int = 3,
        **submit_kwargs: Any,
    ) -> None:
        _check_arguments(address, client, max_concurrency, retries, submit_kwargs)
        super().__init__(chunk_size, max_concurrency)
        distributed = _distributed()
        self.retries = retries
        self._submit_kwargs = submit_kwargs
        self._owned = contextlib.ExitStack()
        try:
            self.client = self._connect(distributed, address, client)
        except BaseException:
            self._owned.close()
            raise

    def _connect(self, distributed: Any, address: str | None, client: Any) -> Any:
        """The client to use; whatever is created for it is entered on `self._owned`."""
        if client is not None:
            return client
        if address is None:
            cluster = self._owned.enter_context(_local_cluster(distributed, self.retries))
            return self._owned.enter_context(distributed.Client(cluster, set_as_default=False))
        session = _worker_session(distributed, address)
        if session is not None:
            return self._owned.enter_context(session)
        return self._owned.enter_context(distributed.Client(address, set_as_default=False))

    def _cluster_capacity(self) -> int:
        """Every worker thread of the cluster right now."""
        return sum(self.client.nthreads().values())

    def _send_batch(self, batch: Batch) -> None:
        task = self.client.submit(
            run_batch, batch.payloads, batch.serdes, pure=False, retries=self.retries,
            **self._submit_kwargs,
        )
        batch.task = task
        task.add_done_callback(functools.partial(self._task_ended, batch))

    def _task_ended(self, batch: Batch, task: Any) -> None:
        """Dask's report of a batch task, on Dask's callback thread (not its event loop, so
        reading the result and sending the next batch may wait on the scheduler)."""
        if task.cancelled():
            self._batch_failed(batch, CancelledError("the Dask task was cancelled"))
            return
        try:
            error = task.exception()
            report = task.result() if error is None else None
        except Exception as exc:  # the client closed under the task
            error = exc
        if error is None:
            self._batch_done(batch, report)
        else:
            self._batch_failed(batch, error)

    def _abort_batches(self, batches: list[Batch]) -> None:
        tasks = [batch.task for batch in batches if batch.task is not None]
        if tasks:
            self.client.cancel(tasks)

    def _close_backend(self, wait: bool, cancel_futures: bool) -> None:
        self._owned.close()

    def nested(self) -> Callable[[], DaskExecutor]:
        """What children's own fan-outs use: the same scheduler, joined from inside the task
        (the worker's client, its thread seceded while it waits)."""
        return functools.partial(DaskExecutor, **self._config())

    def _config(self) -> dict[str, Any]:
        return {
            "address": self.client.scheduler.address,
            "max_concurrency": self._max_concurrency,
            "chunk_size": self.chunk_size,
            "retries": self.retries,
            **self._submit_kwargs,
        }

    def __reduce__(self) -> Any:
        return (functools.partial(DaskExecutor, **self._config()), ())


def _check_arguments(
    address: Any, client: Any, max_concurrency: Any, retries: Any, submit_kwargs: dict[str, Any]
) -> None:
    if address is not None and client is not None:
        raise ValueError("DaskExecutor takes a scheduler address or a Client, not both")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    unknown = sorted(set(submit_kwargs) - _SUBMIT_OPTIONS)
    if unknown:
        raise TypeError(
            f"DaskExecutor got unknown options {unknown}; task options are "
            f"{sorted(_SUBMIT_OPTIONS)}"
        )


def _local_cluster(distributed: Any, retries: int) -> Any:
    """Worker processes on loopback, sized by Dask for this machine; free ports, no dashboard."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
        return distributed.LocalCluster(
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
            processes=True,
            silence_logs=logging.ERROR,
        )


def _worker_session(distributed: Any, address: str) -> Any:
    """Inside a task of `address`'s cluster: `worker_client()`, which secedes this thread.

    A task blocked on its children would otherwise hold a worker thread they may need.
    """
    try:
        worker = distributed.get_worker()
    except ValueError:
        return None
    if worker.scheduler.address != distributed.comm.resolve_address(address):
        return None
    return distributed.worker_client()

