"""`RayExecutor`: children as Ray tasks, on a local Ray or a Ray cluster.

Ray is imported when an executor is constructed, never when this module is imported.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import Any

INSTALL_HINT = "pip install 'fanwise[ray]'"
DEFAULT_MAX_RETRIES = 3


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"RayExecutor needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What every Ray task runs: the submitted function with its arguments."""
    return fn(*args, **kwargs)


@functools.cache
def _trampoline() -> Any:
    """The one remote function behind every submit (Ray exports it once per process)."""
    return _import_ray().remote(_call)


class RayExecutor(concurrent.futures.Executor):
    """Runs each submitted call as a Ray task and hands back a `concurrent.futures.Future`.

    `address=None` starts (or joins) a local Ray with `init_kwargs`; `"auto"` or `"ray://..."`
    joins a cluster. Only a Ray started here is shut down by `shutdown()`. `remote_options`
    (`num_cpus`, `num_gpus`, `resources`, `max_retries`, `runtime_env`, ...) go to every task.
    A submitted task counts as running: Ray decides when it starts, so `Future.cancel()`
    returns False; `shutdown(cancel_futures=True)` cancels the Ray tasks themselves.
    """

    def __init__(
        self,
        address: str | None = None,
        max_concurrency: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
        chunk_size: int | str = "auto",
        **remote_options: Any,
    ) -> None:
        ray = _import_ray()
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if chunk_size != "auto" and not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be 'auto' or an int >= 1, got {chunk_size!r}")
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self.chunk_size = chunk_size
        self.remote_options = {
            "max_retries": DEFAULT_MAX_RETRIES, "retry_exceptions": False, **remote_options,
        }
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            ray.init(address=address, **self.init_kwargs)
        self._remote = _trampoline().options(**self.remote_options)
        self.max_concurrency = max_concurrency or _cluster_slots(ray, remote_options)
        self._join_address = _join_address(ray, address)
        self._outstanding: dict[Any, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` as a Ray task (shipped with Ray's cloudpickle)."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            ref = self._remote.remote(fn, args, kwargs)
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            self._outstanding[ref] = future
        ref.future().add_done_callback(functools.partial(self._settle, ref, future))
        return future

    def _settle(self, ref: Any, future: concurrent.futures.Future[Any], done: Any) -> None:
        with self._lock:
            self._outstanding.pop(ref, None)
        try:
            exc = done.exception()
            if exc is None:
                future.set_result(done.result())
            else:
                future.set_exception(_unwrapped(exc))
        except (concurrent.futures.CancelledError, concurrent.futures.InvalidStateError):
            pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; cancel outstanding ones if asked; stop Ray if started here."""
        ray = _import_ray()
        with self._lock:
            self._shutdown = True
            outstanding = dict(self._outstanding)
        if cancel_futures:
            for ref in outstanding:
                ray.cancel(ref)
        if wait:
            concurrent.futures.wait(outstanding.values())
        if self.owns_ray:
            self.owns_ray = False
            ray.shutdown()
            for future in outstanding.values():
                _fail_if_pending(future, RuntimeError("RayExecutor shut down the Ray it started"))

    def nested(self) -> Any:
        """What a child's own fan-out uses inside a Ray worker: an executor on this cluster.

        Grandchildren reserve no CPU (`num_cpus=0`): their parent holds one while it waits
        for them, so reserving more would let parents starve their own children.
        """
        return functools.partial(RayExecutor, **{**self._config(), "num_cpus": 0})

    def _config(self) -> dict[str, Any]:
        return {
            "address": self._join_address,
            "max_concurrency": self.max_concurrency,
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


def _cluster_slots(ray: Any, remote_options: dict[str, Any]) -> int:
    """How many tasks fit at once: the cluster's CPUs over the CPUs each task asks for."""
    cpus = ray.cluster_resources().get("CPU", 1)
    per_task = remote_options.get("num_cpus") or 1
    return max(1, int(cpus // per_task))


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
    """The task's own exception (its type and attributes), as thread and process pools give.

    Ray hands back a `RayTaskError` subclass; its `cause` is what the task raised. System
    failures (a lost node after `max_retries`, a cancelled task) are passed on as they are.
    """
    from ray.exceptions import RayTaskError

    cause = getattr(exc, "cause", None)
    if not isinstance(exc, RayTaskError) or not isinstance(cause, BaseException):
        return exc
    if cause.__cause__ is None:
        cause.__cause__ = RemoteTraceback(exc.traceback_str)
    return cause


def _fail_if_pending(future: concurrent.futures.Future[Any], exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass
