"""Optional progress bar for fan-outs: done / total, with skipped and failed counts."""

from __future__ import annotations

from typing import Any


class Progress:
    """Counts children; draws a tqdm bar when enabled."""

    def __init__(self, enabled: bool, description: str, total: int | None = None) -> None:
        self._bar: Any = None
        self.done_count = 0
        self.skipped_count = 0
        self.failed_count = 0
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError as exc:
                raise ImportError(
                    "the fan-out progress bar needs tqdm: pip install 'fanwise[progress]'"
                ) from exc
            self._bar = tqdm(total=total, desc=description, unit="child")

    def done(self) -> None:
        self.done_count += 1
        if self._bar is not None:
            self._bar.update(1)

    def skipped(self) -> None:
        self.skipped_count += 1
        if self._bar is not None:
            self._bar.set_postfix(resumed=self.skipped_count, failed=self.failed_count,
                                  refresh=False)

    def failed(self) -> None:
        self.failed_count += 1
        if self._bar is not None:
            self._bar.set_postfix(resumed=self.skipped_count, failed=self.failed_count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
