"""`PersisterHook` / `PersisterHookAsync`: a saver as a lifecycle hook that saves the state
after every step (Burr's adapters; `with_state_persister` does this and more itself:
leases, stored forms, fan-out children)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fanwise.core.hooks import PostRunStepHook, PostRunStepHookAsync
from fanwise.core.persistence.base import AsyncBaseStateSaver, BaseStateSaver

if TYPE_CHECKING:
    from fanwise.core.actions import Action
    from fanwise.core.state import State


def _status(exception: BaseException | None) -> str:
    """A failed step saves the state it started from, marked so that a resume re-runs it."""
    return "completed" if exception is None else "failed"


class PersisterHook(PostRunStepHook):
    """Saves `state` with `persister` after each step: "completed", or "failed" with the
    state before the step when the step raised."""

    def __init__(self, persister: BaseStateSaver) -> None:
        self.persister = persister

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
    ) -> None:
        self.persister.save(
            partition_key, app_id, sequence_id, action.name, state, _status(exception)
        )


class PersisterHookAsync(PostRunStepHookAsync):
    """Async twin of `PersisterHook`, for an `AsyncBaseStateSaver` in an async run."""

    def __init__(self, persister: AsyncBaseStateSaver) -> None:
        self.persister = persister

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
    ) -> None:
        await self.persister.save(
            partition_key, app_id, sequence_id, action.name, state, _status(exception)
        )
