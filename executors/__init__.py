"""fanwise.executors: where children run. Importing this never imports ray or dask."""

from fanwise.executors.asyncio import AsyncExecutor
from fanwise.executors.inline import InlineExecutor
from fanwise.executors.processes import MultiProcessExecutor
from fanwise.executors.protocols import FanoutExecutor, traits_of
from fanwise.executors.registry import available, create, executor_class
from fanwise.executors.threads import MultiThreadedExecutor

__all__ = [
    "AsyncExecutor",
    "FanoutExecutor",
    "InlineExecutor",
    "MultiProcessExecutor",
    "MultiThreadedExecutor",
    "available",
    "create",
    "executor_class",
    "traits_of",
]

_LAZY = {
    "RayExecutor": "fanwise.executors.ray",
    "DaskExecutor": "fanwise.executors.dask",
}


def __getattr__(name: str) -> object:
    """`RayExecutor` and `DaskExecutor` are imported on first use, never at package import."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fanwise.executors' has no attribute {name!r}")
