"""`burr.core.action` under its fanwise name: Burr programs import actions, their streaming
kinds and conditions from this one module (they live in `actions`, `streaming` and
`conditions` here)."""

from fanwise.core.actions import (
    Action,
    AsyncStreamingAction,
    AsyncStreamingResultContainer,
    Function,
    FunctionBasedAction,
    FunctionBasedStreamingAction,
    Input,
    Reducer,
    Result,
    SingleStepAction,
    SingleStepStreamingAction,
    StreamingAction,
    StreamingResultContainer,
    action,
    create_action,
    streaming_action,
    type_eraser,
)
from fanwise.core.conditions import Condition, default, expr, lmda, safe_expr, when

__all__ = [
    "Action",
    "AsyncStreamingAction",
    "AsyncStreamingResultContainer",
    "Condition",
    "Function",
    "FunctionBasedAction",
    "FunctionBasedStreamingAction",
    "Input",
    "Reducer",
    "Result",
    "SingleStepAction",
    "SingleStepStreamingAction",
    "StreamingAction",
    "StreamingResultContainer",
    "action",
    "create_action",
    "default",
    "expr",
    "lmda",
    "safe_expr",
    "streaming_action",
    "type_eraser",
    "when",
]
