"""What the templates show, computed from index rows and one app's steps: state diffs with
previews of large values, and a fan-out's bar of counts with its throughput."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fanwise.core.tracking.index import AppRow, FanoutStep

PREVIEW_CHARS = 400
"""A value whose JSON is longer is shown cut to this many characters, with a download
link to the whole of it."""


@dataclass(frozen=True, slots=True)
class Field:
    """One state field at a step, against the step before."""

    key: str
    change: str
    """`added`, `changed`, `removed` or `same`."""
    preview: str
    large: bool
    before: str | None
    """The previous value's preview, for a changed field."""


def state_fields(state: dict[str, Any], previous: dict[str, Any] | None) -> list[Field]:
    """The fields of `state` (and those `previous` had and it lost), changed ones first."""
    before = previous or {}
    fields = []
    for key, value in state.items():
        text, large = preview(value)
        if previous is None or key not in before:
            change, old = ("added" if previous is not None else "same"), None
        elif before[key] != value:
            change, old = "changed", preview(before[key])[0]
        else:
            change, old = "same", None
        fields.append(Field(key, change, text, large, old))
    for key in before.keys() - state.keys():
        fields.append(Field(key, "removed", preview(before[key])[0], False, None))
    order = {"changed": 0, "added": 1, "removed": 2, "same": 3}
    return sorted(fields, key=lambda f: order[f.change])


def preview(value: Any) -> tuple[str, bool]:
    """The value as JSON, cut to `PREVIEW_CHARS`; and whether it was cut."""
    text = to_json(value)
    if len(text) <= PREVIEW_CHARS:
        return text, False
    return text[:PREVIEW_CHARS] + " …", True


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class Bar:
    """A fan-out step's children by status, as one bar, and while it runs its `throughput`
    (children finished per second since the step began, resumed ones excluded).

    `pending` counts the children not started: spawned and waiting, and, when the fan-out
    recorded how many it plans (`planned`), those not spawned yet; then `eta_seconds` is
    the time left at the current throughput."""

    sequence_id: int
    done: int
    resumed: int
    running: int
    pending: int
    failed: int
    running_now: bool
    throughput: float | None
    elapsed_seconds: float | None
    eta_seconds: float | None = None

    @property
    def total(self) -> int:
        return self.done + self.resumed + self.running + self.pending + self.failed

    def percent(self, part: str) -> float:
        return 100.0 * getattr(self, part) / self.total if self.total else 0.0

    @property
    def version(self) -> tuple[int, ...]:
        """What the bar shows, but for the clock: a live page is sent a new bar when it
        changes."""
        return (self.done, self.resumed, self.running, self.pending, self.failed,
                self.running_now)


PARTS = ("done", "resumed", "running", "pending", "failed")
"""The bar's parts, in the order they are drawn."""


def bar(step: FanoutStep, parent: AppRow | None, step_started: str | None,
        now: datetime | None = None, planned: int | None = None) -> Bar:
    """The bar of `step`, which began at `step_started` (the parent's log says when); it runs
    if the parent is running that step."""
    counts = step.counts
    completed = counts.get("completed", 0)
    done, resumed = completed - step.resumed, step.resumed
    running, pending = counts.get("running", 0), counts.get("created", 0)
    failed = counts.get("failed", 0)
    running_now = (parent is not None and parent.status == "running"
                   and parent.sequence_id == step.sequence_id)
    if planned is not None:  # children the window has not admitted yet wait too
        pending = max(pending, planned - done - resumed - running - failed)
    throughput = elapsed = eta = None
    if running_now and step_started:
        elapsed = ((now or datetime.now(UTC)) - _time(step_started)).total_seconds()
        if elapsed > 0:
            throughput = (done + failed) / elapsed
        if throughput and planned is not None:
            eta = (running + pending) / throughput
    return Bar(step.sequence_id, done, resumed, running, pending, failed, running_now,
               throughput, elapsed, eta)


def duration(ms: float | None) -> str:
    """A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 1 else "< 1 ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
