"""`fanwise export ID --format csv|jsonl|parquet`: one row per child of a fan-out.

Children come from the run index page by page (spawn order); their final states from the
store of `--db` (`load_many`, one query per page), or else from their tracking logs. A row
holds the child's `app_id`, `status`, `duration_ms`, `error_type`, `error_line` and its
state fields (`--fields` picks them; by default those of the first page). Parquet goes
through pyarrow (`pip install 'fanwise[parquet]'`), one row group per page.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from typing import IO, Any

from fanwise.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    add_db,
    add_partition_key,
    add_tracking,
    open_index,
    open_persister,
)

PAGE = 1000
"""Children read, loaded and written at once."""
INDEX_FIELDS = ("app_id", "status", "duration_ms", "error_type", "error_line")


def add_parser(commands: Any) -> None:
    export = commands.add_parser("export", help="one row per child, from their final states")
    add_tracking(export)
    export.add_argument("app_id", metavar="ID")
    add_partition_key(export)
    add_db(export)
    export.add_argument("--format", required=True, choices=["csv", "jsonl", "parquet"])
    export.add_argument("--fields", default=None,
                        help="state fields to export, comma-separated (default: those of "
                             "the first children)")
    export.add_argument("--status", default=None,
                        choices=["created", "running", "completed", "failed"],
                        help="only children of this status")
    export.add_argument("--output", "-o", default=None,
                        help="file to write (default: stdout; parquet needs a file)")
    export.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from fanwise.cli._runs import _app

    if args.format == "parquet" and args.output is None:
        raise CliError("--format parquet writes a file: pass --output FILE")
    fields = None if args.fields is None else [f for f in args.fields.split(",") if f]
    with open_index(args) as index:
        parent = _app(index, args)
        loader = _loader(args, index)
        try:
            pages = _pages(index, loader, parent.app_id, parent.partition_key, args.status)
            written = _write(args, pages, fields)
        finally:
            loader.close()
    print(f"fanwise export: {written:,} children of {parent.app_id}", file=sys.stderr)
    return EXIT_OK


def _loader(args: argparse.Namespace, index: Any) -> Any:
    if args.db:
        return open_persister(args.db, args.table)
    from fanwise.core.tracking import LocalTrackingClient

    return LocalTrackingClient(index.project, storage_dir=index.storage_dir)


def _pages(index: Any, loader: Any, app_id: str, partition_key: str | None,
           status: str | None) -> Iterator[list[dict[str, Any]]]:
    cursor = None
    while True:
        page = index.children(app_id, partition_key, status=status, limit=PAGE, cursor=cursor)
        if not page.rows:
            return
        by_key: dict[str | None, list[str]] = {}
        for row in page.rows:
            by_key.setdefault(row.partition_key, []).append(row.app_id)
        states: dict[tuple[str | None, str], Any] = {}
        for key, ids in by_key.items():
            for child_id, saved in _load_many(loader, key, ids).items():
                states[(key, child_id)] = saved["state"].get_all()
        yield [{**{name: getattr(row, name) for name in INDEX_FIELDS},
                "state": states.get((row.partition_key, row.app_id))} for row in page.rows]
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _load_many(loader: Any, partition_key: str | None, ids: list[str]) -> dict[str, Any]:
    try:
        load_many = getattr(loader, "load_many", None)
        if load_many is not None:
            return load_many(partition_key, ids)
        found = {}
        for child_id in ids:
            saved = loader.load(partition_key, child_id)
            if saved is not None:
                found[child_id] = saved
        return found
    except Exception as exc:  # the store's own error: unreachable, no such table
        raise CliError(f"cannot read the children's states: {type(exc).__name__}: {exc}",
                       EXIT_FAILED) from exc


def _rows(page: list[dict[str, Any]], fields: list[str]) -> list[dict[str, Any]]:
    rows = []
    for child in page:
        state = child["state"] or {}
        rows.append({**{name: child[name] for name in INDEX_FIELDS},
                     **{name: state.get(name) for name in fields}})
    return rows


def _write(args: argparse.Namespace, pages: Iterator[list[dict[str, Any]]],
           fields: list[str] | None) -> int:
    written = 0
    out: IO[str] | None = None
    sink: Any = None
    try:
        for page in pages:
            if fields is None:
                fields = _fields_of(page)
            rows = _rows(page, fields)
            if sink is None:
                out = sys.stdout if args.output is None or args.format == "parquet" else open(
                    args.output, "w", newline="")
                sink = _sink(args, out, [*INDEX_FIELDS, *fields], rows)
            sink.write(rows)
            written += len(rows)
        if sink is None and args.format == "parquet":  # no child: an empty file all the same
            sink = _sink(args, sys.stdout, list(INDEX_FIELDS), [])
    finally:
        if sink is not None:
            sink.close()
        if out is not None and out is not sys.stdout:
            out.close()
    return written


def _fields_of(page: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for child in page:
        for name in child["state"] or {}:
            if not name.startswith("__") and name not in INDEX_FIELDS:
                names[name] = None
    return list(names)


def _sink(args: argparse.Namespace, out: IO[str], columns: list[str],
          first: list[dict[str, Any]]) -> Any:
    if args.format == "csv":
        return _Csv(out, columns)
    if args.format == "jsonl":
        return _Jsonl(out)
    return _Parquet(args.output, columns, first)


class _Csv:
    def __init__(self, out: IO[str], columns: list[str]) -> None:
        self._writer = csv.DictWriter(out, fieldnames=columns)
        self._writer.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)

    def close(self) -> None:
        pass


class _Jsonl:
    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._out.write(json.dumps(row, default=repr) + "\n")

    def close(self) -> None:
        pass


class _Parquet:
    """A ParquetWriter whose schema pyarrow infers from the first page; values it cannot
    type (mixed, nested beyond a uniform shape) are written as JSON text."""

    def __init__(self, path: str, columns: list[str], first: list[dict[str, Any]]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise CliError("--format parquet needs pyarrow: pip install 'fanwise[parquet]'"
                           ) from exc
        self._pa = pa
        self._columns = columns
        table = self._table(first)
        self._writer = pq.ParquetWriter(path, table.schema)
        self._first = table

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        pa = self._pa
        arrays = {}
        for name in self._columns:
            values = [row.get(name) for row in rows]
            try:
                arrays[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arrays[name] = pa.array([None if v is None else json.dumps(v, default=repr)
                                         for v in values], pa.string())
        return pa.table(arrays)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._first is not None:
            table, self._first = self._first, None
        else:
            table = self._table(rows).cast(self._writer.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._first is not None:
            self._writer.write_table(self._first)
        self._writer.close()


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, default=repr)
