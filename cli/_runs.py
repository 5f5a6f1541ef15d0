"""The commands that read runs from the run index: `ls`, `show`, `children`, `failed`, `watch`.

Every list is one page of the index (`--limit`, `--cursor` from the previous page's last
line) with the counts by status of all it matches; `--json` prints one object per line:
`{"type": "app", ...}` per app, then `{"type": "summary", "counts": ..., "next_cursor": ...}`.
Given `--db` and neither `--tracking` nor `--project`, `ls`, `show`, `children` and
`failed` read the state store instead (`_store_runs.StoreRuns`, the same row types).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from fanwise.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    CliError,
    add_db,
    add_json,
    add_partition_key,
    add_tracking,
    open_index,
    open_persister,
    planned_children,
    print_json,
)

if TYPE_CHECKING:
    from fanwise.cli._store_runs import StoreRuns
    from fanwise.core.tracking.index import AppRow, FanoutStep, Page, RunIndex

STATUS_WORDS = {"completed": "done", "created": "pending", "running": "running",
                "failed": "failed"}
"""How the index's statuses read in the command line's text output."""


def add_parsers(commands: Any) -> None:
    """Add `ls`, `show`, `children`, `failed` and `watch` to the `fanwise` subparsers."""
    listing = commands.add_parser("ls", help="root apps of a project, newest first")
    _reads(listing)
    add_db(listing)
    listing.add_argument("--partition-key", default=None,
                         help="only apps of this partition key (default: every key)")
    _paging(listing)
    listing.set_defaults(run=_ls)

    show = commands.add_parser("show", help="an app's status, steps and fan-out counts")
    _reads(show)
    show.add_argument("app_id", metavar="ID")
    add_partition_key(show)
    add_db(show)
    show.add_argument(
        "--usage", action="store_true",
        help="also sum the usage its children logged (tokens, cost, p50/p95 latency, cache "
             "hits): reads every child's row",
    )
    show.set_defaults(run=_show)

    children = commands.add_parser("children", help="a fan-out's children, paged")
    _reads(children)
    add_db(children)
    children.add_argument("app_id", metavar="ID")
    add_partition_key(children)
    children.add_argument("--step", type=int, default=None, metavar="SEQUENCE_ID",
                          help="the children of this fan-out step only")
    _paging(children)
    children.set_defaults(run=_children)

    failed = commands.add_parser("failed", help="a fan-out's failures, grouped by exception")
    _reads(failed)
    add_db(failed)
    failed.add_argument("app_id", metavar="ID")
    add_partition_key(failed)
    failed.add_argument("--sample", type=int, default=10,
                        help="child ids shown per group (default 10)")
    failed.set_defaults(run=_failed)

    watch = commands.add_parser("watch", help="follow a running fan-out until it ends")
    _reads(watch)
    watch.add_argument("app_id", metavar="ID")
    add_partition_key(watch)
    add_db(watch)
    watch.add_argument("--interval", type=float, default=1.0,
                       help="seconds between two reads of the index (default 1)")
    watch.add_argument("--total", type=int, default=None,
                       help="children the fan-out will have, for an ETA (default: the total "
                            "it recorded, if its tasks have a length)")
    watch.set_defaults(run=_watch)


def _reads(parser: argparse.ArgumentParser) -> None:
    add_tracking(parser)
    add_json(parser)


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", default=None,
                        choices=["created", "running", "completed", "failed"],
                        help="only apps of this status")
    parser.add_argument("--limit", type=int, default=50, help="rows per page (default 50)")
    parser.add_argument("--cursor", type=int, default=None,
                        help="the next page: the next_cursor the previous page printed")


# -- ls, children ----------------------------------------------------------------------


def _runs(args: argparse.Namespace) -> RunIndex | StoreRuns:
    """Where the runs are read: the state store, for `--db` without `--tracking` or
    `--project` (`_store_runs.py`); else the run index of the tracking folder."""
    if not args.db or args.tracking or args.project:
        return open_index(args)
    from fanwise.cli._store_runs import StoreRuns
    from fanwise.core.persistence._dsn import redacted

    return StoreRuns(open_persister(args.db, args.table), args.table,
                     f"store {redacted(args.db)} (table {args.table})")


def _ls(args: argparse.Namespace) -> int:
    from fanwise.core.tracking.index import ANY

    with _runs(args) as index:
        key = ANY if args.partition_key is None else args.partition_key
        page = _paged(index.apps, partition_key=key, status=args.status, limit=args.limit,
                      cursor=args.cursor)
    _print_page(args, page, "apps")
    return EXIT_OK


def _children(args: argparse.Namespace) -> int:
    with _runs(args) as index:
        parent = _app(index, args)
        page = _paged(index.children, parent.app_id, parent.partition_key,
                      sequence_id=args.step, status=args.status, limit=args.limit,
                      cursor=args.cursor)
    _print_page(args, page, "children")
    return EXIT_FAILED if page.counts.get("failed") else EXIT_OK


def _paged(query: Any, *positional: Any, **options: Any) -> Page:
    try:
        return query(*positional, **options)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _print_page(args: argparse.Namespace, page: Page, what: str) -> None:
    if args.json:
        for row in page.rows:
            print_json({"type": "app", **row.as_dict()})
        print_json({"type": "summary", "counts": page.counts, "total": page.total,
                    "next_cursor": page.next_cursor})
        return
    print(f"{page.total:,} {what}: {_counts_text(page.counts)}")
    for row in page.rows:
        print(_row_line(row))
    if page.next_cursor is not None:
        print(f"more: --cursor {page.next_cursor}")


def _row_line(row: AppRow) -> str:
    where = row.next_action or row.position or "-"
    duration = "-" if row.duration_ms is None else _seconds(row.duration_ms / 1000)
    error = f"  {_error_text(row.error_type, row.error_line)}" if (
        row.status == "failed" and row.error_line is not None) else ""
    key = f" [{row.partition_key}]" if row.partition_key else ""
    return (f"{row.app_id}{key}  {STATUS_WORDS.get(row.status, row.status):8} "
            f"{where:20} steps={row.steps:<4} {duration:>8}  {row.created_at or '-'}{error}")


# -- show --------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    from fanwise.core.tracking.index import RunIndex

    with _runs(args) as index:
        row = _app(index, args)
        steps = index.fanout_steps(row.app_id, row.partition_key)
        if args.usage and not isinstance(index, RunIndex):
            raise CliError("--usage sums what the children logged: it reads the tracking "
                           "folder (--tracking DIR --project P)")
        usage = _children_usage(index, row) if args.usage else None
    store = _store_view(args, row) if args.db else None
    failed = row.status == "failed" or any(step.counts.get("failed") for step in steps)
    if args.json:
        print_json({"app": row.as_dict(), "fanouts": [step.as_dict() for step in steps],
                    "store": store, "children_usage": usage})
        return EXIT_FAILED if failed else EXIT_OK
    key = f" (partition key {row.partition_key!r})" if row.partition_key else ""
    print(f"app {row.app_id}{key}")
    print(f"  status       {row.status}")
    print(f"  next action  {row.next_action or '-'}")
    print(f"  steps        {row.steps} (last: {row.position or '-'})")
    print(f"  started      {row.started_at or '-'}   ended {row.ended_at or '-'}   "
          f"duration {_seconds((row.duration_ms or 0) / 1000)}")
    if row.parent_app_id:
        print(f"  spawned by   {row.parent_app_id} at step {row.parent_sequence_id}")
    if row.status == "failed" and row.error_line is not None:
        print(f"  error        {_error_text(row.error_type, row.error_line)}")
    if row.usage:
        print("  usage        " + ", ".join(f"{k}={v:g}" for k, v in sorted(row.usage.items())))
    for step in steps:
        print(f"  fan-out at step {step.sequence_id}: {step.total:,} children: "
              f"{_fanout_text(step)}")
    if usage is not None:
        print(f"  children usage  {_usage_text(usage)}")
    if store is not None:
        print(f"  store        {_store_text(store)}")
    return EXIT_FAILED if failed else EXIT_OK


def _children_usage(index: RunIndex, row: AppRow) -> dict[str, Any]:
    """What the app's children logged as usage, summed (`fanwise.llm.summarize`)."""
    try:
        from fanwise.llm.usage import summarize
    except ImportError as exc:
        raise CliError(f"--usage needs the llm extra: pip install 'fanwise[llm]' ({exc})",
                       EXIT_USAGE) from None
    summary = summarize(index, row.app_id, row.partition_key)
    return {"children": summary.children, "totals": summary.totals,
            "latency_p50": summary.latency_p50, "latency_p95": summary.latency_p95,
            "cache_hit_rate": summary.cache_hit_rate}


def _usage_text(usage: dict[str, Any]) -> str:
    if not usage["children"]:
        return "none logged"
    totals = ", ".join(f"{k}={v:g}" for k, v in sorted(usage["totals"].items()))
    parts = [f"{usage['children']:,} children", totals]
    if usage["latency_p50"] is not None:
        parts.append(f"latency p50 {usage['latency_p50']:.3f} s, p95 "
                     f"{usage['latency_p95']:.3f} s")
    if usage["cache_hit_rate"] is not None:
        parts.append(f"cache hits {usage['cache_hit_rate']:.0%}")
    return "; ".join(parts)


def _fanout_text(step: FanoutStep) -> str:
    counts = step.counts
    done = counts.get("completed", 0) - step.resumed
    return (f"{done:,} done, {step.resumed:,} resumed, {counts.get('running', 0):,} running, "
            f"{counts.get('created', 0):,} pending, {counts.get('failed', 0):,} failed")


def _store_view(args: argparse.Namespace, row: AppRow) -> dict[str, Any]:
    """What `--db` holds of the app: its last saved step and its lease."""
    persister = open_persister(args.db, args.table)
    try:
        saved = persister.load(row.partition_key, row.app_id)
        lease_info = getattr(persister, "lease_info", None)
        lease = lease_info(row.partition_key, row.app_id) if lease_info else None
    except CliError:
        raise
    except Exception as exc:  # the store's own error: unreachable, locked, no table
        raise CliError(f"cannot read --db: {type(exc).__name__}: {exc}", EXIT_FAILED) from exc
    finally:
        persister.close()
    return {
        "saved": None if saved is None else {
            "sequence_id": saved["sequence_id"], "position": saved["position"],
            "status": saved["status"], "created_at": str(saved["created_at"]),
        },
        "lease": None if lease is None else lease.as_dict(),
    }


def _store_text(store: dict[str, Any]) -> str:
    saved = store["saved"]
    text = ("nothing saved" if saved is None else
            f"last saved step {saved['sequence_id']} {saved['position']!r} ({saved['status']})")
    lease = store["lease"]
    if lease is None:
        return text + "; no lease"
    held = "held" if lease["live"] else "left by a driver that is gone"
    return text + f"; lease {held}: pid {lease['pid']} on {lease['host']}"


# -- failed ------------------------------------------------------------------------------


def _failed(args: argparse.Namespace) -> int:
    with _runs(args) as index:
        row = _app(index, args)
        groups = index.failures(row.app_id, row.partition_key, sample=max(args.sample, 0))
    if args.json:
        for group in groups:
            print_json({"type": "failure", **group.as_dict()})
    elif not groups:
        print(f"no failed child of {row.app_id}")
    for group in groups if not args.json else ():
        print(f"{group.count:,} x {_error_text(group.error_type, group.error_line)}")
        for app_id in group.app_ids:
            print(f"    {app_id}")
        if group.count > len(group.app_ids):
            print(f"    ... {group.count - len(group.app_ids):,} more "
                  f"(fanwise children {row.app_id} --status failed)")
    return EXIT_FAILED if groups else EXIT_OK


# -- watch -------------------------------------------------------------------------------


def _watch(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise CliError(f"--interval {args.interval} must be more than 0 seconds")
    terminal = sys.stderr.isatty() and not args.json
    started, first_done = time.monotonic(), None
    planned: dict[int, int | None] = {}
    try:
        with open_index(args) as index:
            while True:
                row = _app(index, args)
                steps = index.fanout_steps(row.app_id, row.partition_key)
                step = steps[-1] if steps else None
                finished = _finished(step)
                if first_done is None:
                    first_done = finished
                rate = (finished - first_done) / max(time.monotonic() - started, 1e-9)
                total = args.total or _planned(index, row, step, planned)
                _progress(args, row, step, rate, total, terminal)
                if row.status != "running":
                    break
                if args.db and not _driver_alive(args, row):
                    if terminal:
                        print(file=sys.stderr)
                    print(f"fanwise watch: app {row.app_id} is marked running but no driver "
                          "holds its lease: it stopped; `fanwise resume` goes on",
                          file=sys.stderr)
                    return EXIT_STOPPED
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if terminal:
        print(file=sys.stderr)
    if row.status == "failed" or (step is not None and step.counts.get("failed")):
        return EXIT_FAILED
    return EXIT_OK


def _planned(index: RunIndex, row: AppRow, step: FanoutStep | None,
             known: dict[int, int | None]) -> int | None:
    """The total the fan-out `step` recorded (read from the app's log until it is found:
    it is written as the step starts its fan-out), or None."""
    if step is None:
        return None
    if known.get(step.sequence_id) is None:
        known[step.sequence_id] = planned_children(index, row.partition_key, row.app_id,
                                                   step.sequence_id)
    return known[step.sequence_id]


def _finished(step: FanoutStep | None) -> int:
    if step is None:
        return 0
    return step.counts.get("completed", 0) + step.counts.get("failed", 0)


def _progress(args: argparse.Namespace, row: AppRow, step: FanoutStep | None, rate: float,
              planned: int | None, terminal: bool) -> None:
    """One progress line (or bar); an ETA only when the fan-out's total is known."""
    counts = {} if step is None else step.counts
    done, failed = counts.get("completed", 0), counts.get("failed", 0)
    running = counts.get("running", 0) + counts.get("created", 0)
    total = planned or (step.total if step is not None else 0)
    remaining = max(total - done - failed, 0)
    eta = remaining / rate if rate > 0 and planned else None
    if args.json:
        print_json({"type": "progress", "app_id": row.app_id, "status": row.status,
                    "step": None if step is None else step.sequence_id, "done": done,
                    "failed": failed, "running": running, "total": total,
                    "rate": round(rate, 3), "eta_seconds": eta})
        sys.stdout.flush()
        return
    width = 30
    filled = int(width * (done + failed) / total) if total else 0
    line = (f"[{'#' * filled}{'.' * (width - filled)}] {done + failed:,}/{total:,} "
            f"done {done:,} failed {failed:,} running {running:,} {rate:,.1f}/s"
            + ("" if eta is None else f" ETA {_seconds(eta)}") + f" ({row.status})")
    if terminal:
        print("\r" + line, end="", file=sys.stderr, flush=True)
    else:
        print(line, flush=True)


def _driver_alive(args: argparse.Namespace, row: AppRow) -> bool:
    persister = open_persister(args.db, args.table)
    try:
        lease_info = getattr(persister, "lease_info", None)
        if lease_info is None:
            return True
        lease = lease_info(row.partition_key, row.app_id)
        return lease is not None and lease.live
    finally:
        persister.close()


# -- shared ------------------------------------------------------------------------------


def _app(index: RunIndex | StoreRuns, args: argparse.Namespace) -> AppRow:
    from fanwise.core.tracking.index import ANY, RunIndex

    key = args.partition_key if args.partition_key is not None else ANY
    try:
        row = index.app(args.app_id, key)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if row is None:
        where = (f"tracking project {index.project!r} ({index.folder})"
                 if isinstance(index, RunIndex) else index.described)
        raise CliError(f"no app {args.app_id!r} in {where}; `fanwise ls` lists the apps")
    return row


def _error_text(error_type: str | None, error_line: str | None) -> str:
    """`Type: first line`; only the line when the type is not known (read from a store)."""
    return f"{error_type}: {error_line}" if error_type is not None else str(error_line)


def _counts_text(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{n:,} {STATUS_WORDS.get(status, status)}"
                     for status, n in sorted(counts.items()))


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
