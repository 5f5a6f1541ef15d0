"""`fanwise` console script: run apps, follow and inspect their runs, operate their stores.

    run / resume        _run.py       MODULE:FUNC's app on a store, resumable
    submit / jobs       _jobs.py      the same as a Ray job; the jobs that run apps
    ls / show / children / failed / watch
                        _runs.py      read the run index (core/tracking/index.py), or
                        _store_runs.py  the state store alone (--db, no --tracking)
    export              _export.py    one row per child, csv / jsonl / parquet
    lease               _lease.py     who holds an app's lease; breaking it
    ui                  _ui.py        the tracking UI (fanwise.ui)
    executors / apps / version        here

Exit codes (`_common.py`): 0 ok, 1 the app or a child failed, 2 usage, 3 app locked,
4 stopped but resumable, 130 interrupted, 141 the reader of stdout left.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from fanwise.cli import _export, _jobs, _lease, _run, _runs, _ui
from fanwise.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a program that its reader stopped (`| head`)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit code."""
    commands = parser()
    argv = _lease.normalized(list(sys.argv[1:] if argv is None else argv))
    try:
        args = commands.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        commands.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = args.run(args)
        sys.stdout.flush()
    except CliError as exc:
        print(f"fanwise {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"fanwise {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader left: stop quietly, and let nothing flush into the closed pipe at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def parser() -> argparse.ArgumentParser:
    """The parser of every `fanwise` command."""
    made = argparse.ArgumentParser(
        prog="fanwise", description="State machines with resumable parallel fan-out."
    )
    commands = made.add_subparsers(dest="command", metavar="COMMAND")
    _run.add_parsers(commands)
    _jobs.add_parsers(commands)
    _runs.add_parsers(commands)
    _export.add_parser(commands)
    _lease.add_parser(commands)
    _ui.add_parser(commands)

    executors = commands.add_parser("executors", help="list the registered executor names")
    executors.set_defaults(run=_executors)

    apps = commands.add_parser("apps", help="list the app ids a LocalTrackingClient recorded")
    apps.add_argument("--project", required=True, help="tracking project name")
    apps.add_argument(
        "--storage-dir", default="~/.fanwise", help="tracking folder (default: ~/.fanwise)"
    )
    apps.add_argument(
        "--partition-key", default=None, help="list apps of this partition key (default: none)"
    )
    apps.set_defaults(run=_apps)

    show_version = commands.add_parser("version", help="print the installed fanwise version")
    show_version.set_defaults(run=_version)
    return made


def _executors(args: argparse.Namespace) -> int:
    from fanwise.executors.registry import available

    for name in available():
        print(name)
    return EXIT_OK


def _apps(args: argparse.Namespace) -> int:
    from fanwise.core.tracking import LocalTrackingClient

    unreadable = []

    def report(path: str, error: Exception) -> None:
        unreadable.append(path)
        print(f"fanwise apps: skipped {path}: {error}", file=sys.stderr)

    try:
        tracker = LocalTrackingClient(args.project, storage_dir=args.storage_dir)
        app_ids = tracker.list_app_ids(args.partition_key, on_unreadable=report)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:  # the project folder itself cannot be read
        raise CliError(f"cannot list {exc.filename}: {exc.strerror}", EXIT_FAILED) from exc
    for app_id in app_ids:
        print(app_id)
    return EXIT_FAILED if unreadable else EXIT_OK


def _version(args: argparse.Namespace) -> int:
    try:
        print(version("fanwise"))
    except PackageNotFoundError:
        raise CliError("fanwise is not installed (no package metadata found)",
                       EXIT_FAILED) from None
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
