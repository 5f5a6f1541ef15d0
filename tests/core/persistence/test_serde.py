import json
from datetime import datetime

import pytest
from fanwise.core import serde
from fanwise.core.errors import StateSerialisationError
from fanwise.core.state import State


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class Opaque:
    pass


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serde, "_type_dumps", {})
    monkeypatch.setattr(serde, "_type_loads", {})
    monkeypatch.setattr(serde, "_field_serdes", {})


def register_point() -> None:
    serde.register_type(Point, lambda p: [p.x, p.y], lambda v: Point(*v))


def test_plain_state_round_trips_through_json_text():
    state = State({"n": 1, "f": 0.5, "s": "é", "none": None, "nested": {"l": [1, {"a": True}]}})

    assert serde.loads_state(serde.dumps_state(state)) == state


def test_custom_type_round_trips_at_top_level_and_inside_lists_and_dicts():
    register_point()
    state = State({"p": Point(1, 2), "many": [Point(3, 4), {"deep": Point(5, 6)}]})

    loaded = serde.loads_state(serde.dumps_state(state))

    assert loaded == state
    assert isinstance(loaded["many"][1]["deep"], Point)


def test_custom_type_is_stored_as_marker_dict_naming_the_type():
    register_point()

    data = serde.serialise_state(State({"p": Point(1, 2)}))

    assert data == {"p": {"__fanwise_type__": f"{__name__}.Point", "value": [1, 2]}}
    assert serde.deserialise_state(data) == State({"p": Point(1, 2)})


def test_subclass_of_registered_type_uses_its_serde():
    register_point()

    class Point3(Point):
        pass

    loaded = serde.loads_state(serde.dumps_state(State({"p": Point3(1, 2)})))

    assert loaded["p"] == Point(1, 2)


def test_field_serde_applies_to_that_field_only():
    serde.register_field("when", lambda d: d.isoformat(), datetime.fromisoformat)
    when = datetime(2024, 5, 1, 12, 30)
    state = State({"when": when, "other": "2024-05-01T12:30:00"})

    text = serde.dumps_state(state)
    loaded = serde.loads_state(text)

    assert json.loads(text)["when"] == "2024-05-01T12:30:00"
    assert loaded["when"] == when
    assert loaded["other"] == "2024-05-01T12:30:00"


def test_unserialisable_value_error_names_field_type_and_how_to_register():
    with pytest.raises(StateSerialisationError) as error:
        serde.dumps_state(State({"ok": 1, "blob": Opaque()}))

    message = str(error.value)
    assert "'blob'" in message
    assert f"{__name__}.Opaque" in message
    assert "register_type" in message and "register_field('blob'" in message


def test_unserialisable_value_nested_in_a_field_names_that_field():
    with pytest.raises(StateSerialisationError, match="'outer'"):
        serde.serialise_state(State({"fine": [1], "outer": {"list": [1, {2, 3}]}}))


def test_circular_value_names_its_field():
    loop: list = []
    loop.append(loop)

    with pytest.raises(StateSerialisationError, match="'loop'"):
        serde.dumps_state(State({"loop": loop}))


def test_failing_field_dump_names_the_field():
    serde.register_field("bad", lambda v: 1 / 0, lambda v: v)

    with pytest.raises(StateSerialisationError, match="'bad'"):
        serde.dumps_state(State({"bad": 1}))


def test_lenient_mode_replaces_unserialisable_values_by_repr():
    opaque = Opaque()
    state = State({"n": 1, "blob": opaque, "nested": [opaque], "keys": {(1, 2): "tuple key"}})

    data = serde.serialise_state(state, strict=False)

    assert data["n"] == 1
    assert data["blob"] == repr(opaque)
    assert data["nested"] == [repr(opaque)]
    assert data["keys"] == repr({(1, 2): "tuple key"})


def test_loading_unregistered_custom_type_names_field_and_type():
    register_point()
    text = serde.dumps_state(State({"p": Point(1, 2)}))
    serde._type_loads.clear()

    with pytest.raises(StateSerialisationError, match=rf"'p'.*{__name__}\.Point"):
        serde.loads_state(text)


def test_serialise_state_returns_a_detached_json_able_dict():
    items = [1, 2]
    data = serde.serialise_state(State({"items": items}))
    items.append(3)

    assert data == {"items": [1, 2]}
    assert json.loads(json.dumps(data)) == data


def test_non_object_json_is_rejected():
    with pytest.raises(ValueError, match="object"):
        serde.loads_state("[1, 2]")


# -- a user dict that holds the marker key -----------------------------------------------


MARKED = {serde.TYPE_MARKER: "tool_call", "args": {"q": "weather"}}
"""JSON an LLM could return: a dict that happens to hold the serde's marker key."""


@pytest.mark.parametrize(
    "value",
    [
        MARKED,
        {serde.TYPE_MARKER: f"{__name__}.Point", "value": [1, 2]},
        {serde.TYPE_MARKER: [1, 2], "value": None},
        {serde.TYPE_MARKER: serde.TYPE_MARKER},
        [{"inner": MARKED}, MARKED],
        {serde.TYPE_MARKER: {serde.TYPE_MARKER: "nested"}},
    ],
    ids=["llm-json", "names-a-registered-type", "non-string-marker", "marker-as-value",
         "nested-in-lists", "marker-inside-marker"],
)
def test_a_user_dict_holding_the_marker_key_loads_back_as_itself(value):
    register_point()
    state = State({"reply": value, "p": Point(1, 2)})

    loaded = serde.loads_state(serde.dumps_state(state))

    assert loaded == state
    assert loaded["reply"] == value and type(loaded["p"]) is Point


def test_a_marker_dict_inside_a_registered_types_stored_value_loads_back():
    serde.register_type(Opaque, lambda o: {"meta": MARKED}, lambda v: v["meta"])

    loaded = serde.loads_state(serde.dumps_state(State({"o": Opaque()})))

    assert loaded["o"] == MARKED


def test_equal_states_holding_the_marker_key_give_the_same_sorted_text():
    first = State({"b": dict(MARKED), "a": 1})
    second = State({"a": 1, "b": dict(reversed(MARKED.items()))})

    assert serde.dumps_state(first, sort_keys=True) == serde.dumps_state(second, sort_keys=True)


def test_text_written_before_the_escape_still_loads():
    register_point()
    marker = json.dumps({serde.TYPE_MARKER: f"{__name__}.Point", "value": [1, 2]})
    old = '{"p":' + marker + ',"n":[1,{"a":"x"}]}'

    assert serde.loads_state(old) == State({"p": Point(1, 2), "n": [1, {"a": "x"}]})


def test_an_old_row_with_a_user_dict_that_is_not_shaped_like_a_marker_loads_as_that_dict():
    old = '{"reply":{"__fanwise_type__":"tool_call","args":{"q":"weather"}}}'

    assert serde.loads_state(old) == State({"reply": MARKED})


def test_a_user_marker_dict_round_trips_through_sqlite_and_the_app_resumes(tmp_path):
    from fanwise.core import ApplicationBuilder, action
    from fanwise.core.persistence import SQLitePersister

    @action(reads=[], writes=["reply"])
    def ask(state):
        return state.update(reply=MARKED)

    @action(reads=["reply"], writes=["tool"])
    def use(state):
        return state.update(tool=state["reply"][serde.TYPE_MARKER])

    def build():
        persister = SQLitePersister(tmp_path / "state.db")
        return (
            ApplicationBuilder()
            .with_actions(ask, use)
            .with_transitions(("ask", "use"))
            .with_identifiers(app_id="llm")
            .with_state_persister(persister)
            .initialize_from(persister, default_entrypoint="ask")
            .build()
        )

    with build() as app:
        app.run(halt_after=["ask"])
    assert SQLitePersister(tmp_path / "state.db").load(None, "llm")["state"]["reply"] == MARKED

    with build() as resumed:
        assert resumed.get_next_action().name == "use"
        *_, state = resumed.run(halt_after=["use"])
    assert state["reply"] == MARKED and state["tool"] == "tool_call"


# -- deeply nested values ------------------------------------------------------------------


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"child": value}
    return value


def test_a_value_nested_deeper_than_json_can_encode_names_its_field():
    state = State({"ok": 1, "tree": nested(5000)})

    with pytest.raises(StateSerialisationError, match=r"state field 'tree' is nested too deeply"):
        serde.dumps_state(state)


def test_lenient_mode_never_raises_for_a_value_nested_too_deeply():
    data = serde.serialise_state(State({"ok": 1, "tree": nested(5000)}), strict=False)

    assert data["ok"] == 1
    assert isinstance(data["tree"], str) and "nested too deeply" in data["tree"]


def test_lenient_mode_survives_a_repr_that_raises():
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    data = serde.serialise_state(State({"h": Hostile(), "n": 1}), strict=False)

    assert data["n"] == 1 and "Hostile" in data["h"]
