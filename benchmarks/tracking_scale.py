"""Tracking at large N: per-child cost of a threads fan-out of trivial children with
`LocalTrackingClient`, and what reading the project costs afterwards.

Each size runs in a fresh subprocess (a cold process, its own folder under `--workdir`):
a `MapStates` over N trivial children (`state.update(y=x+1)`) on a `MultiThreadedExecutor`,
states made lazily. Per child: wall time, and CPU time of all the process's threads (the
steadier figure when other work shares the machine). Afterwards, in the same subprocess,
it times the reads a user makes: `list_app_ids(None)` of the project (`fanwise apps`), the
run index's first page of root apps (the UI's apps page), the first page of the parent's
children, the steps of the last child (the UI's child page) and its `load()` (`fanwise
export` from tracking), and counts the entries of the project folder. Nothing here
asserts a time.

    .venv/bin/python benchmarks/tracking_scale.py [--sizes 10000,100000] [--workers 8]
                                                  [--workdir DIR] [--keep]
                                                  [--compare NAME=PATH ...] [--rebuild]

`--compare NAME=PATH` also runs each size with the fanwise found on `PATH` (a folder holding
a `fanwise/` package, e.g. an earlier checkout), interleaved with this one, in rows NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

PROJECT = "tracking-scale"


def child_run(children: int, workers: int, folder: str, rebuild: bool) -> dict[str, Any]:
    """One measured fan-out (in this process) and the reads after it."""
    from fanwise.core import ApplicationBuilder, State, action
    from fanwise.core.tracking import LocalTrackingClient
    from fanwise.core.tracking.index import RunIndex
    from fanwise.executors import MultiThreadedExecutor
    from fanwise.parallel import MapStates
    from fanwise.ui import _appfiles

    @action(reads=["x"], writes=["y"])
    def add_one(state: State) -> State:
        return state.update(y=state["x"] + 1)

    class SumChildren(MapStates):
        reads = ["total"]
        writes = ["total"]

        def action(self) -> Any:
            return add_one

        def states(self, state: State) -> Iterable[State]:
            return (State({"x": x}) for x in range(children))

        def reduce(self, state: State, states: Iterable[State]) -> State:
            return state.update(total=sum(child["y"] for child in states))

    executor = MultiThreadedExecutor(workers)
    tracker = LocalTrackingClient(PROJECT, folder)
    app = (
        ApplicationBuilder()
        .with_actions(fan=SumChildren())
        .with_entrypoint("fan")
        .with_state(total=0)
        .with_executor(executor)
        .with_tracker(tracker)
        .with_identifiers(app_id="parent")
        .build()
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        total = app.run(halt_after=["fan"])[2]["total"]
    finally:
        executor.shutdown(wait=True)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started  # every thread's: steadier on a shared machine
    if total != sum(x + 1 for x in range(children)):
        raise RuntimeError(f"reduced to {total}")
    tracker.close()

    project = os.path.join(folder, PROJECT)
    reads: dict[str, float] = {}

    def timed(name: str, read: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        result = read()
        reads[name] = (time.perf_counter() - began) * 1000.0
        return result

    reader = LocalTrackingClient(PROJECT, folder)
    apps = timed("list_app_ids (ms)", lambda: reader.list_app_ids(None))
    index = timed("open index (ms)", lambda: RunIndex.open(PROJECT, folder))
    timed("apps page (ms)", lambda: index.apps(limit=50))
    page = timed("children page (ms)", lambda: index.children("parent", limit=50))
    last = f"{_last_child_id(index)}"
    if hasattr(_appfiles, "app_source"):
        steps = timed("last child's steps (ms)",
                      lambda: _appfiles.read_steps(_appfiles.app_source(index, last, None)))
    else:  # a fanwise whose every app has a folder (`--fanwise` of an earlier checkout)
        steps = timed("last child's steps (ms)",
                      lambda: _appfiles.read_steps(_appfiles.app_folder(project, last, None)))
    timed("load last child (ms)", lambda: reader.load(None, last))
    with os.scandir(project) as entries:
        entries_count = sum(1 for _ in entries)
    if rebuild:  # the index of a project written without one (an earlier fanwise, Burr)
        index.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(index.path + suffix):
                os.unlink(index.path + suffix)
        timed("rebuild index (ms)", lambda: RunIndex.open(PROJECT, folder).close())
    return {
        "children": children,
        "us_per_child": elapsed / children * 1e6,
        "cpu_us_per_child": cpu / children * 1e6,
        "apps_listed": len(apps),
        "children_counted": page.total,
        "last_child_steps": len(steps),
        "project_entries": entries_count,
        **reads,
    }


def _last_child_id(index: Any) -> str:
    """The child spawned last (the largest row of the parent's children)."""
    with index._locked() as connection:  # a benchmark's shortcut: no reader lists backwards
        (app_id,) = connection.execute(
            "SELECT app_id FROM apps WHERE parent_row = (SELECT rowid FROM apps WHERE"
            " app_id = 'parent') ORDER BY rowid DESC LIMIT 1").fetchone()
    return app_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--workdir", default=os.path.expanduser("~/.fanwise"))
    parser.add_argument("--keep", action="store_true", help="keep the tracking folders")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--rebuild", action="store_true",
                        help="also time a rebuild of the run index from the files")
    parser.add_argument("--child", nargs=2, metavar=("N", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_run(int(args.child[0]), args.workers, args.child[1],
                                   args.rebuild)))
        return
    os.makedirs(args.workdir, exist_ok=True)
    trees = [("this", None)] + [tuple(item.split("=", 1)) for item in args.compare]
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for name, path in trees:
            folder = tempfile.mkdtemp(prefix="tracking-scale-", dir=args.workdir)
            env = dict(os.environ)
            if path is not None:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--workers", str(args.workers), "--child",
                     str(size), folder, *(["--rebuild"] if args.rebuild else [])],
                    check=True, capture_output=True, text=True, env=env,
                ).stdout
                rows.append({"fanwise": name, **json.loads(out.strip().splitlines()[-1])})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            finally:
                if not args.keep:  # (a million folders take minutes to remove)
                    shutil.rmtree(folder, ignore_errors=True)
    names = list(rows[0])
    print("| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))
    for row in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v)
                               for v in row.values()) + " |")


if __name__ == "__main__":
    main()
