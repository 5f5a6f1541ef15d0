"""Drawing a `Graph` with Graphviz, as Burr's `visualize()` does (extra `graphviz`).

The Python package `graphviz` builds the drawing (a `graphviz.Digraph`); writing it to a
file also needs Graphviz's `dot` program on PATH. Both are imported or called only here,
and only when a drawing is asked for.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import graphviz
    from fanwise.core.graph import Graph

_GRAPH_ATTR = {"rankdir": "TB", "ranksep": "0.4", "compound": "false", "concentrate": "false"}
_NODE_ATTR = {"fontname": "Helvetica", "margin": "0.15", "fillcolor": "#b4d8e4"}
DEFAULT_FORMAT = "png"
"""Image format when neither the output path's suffix nor `format=` names one."""


def _import_graphviz() -> Any:
    try:
        import graphviz
    except ImportError as exc:
        raise ImportError(
            "visualize() needs the graphviz package: pip install 'fanwise[graphviz]' (and "
            "Graphviz's dot program to write files, e.g. apt-get install graphviz)"
        ) from exc
    return graphviz


def to_digraph(
    graph: Graph,
    include_conditions: bool = False,
    include_state: bool = False,
    **engine_kwargs: Any,
) -> graphviz.Digraph:
    """The drawing: one box per action (with `reads` and `writes` if `include_state`), a
    dashed box per input an action takes, one edge per transition (dashed when it has a
    condition, labelled with it if `include_conditions`). `engine_kwargs` go to
    `graphviz.Digraph`; a dict value (e.g. `graph_attr={...}`) extends the defaults."""
    graphviz = _import_graphviz()
    attrs: dict[str, Any] = {"graph_attr": dict(_GRAPH_ATTR), "node_attr": dict(_NODE_ATTR)}
    for key, value in engine_kwargs.items():
        if isinstance(value, dict):
            attrs.setdefault(key, {}).update(value)
        else:
            attrs[key] = value
    digraph = graphviz.Digraph(**attrs)
    for action in graph.actions:
        label = action.name
        if include_state:
            label = f"{action.name}({', '.join(action.reads)}): {', '.join(action.writes)}"
        digraph.node(action.name, label=label, shape="box", style="rounded,filled")
        for name in [name for names in action.input_spec for name in names]:
            if name.startswith("__"):  # injected by the engine (`__context`), not given
                continue
            input_node = f"input__{name}"
            digraph.node(input_node, label=f"input: {name}", shape="rect", style="dashed")
            digraph.edge(input_node, action.name)
    for transition in graph.transitions:
        conditional = transition.condition.name != "default"
        digraph.edge(
            transition.from_.name,
            transition.to.name,
            label=transition.condition.name if include_conditions and conditional else None,
            style="dashed" if conditional else "solid",
        )
    return digraph


def render(
    digraph: graphviz.Digraph,
    output_file_path: str | pathlib.Path,
    view: bool = False,
    write_dot: bool = False,
    fmt: str | None = None,
) -> pathlib.Path:
    """Write the image; returns its path. The format is the path's suffix if it has one
    (`graph.svg`), else `fmt`, else png; `write_dot` also keeps the dot source at the path
    without suffix, `view` opens the image."""
    graphviz = _import_graphviz()
    path = pathlib.Path(output_file_path)
    fmt = path.suffix[1:] if path.suffix else (fmt or DEFAULT_FORMAT)
    stem = path.with_suffix("")
    image = stem.with_name(f"{stem.name}.{fmt}")
    try:
        if write_dot or view:
            digraph.render(stem, format=fmt, view=view)
        else:
            image.write_bytes(digraph.pipe(format=fmt))
    except graphviz.ExecutableNotFound as exc:
        raise RuntimeError(
            "writing the graph image needs Graphviz's `dot` program on PATH: install Graphviz "
            "(apt-get install graphviz, brew install graphviz, or see graphviz.org/download), "
            "or call visualize() without output_file_path to get the graphviz.Digraph only"
        ) from exc
    return image


def visualize(
    graph: Graph,
    output_file_path: str | pathlib.Path | None = None,
    include_conditions: bool = False,
    include_state: bool = False,
    view: bool = False,
    engine: Literal["graphviz"] = "graphviz",
    write_dot: bool = False,
    **engine_kwargs: Any,
) -> graphviz.Digraph:
    """Burr's `visualize`: the `graphviz.Digraph` of `graph`, also written to
    `output_file_path` when given (pass the path without suffix and `format="png"`, or a
    path with a suffix)."""
    if engine != "graphviz":
        raise ValueError(f"visualize() supports engine='graphviz' only, not {engine!r}")
    digraph = to_digraph(graph, include_conditions, include_state, **engine_kwargs)
    if output_file_path is not None:
        render(digraph, output_file_path, view, write_dot, engine_kwargs.get("format"))
    return digraph
