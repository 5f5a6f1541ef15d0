"""Actions: the nodes of a graph. Function-based (`@action`), class-based, `Result`, `Input`."""

from __future__ import annotations

import abc
import copy
import inspect
from collections.abc import Callable
from typing import Any

from fanwise.core.errors import GraphError, InputError
from fanwise.core.state import State

CONTEXT_PARAM = "__context"
_UNSET = object()


def _is_context_param(name: str) -> bool:
    """`__context`, also after name mangling inside a class body (`_Cls__context`)."""
    return name == CONTEXT_PARAM or (name.startswith("_") and name.endswith(CONTEXT_PARAM))


class Action(abc.ABC):
    """A step of an application. Subclasses declare `reads`, `writes`, `run` and `update`."""

    _name: str | None = None

    @property
    def name(self) -> str | None:
        return self._name

    def with_name(self, name: str) -> Action:
        """A copy of this action under another name."""
        clone = copy.copy(self)
        clone._name = name
        return clone

    @property
    @abc.abstractmethod
    def reads(self) -> list[str]: ...

    @property
    @abc.abstractmethod
    def writes(self) -> list[str]: ...

    @property
    def inputs(self) -> list[str]:
        """Inputs the caller must provide."""
        return []

    @property
    def optional_inputs(self) -> list[str]:
        """Inputs the caller may provide."""
        return []

    @property
    def context_param(self) -> str | None:
        """The name under which `run` takes the `ApplicationContext`, if it does."""
        cached = self.__dict__.get("_context_param", _UNSET)
        if cached is _UNSET:
            params = inspect.signature(self.run).parameters
            cached = next((p for p in params if _is_context_param(p)), None)
            self.__dict__["_context_param"] = cached
        return cached

    @property
    def streaming(self) -> bool:
        return False

    @property
    def takes_any_inputs(self) -> bool:
        """Whether every input given to the app is passed on (parallel actions forward them)."""
        return False

    def validate(self) -> None:
        """Raise a `GraphError` if the action is malformed; called when a graph is built."""

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run)

    @abc.abstractmethod
    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        """Compute a result from the state and inputs."""

    @abc.abstractmethod
    def update(self, result: dict[str, Any], state: State) -> State:
        """Fold the result into the state."""

    def execute(self, state: State, inputs: dict[str, Any]) -> Any:
        """(result, new_state), or an awaitable of it for async actions."""
        if self.is_async():
            return self._execute_async(state, inputs)
        result = self.run(state, **inputs)
        return result, self.update(result, state)

    async def _execute_async(self, state: State, inputs: dict[str, Any]) -> Any:
        result = await self.run(state, **inputs)
        return result, self.update(result, state)

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the graph record of trackers."""
        return {
            "name": self.name,
            "reads": list(self.reads),
            "writes": list(self.writes),
            "inputs": list(self.inputs),
            "optional_inputs": list(self.optional_inputs),
            "is_async": self.is_async(),
            "streaming": self.streaming,
            "type": type(self).__name__,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FunctionBasedAction(Action):
    """An action made from `def f(state, **inputs) -> State | tuple[dict, State]`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        reads: list[str],
        writes: list[str],
        bound: dict[str, Any] | None = None,
        streaming: bool = False,
    ) -> None:
        self._fn = fn
        self._reads = list(reads)
        self._writes = list(writes)
        self._bound = dict(bound or {})
        self._streaming = streaming
        self._name = fn.__name__
        self._required, self._optional, self._context_param = self._parse_signature()
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)

    def _parse_signature(self) -> tuple[list[str], list[str], str | None]:
        params = list(inspect.signature(self._fn).parameters.values())
        if not params:
            raise GraphError(f"action {self._fn.__name__!r} must take the state as first parameter")
        required: list[str] = []
        optional: list[str] = []
        context_param = None
        for param in params[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if _is_context_param(param.name):
                context_param = param.name
            elif param.name in self._bound:
                continue
            elif param.default is param.empty:
                required.append(param.name)
            else:
                optional.append(param.name)
        return required, optional, context_param

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
    def inputs(self) -> list[str]:
        return self._required

    @property
    def optional_inputs(self) -> list[str]:
        return self._optional

    @property
    def context_param(self) -> str | None:
        return self._context_param

    @property
    def streaming(self) -> bool:
        return self._streaming

    def is_async(self) -> bool:
        return self._is_async


    def bind(self, **kwargs: Any) -> FunctionBasedAction:
        """Fix some inputs now; they are no longer asked of the caller."""
        unknown = [k for k in kwargs if k not in self._required + self._optional]
        if unknown:
            raise InputError(f"action {self.name!r} has no parameter(s) {unknown} to bind")
        clone = FunctionBasedAction(
            self._fn, self._reads, self._writes, {**self._bound, **kwargs}, self._streaming
        )
        clone._name = self._name
        return clone

    def _call(self, state: State, inputs: dict[str, Any]) -> Any:
        return self._fn(state, **self._bound, **inputs)

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("function-based actions run through execute()")

    def update(self, result: dict[str, Any], state: State) -> State:
        raise NotImplementedError("function-based actions run through execute()")

    def execute(self, state: State, inputs: dict[str, Any]) -> Any:
        if self._streaming:
            raise NotImplementedError("streaming actions run through stream()")
        if self._is_async:
            return self._execute_async(state, inputs)
        return self._split(self._call(state, inputs))

    async def _execute_async(self, state: State, inputs: dict[str, Any]) -> Any:
        return self._split(await self._call(state, inputs))

    def stream(self, state: State, inputs: dict[str, Any]) -> Any:
        """The (async) generator of `(partial_result, None)` ... `(result, state)` items."""
        return self._call(state, inputs)

    def _split(self, returned: Any) -> tuple[dict[str, Any], State]:
        if isinstance(returned, State):
            return {k: returned[k] for k in self._writes if k in returned}, returned
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


class Result(Action):
    """Terminal action whose result is the named state fields."""

    def __init__(self, *fields: str) -> None:
        self._fields = list(fields)

    @property
    def reads(self) -> list[str]:
        return self._fields

    @property
    def writes(self) -> list[str]:
        return []

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        return {k: state[k] for k in self._fields}

    def update(self, result: dict[str, Any], state: State) -> State:
        return state


class Input(Action):
    """Writes the named inputs into state."""

    def __init__(self, *fields: str) -> None:
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


def _decorate(reads: list[str], writes: list[str], streaming: bool) -> Callable[[Any], Any]:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        built = FunctionBasedAction(fn, reads, writes, streaming=streaming)
        fn.action = built  # type: ignore[attr-defined]
        fn.bind = built.bind  # type: ignore[attr-defined]
        fn.with_name = built.with_name  # type: ignore[attr-defined]
        return fn

    return decorator


def action(reads: list[str], writes: list[str]) -> Callable[[Any], Any]:
    """Turn `def f(state, **inputs)` into an action; the function stays callable."""
    return _decorate(reads, writes, streaming=False)


def streaming_action(reads: list[str], writes: list[str]) -> Callable[[Any], Any]:
    """An action that yields `(partial, None)` items and finally `(result, state)`."""
    return _decorate(reads, writes, streaming=True)


def as_action(obj: Any, name: str | None = None) -> Action:
    """An `Action` from an action instance or a decorated function, renamed if asked."""
    if isinstance(obj, Action):
        found = obj
    elif callable(obj) and isinstance(getattr(obj, "action", None), Action):
        found = obj.action
    else:
        label = name or getattr(obj, "__name__", repr(obj))
        raise GraphError(
            f"{label!r} is not an action: decorate it with @action(reads=..., writes=...) "
            "or subclass fanwise.core.Action"
        )
    if name is not None and name != found.name:
        found = found.with_name(name)
    if not found.name:
        raise GraphError(f"action {found!r} has no name: pass it as name=action")
    return found
