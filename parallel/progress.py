"""Optional progress bar for fan-outs, one consumer of the fan-out's events: finished /
total (when known) with ETA, and resumed, failed and retried counts."""

from __future__ import annotations

from typing import Any

from fanwise.parallel.events import FanoutEvent


class Progress:
    """Counts children from their events; draws a tqdm bar when enabled."""

    def __init__(self, enabled: bool, description: str, total: int | None = None) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self.done_count = 0
        self.skipped_count = 0
        self.failed_count = 0
        self.retried_count = 0
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError as exc:
                raise ImportError(
                    "the fan-out progress bar needs tqdm: pip install 'fanwise[progress]'"
                ) from exc
            self._bar = tqdm(total=total, desc=description, unit="child")

    def on_event(self, event: FanoutEvent) -> None:
        kind = event.kind
        if kind == "child_done":
            self.done_count += 1
            self.retried_count += event.data["attempts"] - 1
            self._advance(refresh=False)
        elif kind == "child_resumed":
            self.skipped_count += 1
            self._advance(refresh=False)
        elif kind == "child_failed":
            self.failed_count += 1
            self._postfix(refresh=True)

    def _advance(self, refresh: bool) -> None:
        if self._bar is not None:
            self._postfix(refresh)
            self._bar.update(1)

    def _postfix(self, refresh: bool) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                resumed=self.skipped_count, failed=self.failed_count,
                retried=self.retried_count, refresh=refresh,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
