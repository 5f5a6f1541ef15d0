"""`SubGraphTask`: one child of a fan-out, as users describe it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fanwise.core.state import State
from fanwise.parallel.graphs import RunnableGraph, as_runnable


@dataclass
class SubGraphTask:
    """A child: run `graph` from `state` with `inputs` under `application_id`.

    `graph=` takes a `RunnableGraph`, an `Action` or an `@action` function (or pass it as
    `action=`). Adapters left as None are filled in from the parallel action's cascade.
    `application_id=None` gets the stable hashed child id of its position.
    """

    graph: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)
    state: State = field(default_factory=State)
    application_id: str | None = None
    tracker: Any = None
    state_persister: Any = None
    state_initializer: Any = None
    action: Any = None

    def __post_init__(self) -> None:
        if (self.graph is None) == (self.action is None):
            raise TypeError("SubGraphTask needs exactly one of graph= or action=")
        self.graph = as_runnable(self.graph if self.graph is not None else self.action)
        self.action = None
        if not isinstance(self.state, State):
            self.state = State(dict(self.state))

    @property
    def runnable(self) -> RunnableGraph:
        return self.graph

    @classmethod
    def planned(cls, runnable: RunnableGraph, state: State, inputs: dict[str, Any]) -> SubGraphTask:
        """A task from parts already checked (the Map* actions' own plans): no validation,
        which costs a trivial child more than anything else in planning."""
        task = cls.__new__(cls)
        task.graph, task.inputs, task.state = runnable, inputs, state
        task.application_id = task.tracker = task.state_persister = None
        task.state_initializer = task.action = None
        return task

