"""Lifecycle hooks (Burr's `burr.lifecycle`): implement a hook method, pass the object to
`with_hooks` (a tracker given to `with_tracker` is one too).

Every hook method takes keyword-only arguments and must accept `**future_kwargs`, so that
new arguments can be added without breaking existing hooks. The base classes below are one
way to get the methods; any object that has a hook method receives that hook (its role is
decided by method presence, through a `typing.Protocol`, once per class). Sync hooks also
run in an async application; an async hook in a sync run is an `AsyncMismatchError`.

Where each hook is called (one step of a streaming action shown; `run` and `iterate` call
the execute-call hooks once around all their steps, not per step):

    pre_run_execute_call(method=ExecuteMethod.run)
      pre_run_step -> [pre_start_stream -> post_stream_item ...] -> action
        (spans: pre_start_span / do_log_attributes / post_end_span, from `__tracer`)
      -> post_run_step -> [post_end_stream]
    post_run_execute_call(method=ExecuteMethod.run, exception=...)
"""

from __future__ import annotations

import abc
import datetime
import enum
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    from fanwise.core.actions import Action
    from fanwise.core.context import ParentPointer
    from fanwise.core.graph import Graph
    from fanwise.core.state import State
    from fanwise.core.visibility import ActionSpan


class LifecycleHook:
    """Marker base of every hook class below."""


class ExecuteMethod(enum.Enum):
    """The application method a `pre_run_execute_call`/`post_run_execute_call` is about."""

    step = "step"
    astep = "astep"
    iterate = "iterate"
    aiterate = "aiterate"
    run = "run"
    arun = "arun"
    stream_result = "stream_result"
    astream_result = "astream_result"
    stream_iterate = "stream_iterate"
    astream_iterate = "astream_iterate"


# -- application ---------------------------------------------------------------------------


class PostApplicationCreateHook(LifecycleHook, abc.ABC):
    """Called once when `build()`/`abuild()` creates an application."""

    @abc.abstractmethod
    def post_application_create(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        state: State,
        application_graph: Graph,
        parent_pointer: ParentPointer | None,
        spawning_parent_pointer: ParentPointer | None,
        **future_kwargs: Any,
    ) -> None: ...


class PreApplicationExecuteCallHook(LifecycleHook, abc.ABC):
    """Called when `step`/`iterate`/`run`/`stream_result` starts (the outermost call only)."""

    @abc.abstractmethod
    def pre_run_execute_call(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        state: State,
        method: ExecuteMethod,
        **future_kwargs: Any,
    ) -> None: ...


class PreApplicationExecuteCallHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PreApplicationExecuteCallHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def pre_run_execute_call(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        state: State,
        method: ExecuteMethod,
        **future_kwargs: Any,
    ) -> None: ...


class PostApplicationExecuteCallHook(LifecycleHook, abc.ABC):
    """Called when that outermost call ends, with the exception it raised (or None)."""

    @abc.abstractmethod
    def post_run_execute_call(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        state: State,
        method: ExecuteMethod,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None: ...


class PostApplicationExecuteCallHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PostApplicationExecuteCallHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def post_run_execute_call(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        state: State,
        method: ExecuteMethod,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None: ...


# -- steps ---------------------------------------------------------------------------------


class PreRunStepHook(LifecycleHook, abc.ABC):
    """Called before each step, with the state the step starts from."""

    @abc.abstractmethod
    def pre_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        inputs: dict[str, Any],
        **future_kwargs: Any,
    ) -> None: ...


class PostRunStepHook(LifecycleHook, abc.ABC):
    """Called after each step with the new state (or the old one and the exception)."""

    @abc.abstractmethod
    def post_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        result: dict[str, Any] | None,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None: ...


class PreRunStepHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PreRunStepHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def pre_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        inputs: dict[str, Any],
        **future_kwargs: Any,
    ) -> None: ...


class PostRunStepHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PostRunStepHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def post_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        result: dict[str, Any] | None,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None: ...


# -- streaming actions ---------------------------------------------------------------------


class PreStartStreamHook(LifecycleHook, abc.ABC):
    """Called when a streaming action's generator is started."""

    @abc.abstractmethod
    def pre_start_stream(
        self,
        *,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PreStartStreamHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PreStartStreamHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def pre_start_stream(
        self,
        *,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PostStreamItemHook(LifecycleHook, abc.ABC):
    """Called after each intermediate item a streaming action yields (`item_index` from 1)."""

    @abc.abstractmethod
    def post_stream_item(
        self,
        *,
        item: Any,
        item_index: int,
        stream_initialize_time: datetime.datetime,
        first_stream_item_start_time: datetime.datetime,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PostStreamItemHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PostStreamItemHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def post_stream_item(
        self,
        *,
        item: Any,
        item_index: int,
        stream_initialize_time: datetime.datetime,
        first_stream_item_start_time: datetime.datetime,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PostEndStreamHook(LifecycleHook, abc.ABC):
    """Called once a streaming action's step is over (after `post_run_step`)."""

    @abc.abstractmethod
    def post_end_stream(
        self,
        *,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PostEndStreamHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PostEndStreamHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def post_end_stream(
        self,
        *,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


# -- spans (`fanwise.core.visibility`) -----------------------------------------------------


class PreStartSpanHook(LifecycleHook, abc.ABC):
    """Called when a `__tracer` span is entered."""

    @abc.abstractmethod
    def pre_start_span(
        self,
        *,
        action: str,
        action_sequence_id: int,
        span: ActionSpan,
        span_dependencies: list[str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PreStartSpanHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PreStartSpanHook` (awaited by `async with __tracer(...)`)."""

    @abc.abstractmethod
    async def pre_start_span(
        self,
        *,
        action: str,
        action_sequence_id: int,
        span: ActionSpan,
        span_dependencies: list[str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PostEndSpanHook(LifecycleHook, abc.ABC):
    """Called when a `__tracer` span is left."""

    @abc.abstractmethod
    def post_end_span(
        self,
        *,
        action: str,
        action_sequence_id: int,
        span: ActionSpan,
        span_dependencies: list[str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class PostEndSpanHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PostEndSpanHook` (awaited by `async with __tracer(...)`)."""

    @abc.abstractmethod
    async def post_end_span(
        self,
        *,
        action: str,
        action_sequence_id: int,
        span: ActionSpan,
        span_dependencies: list[str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class DoLogAttributeHook(LifecycleHook, abc.ABC):
    """Called by `log_attributes` of a tracer (`span` is None outside every span)."""

    @abc.abstractmethod
    def do_log_attributes(
        self,
        *,
        attributes: dict[str, Any],
        action: str,
        action_sequence_id: int,
        span: ActionSpan | None,
        tags: dict[str, str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


class DoLogAttributeHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `DoLogAttributeHook`; tracers call only sync hooks, as Burr's do."""

    @abc.abstractmethod
    async def do_log_attributes(
        self,
        *,
        attributes: dict[str, Any],
        action: str,
        action_sequence_id: int,
        span: ActionSpan | None,
        tags: dict[str, str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None: ...


LifecycleAdapter = Union[  # noqa: UP007 (a runtime alias, as Burr's, usable in isinstance)
    PostApplicationCreateHook,
    PreApplicationExecuteCallHook,
    PreApplicationExecuteCallHookAsync,
    PostApplicationExecuteCallHook,
    PostApplicationExecuteCallHookAsync,
    PreRunStepHook,
    PreRunStepHookAsync,
    PostRunStepHook,
    PostRunStepHookAsync,
    PreStartStreamHook,
    PreStartStreamHookAsync,
    PostStreamItemHook,
    PostStreamItemHookAsync,
    PostEndStreamHook,
    PostEndStreamHookAsync,
    PreStartSpanHook,
    PreStartSpanHookAsync,
    PostEndSpanHook,
    PostEndSpanHookAsync,
    DoLogAttributeHook,
    DoLogAttributeHookAsync,
]
"""Any hook class (Burr's name); an object of no such class with hook methods is a hook too."""


# -- roles: which hooks an object implements ------------------------------------------------


@runtime_checkable
class _PostApplicationCreate(Protocol):
    def post_application_create(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PreRunExecuteCall(Protocol):
    def pre_run_execute_call(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PostRunExecuteCall(Protocol):
    def post_run_execute_call(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PreRunStep(Protocol):
    def pre_run_step(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PostRunStep(Protocol):
    def post_run_step(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PreStartStream(Protocol):
    def pre_start_stream(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PostStreamItem(Protocol):
    def post_stream_item(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PostEndStream(Protocol):
    def post_end_stream(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PreStartSpan(Protocol):
    def pre_start_span(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _PostEndSpan(Protocol):
    def post_end_span(self, **kwargs: Any) -> Any: ...


@runtime_checkable
class _DoLogAttributes(Protocol):
    def do_log_attributes(self, **kwargs: Any) -> Any: ...


_ROLES: dict[str, type] = {
    "post_application_create": _PostApplicationCreate,
    "pre_run_execute_call": _PreRunExecuteCall,
    "post_run_execute_call": _PostRunExecuteCall,
    "pre_run_step": _PreRunStep,
    "post_run_step": _PostRunStep,
    "pre_start_stream": _PreStartStream,
    "post_stream_item": _PostStreamItem,
    "post_end_stream": _PostEndStream,
    "pre_start_span": _PreStartSpan,
    "post_end_span": _PostEndSpan,
    "do_log_attributes": _DoLogAttributes,
}
HOOK_METHODS = tuple(_ROLES)
"""Every hook method name, in the order of the lifecycle."""
_SPAN_HOOKS = frozenset({"pre_start_span", "post_end_span", "do_log_attributes"})
_STREAM_HOOKS = frozenset({"pre_start_stream", "post_stream_item", "post_end_stream"})
_CALL_HOOKS = frozenset({"pre_run_execute_call", "post_run_execute_call"})

_METHODS_OF: dict[type, tuple[tuple[str, bool], ...]] = {}


def hook_methods_of(hook: object) -> tuple[tuple[str, bool], ...]:
    """`(method name, is async)` of each hook method `hook` has, decided once per class (a
    runtime Protocol check costs ~10 µs and every child of a fan-out builds an app); an
    object carrying hook methods of its own (a `SimpleNamespace`) is decided by itself."""
    own = getattr(hook, "__dict__", None)
    if own and not own.keys().isdisjoint(_ROLES):
        return _decide(hook)
    cls = type(hook)
    found = _METHODS_OF.get(cls)
    if found is None:
        found = _METHODS_OF[cls] = _decide(hook)
    return found


def _decide(hook: object) -> tuple[tuple[str, bool], ...]:
    return tuple(
        (name, inspect.iscoroutinefunction(getattr(hook, name)))
        for name, role in _ROLES.items()
        if isinstance(hook, role)
    )


def hooks_for(hooks: list[Any], method: str) -> list[Any]:
    """The hooks that implement `method`, in registration order."""
    if method not in _ROLES:
        raise ValueError(f"{method!r} is not a lifecycle hook; the hooks are {list(HOOK_METHODS)}")
    return [hook for hook in hooks if any(name == method for name, _ in hook_methods_of(hook))]


class HookSet:
    """An application's hooks, grouped by hook method once when the application is built."""

    def __init__(self, hooks: list[Any]) -> None:
        self.hooks = list(hooks)
        self._sync: dict[str, list[Callable[..., Any]]] = {}
        self._async: dict[str, list[Callable[..., Any]]] = {}
        for hook in self.hooks:
            for name, is_async in hook_methods_of(hook):
                (self._async if is_async else self._sync).setdefault(name, []).append(
                    getattr(hook, name)
                )
        # what a step or call asks before doing any hook work (every child app builds a set)
        implemented = self._sync.keys() | self._async.keys()
        self.traces = not implemented.isdisjoint(_SPAN_HOOKS)
        """Whether any hook records spans or attributes (else a step needs no tracer)."""
        self.streams = not implemented.isdisjoint(_STREAM_HOOKS)
        self.reports_calls = not implemented.isdisjoint(_CALL_HOOKS)

    def does(self, method: str) -> bool:
        """Whether any hook implements `method` (sync or async)."""
        return method in self._sync or method in self._async

    def methods(self, method: str) -> list[Callable[..., Any]]:
        """The bound `method`s of the hooks, sync and async, in registration order."""
        return [
            getattr(hook, name)
            for hook in self.hooks
            for name, _ in hook_methods_of(hook)
            if name == method
        ]

    def call_sync(self, hook: str, /, **kwargs: Any) -> None:
        """Call the sync implementations of `hook` (a tracer's spans, execute calls)."""
        for bound in self._sync.get(hook, ()):
            bound(**kwargs)

    async def call_async(self, hook: str, /, **kwargs: Any) -> None:
        """Call the sync implementations of `hook`, then await the async ones in turn."""
        self.call_sync(hook, **kwargs)
        for bound in self._async.get(hook, ()):
            await bound(**kwargs)


def async_hook_reason(hooks: list[Any]) -> str | None:
    """Why an application with these hooks can run only in an async run (an async hook
    method, whatever its class), or None."""
    for hook in hooks:
        names = [name for name, is_async in hook_methods_of(hook) if is_async]
        if names:
            return (
                f"hook {type(hook).__name__} is async: run the application with "
                f"arun/astep/aiterate, or make its {', '.join(names)} sync"
            )
    return None


class _Executing(Protocol):
    """An application as the execute-call hooks see it."""

    _hook_set: HookSet
    _executing: ExecuteMethod | None

    @property
    def uid(self) -> str: ...

    @property
    def partition_key(self) -> str | None: ...

    @property
    def state(self) -> State: ...


_NOT_REPORTED = nullcontext()
"""What `execute_call` gives when no hook hears of the call: a step costs ~10 µs, and a
generator-based context manager 1-3 µs (python -m timeit on this machine)."""


def execute_call(app: _Executing, method: ExecuteMethod) -> AbstractContextManager[None]:
    """Call `pre_run_execute_call`/`post_run_execute_call` around the outermost `method`
    call of `app` (`run` calls `iterate` and `step`: only `run` is reported)."""
    if app._executing is not None or not app._hook_set.reports_calls:
        return _NOT_REPORTED
    return _reported_call(app, method)


def aexecute_call(app: _Executing, method: ExecuteMethod) -> AbstractAsyncContextManager[None]:
    """Async `execute_call`: sync hooks are called, then async ones awaited."""
    if app._executing is not None or not app._hook_set.reports_calls:
        return _NOT_REPORTED
    return _areported_call(app, method)


def _failure(exc: BaseException) -> BaseException | None:
    """What a call that ended with `exc` reports: closing a generator early is no failure."""
    return None if isinstance(exc, GeneratorExit) else exc


def start_call(app: _Executing, method: ExecuteMethod) -> bool:
    """`pre_run_execute_call` (sync hooks) if this is the outermost call of `app` and a hook
    hears of calls; whether it is, and so `finish_call` is due. For a call whose end is not
    where it returns (`stream_result` ends with its stream)."""
    if app._executing is not None or not app._hook_set.reports_calls:
        return False
    app._executing = method
    try:
        app._hook_set.call_sync(
            "pre_run_execute_call", **_call_ids(app, method), state=app.state
        )
    except BaseException:
        app._executing = None
        raise
    return True


def finish_call(app: _Executing, method: ExecuteMethod, exception: BaseException | None) -> None:
    """`post_run_execute_call` (sync hooks) of a call `start_call` reported."""
    app._executing = None
    app._hook_set.call_sync(
        "post_run_execute_call", **_call_ids(app, method), state=app.state, exception=exception
    )


async def astart_call(app: _Executing, method: ExecuteMethod) -> bool:
    """Async `start_call`: sync hooks are called, then async ones awaited."""
    if app._executing is not None or not app._hook_set.reports_calls:
        return False
    app._executing = method
    try:
        await app._hook_set.call_async(
            "pre_run_execute_call", **_call_ids(app, method), state=app.state
        )
    except BaseException:
        app._executing = None
        raise
    return True


async def afinish_call(
    app: _Executing, method: ExecuteMethod, exception: BaseException | None
) -> None:
    """Async `finish_call`."""
    app._executing = None
    await app._hook_set.call_async(
        "post_run_execute_call", **_call_ids(app, method), state=app.state, exception=exception
    )


def _call_ids(app: _Executing, method: ExecuteMethod) -> dict[str, Any]:
    return {"app_id": app.uid, "partition_key": app.partition_key, "method": method}


@contextmanager
def _reported_call(app: _Executing, method: ExecuteMethod) -> Iterator[None]:
    start_call(app, method)
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = _failure(exc)
        raise
    finally:
        finish_call(app, method, error)


@asynccontextmanager
async def _areported_call(app: _Executing, method: ExecuteMethod) -> AsyncIterator[None]:
    await astart_call(app, method)
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = _failure(exc)
        raise
    finally:
        await afinish_call(app, method, error)


# Burr's ready-made hooks, in `burr.lifecycle` too (defined on the classes above)
from fanwise.core._default_hooks import (  # noqa: E402
    SlowDownHook,
    StateAndResultsFullLogger,
)

__all__ = [
    "DoLogAttributeHook",
    "DoLogAttributeHookAsync",
    "ExecuteMethod",
    "HookSet",
    "LifecycleAdapter",
    "LifecycleHook",
    "PostApplicationCreateHook",
    "PostApplicationExecuteCallHook",
    "PostApplicationExecuteCallHookAsync",
    "PostEndSpanHook",
    "PostEndSpanHookAsync",
    "PostEndStreamHook",
    "PostEndStreamHookAsync",
    "PostRunStepHook",
    "PostRunStepHookAsync",
    "PostStreamItemHook",
    "PostStreamItemHookAsync",
    "PreApplicationExecuteCallHook",
    "PreApplicationExecuteCallHookAsync",
    "PreRunStepHook",
    "PreRunStepHookAsync",
    "PreStartSpanHook",
    "PreStartSpanHookAsync",
    "PreStartStreamHook",
    "PreStartStreamHookAsync",
    "SlowDownHook",
    "StateAndResultsFullLogger",
    "aexecute_call",
    "afinish_call",
    "astart_call",
    "async_hook_reason",
    "execute_call",
    "finish_call",
    "hook_methods_of",
    "hooks_for",
    "start_call",
]
