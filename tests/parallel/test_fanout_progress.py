"""The optional tqdm progress bar of a fan-out: done, failed and resumed counts."""

import pytest
from fanout_testing import run_fan
from fanwise.core import State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import ChildFailedError, MapStates

pytest.importorskip("tqdm")


def progress_fan(n, fail_once=(), progress=True, sized=True, **settings):
    armed = set(fail_once)

    @action(reads=["x"], writes=["y"])
    def child(state):
        if state["x"] in armed:
            armed.discard(state["x"])
            raise ValueError("fails once")
        return state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 1

        def action(self):
            return child

        def states(self, state):
            made = (State({"x": x}) for x in range(n))
            return list(made) if sized else made

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    Fan.progress = progress
    for name, value in settings.items():
        setattr(Fan, name, value)
    return Fan()


def last_bar(err):
    return err.replace("\r", "\n").strip().splitlines()[-1]


def test_the_progress_bar_shows_the_total_of_a_sized_states_collection(capsys):
    assert run_fan(progress_fan(25))["ys"] == list(range(25))
    bar = last_bar(capsys.readouterr().err)
    assert bar.startswith("fan: 100%") and "25/25" in bar


def test_the_progress_bar_counts_a_generator_without_a_total_unless_given_one(capsys):
    run_fan(progress_fan(25, sized=False))
    assert last_bar(capsys.readouterr().err).startswith("fan: 25")
    run_fan(progress_fan(25, sized=False, progress_total=25))
    assert "25/25" in last_bar(capsys.readouterr().err)


def test_the_progress_bar_counts_retries(capsys):
    run_fan(progress_fan(5, fail_once={1, 3}, retries=1, retry_backoff=0.001))
    bar = last_bar(capsys.readouterr().err)
    assert "5/5" in bar and "retried=2" in bar and "failed=0" in bar


def test_the_progress_bar_counts_failed_and_resumed_children(tmp_path, capsys):
    persister = SQLitePersister(tmp_path / "state.db")
    fan = progress_fan(25, fail_once={7})
    with pytest.raises(ChildFailedError):
        run_fan(fan, app_id="p", persister=persister, resume=True)
    bar = last_bar(capsys.readouterr().err)
    assert "7/25" in bar and "failed=1" in bar
    assert run_fan(fan, app_id="p", persister=persister, resume=True)["ys"] == list(range(25))
    bar = last_bar(capsys.readouterr().err)
    assert "25/25" in bar and "resumed=7" in bar and "failed=0" in bar


def test_no_progress_bar_unless_asked(capsys):
    run_fan(progress_fan(5, progress=False))
    assert capsys.readouterr().err == ""
