"""`fanwise lease`: who holds an app id's single-runner lease, and taking it away.

    fanwise lease APP_ID --db URL [--break [--force]] [--partition-key K] [--table T] [--json]

`fanwise lease show APP_ID ...` and `fanwise lease break APP_ID ...` are the same commands
without and with `--break`.

A lease is live unless it expired or its holder is a process of this host that is gone.
Exit codes: 0 ok (`show`: nobody holds a live lease; `break`: broken, or there was none),
2 usage, 3 locked (`show`: a live lease is held; `break`: it is live and `--force` was not
given), 1 the store failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Protocol

from fanwise.cli._common import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, open_persister

if TYPE_CHECKING:
    from fanwise.core.persistence import LeaseInfo


class LeaseStore(Protocol):
    """What this command needs of a persister."""

    def lease_info(self, partition_key: str | None, app_id: str) -> LeaseInfo | None: ...

    def break_lease(
        self, partition_key: str | None, app_id: str, force: bool = False
    ) -> LeaseInfo | None: ...

    def close(self) -> None: ...


TAKES_VALUE = frozenset({"--db", "--partition-key", "--table"})


def add_parser(commands: Any) -> None:
    """Add `lease` and its subcommands to the `fanwise` subparsers `commands`."""
    lease = commands.add_parser(
        "lease", help="who holds an app's lease (host, pid, since, expires); --break frees it",
        usage="fanwise lease APP_ID --db URL [--break [--force]] [--partition-key K] "
              "[--table T] [--json]",
        description="`fanwise lease APP_ID` is `fanwise lease show APP_ID`; with --break, "
                    "`fanwise lease break APP_ID`.",
    )
    actions = lease.add_subparsers(dest="lease_command", metavar="SUBCOMMAND", required=True)
    show = actions.add_parser("show", help="who holds the lease, since when, until when")
    show.set_defaults(run=_show)
    broken = actions.add_parser(
        "break", help="remove the lease so that another driver can take over at once"
    )
    broken.add_argument(
        "--force", action="store_true",
        help="break a lease that has not expired (its holder's next write is refused)",
    )
    broken.set_defaults(run=_break)
    for command in (show, broken):
        command.add_argument("app_id", metavar="APP_ID")
        command.add_argument(
            "--db", required=True, metavar="URL",
            help="the store: a SQLite file path or a postgresql:// DSN",
        )
        command.add_argument("--partition-key", default=None, help="(default: none)")
        command.add_argument(
            "--table", default="fanwise_state", help="state table (default: fanwise_state)"
        )
        command.add_argument("--json", action="store_true", help="print JSON")


def normalized(argv: list[str]) -> list[str]:
    """`lease APP_ID [--break] ...` spelled as its subcommand, `lease show|break APP_ID`
    (other command lines as they are)."""
    if argv[:1] != ["lease"]:
        return argv
    rest = argv[1:]
    position = 0
    while position < len(rest):
        word = rest[position]
        if word in TAKES_VALUE:
            position += 2
        elif word.startswith("-"):
            position += 1
        elif word in ("show", "break"):
            return argv
        else:
            subcommand = "break" if "--break" in rest else "show"
            return ["lease", subcommand, *(word for word in rest if word != "--break")]
    return argv


def open_store(url: str, table: str) -> LeaseStore:
    """The persister of `--db URL` (see `fanwise.cli._common.open_persister`)."""
    from fanwise.cli._common import CliError

    try:
        return open_persister(url, table)
    except CliError as exc:
        raise ValueError(str(exc)) from exc


def _show(args: argparse.Namespace) -> int:
    def show(store: LeaseStore) -> int:
        info = store.lease_info(args.partition_key, args.app_id)
        held = info is not None and info.live
        _print(args, info, "held" if held else "free")
        return EXIT_LOCKED if held else EXIT_OK

    return _with_store(args, "show", show)


def _break(args: argparse.Namespace) -> int:
    from fanwise.core.errors import AppLockedError

    def break_it(store: LeaseStore) -> int:
        try:
            info = store.break_lease(args.partition_key, args.app_id, force=args.force)
        except AppLockedError as exc:
            print(f"fanwise lease break: {exc.holder}; pass --force to break it anyway",
                  file=sys.stderr)
            return EXIT_LOCKED
        _print(args, info, "broken" if info is not None else "free")
        return EXIT_OK

    return _with_store(args, "break", break_it)


def _with_store(args: argparse.Namespace, name: str, run: Any) -> int:
    """`run(store)` on the store of `--db`; a bad argument is a usage error, a store that
    fails is exit 1 (the message names the store, never a password)."""
    try:
        store = open_store(args.db, args.table)
    except (ValueError, ImportError) as exc:
        print(f"fanwise lease {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(store)
    except ValueError as exc:
        print(f"fanwise lease {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the store's own error (unreachable server, locked file)
        print(f"fanwise lease {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()


def _print(args: argparse.Namespace, info: LeaseInfo | None, status: str) -> None:
    if args.json:
        print(json.dumps({"app_id": args.app_id, "partition_key": args.partition_key,
                          "status": status, "lease": None if info is None else info.as_dict()}))
    elif info is None:
        print(f"app {args.app_id!r}: no lease")
    else:
        verb = {"broken": "broke the lease of", "held": "held by"}.get(
            status, "a lease another driver can take over, of"
        )
        print(f"app {args.app_id!r}: {verb} {info.holder()} (generation {info.generation})")
