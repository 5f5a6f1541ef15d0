"""Spans inside an action (Burr's `burr.visibility`): an action that takes a `__tracer`
parameter gets a `TracerFactory`; `with __tracer("name") as t:` opens a span (nested `with`
blocks nest), `t.log_attributes(k=v)` records values. Both reach the application's hooks
(`pre_start_span`, `post_end_span`, `do_log_attributes`), which is how a tracker records
them. `@trace()` does the same for a plain function called from an action.

A span's `uid` is `"<action sequence id>:<index path>"` (`"3:0"`, then `"3:0.0"` for its
first child, `"3:1"` for the next top-level span), unique within an application, as Burr
numbers them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from fanwise.core.hooks import HookSet

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class ActionSpan:
    """One open (or closed) span of an action; `parent` is the span it is nested in."""

    action: str
    action_sequence_id: int
    name: str
    parent: ActionSpan | None
    sequence_id: int = 0
    """Its index among its siblings (top-level spans of the step, or its parent's children)."""
    child_count: int = 0

    def spawn(self, name: str) -> ActionSpan:
        """A new child span of this one."""
        self.child_count += 1
        return ActionSpan(
            self.action, self.action_sequence_id, name, self, sequence_id=self.child_count - 1
        )

    @property
    def uid(self) -> str:
        path = []
        span: ActionSpan | None = self
        while span is not None:
            path.append(str(span.sequence_id))
            span = span.parent
        return f"{self.action_sequence_id}:{'.'.join(reversed(path))}"

    @classmethod
    def create_initial(
        cls, action: str, name: str, sequence_id: int, action_sequence_id: int
    ) -> ActionSpan:
        """A top-level span (no parent), the `sequence_id`-th of its step."""
        return cls(action, action_sequence_id, name, None, sequence_id=sequence_id)


class _Open(NamedTuple):
    """The innermost open span, and the factory (one per step) it belongs to."""

    factory: TracerFactory
    span: ActionSpan


_open_span: ContextVar[_Open | None] = ContextVar("fanwise_open_span", default=None)
_active_factory: ContextVar[TracerFactory | None] = ContextVar(
    "fanwise_tracer_factory", default=None
)


class ActionSpanTracer:
    """The context manager `__tracer(name)` returns: entering opens a span, leaving closes it;
    works with `with` and `async with` (which also awaits async span hooks)."""

    def __init__(self, factory: TracerFactory, span_name: str, span_dependencies: list[str]):
        self._factory = factory
        self.span_name = span_name
        self.span_dependencies = span_dependencies
        self._span: ActionSpan | None = None
        self._outer: _Open | None = None

    @property
    def action(self) -> str:
        return self._factory.action

    @property
    def action_sequence_id(self) -> int:
        return self._factory.action_sequence_id

    def _open(self) -> ActionSpan:
        outer = _open_span.get()
        if outer is not None and outer.factory is self._factory:
            span = outer.span.spawn(self.span_name)
        else:  # no span open in this step (one of another app's step does not count)
            span = ActionSpan.create_initial(
                self.action, self.span_name, self._factory._take_top_level_index(),
                self.action_sequence_id,
            )
        self._outer, self._span = outer, span
        _open_span.set(_Open(self._factory, span))
        return span

    def _close(self) -> ActionSpan:
        span = self._span
        if span is None:
            raise RuntimeError(f"span {self.span_name!r} was left without being entered")
        _open_span.set(self._outer)
        return span

    def _hook_kwargs(self, span: ActionSpan) -> dict[str, Any]:
        return {**self._factory._ids, "span": span, "span_dependencies": self.span_dependencies}

    def __enter__(self) -> ActionSpanTracer:
        span = self._open()
        if self._factory._hooks.traces:
            self._factory._hooks.call_sync("pre_start_span", **self._hook_kwargs(span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._close()
        if self._factory._hooks.traces:
            self._factory._hooks.call_sync("post_end_span", **self._hook_kwargs(span))

    async def __aenter__(self) -> ActionSpanTracer:
        span = self._open()
        await self._factory._hooks.call_async("pre_start_span", **self._hook_kwargs(span))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._close()
        await self._factory._hooks.call_async("post_end_span", **self._hook_kwargs(span))

    def log_attribute(self, key: str, value: Any) -> None:
        """Record one value, on the innermost open span of this step."""
        self.log_attributes(**{key: value})

    def log_attributes(self, **attributes: Any) -> None:
        """Record values (`do_log_attributes`), on the innermost open span of this step, or
        on the step itself outside every span."""
        self._factory._log(attributes)


class TracerFactory(ActionSpanTracer):
    """What a `__tracer` parameter receives, one per step: call it for a span
    (`__tracer("name", span_dependencies=[...])`); its own `log_attributes` records on the
    innermost open span, or on the step outside every span."""

    def __init__(
        self,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        lifecycle_adapters: HookSet,
    ) -> None:
        super().__init__(self, "root", [])
        self._action = action
        self._sequence_id = sequence_id
        self._hooks = lifecycle_adapters
        self._ids = {
            "action": action,
            "action_sequence_id": sequence_id,
            "app_id": app_id,
            "partition_key": partition_key,
        }
        self._top_level_spans = 0

    @property
    def action(self) -> str:
        return self._action

    @property
    def action_sequence_id(self) -> int:
        return self._sequence_id

    def __call__(
        self, span_name: str, span_dependencies: list[str] | None = None
    ) -> ActionSpanTracer:
        if not isinstance(span_name, str):
            raise TypeError(f"a span's name must be a str, not {span_name!r}")
        return ActionSpanTracer(self, span_name, list(span_dependencies or ()))

    def _take_top_level_index(self) -> int:
        self._top_level_spans += 1
        return self._top_level_spans - 1

    def _log(self, attributes: dict[str, Any]) -> None:
        open_span = _open_span.get()
        span = open_span.span if open_span is not None and open_span.factory is self else None
        self._hooks.call_sync(
            "do_log_attributes", **self._ids, attributes=attributes, span=span, tags={}
        )


def activate(factory: TracerFactory | None) -> Any:
    """Make `factory` the one `@trace()` uses (the runner does this around an action);
    returns the token for `deactivate`."""
    return _active_factory.set(factory)


def deactivate(token: Any) -> None:
    """Undo `activate`. A streamed step may end in another context than it started in
    (an async generator closed by another task): the factory is then just unset there."""
    try:
        _active_factory.reset(token)
    except ValueError:
        _active_factory.set(None)


class trace:  # noqa: N801 (Burr's name: a decorator used as `@trace()`)
    """`@trace()` on a function: called from inside an action of a tracked application, it
    runs in a span named after it, with its arguments and return value logged as attributes
    (`capture_inputs`/`capture_outputs`; `input_filterlist` names arguments to leave out).
    Called anywhere else it just runs."""

    def __init__(
        self,
        capture_inputs: bool = True,
        capture_outputs: bool = True,
        input_filterlist: list[str] | None = None,
        span_name: str | None = None,
    ) -> None:
        self.capture_inputs = capture_inputs
        self.capture_outputs = capture_outputs
        self.input_filterlist = frozenset(input_filterlist or ())
        self.span_name = span_name

    def __call__(self, fn: F) -> F:
        name = self.span_name or fn.__name__
        signature = inspect.signature(fn)
        identity = {"__burr_function": fn.__qualname__, "__burr_function_hash": _code_hash(fn)}

        def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            try:
                bound = signature.bind(*args, **kwargs).arguments
            except TypeError as exc:
                raise TypeError(f"{fn.__name__}: {exc}") from None
            return {k: v for k, v in bound.items() if k not in self.input_filterlist}

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                factory = _active_factory.get()
                if factory is None:
                    return await fn(*args, **kwargs)
                with factory(name) as span:
                    if self.capture_inputs:
                        span.log_attributes(**arguments(args, kwargs))
                    span.log_attributes(**identity)
                    output = await fn(*args, **kwargs)
                    if self.capture_outputs:
                        span.log_attributes(**{"return": output})
                    return output

            return traced_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def traced(*args: Any, **kwargs: Any) -> Any:
            factory = _active_factory.get()
            if factory is None:
                return fn(*args, **kwargs)
            with factory(name) as span:
                if self.capture_inputs:
                    span.log_attributes(**arguments(args, kwargs))
                span.log_attributes(**identity)
                output = fn(*args, **kwargs)
                if self.capture_outputs:
                    span.log_attributes(**{"return": output})
                return output

        return traced  # type: ignore[return-value]


def _code_hash(fn: Callable[..., Any]) -> str:
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        return "Unable to retrieve source code for hash"


__all__ = ["ActionSpan", "ActionSpanTracer", "TracerFactory", "trace"]
