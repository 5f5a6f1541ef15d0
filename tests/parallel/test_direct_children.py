"""A persisted or tracked one-step child runs without an application around it; what it
saves and what its hooks are told must be exactly what its application would save and
tell (the same rows, the same failed step, the same hook calls in the same order)."""

import asyncio
import sqlite3
from contextlib import closing

import pytest
from fanout_testing import fan_app, map_fan, run_fan
from fanwise.core import ApplicationContext, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.visibility import trace
from fanwise.parallel import ChildrenFailedError, MapStates, child


@pytest.fixture
def paths(monkeypatch):
    """`paths()` yields "direct", then "application" once every child builds its
    application (no direct path)."""

    def each():
        yield "direct"
        monkeypatch.setattr(child, "_plain_saved", lambda spec: False)
        monkeypatch.setattr(child, "_plain", lambda spec: False)
        monkeypatch.setattr(child, "_plain_tracked", lambda spec, action: False)
        yield "application"

    return each


def child_rows(db):
    """Every child row but its time, in key order."""
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(
            "SELECT child, sequence_id, app_id, position, state, status, meta"
            " FROM fanwise_state_child ORDER BY fanout, child, sequence_id"
        ).fetchall()


def fails_at_3(x):
    if x == 3:
        raise ValueError("three")
    return x * 10


@pytest.mark.parametrize("child_fn", [lambda x: x * 10, fails_at_3], ids=["ok", "one fails"])
def test_the_direct_path_saves_the_rows_an_application_saves(tmp_path, child_fn, paths):
    results = {}
    for path in paths():
        db = tmp_path / f"{path}.db"
        tracker = LocalTrackingClient("p", storage_dir=tmp_path / path)
        fan = map_fan(child_fn, 6, on_failure="continue")
        try:
            results[path] = run_fan(fan, app_id="same", persister=SQLitePersister(db),
                                    tracker=tracker)["ys"]
        except ChildrenFailedError as exc:
            results[path] = str(exc)
        results[path, "rows"] = child_rows(db)

    assert results["direct"] == results["application"]
    assert results["direct", "rows"] == results["application", "rows"]
    statuses = {row[0]: row[5] for row in results["direct", "rows"]}
    assert len(statuses) == 6
    if child_fn is fails_at_3:
        # the failed child's row is its state before the step, as "failed"
        failed = next(row for row in results["direct", "rows"] if row[0] == 3)
        assert failed[5] == "failed" and failed[4] == '{"x":3}'


class HookLog:
    """Every hook call a child's tracker gets: (hook, arguments), states as dicts, errors
    by their repr (each run raises its own), graphs and actions by what describes them."""

    def __init__(self):
        self.calls = []

    def _log(self, hook, kwargs):
        seen = {}
        for name, value in sorted(kwargs.items()):
            if isinstance(value, State):
                value = dict(value)
            elif isinstance(value, BaseException):
                value = repr(value)
            elif name == "span" and value is not None:
                value = (value.name, value.sequence_id)
            elif name == "application_graph":  # each run plans its own (equal) graph
                value = (value.to_dict(), value.entrypoint.name)
            elif name == "action" and not isinstance(value, str):
                value = (value.name, value.reads, value.writes)
            seen[name] = value
        self.calls.append((hook, seen))

    def post_application_create(self, **kwargs):
        self._log("post_application_create", kwargs)

    def pre_run_step(self, **kwargs):
        self._log("pre_run_step", kwargs)

    def post_run_step(self, **kwargs):
        self._log("post_run_step", kwargs)

    def pre_start_span(self, **kwargs):
        self._log("pre_start_span", kwargs)

    def post_end_span(self, **kwargs):
        self._log("post_end_span", kwargs)

    def do_log_attributes(self, **kwargs):
        self._log("do_log_attributes", kwargs)


@trace()
def traced_tenfold(x):
    return x * 10


def traced_fails_at_3(x):
    if x == 3:
        raise ValueError("three")
    return traced_tenfold(x)


def fan_of(kind, child_fn, n, **settings):
    """`map_fan`, or for "async" its fan-out with an async child and reduce (children on
    the event loop)."""
    if kind == "sync":
        return map_fan(child_fn, n, **settings)

    @action(reads=["x"], writes=["y"])
    async def child(state):  # named as map_fan's child
        return state.update(y=child_fn(state["x"]))

    class Fan(MapStates):
        reads, writes = [], ["ys"]

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(n)]

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def run_either(kind, fan, **kwargs):
    if kind == "sync":
        return run_fan(fan, **kwargs)
    return asyncio.run(fan_app(fan, **kwargs).arun(halt_after=["done"]))[2]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("persisted", [False, True], ids=["tracked", "tracked+persisted"])
def test_the_direct_path_tells_the_hooks_what_an_application_tells_them(
    tmp_path, persisted, kind, paths
):
    calls = {}
    for path in paths():
        log = HookLog()
        fan = fan_of(kind, traced_fails_at_3, 6, on_failure="continue", max_concurrency=1)
        persister = SQLitePersister(tmp_path / f"{path}.db") if persisted else None
        with pytest.raises(ChildrenFailedError, match="positions 3"):
            run_either(kind, fan, app_id="same", persister=persister, tracker=log)
        calls[path] = [call for call in log.calls if call[1].get("app_id") != "same"]

    assert calls["direct"] == calls["application"]
    hooks = [hook for hook, _ in calls["direct"]]
    # six children: created, step begun, a traced span (not in the failing one), step ended
    assert hooks.count("post_application_create") == hooks.count("post_run_step") == 6
    assert hooks.count("pre_start_span") == hooks.count("post_end_span") == 5
    failed = [args for hook, args in calls["direct"]
              if hook == "post_run_step" and args["exception"] is not None]
    assert [args["state"] for args in failed] == [{"x": 3}]


def test_a_tracked_child_without_an_application_is_written_as_one_with_it(tmp_path, paths):
    """What LocalTrackingClient writes for the children reads back the same either way."""
    read = {}
    for path in paths():
        tracker = LocalTrackingClient("p", storage_dir=tmp_path / path, child_folders=2)
        with pytest.raises(ChildrenFailedError):
            run_fan(map_fan(fails_at_3, 5, on_failure="continue"), app_id="same",
                    tracker=tracker)
        reader = LocalTrackingClient("p", storage_dir=tmp_path / path)
        read[path] = sorted(
            (c["child_app_id"], reader.load(None, c["child_app_id"])["state"].get_all())
            for c in reader.children("same")
        )
    assert read["direct"] == read["application"]
    assert len(read["direct"]) == 5


def context_recorder(seen):
    """A child function that records what `ApplicationContext.get()` says, and returns x."""

    def record(x):
        found = ApplicationContext.get()
        seen.append(None if found is None else (found.app_id, found.sequence_id,
                                                found.action_name,
                                                found.spawning_parent.app_id))
        return x

    return record


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("observed", ["nothing", "persister", "tracker"])
def test_a_child_without_an_application_sees_the_context_its_application_would_give(
    tmp_path, kind, observed, paths
):
    seen = {}
    for path in paths():
        seen[path] = []
        adapters = {
            "persister": {"persister": SQLitePersister(tmp_path / f"{path}.db")},
            "tracker": {"tracker": HookLog()},
        }.get(observed, {})
        fan = fan_of(kind, context_recorder(seen[path]), 3)
        assert run_either(kind, fan, app_id="parent", **adapters)["ys"] == [0, 1, 2]
    assert sorted(seen["direct"]) == sorted(seen["application"])
    assert all(entry[1:] == (0, "child", "parent") for entry in seen["direct"])
    assert len({entry[0] for entry in seen["direct"]}) == 3  # each child its own id
