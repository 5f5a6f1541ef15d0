"""The command line on a fan-out whose children are mostly compact (no folder): `children`,
`show CHILD` and `export` from the tracking logs see every child, as with folders."""

from __future__ import annotations

import json
import os

from fanwise.cli.main import main
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates


@action(reads=["x"], writes=["y"])
def cube(state: State) -> State:
    return state.update(y=state["x"] ** 3)


class Cubes(MapStates):
    reads = []
    writes = ["total"]

    def action(self):
        return cube

    def states(self, state):
        return (State({"x": x}) for x in range(25))

    def reduce(self, state, states):
        return state.update(total=sum(child["y"] for child in states))


def test_children_show_and_export_read_compact_children(tmp_path, capsys):
    tracker = LocalTrackingClient("demo", storage_dir=str(tmp_path), child_folders=5)
    (ApplicationBuilder().with_actions(fan=Cubes()).with_entrypoint("fan")
     .with_tracker(tracker).with_identifiers(app_id="fan")
     .with_executor(MultiThreadedExecutor(4)).build().run(halt_after=["fan"]))
    assert len([name for name in os.listdir(tmp_path / "demo") if name[0] != "."]) == 6
    reads = ["--tracking", str(tmp_path), "--project", "demo"]

    assert main(["children", "fan", *reads, "--limit", "100", "--json"]) == 0
    *children, summary = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert summary["counts"] == {"completed": 25} and len(children) == 25

    last = children[-1]["app_id"]
    assert not os.path.exists(tmp_path / "demo" / last)  # a compact child
    assert main(["show", last, *reads, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["app"]["status"] == "completed" and shown["app"]["parent_app_id"] == "fan"

    assert main(["export", "fan", *reads, "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(row["y"] for row in rows) == [x ** 3 for x in range(25)]
