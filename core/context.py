"""`ApplicationContext`: what a running action may know about its application."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fanwise.core.actions import Action
    from fanwise.core.application import Application


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
        running = running_action.get()
        if running is None:
            return None
        app, action, sequence_id = running
        return app._context(action, sequence_id)

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


running_action: ContextVar[tuple[Application, Action, int] | None] = ContextVar(
    "fanwise_running_action", default=None
)
"""(app, action, sequence id) of the action running in this thread or task: the runner sets
it around each action (a tuple, not a made context: every step pays for setting it, only
`get()` pays for the context)."""


def left(token: Token[tuple[Application, Action, int] | None]) -> None:
    """The action marked in `running_action` is no longer running. A streamed step may end
    in another context than it started in (closed by another task): it is then unset
    there."""
    try:
        running_action.reset(token)
    except ValueError:
        running_action.set(None)
