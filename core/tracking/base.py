"""`SyncTrackingClient` (Burr's `burr.tracking.base`): the hooks a tracker implements."""

from __future__ import annotations

import abc
from typing import Any

from fanwise.core.hooks import (
    DoLogAttributeHook,
    PostApplicationCreateHook,
    PostEndSpanHook,
    PostEndStreamHook,
    PostRunStepHook,
    PostStreamItemHook,
    PreRunStepHook,
    PreStartSpanHook,
    PreStartStreamHook,
)


class SyncTrackingClient(
    PostApplicationCreateHook,
    PreRunStepHook,
    PostRunStepHook,
    PreStartSpanHook,
    PostEndSpanHook,
    DoLogAttributeHook,
    PreStartStreamHook,
    PostStreamItemHook,
    PostEndStreamHook,
    abc.ABC,
):
    """Base of a synchronous tracker: every step, span, attribute and stream hook, and
    `copy()` (a fan-out's children get a copy each: a tracker may hold per-app state)."""

    @abc.abstractmethod
    def copy(self) -> Any:
        """A tracker recording to the same place, sharing no per-app state with this one."""


TrackingClient = SyncTrackingClient
"""Burr's alias."""
