"""Shared helpers for the fan-out tests: building a one-fan-out app, counting executions.
(A module of its own, not conftest.py: a `from conftest import` could find another test
folder's conftest, depending on the order folders are collected in.)"""

import hashlib
import os
import sqlite3
import threading
from collections import Counter
from contextlib import closing

from fanwise.core import ApplicationBuilder, Result

WAIT = 10.0
"""Seconds a test child waits on an event or barrier before giving up (a hang is a failure)."""


def fan_app(
    parallel,
    state=None,
    *,
    app_id=None,
    persister=None,
    resume=False,
    tracker=None,
    executor=None,
    partition_key=None,
):
    """An app `fan -> done` whose `fan` is `parallel`; `resume` loads from `persister`."""
    builder = (
        ApplicationBuilder()
        .with_actions(fan=parallel, done=Result(*parallel.writes))
        .with_transitions(("fan", "done"))
        .with_identifiers(app_id=app_id, partition_key=partition_key)
    )
    if persister is not None:
        builder.with_state_persister(persister)
    if tracker is not None:
        builder.with_tracker(tracker)
    if executor is not None:
        builder.with_executor(executor)
    if resume:
        return builder.initialize_from(
            persister, default_state=state or {}, default_entrypoint="fan"
        ).build()
    return builder.with_state(state or {}).with_entrypoint("fan").build()


def map_fan(child_fn, n, **settings):
    """A MapStates over x in range(n) whose child sets y = child_fn(x) and whose reduce
    collects the ys; `settings` are class attributes (max_concurrency, on_failure, ...)."""
    from fanwise.core import State, action
    from fanwise.parallel import MapStates

    @action(reads=["x"], writes=["y"])
    def child(state):
        return state.update(y=child_fn(state["x"]))

    class Fan(MapStates):
        reads = []
        writes = ["ys"]

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(n)]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def run_fan(parallel, state=None, inputs=None, **kwargs):
    """Build `fan_app(...)`, run it to `done`, and return the final state."""
    app = fan_app(parallel, state, **kwargs)
    return app.run(halt_after=["done"], inputs=inputs)[2]


def expected_child_id(parent_app_id, parent_sequence_id, position):
    """The documented child id: sha256 of parent app id, parent step and position."""
    key = f"{parent_app_id}\x1f{parent_sequence_id}\x1f{position}"
    return hashlib.sha256(key.encode()).hexdigest()


class Tally:
    """Appends one line per execution to a file, so counts survive a crash or a re-run."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def hit(self, label):
        with self._lock, open(self.path, "a") as f:
            f.write(f"{label}\n")

    def counts(self):
        if not os.path.exists(self.path):
            return Counter()
        with open(self.path) as f:
            return Counter(line.strip() for line in f if line.strip())


class Peak:
    """Counts how many callers are inside `with peak:` at once, and the most ever seen."""

    def __init__(self):
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc_info):
        with self._lock:
            self.now -= 1


def completed_app_ids(db_path, table="fanwise_state"):
    """App ids with a `completed` row in the SQLite file, read directly (no fanwise code):
    apps in the main table, fan-out children in its child table."""
    with closing(sqlite3.connect(db_path)) as connection:
        tables = [table, *table_if_present(connection, f"{table}_child")]
        return {
            row[0] for name in tables for row in connection.execute(
                f"SELECT DISTINCT app_id FROM {name} WHERE status = 'completed'")
        }


def table_if_present(connection, name):
    """[name] if the SQLite database of `connection` has that table, else []."""
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone()
    return [name] if found else []
