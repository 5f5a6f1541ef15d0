"""`ChildOutcome`: what `reduce(..., outcomes)` and a `ChildrenFailedError` say of a child."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ChildStatus = Literal["done", "resumed", "failed"]


@dataclass(frozen=True)
class ChildOutcome:
    """One child of a fan-out: `done` (ran to its end now), `resumed` (had finished before
    and was read back from the store, not run) or `failed` (after `attempts` tries)."""

    position: int
    app_id: str
    status: ChildStatus
    attempts: int
    seconds: float
    error: BaseException | None = None
