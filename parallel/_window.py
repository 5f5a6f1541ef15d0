"""The window: which children are in flight, which finished, and which are due to `reduce`.

At most `capacity` children run at once: in flight are `capacity` children, plus `ahead`
more waiting in the queue of an executor that holds its own cap. In task order, a
finished child waits until every child before it is handed out; a slow child must not
stop the others, so:
- a child whose final row is durable in a store that can read it back is kept whole while
  fewer than `hold_limit` children wait; beyond that it is *parked*: only its position is
  kept (its id is re-derived), and its state is re-read from the store, in order, in
  batches, when its turn comes; memory does not grow with the latency spread;
- any other finished child is *held* with its state, up to `held_bytes_budget` bytes (an
  estimate); once that is reached no more tasks are pulled until the slow child finishes.
"""

from __future__ import annotations

import bisect
import sys
import time
from collections import deque
from typing import Any

from fanwise.parallel.child import ChildResult, ChildSpec

HELD_BYTES_BUDGET = 64 * 1024 * 1024
"""Default bound of states held for task order without a store to re-read them from."""
HOLD_AT_LEAST = 512
"""Finished children kept whole at least (a resume reads this many per batch, and a child
only a little out of order is not re-read: the stragglers rows of
`benchmarks/workloads.py`)."""
_RESULT_OVERHEAD = 512
"""Bytes counted per held result on top of its state's estimate (the result, its row)."""


class Positions:
    """A set of ints stored as sorted, disjoint [start, end) runs: O(gaps), not O(members)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, n: int) -> None:
        i = bisect.bisect_right(self._starts, n)
        if i and self._ends[i - 1] > n:
            return
        joins_left = i > 0 and self._ends[i - 1] == n
        joins_right = i < len(self._starts) and self._starts[i] == n + 1
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif joins_left:
            self._ends[i - 1] = n + 1
        elif joins_right:
            self._starts[i] = n
        else:
            self._starts.insert(i, n)
            self._ends.insert(i, n + 1)

    def run_from(self, n: int, most: int) -> range:
        """The members n, n+1, ... (at most `most`) present without a gap; removes them."""
        if not self._starts or self._starts[0] != n:
            return range(n, n)
        end = min(self._ends[0], n + most)
        if end == self._ends[0]:
            del self._starts[0], self._ends[0]
        else:
            self._starts[0] = end
        return range(n, end)

    def __bool__(self) -> bool:
        return bool(self._starts)


def approx_bytes(result: ChildResult) -> int:
    """A cheap estimate of what holding `result` costs: its state's fields, one level deep."""
    total = _RESULT_OVERHEAD
    if result.state is not None:
        for value in result.state._data.values():
            total += sys.getsizeof(value)
            if isinstance(value, list | tuple | dict | set):
                total += 64 * len(value)
    return total


class Window:
    """Children in flight, queued for a slot, and finished but not yet handed out."""

    def __init__(
        self, capacity: int, ordered: bool, held_bytes_budget: int, ahead: int = 0
    ) -> None:
        self.capacity = capacity
        self.ahead = ahead
        """Children submitted beyond `capacity` to an executor that queues them itself
        (`FanoutConfig.ahead`): in flight, but not running until a slot frees up."""
        self.ordered = ordered
        self.held_bytes_budget = held_bytes_budget
        self.inflight: dict[int, ChildSpec] = {}
        self.deadlines: dict[int, float] = {}
        """When children with a `child_timeout` must be done by (monotonic seconds)."""
        self.queued: deque[ChildSpec] = deque()
        self.held: dict[int, ChildResult] = {}
        self.held_bytes = 0
        self._held_sizes: dict[int, int] = {}
        self.hold_limit = max(4 * capacity, HOLD_AT_LEAST)
        """Children kept whole before durable ones are parked (no re-read for children
        only a little out of order, nor for a batch of resumed ones)."""
        self.parked = Positions()
        self.parked_ids: dict[int, tuple[str, Any]] = {}
        """Parked children whose id or loader is not the default: (app id, loader)."""
        self.next_position = 0
        self.exhausted = False
        self.stopping = False
        """No more children are submitted (a failure under fail-fast, or a stop)."""

    def free_slots(self) -> int:
        return 0 if self.stopping else self.capacity + self.ahead - len(self.inflight)

    def resize(self, capacity: int) -> None:
        """Follow an executor whose capacity changed (`ElasticExecutor`): fewer slots
        free no child in flight, they only start none until enough have finished."""
        self.capacity = capacity
        self.hold_limit = max(self.hold_limit, 4 * capacity)

    def has_finished(self) -> bool:
        """Whether any finished child waits to be handed out."""
        return bool(self.held) or bool(self.parked)

    def may_pull(self) -> bool:
        """Whether to pull more tasks: some are left and held states are within budget."""
        return not self.exhausted and not self.stopping and (
            self.held_bytes < self.held_bytes_budget
        )

    def start(self, spec: ChildSpec, timeout: float | None) -> None:
        self.inflight[spec.position] = spec
        if timeout is not None:
            self.deadlines[spec.position] = time.monotonic() + timeout

    def land(self, position: int) -> ChildSpec | None:
        """The spec of a child that came back; None if it is no longer in flight."""
        if self.deadlines:
            self.deadlines.pop(position, None)
        return self.inflight.pop(position, None)

    def next_deadline(self) -> float | None:
        return min(self.deadlines.values()) if self.deadlines else None

    def expired(self, now: float) -> list[ChildSpec]:
        """Children past their deadline, taken out of flight."""
        late = [p for p, deadline in self.deadlines.items() if deadline <= now]
        for position in late:
            del self.deadlines[position]
        return [self.inflight.pop(position) for position in late]

    def finish(self, result: ChildResult, parkable: bool) -> bool:
        """Keep a finished child until its turn; True if it is due now (no need to keep)."""
        position = result.position
        if not self.ordered or position == self.next_position:
            self.held[position] = result
            return True
        if parkable and result.error is None:
            if len(self.held) >= self.hold_limit:
                self.parked.add(position)
                return False
            self.held[position] = result
            return False
        self.held[position] = result
        if position - self.next_position > self.capacity + self.ahead:
            # only children well ahead of the next one count against the budget: fewer
            # than the window's others can wait closer, so what is not counted is bounded
            # by the window (and estimating every held state cost a trivial child 2%)
            size = self._held_sizes[position] = approx_bytes(result)
            self.held_bytes += size
        return False

    def park_id(self, position: int, app_id: str, loader: Any) -> None:
        self.parked_ids[position] = (app_id, loader)

    def take_held(self) -> list[ChildResult]:
        """The held children due now, in order (task order), or all (completion order)."""
        if not self.held:
            return []
        if not self.ordered:
            out = list(self.held.values())
            self.held.clear()
            return out
        out = []
        while self.next_position in self.held:
            out.append(self.held.pop(self.next_position))
            self.held_bytes -= self._held_sizes.pop(self.next_position, 0)
            self.next_position += 1
        return out

    def take_parked(self, most: int) -> range:
        """Positions due now whose states must be re-read from the store, in order."""
        if not self.parked:
            return range(0)
        run = self.parked.run_from(self.next_position, most)
        self.next_position = run.stop if run else self.next_position
        return run

    def idle(self) -> bool:
        """Nothing in flight, queued or waiting: every child pulled so far is handed out."""
        return not (self.inflight or self.queued or self.held or self.parked)

    def handed_past(self, position: int) -> None:
        """Children up to `position` were handed out without a slot (replayed)."""
        self.next_position = position + 1

    def done(self) -> bool:
        """Every child handed out."""
        return self.exhausted and not (
            self.inflight or self.queued or self.held or self.parked
        )
