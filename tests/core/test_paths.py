"""User paths are resolved when a tracker or persister is created: a driver whose working
directory changes afterwards (as a Ray job's may) still writes where it was told."""

from __future__ import annotations

import os

import pytest
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient


@action(reads=["n"], writes=["n"])
def bump(state: State) -> State:
    return state.update(n=state["n"] + 1)


def test_a_relative_tracking_folder_and_db_survive_a_change_of_working_directory(
    tmp_path, monkeypatch
):
    (tmp_path / "job").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "job")
    tracker = LocalTrackingClient("proj", storage_dir="tracking")
    persister = SQLitePersister("state.db")
    monkeypatch.chdir(tmp_path / "elsewhere")

    app = (
        ApplicationBuilder().with_actions(bump=bump).with_transitions(("bump", "bump"))
        .with_state(n=0).with_entrypoint("bump").with_tracker(tracker)
        .with_state_persister(persister).with_identifiers(app_id="a").build()
    )
    with app:
        app.step()

    assert tracker.storage_dir == str(tmp_path / "job" / "tracking")
    assert (tmp_path / "job" / "tracking" / "proj" / "a" / "log.jsonl").stat().st_size > 0
    assert persister.load(None, "a")["state"]["n"] == 1
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_path_inside_a_ray_session_working_dir_is_warned_about(tmp_path, monkeypatch):
    job_dir = tmp_path / "session_2026-01-01_00-00-00_1_2" / "runtime_resources" / "w"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)

    with pytest.warns(RuntimeWarning, match="inside Ray's temporary session folder"):
        LocalTrackingClient("proj", storage_dir="tracking")
    with pytest.warns(RuntimeWarning, match="SQLitePersister db_path 'state.db'"):
        SQLitePersister("state.db")
