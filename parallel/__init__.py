"""fanwise.parallel: lazy, bounded, resumable fan-out of child applications."""

from fanwise.parallel._child_ids import child_app_id
from fanwise.parallel.actions import (
    MapActions,
    MapActionsAndStates,
    MapStates,
    TaskBasedParallelAction,
)
from fanwise.parallel.errors import (
    ChildCancelledError,
    ChildFailedError,
    ChildrenFailedError,
    ChildTimeoutError,
    FanoutCancelledError,
)
from fanwise.parallel.events import FanoutEvent
from fanwise.parallel.graphs import RunnableGraph, SubgraphType
from fanwise.parallel.map_reduce import map_reduce_action
from fanwise.parallel.outcomes import ChildOutcome
from fanwise.parallel.tasks import SubGraphTask

__all__ = [
    "ChildCancelledError",
    "ChildFailedError",
    "ChildOutcome",
    "ChildTimeoutError",
    "ChildrenFailedError",
    "FanoutCancelledError",
    "FanoutEvent",
    "MapActions",
    "MapActionsAndStates",
    "MapStates",
    "RunnableGraph",
    "SubGraphTask",
    "SubgraphType",
    "TaskBasedParallelAction",
    "child_app_id",
    "map_reduce_action",
]
