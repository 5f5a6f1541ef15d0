"""`Graph`: named actions plus ordered transitions; `GraphBuilder` assembles and checks one."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fanwise.core.actions import Action, as_action
from fanwise.core.conditions import Condition, default
from fanwise.core.errors import GraphError
from fanwise.core.state import State

if TYPE_CHECKING:
    import graphviz

TransitionSpec = tuple[Any, ...]


@dataclass(frozen=True)
class Transition:
    """An edge: taken after `from_` when `condition` holds (first match wins)."""

    from_: Action
    to: Action
    condition: Condition


class Graph:
    """Immutable list of actions and transitions; validated when built (by `GraphBuilder`).

    `actions` and `transitions` are lists of `Action` and `Transition` objects, as in Burr.
    """

    def __init__(self, actions: Sequence[Action], transitions: Sequence[Transition]) -> None:
        self.actions: list[Action] = list(actions)
        self.transitions: list[Transition] = list(transitions)
        self._by_name = {a.name: a for a in self.actions}
        self._outgoing: dict[str, list[Transition]] = {name: [] for name in self._by_name}
        for transition in self.transitions:
            self._outgoing[transition.from_.name].append(transition)
        self._starting: dict[str, ApplicationGraph] = {}

    def starting_at(self, entrypoint: str) -> ApplicationGraph:
        """This graph as an app starting at `entrypoint` sees it; one per entrypoint, shared
        by every app built on this graph (all of a fan-out's children: a new one each cost a
        child 3%, callgrind, a fan-out child with a tracker)."""
        found = self._starting.get(entrypoint)
        if found is None:
            found = self._starting[entrypoint] = ApplicationGraph(
                self.actions, self.transitions, self.get_action(entrypoint))
        return found

    def get_action(self, name: str) -> Action:
        try:
            return self._by_name[name]
        except KeyError:
            raise GraphError(
                f"graph has no action {name!r}; actions are {sorted(self._by_name)}"
            ) from None

    def transitions_from(self, name: str) -> list[Transition]:
        """The transitions out of action `name`, in the order they are tried."""
        return list(self._outgoing.get(name, []))

    def next_action(self, from_name: str, state: State) -> Action | None:
        """The target of the first transition out of `from_name` whose condition holds."""
        for transition in self._outgoing.get(from_name, []):
            if transition.condition.holds(state):
                return transition.to
        return None

    def get_next_node(
        self, prior_step: str | None, state: State, entrypoint: str
    ) -> Action | None:
        """The action to run after `prior_step` (`entrypoint` when there is none yet)."""
        if prior_step is None:
            return self.get_action(entrypoint)
        return self.next_action(prior_step, state)

    def get_actions_by_tag(self, tag: str) -> list[Action]:
        """The actions that carry `tag` (`@action(..., tags=[...])`), in graph order."""
        tagged = [a for a in self.actions if tag in a.tags]
        if not tagged:
            tags = sorted({t for a in self.actions for t in a.tags})
            raise GraphError(f"no action has the tag {tag!r}; tags are {tags}")
        return tagged

    def expand_names(self, names: Iterable[str], what: str) -> list[str]:
        """`names` with each `"@tag:<tag>"` replaced by the names of the actions that carry
        that tag, after checking that every name is an action."""
        expanded: list[str] = []
        for name in names:
            if name.startswith("@tag:"):
                expanded.extend(a.name for a in self.get_actions_by_tag(name[len("@tag:"):]))
            else:
                expanded.append(name)
        self.check_names(expanded, what)
        return expanded

    def check_names(self, names: Iterable[str], what: str) -> None:
        """Raise naming every entry of `names` that is not an action of this graph."""
        unknown = [n for n in names if n not in self._by_name]
        if unknown:
            raise GraphError(f"{what} names unknown action(s) {unknown}; "
                             f"actions are {sorted(self._by_name)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, written by trackers."""
        return {
            "actions": [a.describe() for a in self.actions],
            "transitions": [
                {"from": t.from_.name, "to": t.to.name, "condition": t.condition.name}
                for t in self.transitions
            ],
        }

    def visualize(
        self,
        output_file_path: str | pathlib.Path | None = None,
        include_conditions: bool = False,
        include_state: bool = False,
        view: bool = False,
        engine: Literal["graphviz"] = "graphviz",
        write_dot: bool = False,
        **engine_kwargs: Any,
    ) -> graphviz.Digraph:
        """Draw the graph with Graphviz (extra `graphviz`); written to `output_file_path`
        when given. See `fanwise.core.visualize.visualize`."""
        from fanwise.core.visualize import visualize

        return visualize(
            self,
            output_file_path=output_file_path,
            include_conditions=include_conditions,
            include_state=include_state,
            view=view,
            engine=engine,
            write_dot=write_dot,
            **engine_kwargs,
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> Any:
        """Notebooks draw the graph (with conditions) when it is the value of a cell."""
        digraph = self.visualize(include_conditions=True)
        return digraph._repr_mimebundle_(include=include, exclude=exclude, **kwargs)


class ApplicationGraph(Graph):
    """An application's graph (`Application.graph`): the graph plus where the app starts."""

    def __init__(
        self, actions: Sequence[Action], transitions: Sequence[Transition], entrypoint: Action
    ) -> None:
        super().__init__(actions, transitions)
        self.entrypoint = entrypoint


def _collect_actions(
    existing: dict[str, Action], actions: Sequence[Any], named: dict[str, Any]
) -> dict[str, Action]:
    collected = dict(existing)
    for name, obj in [(None, a) for a in actions] + list(named.items()):
        built = as_action(obj, name)
        if built.name in collected:
            raise GraphError(f"duplicate action name {built.name!r}")
        collected[built.name] = built
    return collected


def _expand_transitions(specs: Sequence[TransitionSpec]) -> list[tuple[str, str, Condition]]:
    expanded = []
    for spec in specs:
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise GraphError(f"transition {spec!r} must be (from, to) or (from, to, condition)")
        sources, target = spec[0], spec[1]
        condition = spec[2] if len(spec) == 3 else default
        if not isinstance(condition, Condition):
            raise GraphError(f"transition {spec!r}: {condition!r} is not a Condition")
        for source in [sources] if isinstance(sources, str) else list(sources):
            expanded.append((source, target, condition))
    return expanded


class GraphBuilder:
    """Collects actions and transitions, then `build()`s a checked `Graph`."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}
        self._transitions: list[tuple[str, str, Condition]] = []
        self._whole: Graph | None = None
        """A built graph given alone: `build()` returns it as it is (it was checked when it
        was built). Every fan-out child's app is built from its graph this way; rebuilding
        it cost each child 4% (15k of 382k instructions, callgrind, a child with a tracker)."""

    def with_actions(self, *actions: Any, **named_actions: Any) -> GraphBuilder:
        self._actions = _collect_actions(self._actions, actions, named_actions)
        self._whole = None
        return self

    def with_transitions(self, *transitions: TransitionSpec) -> GraphBuilder:
        self._transitions.extend(_expand_transitions(transitions))
        self._whole = None
        return self

    def with_graph(self, graph: Graph) -> GraphBuilder:
        """Add every action and transition of a built graph (action names must not clash
        with those already added)."""
        alone = not self._actions and not self._transitions
        self._actions = _collect_actions(self._actions, graph.actions, {})
        self._transitions.extend((t.from_.name, t.to.name, t.condition) for t in graph.transitions)
        self._whole = graph if alone and type(graph) is Graph else None
        return self

    def build(self) -> Graph:
        if self._whole is not None:
            return self._whole
        return build_graph(self._actions, self._transitions)


def build_graph(
    actions: dict[str, Action], transitions: list[tuple[str, str, Condition]]
) -> Graph:
    """A `Graph` after checking that every transition joins two known actions."""
    if not actions:
        raise GraphError("a graph needs at least one action")
    for source, target, _ in transitions:
        for end, name in (("from", source), ("to", target)):
            if name not in actions:
                raise GraphError(
                    f"transition {source!r} -> {target!r}: unknown {end} action {name!r}; "
                    f"actions are {sorted(actions)}"
                )
    for built in actions.values():
        built.validate()
    return Graph(
        list(actions.values()),
        [Transition(actions[s], actions[t], c) for s, t, c in transitions],
    )
