"""`stream_fanout` / `astream_fanout`: typed events of every child, the step's end,
interleaved child items, stable sequence numbers on replay, bounded buffer, closing."""

import asyncio
import threading
from collections import Counter

import pytest
from fanout_testing import WAIT, Tally, fan_app, map_fan
from fanwise.core import State, action, streaming_action
from fanwise.core.persistence import SQLitePersister
from fanwise.executors import MultiProcessExecutor
from fanwise.parallel import ChildFailedError, MapStates


def simple_fan(n, fail=(), max_concurrency=3, **settings):
    def child(x):
        if x in fail:
            raise ValueError(f"bad {x}")
        return x * 2

    return map_fan(child, n, max_concurrency=max_concurrency, **settings)


def test_stream_fanout_yields_each_child_then_the_step_end():
    app = fan_app(simple_fan(5), app_id="p")
    events = list(app.stream_fanout(halt_after=["done"]))
    kinds = Counter(e.kind for e in events)
    assert kinds == {"child_started": 5, "child_done": 5, "done": 2}
    fan_done = [e for e in events if e.kind == "done"][0]
    action_, _, state = fan_done.data
    assert action_.name == "fan" and state["ys"] == [0, 2, 4, 6, 8]
    for position in range(5):
        mine = [e for e in events if e.position == position]
        assert [e.kind for e in mine] == ["child_started", "child_done"]
        assert [e.seq for e in mine] == [0, 1]
        assert all(e.path == (position,) and e.child_id == mine[0].child_id for e in mine)
    assert app.state["ys"] == [0, 2, 4, 6, 8]


def test_a_failed_child_is_an_event_and_the_error_still_reaches_the_caller():
    app = fan_app(simple_fan(4, fail={2}, on_failure="continue"))
    seen = []
    with pytest.raises(Exception, match="positions 2"):
        for event in app.stream_fanout(halt_after=["done"]):
            seen.append(event)
    failed = [e for e in seen if e.kind == "child_failed"]
    assert [e.position for e in failed] == [2] and str(failed[0].data) == "bad 2"


def test_a_resumed_child_replays_with_the_same_sequence_numbers(tmp_path):
    persister = SQLitePersister(tmp_path / "s.db")
    with pytest.raises(ChildFailedError):
        fan_app(simple_fan(4, fail={3}, max_concurrency=1), app_id="p", persister=persister,
                resume=True).run(halt_after=["done"])
    app = fan_app(simple_fan(4, max_concurrency=1), app_id="p", persister=persister,
                  resume=True)
    first = [(e.kind, e.position, e.seq) for e in app.stream_fanout(halt_after=["done"])
             if e.kind != "done"]
    assert first[:3] == [("child_resumed", 0, 0), ("child_resumed", 1, 0),
                         ("child_resumed", 2, 0)]
    assert first[3:] == [("child_started", 3, 0), ("child_done", 3, 1)]


def streaming_fan(n, gate):
    @streaming_action(reads=["x"], writes=["y"])
    def child(state):
        for token in range(3):
            gate(state["x"], token)
            yield {"token": f"{state['x']}.{token}"}, None
        yield {"done": True}, state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = n

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(n)]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    return Fan()


def test_items_of_streaming_children_interleave_in_the_stream():
    barrier = threading.Barrier(2, timeout=WAIT)
    app = fan_app(streaming_fan(2, lambda x, token: barrier.wait()))
    items = [e for e in app.stream_fanout(halt_after=["done"]) if e.kind == "child_item"]
    assert sorted(e.data["token"] for e in items) == ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2"]
    order = [e.position for e in items]
    assert order != sorted(order)  # both children streamed at once
    assert [e.seq for e in items if e.position == 0] == [1, 2, 3]


def test_a_slow_consumer_slows_the_children_through_the_bounded_buffer():
    from fanwise.parallel.events import DEFAULT_BUFFER

    done = []
    fan = map_fan(lambda x: done.append(x) or x, 5000, max_concurrency=4)

    stream = fan_app(fan).stream_fanout(halt_after=["done"])
    next(stream)
    threading.Event().wait(0.5)  # the consumer does not read: the buffer fills
    ran_while_blocked = len(done)
    assert ran_while_blocked <= DEFAULT_BUFFER // 2 + 8  # two events a child
    assert sum(1 for e in stream if e.kind == "child_done") == 5000


def test_closing_the_stream_starts_no_more_children_and_keeps_finished_ones(tmp_path):
    tally = Tally(tmp_path / "t.txt")

    def fan():
        return map_fan(lambda x: tally.hit(x) or x, 5000, max_concurrency=2)

    persister = SQLitePersister(tmp_path / "s.db")
    app = fan_app(fan(), app_id="p", persister=persister, resume=True)
    stream = app.stream_fanout(halt_after=["done"])
    for event in stream:
        if event.kind == "child_done" and event.position >= 10:
            break
    stream.close()
    ran_first = sum(tally.counts().values())
    assert ran_first < 5000
    final = fan_app(fan(), app_id="p", persister=persister, resume=True).run(
        halt_after=["done"])[2]
    assert final["ys"] == list(range(5000))
    assert all(count == 1 for count in tally.counts().values())


def test_astream_fanout_yields_the_same_events_on_asyncio():
    @action(reads=["x"], writes=["y"])
    async def child(state):
        await asyncio.sleep(0.001)
        return state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]

        def action(self):
            return child

        def states(self):
            return [State({"x": x}) for x in range(6)]

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    async def collect():
        app = fan_app(Fan())
        return [e async for e in app.astream_fanout(halt_after=["done"])]

    events = asyncio.run(collect())
    assert Counter(e.kind for e in events) == {"child_started": 6, "child_done": 6, "done": 2}


def test_children_in_other_processes_bring_their_items_back():
    with MultiProcessExecutor(max_concurrency=2) as executor:
        app = fan_app(streaming_fan(2, lambda x, token: None), executor=executor)
        events = list(app.stream_fanout(halt_after=["done"]))
    items = sorted(e.data["token"] for e in events if e.kind == "child_item")
    assert items == ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2"]
    assert app.state["ys"] == [0, 1]


def test_events_of_a_nested_fan_out_carry_the_path_of_positions():
    @action(reads=["x"], writes=["y"])
    def leaf(state):
        return state.update(y=state["x"])

    class Inner(MapStates):
        reads = ["base"]
        writes = ["ys"]

        def action(self):
            return leaf

        def states(self, state):
            return [State({"x": state["base"] + i}) for i in range(2)]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    class Outer(MapStates):
        reads = []
        writes = ["all"]

        def action(self):
            return Inner().with_name("inner")

        def states(self):
            return [State({"base": 10 * b}) for b in range(3)]

        def reduce(self, state, states):
            return state.update(all=[s["ys"] for s in states])

    app = fan_app(Outer())
    events = list(app.stream_fanout(halt_after=["done"]))
    inner_done = sorted(e.path for e in events if e.kind == "child_done" and len(e.path) == 2)
    assert inner_done == [(o, i) for o in range(3) for i in range(2)]
    assert sorted(e.path for e in events if e.kind == "child_done" and len(e.path) == 1) == [
        (0,), (1,), (2,)]
    assert app.state["all"] == [[0, 1], [10, 11], [20, 21]]
