"""`fanwise lease show|break`: who holds an app id's single-runner lease, and taking it away.

    fanwise lease show  --db URL APP_ID [--partition-key K] [--table T] [--json]
    fanwise lease break --db URL APP_ID [--partition-key K] [--table T] [--force] [--json]

A lease is live unless it expired or its holder is a process of this host that is gone.
Exit codes: 0 ok (`show`: nobody holds a live lease; `break`: broken, or there was none),
2 usage, 3 locked (`show`: a live lease is held; `break`: it is live and `--force` was not
given), 1 the store failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fanwise.core.persistence import LeaseInfo

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


class LeaseStore(Protocol):
    """What this command needs of a persister."""

    def lease_info(self, partition_key: str | None, app_id: str) -> LeaseInfo | None: ...

    def break_lease(
        self, partition_key: str | None, app_id: str, force: bool = False
    ) -> LeaseInfo | None: ...

    def close(self) -> None: ...


def add_parser(commands: Any) -> None:
    """Add `lease` and its subcommands to the `fanwise` subparsers `commands`."""
    lease = commands.add_parser("lease", help="show or break the lease of an app id")
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


def open_store(url: str, table: str) -> LeaseStore:
    """The persister of `--db URL`: PostgreSQL for a postgresql:// (or postgres://) DSN,
    else the SQLite file at that path."""
    if url.startswith(("postgresql://", "postgres://")):
        from fanwise.core.persistence import PostgreSQLPersister

        return PostgreSQLPersister(url, table_name=table, max_connections=1)
    from fanwise.core.persistence import SQLitePersister

    if not os.path.exists(url):
        raise ValueError(f"--db {url!r}: no such SQLite file (nor a postgresql:// DSN)")
    return SQLitePersister(url, table_name=table)


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
