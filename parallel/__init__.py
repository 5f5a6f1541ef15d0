"""fanwise.parallel: lazy, bounded, resumable fan-out of child applications."""

from fanwise.parallel._child_ids import child_app_id
from fanwise.parallel.actions import (
    MapActions,
    MapActionsAndStates,
    MapStates,
    TaskBasedParallelAction,
)
from fanwise.parallel.fanout import ChildFailedError
from fanwise.parallel.graphs import RunnableGraph
from fanwise.parallel.tasks import SubGraphTask

__all__ = [
    "ChildFailedError",
    "MapActions",
    "MapActionsAndStates",
    "MapStates",
    "RunnableGraph",
    "SubGraphTask",
    "TaskBasedParallelAction",
    "child_app_id",
]
