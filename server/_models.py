"""The request and response models: fixed ones for the routes, and one inputs model per
action built from what the action declares (its required and optional inputs, typed by the
function's annotations where it has them)."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import pydantic
from fanwise.core.actions import Action
from pydantic import BaseModel, ConfigDict, Field

AppStatus = Literal["waiting", "running", "completed", "failed", "stopped"]
"""`waiting`: halted before an action that takes a request (`POST /apps/{id}/{action}`);
`running`: a driver holds the app's lease; `completed`: no next action; `failed`: its last
step raised; `stopped`: halted elsewhere (e.g. a run that a crash ended between steps)."""

APP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class Problem(BaseModel):
    """Every error answer: what is wrong, and for a busy app who holds it."""

    detail: str
    holder: str | None = None


class FanoutCounts(BaseModel):
    sequence_id: int
    counts: dict[str, int]


class AppView(BaseModel):
    """What `GET /apps/{app_id}` and the POSTs answer."""

    app_id: str
    partition_key: str | None
    sequence_id: int | None
    status: AppStatus
    next_action: str | None
    inputs_schema: dict[str, Any] | None = Field(
        description="JSON schema of the inputs the next action takes (None when done)")
    state: dict[str, Any]
    fanout: FanoutCounts | None = Field(
        None, description="children by status of the app's latest fan-out step run here")
    last_event_id: int = Field(
        description="id of the app's latest event (a stream resumes after an id)")


class HistoryStep(BaseModel):
    sequence_id: int
    action: str
    status: str
    created_at: str
    state: dict[str, Any]


class HistoryPage(BaseModel):
    steps: list[HistoryStep]
    next_cursor: int | None = Field(description="pass as ?cursor= for the next page")


class ChildView(BaseModel):
    position: int
    child_id: str
    status: str
    attempts: int | None = None
    error: str | None = None


class ChildrenPage(BaseModel):
    sequence_id: int | None = Field(description="the fan-out step listed; None: none yet")
    children: list[ChildView]
    counts: dict[str, int]
    next_cursor: int | None


def inputs_model(action: Action, extra: Literal["forbid", "allow"]) -> type[BaseModel]:
    """A pydantic model of the inputs `action` declares: required ones required, optional
    ones with their defaults; types from the function's annotations (else any JSON)."""
    required, optional = action.input_spec
    parameters = _parameters(action)
    fields: dict[str, Any] = {}
    for name in (*required, *optional):
        parameter = parameters.get(name)
        annotation = Any
        if parameter is not None and not isinstance(parameter.annotation, str) and (
            parameter.annotation is not inspect.Parameter.empty
        ):
            annotation = parameter.annotation
        if name in required:
            fields[name] = (annotation, ...)
        else:
            default = None if parameter is None else parameter.default
            fields[name] = (annotation | None if default is None else annotation,
                            None if default is inspect.Parameter.empty else default)
    title = "".join(part.capitalize() for part in str(action.name).split("_")) + "Inputs"
    # strict: JSON `false` is no integer, `1` no string (lax pydantic would take both)
    config = ConfigDict(extra=extra, strict=True)
    return pydantic.create_model(title, __config__=config, **fields)


def _parameters(action: Action) -> dict[str, inspect.Parameter]:
    """The parameters of a function-based action's function (class-based: none known)."""
    fn = getattr(action, "fn", None)
    if fn is None:
        return {}
    try:
        return dict(inspect.signature(fn, eval_str=True).parameters)
    except (NameError, TypeError, ValueError):
        return dict(inspect.signature(fn).parameters)


def create_model(entry_inputs: type[BaseModel]) -> type[BaseModel]:
    """The body of `POST /apps`: an optional app id and the inputs of the first run."""
    needs_inputs = any(field.is_required() for field in entry_inputs.model_fields.values())
    inputs = Field(description="inputs of the run to the first halt")
    if not needs_inputs:
        inputs = Field(default_factory=entry_inputs, description=inputs.description)
    return pydantic.create_model(
        "CreateApp",
        __config__=ConfigDict(extra="forbid"),
        app_id=(str | None, Field(None, pattern=APP_ID_PATTERN,
                                  description="the app's id (default: a new uuid4)")),
        inputs=(entry_inputs, inputs),
    )
