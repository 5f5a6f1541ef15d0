"""Replay: the resume of a step whose children had already finished, read straight from
the store in slot order and handed to `reduce` without a spec, a lookup or a window slot.

The general path plans every child (`ChildSpec`), looks its id up and passes it through
the window: about 13 µs a child, most of the resume of a finished 1M-child fan-out (the
finished-resume row of `benchmarks/scale.py`). A replayed child costs its task, its id and
fingerprint (the same checks as the general path: a changed task is never resumed) and its
decoded state. The first child that is not plainly finished ends the replay: it and the
children after it take the general path.
"""

from __future__ import annotations

from fanwise.core.protocols import ChildReplayer
from fanwise.core.state import State
from fanwise.parallel._plan import PlanConfig, Planner
from fanwise.parallel.tasks import SubGraphTask

REPLAY_BATCH = 4096
"""Tasks pulled and rows read per replay batch once a fan-out is seen to be resuming."""


class Replay:
    """Matches batches of tasks with the rows `store` saved for them."""

    def __init__(self, config: PlanConfig, planner: Planner, store: ChildReplayer) -> None:
        self._config = config
        self._planner = planner
        self._store = store

    @staticmethod
    def applies(config: PlanConfig) -> bool:
        """Whether children of this fan-out can be replayed: they are saved (so have
        fingerprints) and the parent's step is numbered (so they have slots)."""
        return config.parent.sequence_id is not None and config.saver is not None

    def finished(
        self, batch: list[tuple[int, SubGraphTask]]
    ) -> list[tuple[int, str, State]] | None:
        """(position, app id, saved state) of the leading children of `batch` saved as
        finished with the tasks' fingerprints; None once the store cannot replay."""
        if not batch:
            return []
        config, planner = self._config, self._planner
        parent = config.parent
        first = batch[0][0]
        rows = self._store.replay_children(
            parent.partition_key, parent.app_id, parent.sequence_id, first, batch[-1][0] + 1
        )
        if rows is None:
            return None
        by_slot = {row[0]: row for row in rows}
        saver, loader = config.saver, config.loader
        replayed: list[tuple[int, str, State]] = []
        for position, task in batch:
            row = by_slot.get(position)
            if row is None or not _plain(task, saver, loader):
                break
            _, saved_id, action, status, saved_fingerprint, state = row
            app_id = planner.default_id(position)
            if saved_id != app_id or status != "completed":
                break
            if saved_fingerprint != planner.fingerprint(task, position, app_id):
                break
            if not task.runnable.is_finished(action, state):
                break
            replayed.append((position, app_id, state))
        return replayed


def _plain(task: SubGraphTask, saver: object, loader: object) -> bool:
    """Whether the general path would give `task` the fan-out's own id and store (a task
    with its own id or store, or no task at all, is for that path to handle or refuse)."""
    return (
        type(task) is SubGraphTask
        and task.application_id is None
        and (task.state_persister is None or task.state_persister is saver)
        and (task.state_initializer is None or task.state_initializer is loader)
    )
