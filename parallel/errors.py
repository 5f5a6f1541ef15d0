"""What a fan-out raises: one child's failure, every failed child, a timeout, a stop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fanwise.core.errors import FanwiseError

if TYPE_CHECKING:
    from fanwise.parallel.outcomes import ChildOutcome


class ChildFailedError(FanwiseError, RuntimeError):
    """A child of a fan-out failed; the child's exception is the `__cause__`."""

    def __init__(
        self, action_name: str, position: int, app_id: str, exc: BaseException, attempts: int = 1
    ) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"child {position} (app id {app_id}) of parallel action {action_name!r} failed"
            f"{tries}: {type(exc).__name__}: {exc}"
        )
        self.action_name = action_name
        self.position = position
        self.app_id = app_id
        self.attempts = attempts

    def __reduce__(self):  # keeps the constructor's arguments across processes
        return (_rebuild_child_failed, (self.action_name, self.position, self.app_id,
                                        self.__cause__ or Exception(str(self)), self.attempts))


def _rebuild_child_failed(
    action_name: str, position: int, app_id: str, exc: BaseException, attempts: int
) -> ChildFailedError:
    error = ChildFailedError(action_name, position, app_id, exc, attempts)
    error.__cause__ = exc
    return error


class ChildrenFailedError(FanwiseError, ExceptionGroup):
    """Children of an `on_failure="continue"` fan-out failed: one `ChildFailedError` per
    failed child (each with the child's exception as its cause), in task order.

    `outcomes` are the failed children's records (position, app id, attempts, error).
    """

    def __new__(
        cls, action_name: str, errors: Sequence[ChildFailedError],
        outcomes: Sequence[ChildOutcome] = (),
    ) -> ChildrenFailedError:
        positions = ", ".join(str(e.position) for e in errors[:20])
        more = f" and {len(errors) - 20} more" if len(errors) > 20 else ""
        message = (
            f"{len(errors)} children of parallel action {action_name!r} failed "
            f"(positions {positions}{more}); re-running the app re-runs only those"
        )
        group = super().__new__(cls, message, list(errors))
        group.action_name = action_name
        group.outcomes = list(outcomes)
        return group

    def __init__(self, action_name: str, errors: Sequence[ChildFailedError],
                 outcomes: Sequence[ChildOutcome] = ()) -> None:
        super().__init__(self.message, list(errors))

    def derive(self, excs: Sequence[BaseException]) -> ExceptionGroup:
        return ExceptionGroup(self.message, list(excs))


class ChildCancelledError(FanwiseError):
    """A child ended cancelled although its fan-out did not cancel it (its own code, or an
    executor shutting down)."""


class ChildTimeoutError(FanwiseError, TimeoutError):
    """A child ran longer than its parallel action's `child_timeout`."""


class ChildrenLeftPendingError(FanwiseError):
    """A fan-out limited to some children (`fanwise resume --only failed`) ran them, but
    others of its tasks never ran: the step stops unfinished; resuming the app runs them."""

    def __init__(self, action_name: str, rerun: int, pending: int) -> None:
        super().__init__(
            f"parallel action {action_name!r} re-ran only the {rerun} children it was limited "
            f"to; {pending} others never ran: resume the app to run them"
        )
        self.action_name = action_name
        self.rerun = rerun
        self.pending = pending


class FanoutCancelledError(FanwiseError):
    """The fan-out was stopped from outside (its event stream was closed); children that
    finished stay saved, so running the app again resumes it."""
