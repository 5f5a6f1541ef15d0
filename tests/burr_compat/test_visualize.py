"""`Application.visualize` / `Graph.visualize` as in Burr: a `graphviz.Digraph`, optionally
written to a file (needs the `graphviz` extra, and Graphviz's `dot` to write images)."""

import shutil
import subprocess
import sys
import textwrap

import pytest
from fanwise.core import ApplicationBuilder, GraphBuilder, Result, State, action, expr

graphviz = pytest.importorskip("graphviz", reason="the graphviz extra is not installed")
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz's dot program is not on PATH (make test installs it when run as root)",
)


@action(reads=["n"], writes=["n"])
def count(state: State, step: int = 1) -> State:
    return state.update(n=state["n"] + step)


@action(reads=["n"], writes=["n"])
def reset(state: State, __context) -> State:
    return state.update(n=0)


def counter_app():
    return (
        ApplicationBuilder()
        .with_actions(count, reset, done=Result("n"))
        .with_transitions(("count", "count", expr("n < 3")), ("count", "done"), ("done", "reset"))
        .with_state(n=0)
        .with_entrypoint("count")
        .build()
    )


def test_visualize_returns_a_digraph_with_a_node_per_action_and_an_edge_per_transition():
    dot = counter_app().visualize(include_conditions=True)
    assert isinstance(dot, graphviz.Digraph)
    source = dot.source
    for name in ("count", "done", "reset"):
        assert f"\t{name} [label={name}" in source
    assert "count -> count [label=\"n < 3\" style=dashed]" in source
    assert "count -> done [style=solid]" in source


def test_conditions_are_left_off_the_edges_unless_asked():
    source = counter_app().visualize().source
    assert "n < 3" not in source
    assert "count -> count [style=dashed]" in source


def test_inputs_are_drawn_as_dashed_boxes_but_the_injected_context_is_not():
    source = counter_app().visualize().source
    assert "input__step [label=\"input: step\" shape=rect style=dashed]" in source
    assert "input__step -> count" in source
    assert "__context" not in source


def test_include_state_labels_nodes_with_reads_and_writes():
    source = counter_app().visualize(include_state=True).source
    assert 'label="count(n): n"' in source


def test_engine_kwargs_reach_the_digraph_and_dict_values_extend_the_defaults():
    dot = counter_app().visualize(graph_attr={"rankdir": "LR"}, format="svg")
    assert dot.format == "svg"
    assert dot.graph_attr["rankdir"] == "LR"
    assert dot.graph_attr["ranksep"] == "0.4"


def test_graph_visualize_works_without_an_application():
    graph = GraphBuilder().with_actions(count).with_transitions(("count", "count")).build()
    assert "count -> count" in graph.visualize().source


def test_only_the_graphviz_engine_is_supported():
    with pytest.raises(ValueError, match="graphviz"):
        counter_app().visualize(engine="mermaid")


@needs_dot
def test_output_path_without_suffix_gets_the_format_as_burr_examples_call_it(tmp_path):
    target = tmp_path / "statemachine"
    counter_app().visualize(output_file_path=target, include_conditions=True, format="png",
                            view=False)
    image = tmp_path / "statemachine.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not target.exists()  # no dot source unless write_dot


@needs_dot
def test_output_path_suffix_decides_the_format_and_write_dot_keeps_the_source(tmp_path):
    counter_app().visualize(output_file_path=tmp_path / "graph.svg", write_dot=True)
    assert (tmp_path / "graph.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert "count -> done" in (tmp_path / "graph").read_text()


def _run_script(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": ""},
    )


SCRIPT = """
    import sys
    {prelude}
    from fanwise.core import ApplicationBuilder, action
    @action(reads=[], writes=[])
    def only(state):
        return state
    app = ApplicationBuilder().with_actions(only).with_entrypoint("only").build()
    try:
        app.visualize({args})
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def test_without_the_graphviz_package_visualize_names_the_extra():
    # sys.modules[name] = None makes `import graphviz` fail as if it were not installed
    done = _run_script(SCRIPT.format(prelude="sys.modules['graphviz'] = None", args=""))
    assert done.stdout.startswith("ImportError"), done.stderr
    assert "pip install 'fanwise[graphviz]'" in done.stdout


def test_writing_an_image_without_dot_on_path_names_the_missing_program(tmp_path):
    done = _run_script(
        SCRIPT.format(prelude="", args=f"output_file_path={str(tmp_path / 'g')!r}"),
        PATH=str(tmp_path),  # a PATH on which no `dot` is found
    )
    assert done.stdout.startswith("RuntimeError"), done.stderr
    assert "`dot` program" in done.stdout
    assert not (tmp_path / "g.png").exists()


def test_importing_fanwise_core_does_not_import_graphviz():
    done = _run_script("""
        import sys
        import fanwise.core
        print("graphviz" in sys.modules)
    """)
    assert done.stdout.strip() == "False", done.stderr
