"""Run or resume one fanwise app in a pod: `python /app/run_app.py MODULE:FUNC --app-id ID ...`.

The job entrypoint of the manifests in k8s/, with the arguments planned for `fanwise run`.
The app id is fixed, so a retried pod (a RayJob's `backoffLimit`, a restarted DaskJob runner)
loads the app's last step and its finished children from the store instead of computing them
again. `FUNC(app_id=..., persister=..., tracker=..., executor=..., **args)` returns the
Application; `--arg KEY=VALUE` adds a keyword argument (a JSON value, else the string).

The database URL carries no password: libpq reads it from `PGPASSWORD`, which the pods take
from the Secret the user created, so it is neither in the manifests nor in pickled tasks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fanwise.core import Application
from fanwise.core.persistence import AppLockedError, PostgreSQLPersister, SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import create

EXIT_LOCKED = 3
"""As planned for the `fanwise` CLI: another driver holds the app's lease."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    build = _load(args.app)
    persister = _open_store(args.db)
    tracker = LocalTrackingClient(args.project, storage_dir=args.tracking)
    options: dict[str, Any] = {"max_concurrency": args.max_concurrency}
    if args.address:
        options["address"] = args.address
    try:
        with create(args.executor, **options) as executor:
            app = build(
                app_id=args.app_id,
                persister=persister,
                tracker=tracker,
                executor=executor,
                **dict(_keyword(item) for item in args.arg),
            )
            with app:
                action, _, state = app.run()
    except AppLockedError as exc:
        print(f"run_app: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    finally:
        tracker.close()
        if isinstance(persister, PostgreSQLPersister):
            persister.close()
    last = action.name if action is not None else None
    print(json.dumps({"app_id": args.app_id, "last_action": last, "keys": sorted(state.keys())}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="MODULE:FUNC, FUNC returning the Application to run")
    parser.add_argument("--app-id", required=True, help="fixed, so that a retry resumes")
    parser.add_argument("--db", required=True, help="postgresql:// DSN or a SQLite file path")
    parser.add_argument("--executor", default="threads", help="a registered executor name")
    parser.add_argument("--address", help="the executor's cluster address (ray, dask)")
    parser.add_argument("--max-concurrency", type=int, help="children in flight at most")
    parser.add_argument("--tracking", required=True, help="tracking folder (absolute path)")
    parser.add_argument("--project", default="fanwise", help="tracking project name")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _load(spec: str) -> Callable[..., Application]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"run_app: {spec!r} is not MODULE:FUNC")
    function = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(function):
        raise SystemExit(f"run_app: {module_name!r} has no function {attribute!r}")
    return function


def _open_store(url: str) -> PostgreSQLPersister | SQLitePersister:
    if url.startswith(("postgresql://", "postgres://")):
        return PostgreSQLPersister(url)
    return SQLitePersister(url)


def _keyword(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.isidentifier():
        raise SystemExit(f"run_app: --arg {item!r} is not KEY=VALUE with KEY a Python name")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


if __name__ == "__main__":
    sys.exit(main())
