"""`RunnableGraph`: a graph plus where a child starts and when it is done."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fanwise.core.actions import Action, as_action
from fanwise.core.graph import Graph, build_graph
from fanwise.core.state import State


@dataclass(frozen=True)
class RunnableGraph:
    """What one child runs: `graph` from `entrypoint` until an action in `halt_after`."""

    graph: Graph
    entrypoint: str
    halt_after: Sequence[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.graph.get_action(self.entrypoint)
        # "@tag:<tag>" names every action with that tag, as in a run's halt_after.
        halts = self.graph.expand_names(self.halt_after, "RunnableGraph.halt_after")
        object.__setattr__(self, "halt_after", halts)

    def is_finished(self, position: str, state: State) -> bool:
        """Whether a child whose last step was `position` has nothing left to run."""
        return position in self.halt_after or self.graph.next_action(position, state) is None

    @functools.cached_property
    def halts_after(self) -> frozenset[str]:
        """The actions after which this child halts whatever its state: `halt_after` and
        the actions with no transition out (a replay checks saved steps against them)."""
        graph = self.graph
        ends = {a.name for a in graph.actions if not graph.transitions_from(a.name)}
        return frozenset(self.halt_after) | ends

    @functools.cached_property
    def one_action(self) -> Action | None:
        """The one action of a one-step child that can run without an application around
        it (not streaming, no `__context` or `__tracer`; sync or async), else None."""
        if len(self.graph.actions) != 1 or self.entrypoint not in self.halt_after:
            return None
        action = self.graph.get_action(self.entrypoint)
        if action.streaming or action.context_param is not None or (
            action.tracer_param is not None
        ):
            return None
        return action

    @functools.cached_property
    def direct_action(self) -> Action | None:
        """`one_action` if it is sync (what a child on a thread runs without an app)."""
        action = self.one_action
        return None if action is None or action.is_async() else action

    @staticmethod
    def create(from_: SubgraphType) -> RunnableGraph:
        """Burr's constructor: `from_` itself if a `RunnableGraph`, else a one-node graph of
        the action or `@action` function that halts after it."""
        return as_runnable(from_)

    @functools.cached_property
    def is_async(self) -> bool:
        """Whether any action is async (then children run on an event loop)."""
        return any(a.is_async() for a in self.graph.actions)


SubgraphType = Action | Callable | RunnableGraph
"""What a child may run (as in Burr): an action, an `@action` function or a graph."""


def as_runnable(obj: Any) -> RunnableGraph:
    """A `RunnableGraph` from itself, an `Action` or an `@action` function (one-node graph)."""
    if isinstance(obj, RunnableGraph):
        return obj
    if isinstance(obj, Graph):
        raise TypeError("a Graph needs an entrypoint: wrap it as RunnableGraph(graph, entrypoint)")
    single: Action = as_action(obj)
    return RunnableGraph(build_graph({single.name: single}, []), single.name, [single.name])
