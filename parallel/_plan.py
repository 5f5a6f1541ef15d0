"""Plan: user tasks -> child specs (ids, fingerprints, cascaded adapters), then the resume
lookup that turns children already finished in the store into results without running them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanwise.core.context import ApplicationContext, ParentPointer
from fanwise.core.errors import StateSerialisationError
from fanwise.core.persistence.base import PersistedStateData
from fanwise.core.protocols import ChildLoader, StateLoader, StateSaver, conforms
from fanwise.core.secret import Secret
from fanwise.parallel._child_ids import (
    Payload,
    calls_text,
    child_app_id,
    child_app_ids,
    fingerprint_of,
    payload,
    repeated_call_text,
    states_text,
)
from fanwise.parallel._retry import RetryPolicy
from fanwise.parallel.child import ChildResult, ChildSpec, Gate
from fanwise.parallel.events import EventSink
from fanwise.parallel.tasks import SubGraphTask

if TYPE_CHECKING:
    from fanwise.parallel._replay import Sealer

READ_AHEAD = 512
"""Default child ids read from the store per query once a fan-out is seen to be fresh (the
fan-out rows of `benchmarks/durability.py`: no query per few children)."""


@dataclass
class PlanConfig:
    """What every child of one fan-out shares."""

    action_name: str
    parent: ApplicationContext
    saver: StateSaver | None
    loader: StateLoader | None
    tracker: Any
    """The children's tracker: the cascaded one, or its recorder when children run in
    other processes (their records come back in their results)."""
    nested_executor: Any
    retry: RetryPolicy
    timeout: float | None
    events: EventSink | None
    collect_items: bool
    path: tuple[int, ...] = ()
    resource_inputs: frozenset[str] = frozenset()
    """Inputs that are resources, not data: left out of every child's fingerprint."""
    gate: Gate | None = None
    """The children's `Gate`, when they may wait in the executor's queue."""


class Planner:
    """Turns numbered user tasks into `ChildSpec`s."""

    def __init__(self, config: PlanConfig) -> None:
        self._config = config
        parent = config.parent
        self._pointer = ParentPointer(parent.app_id, parent.sequence_id, parent.partition_key)
        self.explicit_ids: dict[str, int] = {}
        self._known_ids: dict[int, str] = {}
        self.sealer: Sealer | None = None
        """Digests blocks of the children planned, where a replay can check them."""

    def default_id(self, position: int) -> str:
        """The hashed id of `position` (computed once: ids read ahead are kept for `specs`)."""
        known = self._known_ids.pop(position, None)
        if known is not None:
            return known
        parent = self._config.parent
        return child_app_id(parent.app_id, parent.sequence_id, position)

    def default_ids(self, start: int, stop: int) -> list[str]:
        """The hashed ids of positions [start, stop), in order."""
        parent = self._config.parent
        return child_app_ids(parent.app_id, parent.sequence_id, start, stop)

    def remember_ids(self, ids: dict[int, str]) -> None:
        self._known_ids.update(ids)

    def specs(self, batch: list[tuple[int, SubGraphTask]]) -> list[ChildSpec]:
        config = self._config
        pointer, partition_key = self._pointer, config.parent.partition_key
        # a child's path is read only where its items or nested events are wanted
        watched = config.events is not None or config.collect_items
        specs = []
        sealed: list[Any] | None = [] if self.sealer is not None else None
        for position, task in batch:
            if not isinstance(task, SubGraphTask):
                raise TypeError(
                    f"parallel action {config.action_name!r} produced {task!r} at position "
                    f"{position}; tasks() must yield SubGraphTask objects"
                )
            if task.application_id is not None:
                self._check_unique(task.application_id, position)
            saver = task.state_persister if task.state_persister is not None else config.saver
            loader = task.state_initializer if task.state_initializer is not None \
                else config.loader
            runnable = task.runnable
            app_id = task.application_id or self.default_id(position)
            fingerprint = None
            if saver is not None:
                payload = self.payload(task, position, app_id)
                fingerprint = fingerprint_of(payload)
                if sealed is not None:
                    sealed.append((position, plain_task(task, config), app_id, payload,
                                   fingerprint))
            # positional, in ChildSpec's field order: keywords to its 20 fields cost a
            # trivial child 5% (8k of 159k instructions, callgrind, the trivial-children
            # row of benchmarks/workloads.py)
            specs.append(
                ChildSpec(
                    position,
                    app_id,
                    runnable,
                    task.state,
                    task.inputs,
                    partition_key,
                    pointer,
                    fingerprint,
                    saver,
                    loader,
                    task.tracker if task.tracker is not None else config.tracker,
                    config.nested_executor,
                    None,  # resume_from: set by ResumeLookup
                    config.retry,
                    config.timeout if runnable.is_async else None,
                    config.events,
                    config.collect_items,
                    (*config.path, position) if watched else (),
                    config.gate,
                )
            )
        if sealed:
            self.sealer.add(sealed)
        return specs

    def fingerprint(self, task: SubGraphTask, position: int, app_id: str) -> str:
        """The fingerprint of a persisted child: its state and data inputs. Resources are
        left out: the inputs named in `resource_inputs` and `Secret`s (a new client or a
        rotated key is the same work). What is not data is an error naming the child."""
        return fingerprint_of(self.payload(task, position, app_id))

    def seal_texts(self, batch: list[tuple[int, SubGraphTask]]) -> tuple[str, str] | None:
        """The states and the calls of the payloads of `batch`, each as one JSON array
        (what a block's seal digests); None if one of them is not data."""
        states = states_text([task.state for _, task in batch])
        first = batch[0][1].graph
        if all(task.graph is first and not task.inputs for _, task in batch):
            calls: str | None = repeated_call_text(first.entrypoint, len(batch))
        else:
            resources = self._config.resource_inputs
            calls = calls_text([
                (task.graph.entrypoint, task.inputs and _data_inputs(task.inputs, resources))
                for _, task in batch
            ])
        return None if states is None or calls is None else (states, calls)

    def payload(self, task: SubGraphTask, position: int, app_id: str) -> Payload:
        """What `fingerprint` hashes."""
        inputs = task.inputs and _data_inputs(task.inputs, self._config.resource_inputs)
        try:
            return payload(task.state, inputs, task.runnable.entrypoint)
        except StateSerialisationError as exc:
            raise StateSerialisationError(
                f"parallel action {self._config.action_name!r}, child {position} (app id "
                f"{app_id}): {exc}"
            ) from None

    def _check_unique(self, app_id: str, position: int) -> None:
        earlier = self.explicit_ids.setdefault(app_id, position)
        if earlier != position:
            raise ValueError(
                f"parallel action {self._config.action_name!r}: child app id {app_id!r} is "
                f"used by tasks {earlier} and {position}; explicit application_id values "
                "must be unique"
            )


def plain_task(task: Any, config: PlanConfig) -> bool:
    """Whether `task` takes its fan-out's own id and stores: what a seal covers and a
    replay can check (a task with its own id or store takes the general path)."""
    return (
        type(task) is SubGraphTask
        and task.application_id is None
        and (task.state_persister is None or task.state_persister is config.saver)
        and (task.state_initializer is None or task.state_initializer is config.loader)
    )


def _data_inputs(inputs: dict[str, Any], resources: frozenset[str]) -> dict[str, Any]:
    """The inputs that identify a child's work: not resources, not `Secret`s."""
    return {
        name: value for name, value in inputs.items()
        if name not in resources and not isinstance(value, Secret)
    }


def read_saved(
    loader: StateLoader, parent: ApplicationContext, ids: dict[int, str]
) -> Any:
    """The read (maybe awaitable) of the latest saved rows of the children `ids` (position
    -> app id) of `parent`'s step: one range scan where the store keeps children by slot
    (`ChildLoader`), else a `load_many` of their ids."""
    if parent.sequence_id is not None and conforms(loader, ChildLoader):
        return loader.load_children(parent.partition_key, parent.app_id, parent.sequence_id, ids)
    return loader.load_many(parent.partition_key, list(ids.values()))


class ResumeLookup:
    """Finds children already saved: finished ones become results (not run again), half
    finished ones continue from their last step.

    Reads are batched per loader. Once a batch found no saved child (a fresh fan-out),
    default ids are read `READ_AHEAD` positions ahead (ids do not depend on the tasks), so
    that a fresh fan-out does not query the store every few children.
    """

    def __init__(self, planner: Planner, loader: StateLoader | None) -> None:
        self._planner = planner
        self._loader = loader
        self._fresh = False
        self._found: dict[str, PersistedStateData] = {}
        self._read_to = 0
        """Default ids below this position were read; `_found` keeps the rows found."""

    def lookups(self, specs: list[ChildSpec]) -> list[tuple[StateLoader, dict[int, str]]]:
        """One (loader, position -> app id) batch read per distinct loader."""
        groups: dict[int, tuple[StateLoader, dict[int, str]]] = {}
        for spec in specs:
            if spec.loader is None:
                continue
            ids = {spec.position: spec.app_id}
            if spec.loader is self._loader and spec.app_id not in self._planner.explicit_ids:
                if spec.position < self._read_to:
                    continue
                if self._fresh:
                    ahead = range(spec.position + 1, spec.position + READ_AHEAD)
                    known = {p: self._planner.default_id(p) for p in ahead}
                    self._planner.remember_ids(known)
                    self._read_to = spec.position + READ_AHEAD
                    ids.update(known)
            groups.setdefault(id(spec.loader), (spec.loader, {}))[1].update(ids)
        return list(groups.values())

    def apply(
        self, specs: list[ChildSpec], rows: dict[str, PersistedStateData]
    ) -> list[ChildSpec | tuple[ChildSpec, ChildResult]]:
        """(spec, resumed result) for each child saved as done with the same inputs, else
        its spec (continuing from its last saved step if that has the same inputs)."""
        if not rows and not self._found:  # nothing saved (or no store): all to run, and
            # no per-child matching (1% of an unpersisted trivial child's instructions,
            # callgrind: the trivial-children row of benchmarks/workloads.py)
            self._fresh = True
            return list(specs)
        self._found.update(rows)
        saved = [self._found.pop(spec.app_id, None) for spec in specs]
        self._fresh = not any(saved)
        planned: list[ChildSpec | tuple[ChildSpec, ChildResult]] = []
        for spec, row in zip(specs, saved):
            if row is not None and (row.get("meta") or {}).get("fingerprint") == spec.fingerprint:
                if row["status"] == "completed" and spec.runnable.is_finished(
                    row["position"], row["state"]
                ):
                    resumed = ChildResult(spec.position, spec.app_id, row["state"], resumed=True)
                    planned.append((spec, resumed))
                    continue
                spec.resume_from = row
            planned.append(spec)
        return planned
