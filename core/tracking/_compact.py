"""Compact tracking of large fan-outs: the children past a fan-out step's first
`child_folders` have no app folder; their records are lines of a few shared logs.

    <project>/.fanwise-children/
        <shard>.jsonl       one per shard of (partition key, app id): 16 logs, appended
        graphs/<sha>.json   each graph once (an app folder has its own graph.json)

A line is the record an app folder's `log.jsonl` would hold, tagged with its app first:
`{"app": [partition_key, app_id], ...}`; the first line of a child is an `application`
record with its metadata, its parent's `children.jsonl` line and its graph's digest. A
child's lines all go to the shard of its ids, so the step hooks, which know only the app's
ids, find its log without a lookup. The run index keeps, per compact app, its shard and the
byte range of its lines (`log_file`, `log_start`, `log_end`): reading one child is one
`pread` of that range, whatever the log's size, never a scan.

Why: a folder and three files per child made a 1M-child fan-out write ~4M inodes and made
every listing of the project (Burr's UI, `list_app_ids`) enumerate them. Burr's UI reads app
folders only: it shows the apps and the first children of each fan-out step, not these.

Writers of one shard (threads, a fan-out's writer thread, other driver processes) append
whole lines under an exclusive `flock`, repairing a torn tail first, and learn the offset
they wrote at from the file's size under that lock (`local._append_tagged`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fanwise.core import _json

COMPACT_FOLDER = ".fanwise-children"
"""The compact logs' folder in a project (hidden: Burr's UI skips hidden folders)."""
GRAPHS_FOLDER = "graphs"
SHARDS = 16
"""Logs per project: few enough that one writer batch touches each at most once, enough that
driver processes writing at once rarely wait for one another's lock."""
APPLICATION = "application"
"""The `type` of a compact app's first line (its folder's metadata, graph and child line)."""
_APPLICATION_MARK = b', "type": "application", '
"""In every `application` line (after its tag); a search for it costs far less than parsing
a line, and a line it matches by chance is parsed and told apart by its `type`."""

App = tuple[str | None, str]
"""(partition key, app id)."""
Tagged = tuple[App, bytes]
"""(app, line): a record of `app`'s log, not yet tagged."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a compact app's lines are: the byte range `[start, end)` of the shard log
    `file` (a name in `COMPACT_FOLDER`). Lines of other apps may sit in between."""

    file: str
    start: int
    end: int


def shard_of(partition_key: str | None, app_id: str) -> str:
    """The shard log of an app: a file name in `COMPACT_FOLDER`."""
    digest = hashlib.sha256(f"{partition_key or ''}\x1f{app_id}".encode()).digest()
    return f"{digest[0] % SHARDS:x}.jsonl"


def tagged(partition_key: str | None, app_id: str, line: bytes) -> bytes:
    """`line` (a JSON object and its newline) with the app's tag as its first field."""
    tag = _dumps([partition_key, app_id]).encode()
    return b'{"app": ' + tag + (b", " if line[1:2] != b"}" else b"") + line[1:]


def application_line(metadata: dict[str, Any], graph_digest: str,
                     child: dict[str, Any] | None) -> bytes:
    """The first line of a compact app (untagged): what its folder's `metadata.json`,
    `graph.json` (by digest) and its parent's `children.jsonl` line would hold."""
    record = {"type": APPLICATION, "metadata": metadata, "graph": graph_digest,
              "child": child}
    return (_dumps(record) + "\n").encode()


_dumps = _json.make_encoder(None, sort_keys=False, spaced=True)
"""`json.dumps`'s text, without setting up an encoder per line (every compact line)."""


def graph_digest(graph: bytes) -> str:
    """The name a graph is kept under (what a compact app's first line records)."""
    return hashlib.sha256(graph).hexdigest()[:32]


def write_graph(project_folder: str, graph: bytes, written: dict[bytes, str]) -> str:
    """Keep `graph` once in the graphs folder; its digest. `written`: the graphs known to be
    there (a fan-out's children hand over one `bytes` object, whose hash Python keeps: a
    lookup costs no hashing of the graph)."""
    digest = written.get(graph)
    if digest is not None:
        return digest
    digest = graph_digest(graph)
    folder = os.path.join(project_folder, COMPACT_FOLDER, GRAPHS_FOLDER)
    path = os.path.join(folder, digest + ".json")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as file:
            file.write(graph)
        os.replace(tmp, path)  # whole or absent, whichever writer renames first
    if len(written) >= 64:
        written.clear()
    written[graph] = digest
    return digest


def read_graph(project_folder: str, digest: str) -> bytes | None:
    """The graph kept under `digest` (as `graph.json` holds it), or None."""
    try:
        with open(os.path.join(project_folder, COMPACT_FOLDER, GRAPHS_FOLDER,
                               f"{os.path.basename(digest)}.json"), "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


def spans(start: int, items: Sequence[Tagged]) -> tuple[bytes, dict[App, list[int]]]:
    """The tagged lines of `items` joined, as written at offset `start`, and each app's
    byte range in them: `{app: [first, end]}`."""
    parts, ranges, offset = [], {}, start
    for app, line in items:
        part = tagged(app[0], app[1], line)
        parts.append(part)
        found = ranges.get(app)
        if found is None:
            ranges[app] = [offset, offset + len(part)]
        else:
            found[1] = offset + len(part)
        offset += len(part)
    return b"".join(parts), ranges


def records(project_folder: str, place: Place, partition_key: str | None,
            app_id: str) -> Iterator[dict[str, Any]]:
    """The app's records in its range of its shard log, untagged, in the order written
    (the `application` record first); lines of other apps and torn lines are skipped."""
    path = os.path.join(project_folder, COMPACT_FOLDER, os.path.basename(place.file))
    try:
        with open(path, "rb") as file:
            file.seek(place.start)
            raw = file.read(max(place.end - place.start, 0))
    except FileNotFoundError:
        return
    tag = [partition_key, app_id]
    for line in raw.split(b"\n"):
        record = _record(line)
        if record is not None and record.pop("app", None) == tag:
            yield record


def shard_names(project_folder: str) -> list[str]:
    """The shard logs a project has (none if it has no compact apps)."""
    try:
        names = os.listdir(os.path.join(project_folder, COMPACT_FOLDER))
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.endswith(".jsonl"))


def scan(project_folder: str, name: str, only_applications: bool = False
         ) -> Iterator[tuple[str, int, int, dict[str, Any]]]:
    """Every record of the shard log `name`, tagged: (name, start, end, record), in file
    order (what rebuilds the run index); torn and untagged lines are skipped. With
    `only_applications`, just the `application` records (the other lines are not parsed)."""
    path = os.path.join(project_folder, COMPACT_FOLDER, name)
    if not os.path.isfile(path):
        return
    with open(path, "rb") as file:
        offset = 0
        for line in file:
            start, offset = offset, offset + len(line)
            if only_applications and _APPLICATION_MARK not in line:
                continue
            record = _record(line)
            if record is not None and _is_tag(record.get("app")):
                yield name, start, offset, record


def _is_tag(tag: Any) -> bool:
    return (isinstance(tag, list) and len(tag) == 2 and isinstance(tag[1], str)
            and (tag[0] is None or isinstance(tag[0], str)))


def _record(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:  # a torn last line (its writer repairs it on the next append)
        return None
    return record if isinstance(record, dict) else None
