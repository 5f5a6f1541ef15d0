"""`ApplicationContext`: what a running action may know about its application."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
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
