"""What the benchmark scripts share: markdown tables, fresh run folders, the load average."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator


def table(title: str, header: list[str], rows: list[list[str]], notes: str = "") -> str:
    """A markdown table under `### title`, its columns padded, `notes` below it."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    lines = [f"### {title}", "", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(row) for row in rows]
    if notes:
        lines += ["", notes]
    return "\n".join(lines)


def fresh_folders(root: str) -> Iterator[str]:
    """New empty folders under `root`, one per run; all are removed together at the end
    (creating files right after removing thousands is much slower on these disks)."""
    for n in itertools.count():
        folder = os.path.join(root, str(n))
        os.mkdir(folder)
        yield folder


def load_average() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())
