"""`Graph`: named actions plus ordered transitions; `GraphBuilder` assembles and checks one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fanwise.core.actions import Action, as_action
from fanwise.core.conditions import Condition, default
from fanwise.core.errors import GraphError
from fanwise.core.state import State

TransitionSpec = tuple[Any, ...]


@dataclass(frozen=True)
class Transition:
    """An edge: taken after `from_` when `condition` holds (first match wins)."""

    from_: str
    to: str
    condition: Condition


class Graph:
    """Immutable set of actions and transitions; validated when built."""

    def __init__(self, actions: dict[str, Action], transitions: list[Transition]) -> None:
        self.actions = dict(actions)
        self.transitions = list(transitions)
        self._outgoing: dict[str, list[Transition]] = {name: [] for name in self.actions}
        for transition in self.transitions:
            self._outgoing[transition.from_].append(transition)

    def get_action(self, name: str) -> Action:
        try:
            return self.actions[name]
        except KeyError:
            raise GraphError(
                f"graph has no action {name!r}; actions are {sorted(self.actions)}"
            ) from None

    def next_action(self, from_name: str, state: State) -> Action | None:
        """The target of the first transition out of `from_name` whose condition holds."""
        for transition in self._outgoing.get(from_name, []):
            if transition.condition.run(state):
                return self.actions[transition.to]
        return None

    def check_names(self, names: Iterable[str], what: str) -> None:
        """Raise naming every entry of `names` that is not an action of this graph."""
        unknown = [n for n in names if n not in self.actions]
        if unknown:
            raise GraphError(f"{what} names unknown action(s) {unknown}; "
                             f"actions are {sorted(self.actions)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, written by trackers."""
        return {
            "actions": [a.describe() for a in self.actions.values()],
            "transitions": [
                {"from": t.from_, "to": t.to, "condition": t.condition.name}
                for t in self.transitions
            ],
        }


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

    def with_actions(self, *actions: Any, **named_actions: Any) -> GraphBuilder:
        self._actions = _collect_actions(self._actions, actions, named_actions)
        return self

    def with_transitions(self, *transitions: TransitionSpec) -> GraphBuilder:
        self._transitions.extend(_expand_transitions(transitions))
        return self

    def build(self) -> Graph:
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
    return Graph(actions, [Transition(s, t, c) for s, t, c in transitions])
