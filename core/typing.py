"""Burr's typing systems (`burr.core.typing`): how an application's state is seen as a typed
object (`State.data`, `ApplicationBuilder.with_typing`). The default is the plain dict."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from fanwise.core.actions import Action
    from fanwise.core.graph import Graph
    from fanwise.core.state import State

BaseType = TypeVar("BaseType")
StateInputType = TypeVar("StateInputType")
StateOutputType = TypeVar("StateOutputType")
IntermediateResultType = TypeVar("IntermediateResultType")


class TypingSystem(abc.ABC, Generic[BaseType]):
    """Turns a `State` into the typed object an application works with, and back."""

    @abc.abstractmethod
    def state_type(self) -> type[BaseType]:
        """The type of the application's state at any time."""

    @abc.abstractmethod
    def state_pre_action_run_type(self, action: Action, graph: Graph) -> type[BaseType]:
        """The type of the state before `action` runs."""

    @abc.abstractmethod
    def state_post_action_run_type(self, action: Action, graph: Graph) -> type[BaseType]:
        """The type of the state after `action` has run."""

    def validate_state(self, state: State) -> None:  # noqa: B027 - optional, as in Burr
        """Raise if `state` is not valid for this typing system (by default: anything is)."""

    @abc.abstractmethod
    def construct_data(self, state: State) -> BaseType:
        """The typed object of `state`."""

    @abc.abstractmethod
    def construct_state(self, data: BaseType) -> State:
        """A `State` (with this typing system) of the typed object `data`."""


class ActionSchema(abc.ABC, Generic[StateInputType, StateOutputType, IntermediateResultType]):
    """The types an action reads, writes and returns (as Burr stores them: not enforced)."""

    @staticmethod
    @abc.abstractmethod
    def state_input_type() -> type[StateInputType]: ...

    @staticmethod
    @abc.abstractmethod
    def state_output_type() -> type[StateOutputType]: ...

    @staticmethod
    @abc.abstractmethod
    def intermediate_result_type() -> type[IntermediateResultType]: ...


class DictBasedTypingSystem(TypingSystem[dict]):
    """The default: the state is a dict of its fields."""

    def state_type(self) -> type[dict]:
        return dict

    def state_pre_action_run_type(self, action: Action, graph: Graph) -> type[dict]:
        return dict

    def state_post_action_run_type(self, action: Action, graph: Graph) -> type[dict]:
        return dict

    def construct_data(self, state: State) -> dict[str, Any]:
        return state.get_all()

    def construct_state(self, data: dict[str, Any]) -> State:
        from fanwise.core.state import State

        return State(data, typing_system=self)


DICT_TYPING = DictBasedTypingSystem()
