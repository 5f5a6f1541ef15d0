"""Lifecycle hooks: subclass one, implement its method, pass it to `with_hooks`.

Every hook method takes keyword-only arguments and must accept `**future_kwargs`, so that
new arguments can be added without breaking existing hooks. Sync hooks also run in an
async application; an async hook in a sync run is an `AsyncMismatchError`.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fanwise.core.actions import Action
    from fanwise.core.context import ParentPointer
    from fanwise.core.graph import Graph
    from fanwise.core.state import State


class LifecycleHook:
    """Marker base of every hook."""


class PostApplicationCreateHook(LifecycleHook, abc.ABC):
    """Called once when `build()`/`abuild()` creates an application."""

    @abc.abstractmethod
    def post_application_create(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        state: State,
        application_graph: Graph,
        parent_pointer: ParentPointer | None,
        spawning_parent_pointer: ParentPointer | None,
        **future_kwargs: Any,
    ) -> None: ...


class PreRunStepHook(LifecycleHook, abc.ABC):
    """Called before each step, with the state the step starts from."""

    @abc.abstractmethod
    def pre_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        inputs: dict[str, Any],
        **future_kwargs: Any,
    ) -> None: ...


class PostRunStepHook(LifecycleHook, abc.ABC):
    """Called after each step with the new state (or the old one and the exception)."""

    @abc.abstractmethod
    def post_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        result: dict[str, Any] | None,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None: ...


class PreRunStepHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PreRunStepHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def pre_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        inputs: dict[str, Any],
        **future_kwargs: Any,
    ) -> None: ...


class PostRunStepHookAsync(LifecycleHook, abc.ABC):
    """Async twin of `PostRunStepHook`; only allowed in async runs."""

    @abc.abstractmethod
    async def post_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Action,
        result: dict[str, Any] | None,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None: ...


_HOOK_METHODS = {
    "post_application_create": (PostApplicationCreateHook,),
    "pre_run_step": (PreRunStepHook, PreRunStepHookAsync),
    "post_run_step": (PostRunStepHook, PostRunStepHookAsync),
}


def hooks_for(hooks: list[LifecycleHook], method: str) -> list[LifecycleHook]:
    """The hooks that implement `method`, in registration order."""
    kinds = _HOOK_METHODS[method]
    return [hook for hook in hooks if isinstance(hook, kinds)]
