"""`RayExecutor`: children as Ray tasks, in batches, on a local Ray or a Ray cluster.

    submit -> buffer (while every slot is busy) -> batch -> one Ray task running run_batch
        -> ref.future() -> each caller's future

Batching is shared with processes and Dask (`executors/_batching.py`). Ray is imported when
an executor is constructed, never when this module is imported.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Any

from fanwise.executors._batching import Batch, ClusterBatchingExecutor, run_batch

INSTALL_HINT = "pip install 'fanwise[ray]'"
DEFAULT_MAX_RETRIES = 3


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"RayExecutor needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


@functools.cache
def _trampoline() -> Any:
    """The one remote function behind every batch (Ray exports it once per process)."""
    return _import_ray().remote(run_batch)


class RayExecutor(ClusterBatchingExecutor):
    """Runs submitted calls as Ray tasks, in batches, and hands back one
    `concurrent.futures.Future` per call.

    At most `max_concurrency` tasks are outstanding. By default that is the cluster's CPUs
    over each task's `num_cpus`, followed while a fan-out runs as nodes join and leave (at
    least 1: on a head started with `--num-cpus=0`, one child waits for the first worker
    node, and the window grows within a second once nodes join). Calls beyond that wait in
    the executor and, when a task ends, go out together as the next one (`chunk_size` calls
    at most, or with "auto" as many as take about 50 ms). So for tiny children, give the
    fan-out a window larger than the slots (the parallel action's `max_concurrency`, e.g.
    512); with a window of `max_concurrency`, each child is its own task. `chunk_size=1`
    turns batching off: every call is its own Ray task, sent at once, and Ray queues them.

    `address=None` starts (or joins) a local Ray with `init_kwargs`; `"auto"` or `"ray://..."`
    joins a cluster. Only a Ray started here is shut down by `shutdown()`. `remote_options`
    (`num_cpus`, `num_gpus`, `resources`, `max_retries`, `runtime_env`, ...) go to every task;
    `max_retries` re-runs a whole batch whose worker died. `Future.cancel()` succeeds while a
    call waits in the executor; once sent, Ray decides when it starts, so it counts as
    running. `shutdown(cancel_futures=True)` cancels the waiting calls and the Ray tasks.
    """

    _ships_to = "a Ray worker"

    def __init__(
        self,
        address: str | None = None,
        max_concurrency: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
        chunk_size: int | str = "auto",
        **remote_options: Any,
    ) -> None:
        ray = _import_ray()
        super().__init__(chunk_size, max_concurrency)
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self.remote_options = {
            "max_retries": DEFAULT_MAX_RETRIES, "retry_exceptions": False, **remote_options,
        }
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            ray.init(address=address, **self.init_kwargs)
        self._remote = _trampoline().options(**self.remote_options)
        self._join_address = _join_address(ray, address)

    def _cluster_capacity(self) -> int:
        """The cluster's CPUs (of the nodes alive now) over the CPUs each task asks for."""
        cpus = _import_ray().cluster_resources().get("CPU", 0)
        per_task = self.remote_options.get("num_cpus") or 1
        return int(cpus // per_task)

    def _send_batch(self, batch: Batch) -> None:
        ref = self._remote.remote(batch.payloads, batch.serdes)
        batch.task = ref
        ref.future().add_done_callback(functools.partial(self._task_ended, batch))

    def _task_ended(self, batch: Batch, done: concurrent.futures.Future[Any]) -> None:
        """Ray's report of a batch task (on a Ray thread: sending the next batch from here
        is safe, it does not wait on the cluster)."""
        try:
            exc = done.exception()
        except concurrent.futures.CancelledError as cancelled:
            exc = cancelled
        if exc is None:
            self._batch_done(batch, done.result())
        else:
            self._batch_failed(batch, _unwrapped(exc))

    def _abort_batches(self, batches: list[Batch]) -> None:
        ray = _import_ray()
        for batch in batches:
            if batch.task is not None:
                ray.cancel(batch.task)

    def _close_backend(self, wait: bool, cancel_futures: bool) -> None:
        """Stop the Ray started here (calls still unfinished fail: nothing will report)."""
        if self.owns_ray:
            self.owns_ray = False
            _import_ray().shutdown()
            self._fail_unsettled(RuntimeError("RayExecutor shut down the Ray it started"))

    def nested(self) -> Any:
        """What a child's own fan-out uses inside a Ray worker: an executor on this cluster.

        Grandchildren reserve no CPU (`num_cpus=0`): their parent holds one while it waits
        for them, so reserving more would let parents starve their own children.
        """
        return functools.partial(RayExecutor, **{**self._config(), "num_cpus": 0})

    def _config(self) -> dict[str, Any]:
        return {
            "address": self._join_address,
            "max_concurrency": self._max_concurrency,
            "chunk_size": self.chunk_size,
            **self.remote_options,
        }

    def __reduce__(self) -> Any:
        return (functools.partial(RayExecutor, **self._config()), ())

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self._join_address!r}, "
            f"max_concurrency={self.max_concurrency}, chunk_size={self.chunk_size!r})"
        )


def _join_address(ray: Any, address: str | None) -> str:
    """An address that reaches the same cluster from any process: the client or GCS one."""
    if address is not None and address.startswith("ray://"):
        return address
    gcs_address = getattr(ray.get_runtime_context(), "gcs_address", None)
    return gcs_address or "auto"


class RemoteTraceback(Exception):
    """The traceback of an exception raised inside a Ray task (its `__cause__`)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _unwrapped(exc: BaseException) -> BaseException:
    """What the batch task itself raised (its type and attributes), not Ray's wrapper.

    A call's own exception comes back as a value (`run_batch`); the task raises only what a
    call let escape beyond `Exception` (`SystemExit`, ...), which Ray wraps in a
    `RayTaskError` whose `cause` it is. System failures (a lost node after `max_retries`, a
    cancelled task) are passed on as they are.
    """
    from ray.exceptions import RayTaskError

    cause = getattr(exc, "cause", None)
    if not isinstance(exc, RayTaskError) or not isinstance(cause, BaseException):
        return exc
    text = getattr(exc, "traceback_str", None)  # (absent when Ray cancelled the task)
    if cause.__cause__ is None and text:
        cause.__cause__ = RemoteTraceback(text)
    return cause

