"""`Placeholder`: an action that only takes its place in a graph (Burr's
`burr.core.implementations`), to draw a state machine before its actions are written."""

from __future__ import annotations

from typing import Any

from fanwise.core.actions import Action
from fanwise.core.state import State


class Placeholder(Action):
    """Declares `reads` and `writes` so the graph builds and `visualize()` draws it; running
    it is a `NotImplementedError` that names it."""

    def __init__(self, reads: list[str], writes: list[str]) -> None:
        super().__init__()
        self._reads = list(reads)
        self._writes = list(writes)

    @property
    def reads(self) -> list[str]:
        return self._reads

    @property
    def writes(self) -> list[str]:
        return self._writes

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError(
            f"action {self.name!r} is a Placeholder: replace it with a real action to run it"
        )

    def update(self, result: dict[str, Any], state: State) -> State:
        raise NotImplementedError(
            f"action {self.name!r} is a Placeholder: replace it with a real action to run it"
        )
