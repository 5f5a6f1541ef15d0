"""The replay: a step whose children had all finished resumes from the store in slot order,
with the same checks as the general path (ids, fingerprints, a finished last step)."""

import asyncio
import sqlite3
from contextlib import closing

import pytest
from fanout_testing import Tally, expected_child_id, fan_app
from fanwise.core import GraphBuilder, State, action
from fanwise.core.errors import CorruptStateError
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import ChildrenFailedError, MapActionsAndStates, MapStates, RunnableGraph
from fanwise.parallel._replay import REPLAY_BATCH
from fanwise.parallel.cascade import AHEAD

N = REPLAY_BATCH + 600
FIRST = 4 + 4 * AHEAD
"""The first batch a resume pulls: the window of 4, and the children queued ahead."""
"""More than one replay batch, so that a batch after the first is replayed too."""


class ReducerDied(Exception):
    """The reduce raised once it had every child: the step is not saved, its children are."""


class CountingStore(SQLitePersister):
    """Counts the slot ranges replayed and the children looked up one batch at a time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.replayed = []
        self.sealed = []
        self.looked_up = 0

    def copy(self):
        return self

    def replay_children(self, partition_key, parent_app_id, parent_sequence_id, start, stop):
        block = super().replay_children(partition_key, parent_app_id, parent_sequence_id,
                                        start, stop)
        self.replayed.append((start, stop))
        if block is not None and block.seal is not None:
            self.sealed.append(start)
        return block

    def load_children(self, partition_key, parent_app_id, parent_sequence_id, ids):
        self.looked_up += len(ids)
        return super().load_children(partition_key, parent_app_id, parent_sequence_id, ids)


def squares(tally, items, die=False, outcomes_seen=None):
    """Children square their item (counted in `tally`); the reduce may die once at the end,
    and with `outcomes_seen` it asks for the children's outcomes."""
    armed = {"die": die}

    @action(reads=["x"], writes=["y"])
    def square(state):
        tally.hit(state["x"])
        return state.update(y=state["x"] ** 2)

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4

        def action(self):
            return square

        def states(self):
            return (State({"x": x}) for x in items)

        reduce = collecting_ys(dies=armed)

    class WithOutcomes(Fan):
        def reduce(self, state, states, outcomes):
            reduced = super().reduce(state, states)
            outcomes_seen.extend(outcomes)
            return reduced

    return Fan() if outcomes_seen is None else WithOutcomes()


def finished(tmp_path, tally, items):
    """A store holding every child of the fan-out over `items`, its step unsaved."""
    store = CountingStore(tmp_path / "s.db")
    die_in_reduce(squares(tally, items, die=True), store)
    assert sum(tally.counts().values()) == len(items)
    return store


def collecting_ys(dies):
    """A reduce collecting the children's ys; it raises `ReducerDied` instead while
    `dies["die"]` is set, once (`dies` is shared by the fan-outs of one test)."""

    def reduce(self, state, states):
        ys = [s["y"] for s in states]
        if dies.pop("die", False):
            raise ReducerDied(len(ys))
        return state.update(ys=ys)

    return reduce


def die_in_reduce(fan, store):
    """Run `fan` on `store` until its reduce dies: its children saved, its step not."""
    with pytest.raises(ReducerDied):
        fan_app(fan, app_id="p", persister=store, resume=True).run(halt_after=["done"])


def resume(store, fan):
    store.replayed.clear()
    store.sealed.clear()
    store.looked_up = 0
    return fan_app(fan, app_id="p", persister=store, resume=True).run(halt_after=["done"])[2]


def test_a_finished_step_is_replayed_from_the_store_and_no_child_runs(tmp_path):
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))
    result = resume(store, squares(tally, range(N)))
    assert result["ys"] == [x * x for x in range(N)]
    assert sum(tally.counts().values()) == N  # none ran again
    assert store.looked_up == FIRST  # only the first batch took the general path
    # the batches after the first are whole blocks, each checked against its seal
    blocks = list(range(REPLAY_BATCH, N, REPLAY_BATCH))
    assert store.replayed == list(zip([FIRST, *blocks], [*blocks, N]))
    assert store.sealed == blocks  # the first batch is not a whole block


def test_a_saved_fingerprint_that_differs_from_the_seal_runs_that_child_again(tmp_path):
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))
    tampered = REPLAY_BATCH + 3
    with closing(sqlite3.connect(tmp_path / "s.db")) as db, db:
        changed = db.execute(
            "UPDATE fanwise_state_child SET meta = '{\"fingerprint\":\"0\"}' WHERE child = ?",
            [tampered]).rowcount
    assert changed == 1
    result = resume(store, squares(tally, range(N)))
    assert result["ys"] == [x * x for x in range(N)]
    assert tally.counts()[str(tampered)] == 2 and sum(tally.counts().values()) == N + 1


def test_a_changed_task_mid_batch_runs_again_and_the_rest_still_resume(tmp_path):
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))
    changed = REPLAY_BATCH + 17
    items = [x if x != changed else -1 for x in range(N)]
    result = resume(store, squares(tally, items))
    assert result["ys"] == [x * x for x in items]
    counts = tally.counts()
    assert counts["-1"] == 1 and sum(counts.values()) == N + 1


def test_replayed_children_are_resumed_outcomes_in_task_order(tmp_path):
    tally = Tally(tmp_path / "tally")
    items = range(N)
    finished(tmp_path, tally, items)
    seen = []
    store = CountingStore(tmp_path / "s.db")
    resume(store, squares(tally, items, outcomes_seen=seen))
    assert store.replayed
    assert [o.position for o in seen] == list(range(N))
    assert {o.status for o in seen} == {"resumed"}
    assert seen[-1].app_id == expected_child_id("p", 0, N - 1)


def test_a_replayed_fanout_streams_a_resumed_event_per_child(tmp_path):
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))
    app = fan_app(squares(tally, range(N)), app_id="p", persister=store, resume=True)
    events = [e for e in app.stream_fanout(halt_after=["done"]) if e.kind != "done"]
    assert [(e.kind, e.position) for e in events] == [("child_resumed", p) for p in range(N)]
    assert store.replayed


def test_a_child_saved_halfway_continues_where_the_replay_stops(tmp_path):
    tally = Tally(tmp_path / "tally")
    armed = {"fail": True}
    halfway = REPLAY_BATCH + 5

    @action(reads=["x"], writes=["y"])
    def first(state):
        return state.update(y=state["x"])

    @action(reads=["y"], writes=["y"])
    def second(state):
        tally.hit(state["y"])
        if state["y"] == halfway and armed.pop("fail", False):
            raise ValueError("fails once")
        return state.update(y=state["y"] + 1)

    graph = GraphBuilder().with_actions(first, second).with_transitions(
        ("first", "second")).build()

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4
        on_failure = "continue"

        def action(self):
            return RunnableGraph(graph, "first", ["second"])

        def states(self):
            return (State({"x": x}) for x in range(N))

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    store = CountingStore(tmp_path / "s.db")
    with pytest.raises(ChildrenFailedError, match=f"positions {halfway}"):
        fan_app(Fan(), app_id="p", persister=store, resume=True).run(halt_after=["done"])
    result = resume(store, Fan())
    assert result["ys"] == [x + 1 for x in range(N)]
    assert tally.counts()[str(halfway)] == 2
    assert sum(tally.counts().values()) == N + 1
    assert store.replayed


def test_without_seals_a_batch_is_checked_child_by_child_and_still_replayed(tmp_path):
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))
    with closing(sqlite3.connect(tmp_path / "s.db")) as db, db:
        dropped = db.execute("DELETE FROM fanwise_state_meta WHERE key LIKE 'seal:%'").rowcount
    assert dropped >= 2
    result = resume(store, squares(tally, range(N)))
    assert result["ys"] == [x * x for x in range(N)]
    assert sum(tally.counts().values()) == N
    assert not store.sealed and len(store.replayed) >= 2
    assert store.looked_up == FIRST  # replayed from the aggregates, not the general path


def test_an_async_fanout_replays_its_finished_children_too(tmp_path):
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))

    @action(reads=["x"], writes=["y"])
    async def square(state):
        tally.hit(state["x"])
        return state.update(y=state["x"] ** 2)

    class AsyncFan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4

        def action(self):
            return square.with_name("square")

        def states(self):
            return (State({"x": x}) for x in range(N))

        async def reduce(self, state, states):
            return state.update(ys=[s["y"] async for s in states])

    store.replayed.clear()
    app = fan_app(AsyncFan(), app_id="p", persister=store, resume=True)
    result = asyncio.run(app.arun(halt_after=["done"]))[2]
    assert result["ys"] == [x * x for x in range(N)]
    assert sum(tally.counts().values()) == N
    assert store.sealed and len(store.replayed) >= 2


def test_children_of_several_actions_are_replayed_with_their_own_entrypoints(tmp_path):
    tally = Tally(tmp_path / "tally")

    def power(name, exponent):
        @action(reads=["x"], writes=["y"])
        def run(state):
            tally.hit(f"{name}:{state['x']}")
            return state.update(y=state["x"] ** exponent)

        return run.with_name(name)

    armed = {"die": True}

    class Fan(MapActionsAndStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4

        def actions(self):
            return [power("square", 2), power("cube", 3)]

        def states(self):
            return [State({"x": x}) for x in range(N // 2)]

        reduce = collecting_ys(dies=armed)

    store = CountingStore(tmp_path / "s.db")
    die_in_reduce(Fan(), store)
    result = resume(store, Fan())
    expected = [x ** 2 for x in range(N // 2)] + [x ** 3 for x in range(N // 2)]
    assert result["ys"] == expected
    assert sum(tally.counts().values()) == 2 * (N // 2)
    assert store.sealed  # a sealed block holding both actions' children


class Opaque:
    def __init__(self, value):
        self.value = value


def test_an_earlier_step_that_cannot_be_read_does_not_fail_the_resume(tmp_path, monkeypatch):
    """Only accepted blocks' latest states are read: an intermediate step holding a type
    whose serde this process lacks is never decoded (the general path never reads it)."""
    from fanwise.core import serde

    monkeypatch.setattr(serde, "_type_dumps", {})
    monkeypatch.setattr(serde, "_type_loads", {})
    serde.register_type(Opaque, lambda o: o.value, Opaque)
    tally = Tally(tmp_path / "tally")

    @action(reads=["x"], writes=["tmp"])
    def first(state):
        return state.update(tmp=Opaque(state["x"]))

    @action(reads=["x", "tmp"], writes=["y", "tmp"])
    def second(state):
        tally.hit(state["x"])
        return state.update(y=state["tmp"].value + 1, tmp=None)

    graph = GraphBuilder().with_actions(first, second).with_transitions(
        ("first", "second")).build()
    armed = {"die": True}

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 4

        def action(self):
            return RunnableGraph(graph, "first", ["second"])

        def states(self):
            return (State({"x": x}) for x in range(N))

        reduce = collecting_ys(dies=armed)

    store = CountingStore(tmp_path / "s.db")
    die_in_reduce(Fan(), store)
    monkeypatch.setattr(serde, "_type_loads", {})  # a process that cannot read an Opaque
    result = resume(store, Fan())
    assert result["ys"] == [x + 1 for x in range(N)]
    assert sum(tally.counts().values()) == N


def test_states_too_large_to_join_are_read_one_by_one(tmp_path, monkeypatch):
    import fanwise.core.persistence.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_JOINED_STATES_MOST", 100)
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))
    result = resume(store, squares(tally, range(N)))
    assert result["ys"] == [x * x for x in range(N)]
    assert sum(tally.counts().values()) == N and store.sealed


def test_a_saved_state_that_cannot_be_read_is_named_by_the_general_path(tmp_path):
    tally = Tally(tmp_path / "tally")
    store = finished(tmp_path, tally, range(N))
    broken = REPLAY_BATCH + 9
    with closing(sqlite3.connect(tmp_path / "s.db")) as db, db:
        db.execute("UPDATE fanwise_state_child SET state = '{not json' WHERE child = ?",
                   [broken])
    with pytest.raises(CorruptStateError, match=expected_child_id("p", 0, broken)):
        resume(store, squares(tally, range(N)))
