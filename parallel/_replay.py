"""Replay: the resume of a step whose children had already finished, checked and handed to
`reduce` a whole batch at a time, without a spec, a lookup or a window slot per child.

The general path plans every child (`ChildSpec`), looks its id up and passes it through
the window: about 13 µs a child, most of the resume of a finished 1M-child fan-out (the
finished-resume row of `benchmarks/scale.py`). A replayed batch is one aggregate read of
its slots (`ChildReplayer`) compared with what the tasks expect, with the general path's
checks: every slot holds one completed step, saved under the child's id, with the
fingerprint of its task (a changed task is never resumed), at an action after which the
child halts. A batch that fails any check takes the general path, which finds the
children to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING

from fanwise.core.persistence.base import ReplayBlock, Seal, fingerprint_meta
from fanwise.core.protocols import ChildReplayer
from fanwise.core.state import State
from fanwise.parallel._child_ids import Payload
from fanwise.parallel._plan import PlanConfig, Planner, plain_task
from fanwise.parallel.tasks import SubGraphTask

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

REPLAY_BATCH = 512
"""Tasks pulled and slots read per replay batch once a fan-out is seen to be resuming;
also the size of a sealed block (batches after the first start at a block's first slot).
Small enough that a batch's tasks and states die young: with 4,096 they lived long enough
for Python's cyclic GC to scan them again and again, and the finished-resume row of
`benchmarks/scale.py` took 4.0-5.2 s against 3.2-3.7 s."""


@dataclass(slots=True)
class Replayed:
    """A batch of children handed out from the store: positions from `start`."""

    start: int
    app_ids: list[str]
    states: list[State]


class Replay:
    """Checks batches of tasks against the aggregate of the slots `store` saved for them."""

    def __init__(self, config: PlanConfig, planner: Planner, store: ChildReplayer) -> None:
        self._config = config
        self._planner = planner
        self.store = store
        self.store_can = True
        """False once the store said it cannot replay (an older layout)."""

    @staticmethod
    def applies(config: PlanConfig) -> bool:
        """Whether children of this fan-out can be replayed: they are saved (so have
        fingerprints) and the parent's step is numbered (so they have slots)."""
        return config.parent.sequence_id is not None and config.saver is not None

    def finished(self, batch: list[tuple[int, SubGraphTask]]) -> Replayed | None:
        """The whole of `batch` if every child in it had finished with the same task;
        None if any had not (or the store cannot tell)."""
        start, stop = batch[0][0], batch[-1][0] + 1
        if stop - start != len(batch):  # positions with gaps (a re-run of some children)
            return None
        halts = self._halting_runnables(batch)
        if halts is None:
            return None
        parent = self._config.parent
        block = self.store.replay_children(
            parent.partition_key, parent.app_id, parent.sequence_id, start, stop
        )
        if block is None:
            self.store_can = False
            return None
        if not _whole(block, len(batch)) or not all(block.position in h for h in halts):
            return None
        if block.seal is not None and self._sealed(batch, block):
            app_ids = block.app_ids.split(",")
        else:
            app_ids = self._planner.default_ids(start, stop)
            if block.app_ids != ",".join(app_ids) or not self._same_fingerprints(
                batch, app_ids, block.metas
            ):
                return None
        states = block.read_states()  # only now: a rejected block's states are not read
        return None if states is None else Replayed(start, app_ids, states)

    def _same_fingerprints(
        self, batch: list[tuple[int, SubGraphTask]], app_ids: list[str], metas: str
    ) -> bool:
        fingerprint = self._planner.fingerprint
        return metas == ",".join([
            fingerprint_meta(fingerprint(task, position, app_id))
            for (position, task), app_id in zip(batch, app_ids)
        ])

    def _sealed(self, batch: list[tuple[int, SubGraphTask]], block: ReplayBlock) -> bool:
        """Whether the seal of these slots matches the tasks of `batch` and the ids and
        fingerprints saved in them: then each child would pass the per-child checks (the
        planning run sealed exactly those tasks, ids and fingerprints)."""
        texts = self._planner.seal_texts(batch)
        if texts is None:
            return False
        states, calls = texts
        return block.seal == seal_digest(sha256(states.encode()), sha256(calls.encode()),
                                         sha256(block.app_ids.encode()),
                                         sha256(block.metas.encode()))

    def _halting_runnables(
        self, batch: list[tuple[int, SubGraphTask]]
    ) -> list[frozenset[str]] | None:
        """The actions after which each distinct runnable of `batch` halts whatever the
        state; None if a task is not one the replay can check (its own id or store)."""
        halts: dict[int, frozenset[str]] = {}
        for _, task in batch:
            if not plain_task(task, self._config):
                return None
            runnable = task.graph
            if id(runnable) not in halts:
                halts[id(runnable)] = runnable.halts_after
        return list(halts.values())


def _whole(block: ReplayBlock, children: int) -> bool:
    """`children` steps, all completed, at one action (that they are one per slot, in
    slot order, the comparison of their ids shows)."""
    return (
        block.steps == children
        and not block.unfinished
        and block.position is not None
    )


def seal_digest(*parts: Hash) -> str:
    """One digest of a block's hashed columns: its tasks' states and calls as JSON arrays,
    its ids and fingerprint metas joined by commas (fixed-length parts: no ambiguity)."""
    return sha256(b"".join(part.digest() for part in parts)).hexdigest()


class Sealer:
    """Digests each block of `REPLAY_BATCH` slots as the planning run plans it, for a
    later replay to check the whole block at once (`Replay._sealed`). Streaming: a block
    costs four hash objects, not its tasks. A block with a task the replay cannot check
    (its own id or store) or a gap in its positions gets no seal."""

    def __init__(self) -> None:
        self._start: int | None = None
        self._next = 0
        self._columns = _columns()
        self.sealed: list[Seal] = []
        """Seals made and not yet saved."""

    def add(self, planned: list[tuple[int, bool, str, Payload, str]]) -> None:
        """Digest a batch of planned children: (position, plain, app id, payload,
        fingerprint) each, in order; each column's hash is updated once per run of the
        batch within a block (a child's four updates cost the planning of a persisted
        trivial child 3.5%: the SQLite rows of `benchmarks/scale.py`)."""
        run: list[tuple[int, bool, str, Payload, str]] = []
        for entry in planned:
            position, plain = entry[0], entry[1]
            if position % REPLAY_BATCH == 0:
                self._digest(run)
                run = []
                self._start, self._next = position, position
                self._columns = _columns()
            if self._start is None:
                continue
            if not plain or position != self._next + len(run):
                self._start, run = None, []
                continue
            run.append(entry)
            if (position + 1) % REPLAY_BATCH == 0:
                self._digest(run)
                run = []
                self._close()
        self._digest(run)

    def _digest(self, run: list[tuple[int, bool, str, Payload, str]]) -> None:
        """Feed `run` (consecutive children of the open block, from `_next`) to its hashes."""
        if not run or self._start is None:
            return
        comma = "," if self._next > self._start else ""
        states, calls, app_ids, metas = self._columns
        states.update((comma + ",".join([p.state for _, _, _, p, _ in run])).encode())
        calls.update((comma + ",".join(
            [f"[{p.entrypoint},{p.inputs}]" for _, _, _, p, _ in run])).encode())
        app_ids.update((comma + ",".join([app_id for _, _, app_id, _, _ in run])).encode())
        metas.update((comma + ",".join(
            [fingerprint_meta(f) for _, _, _, _, f in run])).encode())
        self._next = run[-1][0] + 1

    def finish(self) -> None:
        """No more tasks: seal the last block, however short."""
        if self._start is not None and self._next > self._start:
            self._close()

    def _close(self) -> None:
        assert self._start is not None
        states, calls, app_ids, metas = self._columns
        states.update(b"]")
        calls.update(b"]")
        self.sealed.append(Seal(self._start, self._next - self._start,
                                seal_digest(states, calls, app_ids, metas)))
        self._start = None


def _columns() -> tuple[Hash, Hash, Hash, Hash]:
    """Fresh hashes of a block's states, calls (JSON arrays: opened here), ids and metas."""
    return sha256(b"["), sha256(b"["), sha256(), sha256()
