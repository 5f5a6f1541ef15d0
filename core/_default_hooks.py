"""Burr's ready-made hooks (`burr.lifecycle.default`): a JSON-lines step logger and a hook
that slows steps down to watch them."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from fanwise.core.hooks import PostRunStepHook, PreRunStepHook

if TYPE_CHECKING:
    from fanwise.core.actions import Action
    from fanwise.core.state import State


def safe_json(obj: Any) -> str:
    """JSON text of `obj`, with `str()` for what JSON cannot hold."""
    return json.dumps(obj, default=str)


class StateAndResultsFullLogger(PostRunStepHook, PreRunStepHook):
    """Appends one JSON line per step to `jsonl_path`: state after the step, action, result,
    `str(exception)`, start and end time (Burr's fields). `close()` (or `with`) closes the
    file; each line is flushed when its step ends."""

    def __init__(
        self,
        jsonl_path: str,
        mode: Literal["append", "w"] = "append",
        json_dump: Callable[[dict[str, Any]], str] = safe_json,
    ) -> None:
        if not str(jsonl_path).endswith(".jsonl"):
            raise ValueError(f"jsonl_path must end with .jsonl. Got: {jsonl_path}")
        if mode not in ("append", "w"):
            raise ValueError(f"mode must be 'append' or 'w', not {mode!r}")
        self.jsonl_path = str(jsonl_path)
        self.json_dump = json_dump
        self._file = open(self.jsonl_path, "a" if mode == "append" else "w", encoding="utf-8")  # noqa: SIM115 (held until close())
        self._started: dict[tuple[str, int], datetime.datetime] = {}
        self._lock = threading.Lock()

    def pre_run_step(self, *, app_id: str, sequence_id: int, **future_kwargs: Any) -> None:
        with self._lock:
            self._started[(app_id, sequence_id)] = datetime.datetime.now()

    def post_run_step(
        self,
        *,
        app_id: str,
        sequence_id: int,
        state: State,
        action: Action,
        result: dict[str, Any] | None,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None:
        end = datetime.datetime.now()
        with self._lock:
            start = self._started.pop((app_id, sequence_id), end)
        line = self.json_dump(
            {
                "state": state.get_all(),
                "action": action.name,
                "result": result,
                "exception": str(exception),
                "start_time": start.isoformat(),
                "end_time": end.isoformat(),
            }
        )
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StateAndResultsFullLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class SlowDownHook(PostRunStepHook, PreRunStepHook):
    """Sleeps before and after every step (for watching a run, e.g. in Burr's UI)."""

    def __init__(self, pre_sleep_time: float = 0.5, post_sleep_time: float = 0.5) -> None:
        self.pre_sleep_time = pre_sleep_time
        self.post_sleep_time = post_sleep_time

    def pre_run_step(self, **future_kwargs: Any) -> None:
        time.sleep(self.pre_sleep_time)

    def post_run_step(self, **future_kwargs: Any) -> None:
        time.sleep(self.post_sleep_time)
