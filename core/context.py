"""`ApplicationContext`: what a running action may know about its application."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParentPointer:
    """Points at one step of another application (a fork source or a spawning parent)."""

    app_id: str
    sequence_id: int | None
    partition_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "sequence_id": self.sequence_id,
            "partition_key": self.partition_key,
        }


@dataclass(frozen=True)
class ApplicationContext:
    """Passed to an action parameter named `__context`; everything needed to spawn children."""

    app_id: str
    partition_key: str | None
    sequence_id: int
    action_name: str
    tracker: Any
    state_persister: Any
    state_initializer: Any
    executor: Any
    spawning_parent: ParentPointer | None
    event_sink: Any = None
    """Where a watched run's fan-outs emit their events (`Application.stream_fanout`)."""
    event_path: tuple[int, ...] = ()
    """Positions of this app in the fan-outs above it, for nested fan-outs' events."""

    @staticmethod
    def get() -> ApplicationContext | None:
        """The context of the action running now (Burr's context-local lookup, instead of a
        `__context` parameter); None outside an action."""
        current = _running.get()
        return current() if current is not None else None

    @property
    def parallel_executor_factory(self) -> Callable[[], Executor]:
        """Burr's name: a callable giving an executor to run children on, as in `with
        context.parallel_executor_factory() as pool:` (the app's factory, a registered name,
        or threads by default). An executor given as an instance comes back itself, so such
        a `with` shuts it down."""
        executor = self.executor
        if isinstance(executor, Executor):
            return lambda: executor
        if isinstance(executor, str):
            from fanwise.executors import create

            return lambda: create(executor)
        if executor is None:
            from fanwise.executors import MultiThreadedExecutor

            return MultiThreadedExecutor
        return executor


_Maker = Callable[[], ApplicationContext]
_running: ContextVar[_Maker | None] = ContextVar("fanwise_running_action", default=None)
"""Makes the context of the action running in this thread or task (built only if asked)."""


def entered(make: _Maker) -> Token[_Maker | None]:
    """Mark an action as running (its context made by `make` when `get()` asks)."""
    return _running.set(make)


def left(token: Token[_Maker | None]) -> None:
    """The action marked by `entered` is no longer running. A streamed step may end in
    another context than it started in (closed by another task): it is then unset there."""
    try:
        _running.reset(token)
    except ValueError:
        _running.set(None)
