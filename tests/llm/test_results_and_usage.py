"""Results tables and usage summaries of a real fan-out (SQLite store, local tracking)."""

import pytest
from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.tracking.index import RunIndex
from fanwise.executors import MultiThreadedExecutor
from fanwise.llm import Results, Usage, summarize
from fanwise.parallel import MapStates


@action(reads=["prompt"], writes=["answer", "score"])
def ask(state: State, __tracer) -> State:
    n = state["prompt"]
    Usage(prompt_tokens=10 * n, completion_tokens=n, latency_s=0.1 * (n + 1), calls=1,
          cache_hits=n % 2).log(__tracer)
    return state.update(answer=f"a{n}", score=n / 10)


class Sweep(MapStates):
    reads = ["n"]
    writes = ["done"]

    def action(self):
        return ask

    def states(self, state):
        return [State({"prompt": i}) for i in range(state["n"])]

    def reduce(self, state, states):
        return state.update(done=sum(1 for _ in states))


def _run(tmp_path, n, app_id="sweep"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    persister = SQLitePersister(str(tmp_path / "state.sqlite"))
    tracker = LocalTrackingClient("exp", str(tmp_path / "tracking"))
    with MultiThreadedExecutor(4) as executor:
        app = (
            ApplicationBuilder()
            .with_actions(fan=Sweep(), end=Result("done"))
            .with_transitions(("fan", "end"))
            .with_state(n=n)
            .with_entrypoint("fan")
            .with_state_persister(persister)
            .with_tracker(tracker)
            .with_executor(executor)
            .with_identifiers(app_id=app_id)
            .build()
        )
        app.run(halt_after=["end"])
    return persister, RunIndex.open("exp", str(tmp_path / "tracking"))


def test_a_results_table_has_one_row_per_child_keyed_by_its_item(tmp_path):
    persister, index = _run(tmp_path, 30)
    with_index = Results.of(persister, "sweep", 0, fields=["prompt", "score"], index=index)
    scanned = Results.of(persister, "sweep", 0, fields=["prompt", "score"])
    assert len(with_index.rows) == len(scanned.rows) == 30
    assert {r["prompt"]: r["score"] for r in scanned.rows} == {i: i / 10 for i in range(30)}
    assert len({r["item"] for r in scanned.rows}) == 30 and None not in scanned.by_item()
    assert scanned.by_item() == with_index.by_item()


def test_two_runs_compare_on_the_item_not_the_position(tmp_path):
    first, _ = _run(tmp_path / "one", 10)
    second, _ = _run(tmp_path / "two", 10, app_id="another")
    compared = Results.of(first, "sweep", 0, fields=["score"]).compare(
        Results.of(second, "another", 0, fields=["score"]), "score")
    assert len(compared) == 10 and all(c["this"] == c["other"] for c in compared)


def test_exports_write_every_row(tmp_path):
    persister, _ = _run(tmp_path, 5)
    results = Results.of(persister, "sweep", 0, fields=["answer"])
    results.to_csv(str(tmp_path / "out.csv"))
    assert (tmp_path / "out.csv").read_text().count("\n") == 6
    pyarrow = pytest.importorskip("pyarrow")
    assert isinstance(results.to_arrow(), pyarrow.Table)
    assert results.to_arrow().num_rows == 5


def test_a_field_no_child_has_is_a_clear_error(tmp_path):
    persister, _ = _run(tmp_path, 3)
    with pytest.raises(KeyError, match="no field"):
        Results.of(persister, "sweep", 0, fields=["nope"])


def test_usage_is_summed_per_fan_out_with_latency_percentiles(tmp_path):
    _, index = _run(tmp_path, 20)
    summary = summarize(index, "sweep")
    assert summary.children == 20
    assert summary.totals["prompt_tokens"] == 10 * sum(range(20))
    assert summary.totals["calls"] == 20
    assert summary.cache_hit_rate == 0.5
    assert summary.latency_p50 == pytest.approx(1.0) and summary.latency_p95 == \
        pytest.approx(1.9)


def test_fanwise_show_usage_sums_what_the_children_logged(tmp_path, capsys):
    import json

    from fanwise.cli.main import main

    _run(tmp_path, 10)
    reads = ["--tracking", str(tmp_path / "tracking"), "--project", "exp"]
    assert main(["show", "sweep", *reads, "--usage", "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)["children_usage"]
    assert usage["children"] == 10 and usage["totals"]["prompt_tokens"] == 10 * sum(range(10))
    assert usage["cache_hit_rate"] == 0.5
    assert main(["show", "sweep", *reads, "--usage"]) == 0
    assert "children usage  10 children" in capsys.readouterr().out


def test_the_ui_app_page_shows_the_usage_the_children_logged(tmp_path):
    pytest.importorskip("fastapi")
    import asyncio

    import httpx
    from fanwise.ui import create_app

    _run(tmp_path, 10)

    async def fetch():
        transport = httpx.ASGITransport(app=create_app("exp", str(tmp_path / "tracking")))
        async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
            return await client.get("/p/exp/a/sweep")

    page = asyncio.run(fetch())
    assert page.status_code == 200
    assert "Children&#39;s usage" in page.text or "Children's usage" in page.text
    assert "10 children logged usage" in page.text and "cache hits 50%" in page.text
