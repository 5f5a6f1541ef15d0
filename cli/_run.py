"""`fanwise run` and `fanwise resume`: build an app from `MODULE:FUNC` and run it on a store.

    fanwise run MODULE:FUNC --app-id ID [--db URL] [--tracking DIR --project P]
                [--executor NAME] [--max-concurrency N] [--input k=v ...] [--halt-after A]
    fanwise resume ID [MODULE:FUNC] [the same options] [--only failed]

`FUNC` is called with the keyword arguments it names among `app_id`, `partition_key`,
`persister`, `tracker`, `executor` and `inputs`, and returns an `ApplicationBuilder`. What it
did not take, the command adds: identifiers, tracker, executor, and the persister, through
`initialize_from` (`ApplicationBuilder.resuming_from`), so that the same app id goes on
where its last run stopped. `run` records its command line in the run index; `resume ID`
reads it back (options given again win). `resume --only failed` re-runs only the failed
children of the fan-out step the app stopped at, read from the run index, and halts after
that step; children never run stay pending (`fanwise.parallel._rerun`).

Exit codes: 0 the app reached its end, 4 it halted with more to run, 1 it (or a child)
failed, 3 another driver holds its lease, 130 interrupted (Ctrl-C). Progress goes to
stderr (a bar on a terminal) or, with `--json`, to stdout as `{"type": "progress", ...}`
lines, ended by one `{"type": "result", ...}` line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import inspect
import json
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

from fanwise.cli._common import (
    DEFAULT_TABLE,
    DEFAULT_TRACKING,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_STOPPED,
    CliError,
    open_persister,
    planned_children,
    print_json,
)

if TYPE_CHECKING:
    from fanwise.core.application import Application

DEFAULT_PROJECT = "default"
"""The tracking project of `fanwise run` without `--project`."""
INJECTED = ("app_id", "partition_key", "persister", "tracker", "executor", "inputs")
"""The keyword arguments `FUNC` may name to receive what the command made of its options."""
PROGRESS_EVERY = 0.5
"""Seconds between two `--json` progress lines (and bar refreshes)."""
_RECORDED = ("target", "db", "table", "tracking", "project", "executor", "max_concurrency",
             "inputs", "halt_after", "halt_before", "partition_key", "cwd")


def add_parsers(commands: Any) -> None:
    """Add `run` and `resume` to the `fanwise` subparsers."""
    run = commands.add_parser("run", help="run MODULE:FUNC's app on a store (resumable)")
    run.add_argument("target", metavar="MODULE:FUNC",
                     help="a module (or path/to/file.py) and the function returning the "
                          "ApplicationBuilder")
    run.add_argument("--app-id", required=True, help="the app id (the same id resumes)")
    _options(run)
    run.set_defaults(run=_run)

    resume = commands.add_parser("resume", help="go on with an app id `fanwise run` started")
    resume.add_argument("app_id", metavar="ID")
    resume.add_argument("target", metavar="MODULE:FUNC", nargs="?", default=None,
                        help="default: what `fanwise run` recorded for ID")
    resume.add_argument("--only", choices=["failed"], default=None,
                        help="re-run only the failed children of the fan-out step it stopped "
                             "at (children never run stay pending), then stop")
    _options(resume, defaults=False)
    resume.set_defaults(run=_resume)


def _options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    parser.add_argument("--partition-key", default=None, help="(default: none)")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="the state store (a SQLite file, created if missing, or a "
                             "postgresql:// DSN); without it nothing is saved")
    parser.add_argument("--table", default=DEFAULT_TABLE if defaults else None,
                        help=f"state table (default: {DEFAULT_TABLE})")
    parser.add_argument("--tracking", metavar="DIR", default=None,
                        help=f"tracking folder (default: {DEFAULT_TRACKING})")
    parser.add_argument("--project", default=None,
                        help=f"tracking project (default: {DEFAULT_PROJECT})")
    parser.add_argument("--no-tracking", action="store_true", help="track nothing")
    parser.add_argument("--executor", default=None,
                        help="the app's default executor, by name (`fanwise executors`)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="children in flight at once (with --executor)")
    parser.add_argument("--input", dest="inputs", action="append", default=None,
                        metavar="KEY=VALUE",
                        help="an input of the run (VALUE read as JSON, else as a string)")
    parser.add_argument("--halt-after", action="append", default=None, metavar="ACTION")
    parser.add_argument("--halt-before", action="append", default=None, metavar="ACTION")
    parser.add_argument("--json", action="store_true", help="progress and result as JSON lines")


# -- commands ----------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    args.cwd = os.getcwd()
    return _execute(args, resuming=False)


def _resume(args: argparse.Namespace) -> int:
    recorded = _recorded_launch(args)
    for name in _RECORDED:
        if getattr(args, name, None) in (None, []) and name in recorded:
            setattr(args, name, recorded[name])
    if args.target is None:
        raise CliError(
            f"no `fanwise run` of app {args.app_id!r} is recorded in the tracking folder: "
            "name it, `fanwise resume ID MODULE:FUNC --db URL ...`"
        )
    args.table = args.table or DEFAULT_TABLE
    args.cwd = args.cwd or os.getcwd()
    return _execute(args, resuming=True)


def _execute(args: argparse.Namespace, resuming: bool) -> int:
    inputs = _parsed_inputs(args.inputs or [])
    func = _load(args.target, args.cwd)
    persister = open_persister(args.db, args.table, create=True) if args.db else None
    tracker = None if args.no_tracking else _tracker(args)
    if tracker is not None and not resuming:
        _record_launch(tracker, args)
    limit = None
    if getattr(args, "only", None) == "failed":
        limit = _only_failed(args, tracker, persister)
        if limit is None:  # nothing failed: nothing to re-run
            if persister is not None:
                persister.close()
            return EXIT_OK
    elif resuming or _ran_before(args, tracker, persister):
        _print_saved(args, tracker, persister)  # a run of an app id that ran resumes it
    executor = _executor(args)
    from fanwise.core.errors import AppLockedError

    try:
        try:
            app = _build(func, args, persister, tracker, executor, inputs)
        except AppLockedError as exc:  # the lease is taken when the app is built
            raise CliError(f"{exc} (`fanwise lease {args.app_id} --db ...` shows the holder)",
                           EXIT_LOCKED) from exc
        if limit is None:
            return _drive(app, args, inputs)
        from fanwise.parallel._rerun import rerunning_only

        with rerunning_only(args.app_id, args.partition_key, limit):
            return _drive(app, args, inputs)
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
        if persister is not None:
            persister.close()


def _drive(app: Application, args: argparse.Namespace, inputs: dict[str, Any]) -> int:
    from fanwise.core.errors import AppLockedError
    from fanwise.parallel.errors import ChildrenLeftPendingError

    progress = _Progress(args)
    try:
        with app:
            if _is_async(app):
                asyncio.run(_follow_async(app, args, inputs, progress))
            else:
                for event in app.stream_fanout(args.halt_before or [], args.halt_after or [],
                                               inputs):
                    progress.saw(event)
    except AppLockedError as exc:
        progress.close()
        raise CliError(f"{exc} (`fanwise lease {app.uid} --db ...` shows the holder)",
                       EXIT_LOCKED) from exc
    except KeyboardInterrupt:
        progress.close()
        print("fanwise run: interrupted; what finished is saved: "
              f"`{_command('resume', app.uid, args)}` goes on", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ChildrenLeftPendingError as exc:  # `resume --only failed` left children unrun
        progress.close()
        print(f"fanwise resume: app {app.uid}: {exc.rerun:,} failed children re-ran, "
              f"{exc.pending:,} pending left: `{_command('resume', app.uid, args)}` runs them",
              file=sys.stderr)
        _result(args, app, "stopped", EXIT_STOPPED, progress)
        return EXIT_STOPPED
    except Exception as exc:
        progress.close()
        print(f"fanwise run: app {app.uid} failed: {_first_line(exc)}", file=sys.stderr)
        for child in _child_errors(exc):
            print(f"fanwise run:   {child}", file=sys.stderr)
        print(f"fanwise run: `{_command('failed', app.uid, args)}` groups the failures; "
              f"`{_command('resume', app.uid, args)}` re-runs what did not finish",
              file=sys.stderr)
        _result(args, app, "failed", EXIT_FAILED, progress)
        return EXIT_FAILED
    progress.close()
    ended = app.get_next_action() is None
    code = EXIT_OK if ended else EXIT_STOPPED
    _result(args, app, "completed" if ended else "stopped", code, progress)
    return code


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _child_errors(exc: BaseException, most: int = 3) -> list[str]:
    """The first distinct errors of the children an exception group names (each child's
    own exception: the cause of its `ChildFailedError`)."""
    if not isinstance(exc, BaseExceptionGroup):
        return []
    found: dict[str, None] = {}
    for failure in exc.exceptions:
        found[_first_line(failure.__cause__ or failure)] = None
    listed = list(found)
    more = len(exc.exceptions) - most if len(listed) > most else 0
    return listed[:most] + ([f"... ({more} more)"] if more else [])


def _command(name: str, app_id: str, args: argparse.Namespace) -> str:
    """The `fanwise` command line that does `name` to this app, with its tracking options."""
    words = ["fanwise", name, app_id]
    for option in ("tracking", "project"):
        if getattr(args, option, None):
            words += [f"--{option}", getattr(args, option)]
    if args.partition_key:
        words += ["--partition-key", args.partition_key]
    return " ".join(shlex.quote(word) for word in words)


async def _follow_async(app: Application, args: argparse.Namespace, inputs: dict[str, Any],
                        progress: _Progress) -> None:
    async for event in app.astream_fanout(args.halt_before or [], args.halt_after or [],
                                          inputs):
        progress.saw(event)


def _is_async(app: Application) -> bool:
    return any(action.is_async() for action in app.graph.actions)


def _result(args: argparse.Namespace, app: Application, status: str, code: int,
            progress: _Progress) -> None:
    next_action = app.get_next_action()
    record = {
        "type": "result", "app_id": app.uid, "partition_key": app.partition_key,
        "status": status, "exit_code": code, "sequence_id": app.sequence_id,
        "next_action": None if next_action is None else next_action.name,
        **progress.counts,
    }
    if args.json:
        print_json(record)
    else:
        where = "" if next_action is None else f", next action {next_action.name!r}"
        print(f"app {app.uid}: {status}{where} ({progress.summary()})", file=sys.stderr)


# -- building ----------------------------------------------------------------------------


def _load(target: str, cwd: str | None) -> Any:
    """The function `MODULE:FUNC` names (`MODULE` may be a path to a .py file); the current
    folder is importable, as with `python -m`."""
    module_name, _, func_name = (target or "").partition(":")
    if not module_name or not func_name:
        raise CliError(f"{target!r} is not MODULE:FUNC (e.g. `pipeline:build_app`)")
    folder = cwd or os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        if module_name.endswith(".py"):
            path = os.path.join(folder, module_name)
            spec = importlib.util.spec_from_file_location(
                os.path.splitext(os.path.basename(path))[0], path
            )
            if spec is None or spec.loader is None or not os.path.isfile(path):
                raise CliError(f"{target!r}: no such file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CliError(f"{target!r}: cannot import {module_name!r} ({exc}); run from the "
                       "folder that holds it, or name a .py file") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise CliError(f"{target!r}: module {module_name!r} has no function {func_name!r}")
    return func


def _build(func: Any, args: argparse.Namespace, persister: Any, tracker: Any, executor: Any,
           inputs: dict[str, Any]) -> Application:
    from fanwise.core.application import Application
    from fanwise.core.builder import ApplicationBuilder

    offered = {"app_id": args.app_id, "partition_key": args.partition_key,
               "persister": persister, "tracker": tracker, "executor": executor,
               "inputs": inputs}
    taken = _names_taken(func)
    made = func(**{name: offered[name] for name in taken})
    if isinstance(made, Application):
        if made.uid != args.app_id:
            raise CliError(f"{args.target} built app {made.uid!r}, not --app-id "
                           f"{args.app_id!r}: build it with the app_id it is given")
        return made
    if not isinstance(made, ApplicationBuilder):
        raise CliError(f"{args.target} returned a {type(made).__name__}: it must return an "
                       "ApplicationBuilder (or a built Application)")
    if "app_id" not in taken or "partition_key" not in taken:
        made.with_identifiers(app_id=args.app_id, partition_key=args.partition_key)
    if tracker is not None and "tracker" not in taken:
        made.with_tracker(tracker)
    if executor is not None and "executor" not in taken:
        made.with_executor(executor)
    if persister is not None and "persister" not in taken:
        made.with_state_persister(persister).resuming_from(persister)
    try:
        return made.build()
    except ValueError as exc:
        raise CliError(f"{args.target}: {exc}") from exc


def _names_taken(func: Any) -> list[str]:
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return list(INJECTED)
    return [name for name in INJECTED if name in parameters]


def _tracker(args: argparse.Namespace) -> Any:
    from fanwise.core.tracking import LocalTrackingClient

    try:
        return LocalTrackingClient(args.project or DEFAULT_PROJECT,
                                   storage_dir=args.tracking or DEFAULT_TRACKING)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _executor(args: argparse.Namespace) -> Any:
    if args.executor is None:
        if args.max_concurrency is not None:
            raise CliError("--max-concurrency goes with --executor NAME")
        return None
    from fanwise.executors.registry import available, create

    if args.executor not in available():
        raise CliError(f"--executor {args.executor!r} is not one of {', '.join(available())}")
    options = {} if args.max_concurrency is None else {"max_concurrency": args.max_concurrency}
    try:
        return create(args.executor, **options)
    except ImportError as exc:
        raise CliError(str(exc)) from exc


def _parsed_inputs(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--input {pair!r} is not KEY=VALUE")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


# -- what a resume starts from -----------------------------------------------------------


def _record_launch(tracker: Any, args: argparse.Namespace) -> None:
    from fanwise.core.tracking.index import RunIndex

    launch = {name: getattr(args, name, None) for name in _RECORDED}
    launch["tracking"] = tracker.storage_dir
    launch["project"] = tracker.project
    with RunIndex(tracker.project, tracker.storage_dir) as index:
        index.record_launch(args.app_id, args.partition_key, launch)


def _recorded_launch(args: argparse.Namespace) -> dict[str, Any]:
    from fanwise.core.tracking.index import RunIndex

    folder = os.path.expanduser(args.tracking or DEFAULT_TRACKING)
    project = args.project or DEFAULT_PROJECT
    if not os.path.isdir(os.path.join(folder, project)):
        return {}
    with RunIndex(project, folder) as index:
        return index.launch(args.app_id, args.partition_key) or {}


def _print_saved(args: argparse.Namespace, tracker: Any, persister: Any) -> None:
    """`N saved, M to compute` of the app's last fan-out step, as the index knows it."""
    from fanwise.core.tracking.index import RunIndex

    saved = to_compute = 0
    step = None
    if tracker is not None:
        index = RunIndex.open(tracker.project, tracker.storage_dir)
        with index:
            steps = index.fanout_steps(args.app_id, args.partition_key)
        if steps:
            step = steps[-1]
            saved = step.counts.get("completed", 0)
            to_compute = step.total - saved
    last = _saved(persister, args) if persister is not None else None
    where = "nothing saved yet" if last is None else (
        f"last saved step {last['sequence_id']} {last['position']!r} ({last['status']})")
    message = f"app {args.app_id}: {where}; {saved:,} saved, {to_compute:,} to compute"
    message += (" (no fan-out tracked yet)" if step is None else
                " (of the children tracked so far; the others are computed too)")
    if args.json:
        print_json({"type": "resume", "app_id": args.app_id, "saved": saved,
                    "to_compute": to_compute})
    else:
        print(message, file=sys.stderr)


def _only_failed(args: argparse.Namespace, tracker: Any, persister: Any) -> Any:
    """`--only failed`: the limit of the fan-out step the app stopped at (its failed
    children, from the run index), after printing `N saved, M failed to re-run, K pending
    left`; None (and a message) if no child failed. The app halts after that step."""
    from fanwise.core.tracking.index import RunIndex
    from fanwise.parallel._rerun import StepRerun

    if tracker is None:
        raise CliError("--only failed reads the failed children from the run index: drop "
                       "--no-tracking and pass the --tracking/--project of the run")
    with RunIndex.open(tracker.project, tracker.storage_dir) as index:
        try:
            row = index.app(args.app_id, args.partition_key)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        steps = {step.sequence_id: step
                 for step in index.fanout_steps(args.app_id, args.partition_key)}
        step = steps.get(row.sequence_id) if row is not None and row.status in (
            "failed", "running") else None
        failed = _failed_ids(index, args, step.sequence_id) if step is not None else []
        planned = None if step is None else planned_children(
            index, args.partition_key, args.app_id, step.sequence_id)
    last = _saved(persister, args) if persister is not None else None
    where = "nothing saved yet" if last is None else (
        f"last saved step {last['sequence_id']} {last['position']!r} ({last['status']})")
    saved = 0 if step is None else step.counts.get("completed", 0)
    total = (planned if planned is not None else step.total) if step is not None else 0
    pending = max(total - saved - len(failed), 0)
    if args.json:
        print_json({"type": "resume", "app_id": args.app_id, "saved": saved,
                    "failed": len(failed), "pending": pending,
                    "step": None if step is None else step.sequence_id})
    else:
        unknown = "" if step is None or planned is not None else (
            " (of the children tracked: the fan-out did not record its total)")
        print(f"app {args.app_id}: {where}; {saved:,} saved, {len(failed):,} failed to re-run, "
              f"{pending:,} pending left{unknown}", file=sys.stderr)
    if not failed:
        print(f"fanwise resume: no failed child of app {args.app_id} to re-run"
              + ("" if step is not None else " at the step it stopped at")
              + f": `{_command('resume', args.app_id, args)}` goes on", file=sys.stderr)
        return None
    args.halt_after = [*(args.halt_after or []), row.next_action]
    return {step.sequence_id: StepRerun(frozenset(failed), saved)}


def _failed_ids(index: Any, args: argparse.Namespace, sequence_id: int) -> list[str]:
    """The ids of the failed children of the app's fan-out step `sequence_id`."""
    ids: list[str] = []
    cursor = None
    while True:
        page = index.children(args.app_id, args.partition_key, sequence_id=sequence_id,
                              status="failed", limit=1000, cursor=cursor)
        ids.extend(row.app_id for row in page.rows)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def _ran_before(args: argparse.Namespace, tracker: Any, persister: Any) -> bool:
    """Whether the store or the run index knows the app id already."""
    if persister is not None and _saved(persister, args) is not None:
        return True
    if tracker is None:
        return False
    from fanwise.core.tracking.index import RunIndex

    with RunIndex(tracker.project, tracker.storage_dir) as index:
        return bool(index.fanout_steps(args.app_id, args.partition_key))


def _saved(persister: Any, args: argparse.Namespace) -> Any:
    try:
        return persister.load(args.partition_key, args.app_id)
    except Exception as exc:  # the store's own error: unreachable, no such table
        raise CliError(f"cannot read --db: {type(exc).__name__}: {exc}", EXIT_FAILED) from exc


class _Progress:
    """Counts a run's fan-out events; a bar on a terminal, JSON lines with `--json`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.json
        self.counts = {"done": 0, "failed": 0, "resumed": 0}
        self._started = time.monotonic()
        self._shown = 0.0
        self._bar: Any = None
        if not self.json and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(unit="child", file=sys.stderr)

    def saw(self, event: Any) -> None:
        kind = {"child_done": "done", "child_failed": "failed",
                "child_resumed": "resumed"}.get(event.kind)
        if kind is None or len(event.path) > 1:  # the outermost fan-out's children count
            return
        self.counts[kind] += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(failed=self.counts["failed"], resumed=self.counts["resumed"],
                                  refresh=False)
        now = time.monotonic()
        if self.json and now - self._shown >= PROGRESS_EVERY:
            self._shown = now
            print_json({"type": "progress", **self.counts,
                        "seconds": round(now - self._started, 3)})
            sys.stdout.flush()

    def summary(self) -> str:
        return ", ".join(f"{n:,} {kind}" for kind, n in self.counts.items())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
