"""fanwise.executors: where children run. Importing this never imports ray or dask."""

from fanwise.executors.asyncio import AsyncExecutor
from fanwise.executors.processes import MultiProcessExecutor
from fanwise.executors.registry import available, create, executor_class
from fanwise.executors.threads import MultiThreadedExecutor

__all__ = [
    "AsyncExecutor",
    "MultiProcessExecutor",
    "MultiThreadedExecutor",
    "available",
    "create",
    "executor_class",
]
