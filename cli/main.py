"""`fanwise` console script: list executors, list tracked apps, print the version."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from fanwise.cli import _lease

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a program that its reader stopped (`| head`)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader left: stop quietly, and let nothing flush into the closed pipe at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanwise", description="State machines with resumable parallel fan-out."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    _lease.add_parser(commands)

    show_version = commands.add_parser("version", help="print the installed fanwise version")
    show_version.set_defaults(run=_version)
    return parser


def _executors(args: argparse.Namespace) -> int:
    from fanwise.executors.registry import available

    for name in available():
        print(name)
    return 0


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
        print(f"fanwise apps: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the project folder itself cannot be read
        print(f"fanwise apps: cannot list {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    for app_id in app_ids:
        print(app_id)
    return 1 if unreadable else 0


def _version(args: argparse.Namespace) -> int:
    try:
        print(version("fanwise"))
    except PackageNotFoundError:
        print("fanwise is not installed (no package metadata found)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
