"""Child identity: stable sha256 ids per parent step and position, explicit ids, and the
fingerprints that resume matches saved children by (data in them, resources left out)."""

import hashlib
import json

import pytest
from fanout_testing import completed_app_ids, expected_child_id, run_fan
from fanwise.core import ApplicationBuilder, Result, Secret, State, action, expr, serde
from fanwise.core.persistence import SQLitePersister
from fanwise.core.persistence.base import ChildSlot
from fanwise.core.tracking import LocalTrackingClient
from fanwise.parallel import (
    ChildFailedError,
    MapStates,
    SubGraphTask,
    TaskBasedParallelAction,
    child_app_id,
)


def recording_fan(record, fail_once=None, n=3):
    """A MapStates over `n` children that record (lap, position, own app id)."""

    @action(reads=["x", "lap"], writes=["y"])
    def child(state, __context):
        key = (state["lap"], state["x"])
        if fail_once is not None and key in fail_once:
            fail_once.discard(key)
            raise ValueError(f"child {key} fails once")
        record.append((*key, __context.app_id))
        return state.update(y=state["x"] + 100 * state["lap"])

    class Fan(MapStates):
        reads = ["lap"]
        writes = ["lap", "ys"]
        max_concurrency = 1

        def action(self):
            return child

        def states(self, state):
            for x in range(n):
                yield State({"x": x, "lap": state["lap"]})

        def reduce(self, state, states):
            ys = [*state.get("ys", []), [s["y"] for s in states]]
            return state.update(lap=state["lap"] + 1, ys=ys)

    return Fan()


def loop_app(parallel, persister=None, resume=False, rounds=2):
    builder = (
        ApplicationBuilder()
        .with_actions(fan=parallel, done=Result("ys"))
        .with_transitions(("fan", "fan", expr(f"lap < {rounds}")), ("fan", "done"))
        .with_identifiers(app_id="looping")
    )
    if persister is not None:
        builder.with_state_persister(persister)
    if resume:
        return builder.initialize_from(
            persister, default_state={"lap": 0}, default_entrypoint="fan"
        ).build()
    return builder.with_state(lap=0).with_entrypoint("fan").build()


def test_child_ids_are_sha256_of_parent_app_id_parent_sequence_id_and_position():
    record = []

    @action(reads=[], writes=["lap"])
    def start(state):
        return state.update(lap=0)

    app = (
        ApplicationBuilder()
        .with_actions(start, fan=recording_fan(record), done=Result("ys"))
        .with_transitions(("start", "fan"), ("fan", "done"))
        .with_state()
        .with_entrypoint("start")
        .with_identifiers(app_id="parent-app")
        .build()
    )
    app.run(halt_after=["done"])
    for _, position, app_id in record:
        key = f"parent-app\x1f1\x1f{position}".encode()
        assert app_id == hashlib.sha256(key).hexdigest()
        assert app_id == child_app_id("parent-app", 1, position)
    assert sorted(position for _, position, _ in record) == [0, 1, 2]


def test_two_loop_iterations_of_one_parallel_action_give_different_children(tmp_path):
    record = []
    persister = SQLitePersister(tmp_path / "state.db")
    _, result, _ = loop_app(recording_fan(record), persister).run(halt_after=["done"])
    assert result == {"ys": [[0, 1, 2], [100, 101, 102]]}
    first = {app_id for lap, _, app_id in record if lap == 0}
    second = {app_id for lap, _, app_id in record if lap == 1}
    assert first == {expected_child_id("looping", 0, p) for p in range(3)}
    assert second == {expected_child_id("looping", 1, p) for p in range(3)}
    assert completed_app_ids(tmp_path / "state.db") >= first | second


def test_a_rerun_after_a_crash_gives_the_same_children(tmp_path):
    record = []
    persister = SQLitePersister(tmp_path / "state.db")
    crashing = recording_fan(record, fail_once={(1, 1)})
    with pytest.raises(ChildFailedError):
        loop_app(crashing, persister).run(halt_after=["done"])
    before_crash = list(record)
    assert [(r, x) for r, x, _ in before_crash] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    record.clear()
    _, result, _ = loop_app(crashing, persister, resume=True).run(halt_after=["done"])
    assert result == {"ys": [[0, 1, 2], [100, 101, 102]]}
    assert [(r, x) for r, x, _ in record] == [(1, 1), (1, 2)]
    ids = {(r, x): app_id for r, x, app_id in before_crash + record}
    assert ids == {(r, x): expected_child_id("looping", r, x) for r in (0, 1) for x in range(3)}


def test_two_parallel_actions_of_one_app_give_different_children():
    record = []
    app = (
        ApplicationBuilder()
        .with_actions(first=recording_fan(record), second=recording_fan(record), done=Result("ys"))
        .with_transitions(("first", "second"), ("second", "done"))
        .with_state(lap=0)
        .with_entrypoint("first")
        .with_identifiers(app_id="two-fans")
        .build()
    )
    app.run(halt_after=["done"])
    first = {app_id for lap, _, app_id in record if lap == 0}
    second = {app_id for lap, _, app_id in record if lap == 1}
    assert len(first) == len(second) == 3
    assert first.isdisjoint(second)


def test_explicit_application_ids_are_used_and_must_be_unique(tmp_path):
    @action(reads=["x"], writes=["y"])
    def copy_x(state):
        return state.update(y=state["x"])

    class Named(TaskBasedParallelAction):
        reads = ["names"]
        writes = ["ys"]

        def tasks(self, state):
            for x, name in enumerate(state["names"]):
                yield SubGraphTask(action=copy_x, state=State({"x": x}), application_id=name)

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    persister = SQLitePersister(tmp_path / "state.db")
    final = run_fan(Named(), {"names": ["a", "b"]}, app_id="p", persister=persister)
    assert final["ys"] == [0, 1]
    assert completed_app_ids(tmp_path / "state.db") == {"p", "a", "b"}
    with pytest.raises(ValueError, match="'a' is used by tasks 0 and 2"):
        run_fan(Named(), {"names": ["a", "b", "a"]})


# -- fingerprints: what identifies a child's work --------------------------------------------


class Client:
    """An API client: an object, not data. Its default repr holds its memory address, so a
    new one (the next run, another process) never reprs the same."""

    def __init__(self, tally, broken=()):
        self.tally = tally
        self.broken = set(broken)

    def ask(self, x):
        self.tally.hit(x)
        if x in self.broken:
            raise ConnectionError(f"the service dropped request {x}")
        return x * 10


@action(reads=["x"], writes=["y"])
def ask(state, client):
    return state.update(y=client.ask(state["x"]))


class AskAll(MapStates):
    """Six children ask the client given in the run's inputs (one at a time: the order of
    a crash is known)."""

    reads, writes = [], ["ys"]
    max_concurrency = 1

    def action(self):
        return ask

    def states(self):
        return [State({"x": x}) for x in range(6)]

    def reduce(self, state, states):
        return state.update(ys=[s["y"] for s in states])


class AskAllWithResource(AskAll):
    resource_inputs = ("client",)


class AskAllBound(AskAll):
    """The client is bound to the child action instead of passed as an input."""

    def __init__(self, client):
        self.client = client

    def action(self):
        return ask.bind(client=self.client)


def crash_then_resume(tmp_path, tally, make_fan, via_inputs):
    """Run with a client that fails child 3, then resume with a new client; the final ys."""
    persister = SQLitePersister(tmp_path / "state.db")
    first, second = Client(tally, broken={3}), Client(tally)
    assert repr(first) != repr(second)
    with pytest.raises(ChildFailedError, match="dropped request 3"):
        run_fan(make_fan(first), app_id="asking", persister=persister, resume=True,
                inputs={"client": first} if via_inputs else None)
    assert tally.counts() == {"0": 1, "1": 1, "2": 1, "3": 1}
    final = run_fan(make_fan(second), app_id="asking", persister=persister, resume=True,
                    inputs={"client": second} if via_inputs else None)
    return final["ys"]


def test_a_resource_input_without_a_stable_repr_does_not_rerun_finished_children(
    tmp_path, tally
):
    ys = crash_then_resume(tmp_path, tally, lambda client: AskAllWithResource(), via_inputs=True)

    assert ys == [0, 10, 20, 30, 40, 50]
    assert tally.counts() == {"0": 1, "1": 1, "2": 1, "3": 2, "4": 1, "5": 1}


def test_a_client_bound_to_the_child_action_does_not_rerun_finished_children(tmp_path, tally):
    ys = crash_then_resume(tmp_path, tally, AskAllBound, via_inputs=False)

    assert ys == [0, 10, 20, 30, 40, 50]
    assert tally.counts() == {"0": 1, "1": 1, "2": 1, "3": 2, "4": 1, "5": 1}


def test_a_non_data_input_is_fine_without_a_persister(tally):
    final = run_fan(AskAll(), inputs={"client": Client(tally)})

    assert final["ys"] == [0, 10, 20, 30, 40, 50]


class Prompt:
    """Data of a registered type: equal prompts are the same work, whatever their address."""

    def __init__(self, text):
        self.text = text


serde.register_type(Prompt, lambda p: p.text, Prompt)


def test_an_input_of_a_registered_type_counts_by_its_stored_value(tmp_path, tally):
    armed = {3}

    @action(reads=["x"], writes=["y"])
    def reply(state, prompt):
        tally.hit(state["x"])
        if state["x"] in armed:
            armed.discard(state["x"])
            raise ConnectionError(f"the model did not answer {state['x']}")
        return state.update(y=f"{prompt.text}:{state['x']}")

    class ReplyAll(AskAll):
        def action(self):
            return reply

    persister = SQLitePersister(tmp_path / "state.db")
    with pytest.raises(ChildFailedError, match="did not answer 3"):
        run_fan(ReplyAll(), app_id="prompts", persister=persister, resume=True,
                inputs={"prompt": Prompt("hi")})
    final = run_fan(ReplyAll(), app_id="prompts", persister=persister, resume=True,
                    inputs={"prompt": Prompt("hi")})

    assert final["ys"] == [f"hi:{x}" for x in range(6)]
    assert tally.counts() == {"0": 1, "1": 1, "2": 1, "3": 2, "4": 1, "5": 1}


# -- shared read-only data --------------------------------------------------------------------

CORPUS = "the quick brown fox jumps over the lazy dog " * (5 * 2**20 // 44)
"""About 5 MB of read-only text that eight children search."""
WORDS = ["quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cat"]
SMALL = 256 * 1024
"""Bytes a store may use for eight small children (one copy of the corpus is 5 MB)."""


@action(reads=["word"], writes=["hits"])
def search(state, corpus):
    return state.update(hits=corpus.count(state["word"]))


class SearchAll(MapStates):
    reads, writes = [], ["hits"]
    resource_inputs = ("corpus",)

    def action(self):
        return search

    def states(self):
        return [State({"word": word}) for word in WORDS]

    def reduce(self, state, states):
        return state.update(hits=[s["hits"] for s in states])


class SearchAllBound(SearchAll):
    resource_inputs = ()

    def action(self):
        return search.bind(corpus=CORPUS)


def bytes_under(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_in(tmp_path):
    """A persister on its own folder, so that every byte it writes (WAL included) is counted."""
    (tmp_path / "db").mkdir()
    return SQLitePersister(tmp_path / "db" / "state.db")


def expected_hits():
    return [CORPUS.count(word) for word in WORDS]


def test_eight_children_sharing_a_5_mb_resource_input_keep_the_store_small(tmp_path):
    persister = store_in(tmp_path)

    final = run_fan(SearchAll(), app_id="search", persister=persister,
                    inputs={"corpus": CORPUS})

    assert final["hits"] == expected_hits()
    assert len(completed_app_ids(tmp_path / "db" / "state.db")) == 1 + len(WORDS)
    assert bytes_under(tmp_path / "db") < SMALL


def test_eight_children_sharing_a_bound_5_mb_corpus_keep_store_and_tracking_small(tmp_path):
    persister = store_in(tmp_path)
    tracker = LocalTrackingClient("search", storage_dir=tmp_path / "tracking")

    final = run_fan(SearchAllBound(), app_id="search", persister=persister, tracker=tracker)

    assert final["hits"] == expected_hits()
    assert bytes_under(tmp_path / "db") < SMALL
    assert bytes_under(tmp_path / "tracking") < SMALL


def test_a_resource_input_stays_out_of_every_childs_tracking_log_with_redact(tmp_path):
    tracker = LocalTrackingClient("search", storage_dir=tmp_path / "tracking",
                                  redact=["corpus"])

    final = run_fan(SearchAll(), app_id="search", tracker=tracker, inputs={"corpus": CORPUS})

    assert final["hits"] == expected_hits()
    assert bytes_under(tmp_path / "tracking") < SMALL


def test_resource_inputs_stay_out_of_the_childrens_tracking_logs_without_redact(tmp_path):
    tracker = LocalTrackingClient("search", storage_dir=tmp_path / "tracking")

    final = run_fan(SearchAll(), app_id="search", tracker=tracker, inputs={"corpus": CORPUS})

    assert final["hits"] == expected_hits()
    # the parent's own step log holds its input once; no child's log holds a copy
    assert bytes_under(tmp_path / "tracking") < len(CORPUS) + SMALL


def test_a_child_saved_before_inputs_were_encoded_by_serde_is_still_resumed(tmp_path, tally):
    @action(reads=["x"], writes=["y"])
    def measure(state, unit):
        tally.hit(state["x"])
        return state.update(y=f"{state['x']}{unit}")

    class MeasureAll(AskAll):
        def action(self):
            return measure

    def compact(value):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    # child 0 as saved before: inputs encoded by `json` with repr for what is not JSON
    before = f'["measure",{compact({"x": 0})},{compact({"unit": "cm"})}]'
    persister = SQLitePersister(tmp_path / "state.db")
    persister.save(None, expected_child_id("old", 0, 0), 0, "measure",
                   State({"x": 0, "y": "0cm"}), "completed",
                   meta={"fingerprint": hashlib.sha256(before.encode()).hexdigest()[:32]},
                   child_of=ChildSlot("old", 0, 0))

    final = run_fan(MeasureAll(), app_id="old", persister=persister, inputs={"unit": "cm"})

    assert final["ys"] == [f"{x}cm" for x in range(6)]
    assert "0" not in tally.counts() and tally.counts()["1"] == 1


def test_a_secret_input_rotated_between_runs_does_not_rerun_finished_children(tmp_path, tally):
    armed = {3}

    @action(reads=["x"], writes=["y"])
    def call(state, api_key):
        tally.hit(state["x"])
        if state["x"] in armed:
            armed.discard(state["x"])
            raise ConnectionError(f"the service dropped request {state['x']}")
        return state.update(y=f"{state['x']} with {api_key.get()}")

    class CallAll(AskAll):
        def action(self):
            return call

    persister = SQLitePersister(tmp_path / "state.db")
    with pytest.raises(ChildFailedError, match="dropped request 3"):
        run_fan(CallAll(), app_id="keys", persister=persister, resume=True,
                inputs={"api_key": Secret("key-1")})
    final = run_fan(CallAll(), app_id="keys", persister=persister, resume=True,
                    inputs={"api_key": Secret("key-2")})

    assert final["ys"] == [f"{x} with key-{1 if x < 3 else 2}" for x in range(6)]
    assert tally.counts() == {"0": 1, "1": 1, "2": 1, "3": 2, "4": 1, "5": 1}


class _Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_the_columns_of_many_payloads_at_once_are_those_of_each_joined(monkeypatch):
    """A replay checks a block's seal against texts of many tasks at once: they must be
    the very texts the planning run hashed child by child, whatever the tasks hold."""
    from fanwise.parallel._child_ids import (
        calls_text,
        payload,
        repeated_call_text,
        states_text,
    )

    monkeypatch.setattr(serde, "_type_dumps", {})
    monkeypatch.setattr(serde, "_type_loads", {})
    monkeypatch.setattr(serde, "_field_serdes", {})
    serde.register_type(_Point, lambda p: [p.x, p.y], lambda v: _Point(*v))
    serde.register_field("when", lambda d: f"day {d}", lambda v: int(v[4:]))
    tasks = [
        (State({"x": 1}), {}, "child"),
        (State({"b": [1, 2.5, None, True], "a": {"z": "é", "y": "\x00"}}), {}, "child"),
        (State({"p": _Point(1, 2), "when": 7}), {"k": [_Point(3, 4)], "a": 1}, "other"),
        (State({"mine": {serde.TYPE_MARKER: "not ours", "v": 1}}), {"n": float("nan")}, "c"),
        (State({}), {}, 'with "quotes"'),
    ]
    parts = [payload(*task) for task in tasks]
    assert states_text([state for state, _, _ in tasks]) == (
        "[" + ",".join(p.state for p in parts) + "]")
    assert calls_text([(entrypoint, inputs) for _, inputs, entrypoint in tasks]) == (
        "[" + ",".join(f"[{p.entrypoint},{p.inputs}]" for p in parts) + "]")
    plain = payload(State({"x": 1}), {}, "child")
    assert repeated_call_text("child", 3) == "[" + ",".join(
        [f"[{plain.entrypoint},{plain.inputs}]"] * 3) + "]"
    assert states_text([State({"bad": object()})]) is None
    assert calls_text([("child", {"bad": object()})]) is None
    # inputs named by the marker key: their per-child text escapes values only, so the
    # one-pass text (which would escape the dict) is not offered
    assert calls_text([("child", {serde.TYPE_MARKER: "fanwise:dict", "value": 1})]) is None


def test_ids_of_a_range_are_the_ids_of_each_position():
    from fanwise.parallel._child_ids import child_app_ids

    assert child_app_ids("app", 3, 10, 14) == [child_app_id("app", 3, p) for p in range(10, 14)]
