"""fanwise.core: state, actions, graphs and the application that runs them."""

# The submodule `fanwise.core.action` (Burr's `burr.core.action` path) is loaded first, so
# that the decorator `action` imported below is what `fanwise.core.action` names here: a
# submodule loaded later would replace the package attribute with itself.
import fanwise.core.action  # noqa: F401, I001
from fanwise.core.actions import (
    Action,
    FunctionBasedAction,
    Input,
    Result,
    action,
    streaming_action,
    type_eraser,
)
from fanwise.core.application import Application
from fanwise.core.builder import ApplicationBuilder
from fanwise.core.conditions import Condition, default, expr, safe_expr, when
from fanwise.core.context import ApplicationContext, ParentPointer
from fanwise.core.errors import (
    ApplicationClosedError,
    AppLockedError,
    AsyncMismatchError,
    CorruptStateError,
    FanwiseError,
    GraphError,
    InputError,
    StateSerialisationError,
)
from fanwise.core.graph import ApplicationGraph, Graph, GraphBuilder
from fanwise.core.secret import Secret
from fanwise.core.state import State

__all__ = [
    "Action",
    "AppLockedError",
    "Application",
    "ApplicationBuilder",
    "ApplicationClosedError",
    "ApplicationContext",
    "ApplicationGraph",
    "AsyncMismatchError",
    "Condition",
    "CorruptStateError",
    "FanwiseError",
    "FunctionBasedAction",
    "Graph",
    "GraphBuilder",
    "GraphError",
    "Input",
    "InputError",
    "ParentPointer",
    "Result",
    "Secret",
    "State",
    "StateSerialisationError",
    "action",
    "default",
    "expr",
    "safe_expr",
    "streaming_action",
    "type_eraser",
    "when",
]
