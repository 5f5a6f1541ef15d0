"""User paths (a tracking folder, a SQLite file) made absolute when a tracker or persister is
created: the working directory may change afterwards, and a process the object is shipped
to (a worker of a pool or a cluster) has a working directory of its own.

A path that lands inside a Ray session's working directory (a job submitted with
`--working-dir` runs there) is lost with the cluster: that gets a warning naming the fix.
"""

from __future__ import annotations

import os
import re
import warnings

_RAY_WORKING_DIR = re.compile(r"[/\\]session_[^/\\]+[/\\]runtime_resources[/\\]")
"""Where Ray unpacks a job's or task's `working_dir` (under its temporary session folder)."""


def resolved(path: str | os.PathLike[str], what: str) -> str:
    """`path` with `~` expanded, absolute against the current working directory; `what`
    names it in the warning for a path inside a Ray session folder."""
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if _RAY_WORKING_DIR.search(absolute):
        warnings.warn(
            f"{what} {os.fspath(path)!r} resolves to {absolute}, inside Ray's temporary "
            "session folder (the working directory of a job submitted with --working-dir): "
            "it is removed with the cluster. Give an absolute path on storage that outlives "
            "the cluster (a volume mounted on the head node), or use PostgreSQL",
            RuntimeWarning,
            stacklevel=3,
        )
    return absolute
