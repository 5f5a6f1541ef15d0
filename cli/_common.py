"""What every `fanwise` command shares: exit codes, the store options, JSON output, errors.

A command raises `CliError(message, code)` for anything the user can fix or should know;
`main` prints it on stderr as `fanwise <command>: <message>` and exits with `code`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from fanwise.core.persistence.base import BaseStatePersister
    from fanwise.core.tracking.index import RunIndex

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The app or one of its children failed (or a store could not be read)."""
EXIT_USAGE: Final = 2
EXIT_LOCKED: Final = 3
"""Another driver holds the app's lease."""
EXIT_STOPPED: Final = 4
"""The app stopped before its end (a halt): `fanwise resume` goes on."""
EXIT_INTERRUPTED: Final = 130
"""128 + SIGINT, as a shell reports a program Ctrl-C ended."""
DEFAULT_TRACKING: Final = "~/.fanwise"
DEFAULT_TABLE: Final = "fanwise_state"


class CliError(Exception):
    """An error to print on stderr (saying what to do) and the exit code to end with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def add_db(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """`--db URL` (and `--table`): the persister's store."""
    parser.add_argument(
        "--db", required=required, metavar="URL",
        help="the state store: a SQLite file path or a postgresql:// DSN",
    )
    parser.add_argument("--table", default=DEFAULT_TABLE,
                        help=f"state table (default: {DEFAULT_TABLE})")


def add_tracking(parser: argparse.ArgumentParser) -> None:
    """`--tracking DIR --project P`: the tracking folder and its run index."""
    parser.add_argument(
        "--tracking", metavar="DIR", default=None,
        help=f"tracking folder (default: {DEFAULT_TRACKING})",
    )
    parser.add_argument(
        "--project", default=None,
        help="tracking project (default: the only project in the tracking folder)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print JSON (one object per line for lists)")


def add_partition_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition-key", default=None,
                        help="the app's partition key (default: none)")


def open_persister(url: str, table: str, create: bool = False) -> BaseStatePersister:
    """The persister of `--db URL`: PostgreSQL for a postgresql:// (or postgres://) DSN,
    else the SQLite file at that path (which must exist unless `create`)."""
    if url.startswith(("postgresql://", "postgres://")):
        from fanwise.core.persistence import PostgreSQLPersister

        try:
            return PostgreSQLPersister(url, table_name=table, max_connections=2)
        except (ImportError, ValueError) as exc:
            raise CliError(str(exc)) from exc
    from fanwise.core.persistence import SQLitePersister

    if not create and not os.path.exists(url):
        raise CliError(f"--db {url!r}: no such SQLite file (nor a postgresql:// DSN)")
    try:
        return SQLitePersister(url, table_name=table)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def tracking_dir(args: argparse.Namespace) -> str:
    return os.path.expanduser(args.tracking or DEFAULT_TRACKING)


def project_of(args: argparse.Namespace) -> str:
    """`--project`, or the only project of the tracking folder."""
    if args.project:
        return args.project
    folder = tracking_dir(args)
    try:
        projects = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    except FileNotFoundError:
        projects = []
    if len(projects) == 1:
        return projects[0]
    listed = ", ".join(projects) if projects else "none"
    raise CliError(
        f"name the tracking project with --project (projects in {folder}: {listed}; "
        "--tracking DIR names another folder)"
    )


def open_index(args: argparse.Namespace) -> RunIndex:
    """The run index of `--tracking`/`--project`, rebuilt first if missing or stale."""
    from fanwise.core.tracking.index import RunIndex

    project = project_of(args)
    folder = tracking_dir(args)
    if not os.path.isdir(os.path.join(folder, project)):
        raise CliError(
            f"no tracking project {project!r} in {folder}: pass --tracking DIR (the folder "
            "given to LocalTrackingClient(storage_dir=...)) and --project"
        )
    try:
        return RunIndex.open(project, folder)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def planned_children(index: RunIndex, partition_key: str | None, app_id: str,
                     sequence_id: int) -> int | None:
    """How many children the app's fan-out at step `sequence_id` plans, as that step
    recorded it (attribute `FANOUT_TOTAL` in the app's log); None if it did not (tasks
    of unknown length). Reads the app's own log: a parent's, a line per step or so."""
    from fanwise.core.tracking import LocalTrackingClient
    from fanwise.core.tracking._records import FANOUT_TOTAL
    from fanwise.core.tracking.local import LOG_FILE

    try:
        folder = LocalTrackingClient(index.project, index.storage_dir)._recorded_dir(
            partition_key, app_id)
        with open(os.path.join(folder or "", LOG_FILE), "rb") as log:
            lines = [line for line in log if FANOUT_TOTAL.encode() in line]
    except (OSError, ValueError):  # no log yet, or unreadable metadata: not recorded
        return None
    planned = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line
            continue
        if record.get("key") == FANOUT_TOTAL and record.get(
            "action_sequence_id"
        ) == sequence_id and isinstance(record.get("value"), int):
            planned = record["value"]
    return planned


def print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record, default=str))


def warn(command: str, message: str) -> None:
    print(f"fanwise {command}: {message}", file=sys.stderr)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
