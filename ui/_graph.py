"""A layered drawing of an application's graph (`graph.json`), for an SVG template.

Actions go in columns by their distance from the entrypoint (breadth first), left to right,
in the order they are first reached; an action the entrypoint cannot reach goes in a last
column. A transition to a later column is a straight arrow; one to the same or an earlier
column (a loop) is an arc under the nodes, so it never crosses a box.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

NODE_WIDTH = 150
NODE_HEIGHT = 34
COLUMN_GAP = 60
ROW_GAP = 24
MARGIN = 12


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    x: float
    y: float
    kind: str
    """`current` (the step the app is at), `entry` (its entrypoint) or `action`."""


@dataclass(frozen=True, slots=True)
class Edge:
    path: str
    """SVG path data."""
    label: str
    label_x: float
    label_y: float


@dataclass(frozen=True, slots=True)
class Drawing:
    width: float
    height: float
    nodes: list[Node]
    edges: list[Edge]
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def layout(graph: dict[str, Any], current: str | None = None) -> Drawing | None:
    """The drawing of a `graph.json` record, `current` highlighted; None if it has no
    actions."""
    names = [str(action.get("name")) for action in graph.get("actions") or ()
             if isinstance(action, dict)]
    if not names:
        return None
    transitions = [
        (str(t.get("from_", t.get("from"))), str(t.get("to")), str(t.get("condition") or ""))
        for t in graph.get("transitions") or () if isinstance(t, dict)
    ]
    entry = str(graph.get("entrypoint") or names[0])
    columns = _columns(names, transitions, entry if entry in names else names[0])
    place: dict[str, tuple[float, float]] = {}
    rows_in_column: dict[int, int] = {}
    for name in names:
        column = columns[name]
        row = rows_in_column.get(column, 0)
        rows_in_column[column] = row + 1
        place[name] = (MARGIN + column * (NODE_WIDTH + COLUMN_GAP),
                       MARGIN + row * (NODE_HEIGHT + ROW_GAP))
    nodes_bottom = max(y for _, y in place.values()) + NODE_HEIGHT
    edges = []
    loops = 0
    for source, target, condition in transitions:
        if source not in place or target not in place:
            continue
        label = "" if condition in ("", "default") else condition
        (x1, y1), (x2, y2) = place[source], place[target]
        if columns[target] > columns[source]:
            start = (x1 + NODE_WIDTH, y1 + NODE_HEIGHT / 2)
            end = (x2, y2 + NODE_HEIGHT / 2)
            path = f"M{start[0]},{start[1]} L{end[0]},{end[1]}"
            middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 - 4)
        else:
            loops += 1
            depth = nodes_bottom + 14 * loops
            start = (x1 + NODE_WIDTH / 2 + 8, y1 + NODE_HEIGHT)
            end = (x2 + NODE_WIDTH / 2 - 8, y2 + NODE_HEIGHT)
            path = (f"M{start[0]},{start[1]} C{start[0]},{depth} {end[0]},{depth}"
                    f" {end[0]},{end[1]}")
            middle = ((start[0] + end[0]) / 2, depth - 2)
        edges.append(Edge(path, label, middle[0], middle[1]))
    nodes = [
        Node(name, x, y, "current" if name == current else "entry" if name == entry
             else "action")
        for name, (x, y) in place.items()
    ]
    width = MARGIN * 2 + (max(columns.values()) + 1) * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP
    height = nodes_bottom + MARGIN + 14 * (loops + 1)
    return Drawing(width, height, nodes, edges)


def _columns(names: list[str], transitions: list[tuple[str, str, str]],
             entry: str) -> dict[str, int]:
    following: dict[str, list[str]] = {name: [] for name in names}
    for source, target, _ in transitions:
        if source in following and target in following:
            following[source].append(target)
    columns = {entry: 0}
    queue = deque([entry])
    while queue:
        name = queue.popleft()
        for target in following[name]:
            if target not in columns:
                columns[target] = columns[name] + 1
                queue.append(target)
    unreached = max(columns.values()) + 1
    return {name: columns.get(name, unreached) for name in names}
