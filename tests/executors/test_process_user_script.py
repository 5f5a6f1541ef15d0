"""MultiProcessExecutor with what a user's script defines: the script runs as `__main__` in
its own interpreter, as a user runs it, and its classes go to worker processes and back.

Run as a file, the forkserver imports the script again (as `__mp_main__`, so the worker's
copy of a class is not the one shipped to it); run with `-m`, the workers never import it.
Both must behave as threads do.
"""

import json
import re
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    '''
    import dataclasses
    import json
    import os
    import sys

    from fanwise.core import ApplicationBuilder, GraphBuilder, Result, State, action, serde
    from fanwise.core.persistence import SQLitePersister
    from fanwise.executors import MultiProcessExecutor
    from fanwise.parallel import ChildFailedError, MapStates, RunnableGraph


    class Rejected(Exception):
        def __init__(self, code, reason):
            super().__init__(f"{code}: {reason}")
            self.code = code


    @dataclasses.dataclass
    class Point:
        x: int
        y: int


    @action(reads=["x"], writes=["p", "pid"])
    def place(state):
        if state["x"] == 3 and state["fail"]:
            raise Rejected(state["x"], "three is rejected")
        return state.update(p=Point(state["x"], -state["x"]), pid=os.getpid())


    @action(reads=["p"], writes=["p"])
    def shift(state):
        return state.update(p=Point(state["p"].x + 1, state["p"].y))


    TWO_STEPS = RunnableGraph(
        GraphBuilder().with_actions(place, shift).with_transitions(("place", "shift")).build(),
        "place", ["shift"],
    )


    class Fan(MapStates):
        reads, writes = ["n", "fail", "steps"], ["points", "pids"]

        def action(self, state):
            return TWO_STEPS if state["steps"] == 2 else place

        def states(self, state):
            return [State({"x": x, "fail": state["fail"]}) for x in range(state["n"])]

        def reduce(self, state, states):
            children = list(states)
            return state.update(points=[c["p"] for c in children],
                                pids=[c["pid"] for c in children])


    def fan_out(executor, persister=None, fail=False, steps=1):
        builder = (
            ApplicationBuilder()
            .with_actions(fan=Fan(), done=Result("points", "pids"))
            .with_transitions(("fan", "done"))
            .with_state(n=6, fail=fail, steps=steps)
            .with_entrypoint("fan")
            .with_executor(executor)
        )
        if persister is not None:
            builder.with_state_persister(persister)
        return builder.build().run(halt_after=["done"])[2]


    def outcome(run):
        """What a fan-out gave: its points (and where they were made), or its error."""
        try:
            state = run()
        except Exception as exc:
            cause = exc.__cause__
            return {
                "error": type(exc).__name__,
                "message": str(exc),
                "position": getattr(exc, "position", None),
                "cause_is_users_class": type(cause) is Rejected,
                "code": getattr(cause, "code", None),
                "cause": type(cause).__name__,
            }
        return {
            "points": [[p.x, p.y] for p in state["points"]],
            "all_points": all(type(p) is Point for p in state["points"]),
            "in_workers": os.getpid() not in state["pids"],
        }


    if __name__ == "__main__":
        folder = sys.argv[1]
        report = {}
        with MultiProcessExecutor(max_concurrency=2) as executor:
            report["raises"] = outcome(lambda: fan_out(executor, fail=True))
            report["dataclass"] = outcome(lambda: fan_out(executor))
            report["dataclass, two steps"] = outcome(lambda: fan_out(executor, steps=2))
            for steps in (1, 2):
                persister = SQLitePersister(os.path.join(folder, f"unregistered-{steps}.db"))
                report[f"persisted, no serde, {steps} steps"] = outcome(
                    lambda: fan_out(executor, persister, steps=steps))
            # registered where users register: under the guard, so workers never run it
            serde.register_type(Point, dataclasses.asdict, lambda stored: Point(**stored))
            for steps in (1, 2):
                persister = SQLitePersister(os.path.join(folder, f"registered-{steps}.db"))
                report[f"persisted, serde, {steps} steps"] = outcome(
                    lambda: fan_out(executor, persister, steps=steps))
        print(json.dumps(report))
    '''
)


@pytest.fixture(scope="module", params=["file", "module"])
def report(request, tmp_path_factory):
    """What the script saw, run as `python user_script.py` or `python -m user_script`."""
    folder = tmp_path_factory.mktemp(f"run-as-{request.param}")
    (folder / "user_script.py").write_text(SCRIPT)
    target = ["user_script.py"] if request.param == "file" else ["-m", "user_script"]
    done = subprocess.run(
        [sys.executable, *target, str(folder)], cwd=folder, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_user_exception_class_is_the_cause_of_the_failure_of_the_right_child(report):
    assert report["raises"] == {
        "error": "ChildFailedError",
        "message": report["raises"]["message"],
        "position": 3,
        "cause_is_users_class": True,
        "code": 3,
        "cause": "Rejected",
    }
    assert report["raises"]["message"].startswith("child 3 (app id ")
    assert "Rejected: 3: three is rejected" in report["raises"]["message"]


@pytest.mark.parametrize("case", ["dataclass", "dataclass, two steps"])
def test_a_user_dataclass_in_a_childs_state_comes_back_as_itself(report, case):
    assert report[case] == {
        "points": [[x + (case != "dataclass"), -x] for x in range(6)],
        "all_points": True,
        "in_workers": True,
    }


@pytest.mark.parametrize("steps", [1, 2])
def test_without_a_serde_a_persisted_dataclass_is_an_error_naming_field_type_and_child(
    report, steps
):
    failed = report[f"persisted, no serde, {steps} steps"]
    advice = ("state field 'p' holds a __main__.Point, which is not JSON-serialisable; "
              "register a serde with fanwise.core.serde.register_type(Point, dump, load)")

    assert "StateSerialisationError" in (failed["error"], failed["cause"])
    assert re.search(r"\bchild \d+\b", failed["message"]), failed["message"]
    assert advice in failed["message"]


@pytest.mark.parametrize("steps", [1, 2])
def test_a_serde_registered_in_the_script_saves_the_dataclass_wherever_the_child_runs(
    report, steps
):
    assert report[f"persisted, serde, {steps} steps"] == {
        "points": [[x + (steps == 2), -x] for x in range(6)],
        "all_points": True,
        "in_workers": True,
    }
