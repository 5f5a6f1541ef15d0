"""The UI's pages of compact children (tracked without a folder, `child_folders=`): their
steps, state and graph come from their range of a shard log, as a folder child's do."""

from __future__ import annotations

import os
import re

import pytest
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.actions import as_action
from fanwise.core.conditions import default
from fanwise.core.graph import build_graph
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.tracking.index import RunIndex
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates, RunnableGraph
from ui_apps import Client


@action(reads=["n"], writes=["square"])
def square(state: State) -> State:
    return state.update(square=state["n"] ** 2)


@action(reads=["square"], writes=["half"])
def half(state: State) -> State:
    return state.update(half=state["square"] / 2)


class Squares(MapStates):
    reads = []
    writes = ["total"]

    def action(self):
        actions = {"square": as_action(square), "half": as_action(half)}
        graph = build_graph(actions, [("square", "half", default)])
        return RunnableGraph(graph, "square", ["half"])

    def states(self, state):
        return (State({"n": n}) for n in range(9))

    def reduce(self, state, states):
        return state.update(total=sum(child["half"] for child in states))


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("compact-ui"))
    tracker = LocalTrackingClient("compact", storage_dir=folder, child_folders=2)
    (ApplicationBuilder().with_actions(fan=Squares()).with_entrypoint("fan")
     .with_tracker(tracker).with_identifiers(app_id="fan")
     .with_executor(MultiThreadedExecutor).build().run(halt_after=["fan"]))
    return folder


@pytest.fixture
def client(storage):
    from fanwise.ui import create_app

    opened = Client(create_app("compact", storage))
    yield opened
    opened.close()


def test_a_compact_childs_page_shows_its_steps_graph_and_state(client, storage):
    with RunIndex.open("compact", storage) as index:
        children = list(index.iter_children("fan"))
        compact = [row for row in children if index.compact_place(row.app_id) is not None]
    assert len(children) == 9 and len(compact) == 7
    assert not any(os.path.isdir(os.path.join(storage, "compact", row.app_id))
                   for row in compact)
    child = compact[-1].app_id
    page = client.get(f"/p/compact/a/{child}").text
    assert "spawned by" in page
    assert len(re.findall(r'<tr class="completed">', page)) >= 2  # both steps
    svg = re.search(r'<svg class="graph".*?</svg>', page, re.S).group(0)
    assert re.findall(r"<text [^>]*>(\w+)</text>", svg) == ["square", "half"]
    state = client.get(f"/p/compact/a/{child}/steps/1").text
    assert re.search(r"<td>half</td>", state)


def test_the_fanouts_panel_lists_every_child_folder_or_compact(client, storage):
    page = client.get("/p/compact/a/fan").text
    assert "9 children:" in page
