"""Actions: the nodes of a graph, in Burr's class hierarchy.

`Function` computes a result from the state, `Reducer` folds a result into the state, and an
`Action` is both (`run` then `update`). A `SingleStepAction` does both in one
`run_and_update`; `@action` makes one from a function. The streaming kinds live in
`fanwise.core.streaming` and are importable from here too, as from `burr.core.action`.

The runner asks an action for `execute(state, inputs) -> (result, new_state)` (or an
awaitable of it), or, when `streaming`, for `stream(state, inputs)`: an (async) iterator of
`(partial, None)` items ending with `(result, new_state)`. Each kind below implements these
from its user-facing methods.
"""

from __future__ import annotations

import abc
import copy
import inspect
import types
import warnings
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from fanwise.core._declared_reads import (
    UndeclaredReadWarning,
    UndeclaredWriteWarning,
    check_declared_reads,
)
from fanwise.core._function import Function, Reducer
from fanwise.core._parsing import source_of
from fanwise.core.errors import GraphError, InputError
from fanwise.core.state import State

ActionT = TypeVar("ActionT", bound="Action")
C = TypeVar("C", bound=Callable[..., Any])

CONTEXT_PARAM = "__context"
ACTION_FUNCTION = "action_function"
"""The attribute under which a decorated function carries its action (Burr's name)."""
_UNSET = object()

__all__ = [
    "ACTION_FUNCTION",
    "Action",
    "ActionT",
    "AsyncGeneratorReturnType",
    "AsyncStreamingAction",
    "AsyncStreamingResultContainer",
    "C",
    "Condition",
    "Function",
    "FunctionBasedAction",
    "FunctionBasedActionType",
    "FunctionBasedStreamingAction",
    "FunctionRepresentingAction",
    "GeneratorReturnType",
    "Input",
    "Reducer",
    "Result",
    "SingleStepAction",
    "SingleStepStreamingAction",
    "StateType",
    "StreamResultType",
    "StreamType",
    "StreamingAction",
    "StreamingFn",
    "StreamingFnAsync",
    "StreamingResultContainer",
    "UndeclaredReadWarning",
    "UndeclaredWriteWarning",
    "action",
    "as_action",
    "bind",
    "copy_func",
    "create_action",
    "default",
    "derive_inputs_from_fn",
    "expr",
    "lmda",
    "safe_expr",
    "streaming_action",
    "type_eraser",
    "when",
]


def _is_context_param(name: str) -> bool:
    """`__context`, also after name mangling inside a class body (`_Cls__context`)."""
    return name == CONTEXT_PARAM or (name.startswith("_") and name.endswith(CONTEXT_PARAM))


TRACER_PARAM = "__tracer"


def _is_tracer_param(name: str) -> bool:
    """`__tracer` (a `fanwise.core.visibility.TracerFactory`), also after name mangling."""
    return name == TRACER_PARAM or (name.startswith("_") and name.endswith(TRACER_PARAM))


class Action(Function, Reducer, abc.ABC):
    """A step of an application. Subclasses declare `reads`, `writes`, `run` and `update`."""

    _name: str | None = None

    def __init__(self) -> None:
        self._name = None

    @property
    def name(self) -> str | None:
        return self._name

    def with_name(self, name: str) -> Action:
        """A copy of this action under another name."""
        clone = copy.copy(self)
        clone._name = name
        return clone

    @property
    def single_step(self) -> bool:
        """Whether `run_and_update` does the work (Burr's `SingleStepAction`)."""
        return False

    @property
    def streaming(self) -> bool:
        return False

    @property
    def tags(self) -> list[str]:
        """Aliases shared by several actions: `halt_after=["@tag:<tag>"]` names them all."""
        return []

    @property
    def takes_any_inputs(self) -> bool:
        """Whether every input given to the app is passed on (parallel actions forward them)."""
        return False

    def _entry_point(self) -> Callable[..., Any]:
        """The user-written method that receives the inputs (its signature names them)."""
        return self.run

    @property
    def context_param(self) -> str | None:
        """The name under which the action takes the `ApplicationContext`, if it does."""
        cached = self.__dict__.get("_context_param", _UNSET)
        if cached is _UNSET:
            params = inspect.signature(self._entry_point()).parameters
            cached = next((p for p in params if _is_context_param(p)), None)
            self.__dict__["_context_param"] = cached
        return cached

    @property
    def tracer_param(self) -> str | None:
        """The name under which the action takes its step's `TracerFactory`, if it does."""
        cached = self.__dict__.get("_tracer_param", _UNSET)
        if cached is _UNSET:
            params = inspect.signature(self._entry_point()).parameters
            cached = next((p for p in params if _is_tracer_param(p)), None)
            self.__dict__["_tracer_param"] = cached
        return cached

    def validate(self) -> None:
        """Raise a `GraphError` if the action is malformed; called when a graph is built."""

    def input_schema(self) -> Any:
        """A type to validate inputs with (Burr's typing hook); None: inputs are not typed."""
        return None

    def get_source(self) -> str:
        """The source code of the action, for trackers."""
        try:
            return source_of(type(self))
        except (OSError, TypeError):
            return "No source available"

    def execute(self, state: State, inputs: dict[str, Any]) -> Any:
        """(result, new_state), or an awaitable of it for async actions. As in Burr, `run`
        sees only the fields in `reads` (those present); `update` sees the whole state."""
        if self.is_async():
            return self._execute_async(state, inputs)
        return self._reduce(self.run(state.subset(*self.reads), **inputs), state)

    async def _execute_async(self, state: State, inputs: dict[str, Any]) -> Any:
        return self._reduce(await self.run(state.subset(*self.reads), **inputs), state)

    def _reduce(self, result: Any, state: State) -> tuple[dict[str, Any], State]:
        if not isinstance(result, dict):
            raise GraphError(
                f"action {self.name!r} returned a {type(result).__name__} from run(): "
                "results must be dicts"
            )
        return result, self.update(result, state)

    def stream(self, state: State, inputs: dict[str, Any]) -> Any:
        """The stream of a streaming action; other actions have none."""
        raise GraphError(f"action {self.name!r} is not a streaming action")

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the graph record of trackers."""
        required, optional = self.input_spec
        return {
            "name": self.name,
            "reads": list(self.reads),
            "writes": list(self.writes),
            "inputs": required,
            "optional_inputs": optional,
            "is_async": self.is_async(),
            "streaming": self.streaming,
            "type": type(self).__name__,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class SingleStepAction(Action, abc.ABC):
    """An action that computes its result and new state at once, in `run_and_update`."""

    @property
    def single_step(self) -> bool:
        return True

    @abc.abstractmethod
    def run_and_update(self, state: State, **run_kwargs: Any) -> Any:
        """`(result, new_state)`, or just the new state (its written fields are then the
        result); async actions define it with `async def`."""

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        raise GraphError(f"single-step action {self.name!r} runs through run_and_update()")

    def update(self, result: dict[str, Any], state: State) -> State:
        raise GraphError(f"single-step action {self.name!r} runs through run_and_update()")

    def _entry_point(self) -> Callable[..., Any]:
        return self.run_and_update

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run_and_update)

    def execute(self, state: State, inputs: dict[str, Any]) -> Any:
        if self.is_async():
            return self._execute_async(state, inputs)
        return self._split(self.run_and_update(state, **inputs))

    async def _execute_async(self, state: State, inputs: dict[str, Any]) -> Any:
        return self._split(await self.run_and_update(state, **inputs))

    def _split(self, returned: Any) -> tuple[dict[str, Any], State]:
        if isinstance(returned, State):
            return {k: returned[k] for k in self.writes if k in returned}, returned
        if (
            isinstance(returned, tuple)
            and len(returned) == 2
            and isinstance(returned[0], dict)
            and isinstance(returned[1], State)
        ):
            return returned
        raise TypeError(
            f"action {self.name!r} must return a State or a (dict, State) tuple, "
            f"got {type(returned).__name__}"
        )


def parse_signature(
    fn: Callable[..., Any], bound: dict[str, Any]
) -> tuple[list[str], list[str], str | None, bool]:
    """(required inputs, optional inputs, context parameter, takes **kwargs) of an action
    function: every parameter after the state that is not bound or injected."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        name = getattr(fn, "__name__", repr(fn))
        raise GraphError(f"action {name!r} must take the state as first parameter")
    required: list[str] = []
    optional: list[str] = []
    context_param = None
    var_keyword = False
    for param in params[1:]:
        if param.kind is param.VAR_KEYWORD:
            var_keyword = True
        elif param.kind is param.VAR_POSITIONAL:
            continue
        elif _is_context_param(param.name):
            context_param = param.name
        elif _is_tracer_param(param.name) or param.name in bound:
            continue
        elif param.default is param.empty:
            required.append(param.name)
        else:
            optional.append(param.name)
    return required, optional, context_param, var_keyword


class _FunctionActionMixin:
    """What the two function-based actions share: a function, its declarations and bound
    inputs."""

    _fn: Callable[..., Any]
    _bound: dict[str, Any]
    _reads: list[str]
    _writes: list[str]
    _tags: list[str]

    _is_async_function: Callable[[Any], bool]
    """How the kind tells an async function of its own (a coroutine or an async generator)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        reads: list[str],
        writes: list[str],
        bound_params: dict[str, Any] | None = None,
        *,
        originating_fn: Callable[..., Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self._init_function(fn, reads, writes, bound_params, originating_fn, tags)
        self._is_async = self._is_async_function(fn)

    def is_async(self) -> bool:
        return self._is_async

    def _init_function(
        self,
        fn: Callable[..., Any],
        reads: list[str],
        writes: list[str],
        bound_params: dict[str, Any] | None,
        originating_fn: Callable[..., Any] | None,
        tags: list[str] | None,
    ) -> None:
        self._fn = fn
        self._originating_fn = originating_fn or fn
        self._reads = list(reads)
        self._writes = list(writes)
        self._bound = dict(bound_params or {})
        self._tags = list(tags or [])
        self._name = getattr(fn, "__name__", None)
        self._required, self._optional, self._context_param, self._var_keyword = (
            parse_signature(fn, self._bound)
        )
        if originating_fn is None:
            check_declared_reads(fn, self._reads)

    @property
    def fn(self) -> Callable[..., Any]:
        return self._fn

    @property
    def reads(self) -> list[str]:
        return self._reads

    @property
    def writes(self) -> list[str]:
        return self._writes

    @property
    def tags(self) -> list[str]:
        return self._tags

    @property
    def inputs(self) -> list[str]:
        return self._required

    @property
    def optional_inputs(self) -> list[str]:
        return self._optional

    @property
    def input_spec(self) -> tuple[list[str], list[str]]:
        return self._required, self._optional

    @property
    def context_param(self) -> str | None:
        return self._context_param

    @property
    def tracer_param(self) -> str | None:
        cached = self.__dict__.get("_tracer_param", _UNSET)
        if cached is _UNSET:
            params = inspect.signature(self._fn).parameters
            cached = next((p for p in params if _is_tracer_param(p)), None)
            self.__dict__["_tracer_param"] = cached
        return cached

    def get_source(self) -> str:
        try:
            return source_of(self._originating_fn)
        except (OSError, TypeError):
            return "No source available"

    def bind(self, **kwargs: Any) -> Any:
        """A copy with some inputs fixed now; they are no longer asked of the caller."""
        if not self._var_keyword:
            unknown = [k for k in kwargs if k not in self._required + self._optional]
            if unknown:
                raise InputError(f"action {self._name!r} has no parameter(s) {unknown} to bind")
        clone = type(self)(
            self._fn,
            self._reads,
            self._writes,
            {**self._bound, **kwargs},
            originating_fn=self._originating_fn,
            tags=self._tags,
        )
        clone._name = self._name
        return clone

    def with_params(self, **kwargs: Any) -> Any:
        """Burr's name for `bind`."""
        return self.bind(**kwargs)


class FunctionBasedAction(_FunctionActionMixin, SingleStepAction):
    """An action made from `def f(state, **inputs) -> State | tuple[dict, State]`."""

    ACTION_FUNCTION = ACTION_FUNCTION
    _is_async_function = staticmethod(inspect.iscoroutinefunction)

    def run_and_update(self, state: State, **run_kwargs: Any) -> Any:
        return self._fn(state, **self._bound, **run_kwargs)


class Result(Action):
    """Terminal action whose result is the named state fields."""

    def __init__(self, *fields: str) -> None:
        super().__init__()
        self._fields = list(fields)

    @property
    def reads(self) -> list[str]:
        return self._fields

    @property
    def writes(self) -> list[str]:
        return []

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        """The fields present in state; a missing one is left out with a warning, as Burr
        leaves it out."""
        missing = [k for k in self._fields if k not in state]
        if missing:
            warnings.warn(
                f"Result {self.name!r}: field(s) {missing} are not in state; left out of the "
                "result",
                stacklevel=2,
            )
        return {k: state[k] for k in self._fields if k in state}

    def update(self, result: dict[str, Any], state: State) -> State:
        return state


class Input(Action):
    """Writes the named inputs into state."""

    def __init__(self, *fields: str) -> None:
        super().__init__()
        self._fields = list(fields)

    @property
    def reads(self) -> list[str]:
        return []

    @property
    def writes(self) -> list[str]:
        return self._fields

    @property
    def inputs(self) -> list[str]:
        return self._fields

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        return {k: run_kwargs[k] for k in self._fields}

    def update(self, result: dict[str, Any], state: State) -> State:
        return state.update(**result)


# -- decorators ---------------------------------------------------------------------------


def copy_func(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object with `fn`'s code and attributes, so that setting attributes on
    it leaves `fn` alone."""
    if not isinstance(fn, types.FunctionType):
        return copy.copy(fn)
    clone = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__dict__.update(fn.__dict__)
    clone.__qualname__, clone.__module__, clone.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
    return clone


class FunctionRepresentingAction(Protocol):
    """What `@action` / `@streaming_action` return: the function, carrying its action."""

    action_function: Action

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def bind(self, **kwargs: Any) -> FunctionRepresentingAction: ...


def represent(fn: Callable[..., Any], built: Action) -> Callable[..., Any]:
    """Attach `built` to the function `fn` stands for: `fn.action_function` (Burr's name),
    `fn.action`, `fn.bind(...)` (a copy of the function with inputs fixed, as Burr's) and
    `fn.with_name(name)` (the action renamed)."""
    setattr(fn, ACTION_FUNCTION, built)
    fn.action = built  # type: ignore[attr-defined]

    def bind(**kwargs: Any) -> Callable[..., Any]:
        """This function, its action with the given inputs fixed."""
        return represent(copy_func(fn), built.bind(**kwargs))  # type: ignore[attr-defined]

    fn.bind = bind  # type: ignore[attr-defined]
    fn.with_name = built.with_name  # type: ignore[attr-defined]
    return fn


def bind(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """Burr's module-level `bind`: `fn.bind(**kwargs)` of a decorated function."""
    return fn.bind(**kwargs)  # type: ignore[attr-defined]


def derive_inputs_from_fn(
    bound_params: dict[str, Any], fn: Callable[..., Any]
) -> tuple[list[str], list[str]]:
    """Burr's helper: the (required, optional) inputs of an action function."""
    required, optional, _, _ = parse_signature(fn, bound_params)
    return required, optional


def action(
    reads: list[str], writes: list[str], tags: list[str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn `def f(state, **inputs)` into an action; the function stays callable. A
    parameter with a default is an optional input; `__context` receives the
    `ApplicationContext`. Burr's `action.pydantic` (an integration) is not provided."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        return represent(fn, FunctionBasedAction(fn, reads, writes, tags=tags))

    return decorator


def type_eraser(func: Callable[..., Any]) -> Callable[..., Any]:
    """Burr's marker for a `run`/`stream_run`/`run_and_update` override that names its
    inputs instead of taking `**run_kwargs`: the erasure is in this annotation (type
    checkers see `Callable[..., Any]`); at run time the method is returned unchanged."""
    return func


def as_action(obj: Any, name: str | None = None) -> Action:
    """An `Action` from an action instance or a decorated function, renamed if asked."""
    found = getattr(obj, ACTION_FUNCTION, None) if not isinstance(obj, Action) else obj
    if not isinstance(found, Action):
        label = name or getattr(obj, "__name__", repr(obj))
        raise GraphError(
            f"{label!r} is not an action: decorate it with @action(reads=..., writes=...) "
            "or @streaming_action(...), or subclass fanwise.core.Action"
        )
    if name is not None and name != found.name:
        found = found.with_name(name)
    if not found.name:
        raise GraphError(f"action {found!r} has no name: pass it as name=action")
    return found


def create_action(action_: Any, name: str) -> Action:
    """Burr's factory: the action of `action_` (an `Action` or a decorated function) under
    `name`."""
    return as_action(action_, name)


# Re-exported: `burr.core.action` holds the streaming kinds and the conditions too.
from fanwise.core.conditions import Condition, default, expr, lmda, safe_expr, when  # noqa: E402
from fanwise.core.streaming import (  # noqa: E402
    AsyncGeneratorReturnType,
    AsyncStreamingAction,
    AsyncStreamingResultContainer,
    FunctionBasedStreamingAction,
    GeneratorReturnType,
    SingleStepStreamingAction,
    StateType,
    StreamingAction,
    StreamingFn,
    StreamingFnAsync,
    StreamingResultContainer,
    StreamResultType,
    StreamType,
    streaming_action,
)

FunctionBasedActionType = FunctionBasedAction | FunctionBasedStreamingAction
