"""`DaskExecutor`: children as tasks on a Dask cluster (a Client, an address, or a local one)."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future
from typing import Any

import cloudpickle
from fanwise.executors._shipping import unshippable_message

_SUBMIT_OPTIONS = frozenset({"workers", "resources", "allow_other_workers"})


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"DaskExecutor needs dask.distributed ({exc}): pip install 'fanwise[dask]'"
        ) from exc
    return distributed


class DaskExecutor(Executor):
    """Runs each call as a Dask task; `shutdown()` closes only what this executor created.

    Give a `distributed.Client` (left open), a scheduler `address` (joined), or neither (a
    `LocalCluster` of worker processes is started). `retries` re-runs a task after a system
    failure: a worker that died (on the local cluster; an external scheduler applies its own
    `allowed-failures`) or an error outside the child. A child's own exception is never
    retried here: the parallel action's `retries`/`retry_on` decide, as on every executor.
    """

    def __init__(
        self,
        address: str | None = None,
        client: Any = None,
        max_concurrency: int | None = None,
        chunk_size: int | str = "auto",
        retries: int = 3,
        **submit_kwargs: Any,
    ) -> None:
        _check_arguments(address, client, max_concurrency, chunk_size, retries, submit_kwargs)
        distributed = _distributed()
        self.chunk_size = chunk_size
        self.retries = retries
        self._max_concurrency = max_concurrency
        self._submit_kwargs = submit_kwargs
        self._owned = contextlib.ExitStack()
        try:
            self.client = self._connect(distributed, address, client)
            self._bridge = self.client.get_executor(pure=False, retries=retries, **submit_kwargs)
        except BaseException:
            self._owned.close()
            raise
        self._lock = threading.Lock()
        self._closed = False

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

    @property
    def max_concurrency(self) -> int:
        """The fan-out window: as given, else every worker thread of the cluster right now."""
        if self._max_concurrency is not None:
            return self._max_concurrency
        return max(1, sum(self.client.nthreads().values()))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Ship `fn(*args, **kwargs)` to a worker.

        The future counts as running at once: Dask cannot tell queued from started, so a
        fan-out that fails lets every submitted child finish and keep its row.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            try:
                task = self._bridge.submit(_call_on_worker, fn, args, kwargs)
            except TypeError as exc:
                raise TypeError(unshippable_message(fn, args, exc, "a Dask worker")) from exc
        future: Future = Future()
        future.set_running_or_notify_cancel()
        task.add_done_callback(functools.partial(_settle, future))
        return future

    def nested(self) -> Callable[[], DaskExecutor]:
        """What children's own fan-outs use: the same scheduler, joined from inside the task
        (the worker's client, its thread seceded while it waits)."""
        return functools.partial(DaskExecutor, **self._config())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Wait for (or cancel) the tasks, then close the client and cluster we created."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if cancel_futures or wait:
            self._bridge.shutdown(wait=not cancel_futures)
        self._owned.close()

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
    address: Any, client: Any, max_concurrency: Any, chunk_size: Any, retries: Any,
    submit_kwargs: dict[str, Any],
) -> None:
    if address is not None and client is not None:
        raise ValueError("DaskExecutor takes a scheduler address or a Client, not both")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
    if chunk_size != "auto" and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be 'auto' or an int >= 1, got {chunk_size!r}")
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


def _call_on_worker(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """Runs on the worker: the call's own exception comes back as a value, not retried."""
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:
        exc.add_note("on the Dask worker:\n" + "".join(traceback.format_exception(exc)).rstrip())
        try:
            cloudpickle.dumps(exc)
        except Exception:
            return False, RuntimeError(f"{type(exc).__name__}: {exc} (not picklable)")
        return False, exc


def _settle(future: Future, task: Future) -> None:
    """Hand a finished Dask task's outcome to the future `submit` returned."""
    if task.cancelled():
        future.set_exception(CancelledError("the Dask task was cancelled"))
        return
    error = task.exception()
    if error is not None:
        future.set_exception(error)
        return
    ok, value = task.result()
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
