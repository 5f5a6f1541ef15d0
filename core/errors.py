"""Exceptions raised by the engine; each message names the thing that is wrong."""

from __future__ import annotations


class FanwiseError(Exception):
    """Base class of every fanwise error."""


class GraphError(FanwiseError, ValueError):
    """The graph is malformed: unknown action, duplicate name, bad transition."""


class InputError(FanwiseError, ValueError):
    """Inputs given to an action do not match what it declares."""


class AsyncMismatchError(FanwiseError, RuntimeError, ValueError):
    """Something async was reached from a sync entry point (or the reverse); a ValueError
    too, as Burr raises for a sync run of an `abuild()` app."""


class StateSerialisationError(FanwiseError, TypeError):
    """A state field, or an input of a persisted fan-out child, cannot be turned into JSON
    (message names it)."""


class CorruptStateError(FanwiseError, ValueError):
    """A persisted row cannot be read back (message names app id and sequence id)."""


class AppLockedError(FanwiseError, RuntimeError):
    """Another driver holds the lease on this app id."""

    def __init__(self, app_id: str, holder: str) -> None:
        super().__init__(
            f"app {app_id!r} is being run by another driver: {holder}. Wait for it with "
            "ApplicationBuilder.with_lease_wait(seconds), or have that driver close() its app"
        )
        self.app_id = app_id
        self.holder = holder


class LeaseLostError(FanwiseError, RuntimeError):
    """The store refused a write: the lease it carried was taken over or broken, so another
    driver may be running this app id. Fatal: this driver must stop, never retry."""

    def __init__(self, app_id: str, store: str, now: str) -> None:
        super().__init__(
            f"app {app_id!r} lost its lease in {store}, which refused this driver's write: "
            f"{now}. Another driver may be running it: stop this one (its later writes are "
            "refused too); to take over, build the app again once that driver is done"
        )
        self.app_id = app_id
        self.store = store


class ApplicationClosedError(FanwiseError, RuntimeError):
    """A step was asked of an application after its `close()`."""

    def __init__(self, app_id: str) -> None:
        super().__init__(
            f"app {app_id!r} is closed and runs no more steps (its lease is released): build it "
            "again with ApplicationBuilder, e.g. initialize_from(persister) to go on where it "
            "stopped"
        )
        self.app_id = app_id
