"""Exceptions raised by the engine; each message names the thing that is wrong."""

from __future__ import annotations


class FanwiseError(Exception):
    """Base class of every fanwise error."""


class GraphError(FanwiseError, ValueError):
    """The graph is malformed: unknown action, duplicate name, bad transition."""


class InputError(FanwiseError, ValueError):
    """Inputs given to an action do not match what it declares."""


class AsyncMismatchError(FanwiseError, RuntimeError):
    """Something async was reached from a sync entry point (or the reverse)."""


class StateSerialisationError(FanwiseError, TypeError):
    """A state field cannot be turned into JSON (message names the field)."""


class CorruptStateError(FanwiseError, ValueError):
    """A persisted row cannot be read back (message names app id and sequence id)."""


class AppLockedError(FanwiseError, RuntimeError):
    """Another driver holds the lease on this app id."""

    def __init__(self, app_id: str, holder: str) -> None:
        super().__init__(f"app {app_id!r} is being run by another driver: {holder}")
        self.app_id = app_id
        self.holder = holder
