"""The live fragments of the two pages that change while apps run (`_events.Live`): the
apps list, and one app (its header, steps, and per fan-out step a bar and its failures)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from fanwise.core.tracking.index import AppRow, FailureGroup, Page, RunIndex
from fanwise.ui import _appfiles, _views

Render = Callable[..., str]
"""`render(name=template, **context)`: a fragment's HTML."""
RATE_REFRESH_SECONDS = 2
"""A running fan-out's bar is re-sent this often even if no child moved (its rate ages)."""
FAILURE_SAMPLE = 5
"""Child ids listed per failure group (the "failed only" table lists them all)."""


class AppsLive:
    """One page of root apps and their counts by status."""

    def __init__(self, index: RunIndex, project: str, filters: dict[str, Any],
                 page_size: int, cursor: int | None, render: Render) -> None:
        self.index, self.project, self.filters = index, project, filters
        self.page_size, self.cursor, self._render = page_size, cursor, render
        self.page: Page | None = None

    def versions(self) -> dict[str, Hashable]:
        self.page = self.index.apps(**self.filters, limit=self.page_size, cursor=self.cursor)
        rows = tuple((row.app_id, row.status, row.steps) for row in self.page.rows)
        return {"apps": (tuple(sorted(self.page.counts.items())), rows,
                         self.page.next_cursor)}

    def render(self, name: str) -> str:
        return self._render(name="_apps_table.html", project=self.project, page=self.page,
                            filters=self.filters, cursor=self.cursor)


class AppLive:
    """One app: its header, its steps (read from its log when the index says it moved),
    and its fan-out steps."""

    def __init__(self, index: RunIndex, project: str, row: AppRow, source: _appfiles.Source,
                 render: Render, children_context: Callable[..., dict[str, Any]],
                 page_size: int) -> None:
        self.index, self.project, self.row, self.source = index, project, row, source
        self._render, self._children_context = render, children_context
        self.page_size = page_size
        self.steps: list[_appfiles.Step] = []
        self._steps_of: tuple[Any, ...] | None = None
        self.bars: list[_views.Bar] = []

    @property
    def pk(self) -> str | None:
        return self.row.partition_key

    def versions(self) -> dict[str, Hashable]:
        row = self.index.app(self.row.app_id, self.pk) or self.row
        self.row = row
        moved = (row.sequence_id, row.status, row.ended_at)
        if moved != self._steps_of:
            if not isinstance(self.source, str):  # a compact range grows; a log may appear
                self.source = _appfiles.app_source(self.index, row.app_id, self.pk)
            self.steps = _appfiles.read_steps(self.source)
            self._steps_of = moved
        started = {step.sequence_id: step.start_time for step in self.steps}
        planned = {step.sequence_id: step.planned for step in self.steps}
        self.bars = [_views.bar(step, row, started.get(step.sequence_id),
                                planned=planned.get(step.sequence_id))
                     for step in self.index.fanout_steps(row.app_id, self.pk)]
        clock = int(time.time() // RATE_REFRESH_SECONDS)
        versions: dict[str, Hashable] = {
            "app-header": (row.status, row.sequence_id, row.next_action, row.position,
                           row.ended_at, row.error_line),
            "steps": moved,
            "fanouts": tuple(bar.sequence_id for bar in self.bars),
        }
        for bar in self.bars:
            versions[f"bar-{bar.sequence_id}"] = (*bar.version,
                                                  clock if bar.running_now else None)
            versions[f"failures-{bar.sequence_id}"] = bar.failed
        return versions

    def render(self, name: str) -> str:
        common = {"project": self.project, "row": self.row, "pk": self.pk}
        if name == "app-header":
            return self._render(name="_header.html", **common)
        if name == "steps":
            return self._render(name="_steps.html", steps=self.steps, **common)
        if name == "fanouts":
            return self._render(name="_fanouts.html", panels=self.panels(), **common)
        kind, _, seq = name.partition("-")
        bar = next(bar for bar in self.bars if bar.sequence_id == int(seq))
        if kind == "bar":
            return self._render(name="_bar.html", bar=bar, **common)
        return self._render(name="_failures.html", bar=bar,
                            groups=self.failures(bar.sequence_id), **common)

    def panels(self) -> list[dict[str, Any]]:
        """Each fan-out step's panel: its bar, action, failures and first page of children."""
        actions = {step.sequence_id: step.action for step in self.steps}
        return [{
            "bar": bar,
            "action": actions.get(bar.sequence_id, ""),
            "groups": self.failures(bar.sequence_id),
            "children": self._children_context(
                self.index, self.project, self.row.app_id, self.pk, bar.sequence_id,
                None, "spawn", None, self.page_size),
        } for bar in self.bars]

    def failures(self, sequence_id: int) -> list[FailureGroup]:
        return self.index.failures(self.row.app_id, self.pk, sample=FAILURE_SAMPLE,
                                   sequence_id=sequence_id)

