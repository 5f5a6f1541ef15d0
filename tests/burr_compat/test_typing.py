"""Burr's typing systems (`burr.core.typing` -> `fanwise.core.typing`)."""

import pickle
from dataclasses import dataclass

import pytest
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.typing import DictBasedTypingSystem, TypingSystem


@dataclass
class Counter:
    n: int = 0


class CounterTyping(TypingSystem[Counter]):
    def state_type(self):
        return Counter

    def state_pre_action_run_type(self, action, graph):
        return Counter

    def state_post_action_run_type(self, action, graph):
        return Counter

    def construct_data(self, state):
        return Counter(**state.get_all())

    def construct_state(self, data):
        return State({"n": data.n}, typing_system=self)


@action(reads=["n"], writes=["n"])
def bump(state: State) -> State:
    return state.update(n=state["n"] + 1)


def test_the_default_typing_system_is_the_dict():
    state = State({"a": 1})
    assert isinstance(state.typing_system, DictBasedTypingSystem)
    assert state.data == {"a": 1}


def test_a_typing_system_travels_with_every_derived_state_and_pickle():
    typing = CounterTyping()
    state = State({"n": 1}, typing_system=typing)
    for derived in (state.update(n=2), state.merge({"n": 3}), state.subset("n"),
                    state.increment(n=1), state.wipe(keep=["n"])):
        assert derived.typing_system is typing
        assert isinstance(derived.data, Counter)
    assert isinstance(pickle.loads(pickle.dumps(state)).typing_system, CounterTyping)


def test_an_app_with_typing_takes_and_gives_the_typed_object():
    app = (
        ApplicationBuilder()
        .with_actions(bump)
        .with_transitions(("bump", "bump"))
        .with_typing(CounterTyping())
        .with_state(Counter(n=5))
        .with_entrypoint("bump")
        .build()
    )
    app.step()
    app.step()
    assert app.state.data == Counter(n=7)


def test_a_typed_state_without_a_typing_system_is_a_clear_error():
    with pytest.raises(ValueError, match="with_typing"):
        ApplicationBuilder().with_state(Counter())
