"""`burr.core.serde` as fanwise.core.serde: singledispatch serializers, string-keyed
deserializers, `KEY`, namespaced kwargs; and what persisters do with them."""

import json

import pytest
from fanwise.core import serde
from fanwise.core.persistence import InMemoryPersister, SQLitePersister
from fanwise.core.state import State


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents


@serde.serialize.register(Money)
def serialize_money(value: Money, money_kwargs: dict | None = None, **kwargs) -> dict:
    scale = (money_kwargs or {}).get("scale", 1)
    return {serde.KEY: "burr_compat.money", "cents": value.cents * scale}


@serde.deserializer.register("burr_compat.money")
def deserialize_money(value: dict, money_kwargs: dict | None = None, **kwargs) -> Money:
    scale = (money_kwargs or {}).get("scale", 1)
    return Money(value["cents"] // scale)


class Unregistered:
    pass


def test_key_is_burrs():
    assert serde.KEY == "__burr_serde__"


def test_serialize_keeps_primitives_and_walks_dicts_and_lists():
    value = {"a": [1, 2.5, "s", True, None], "b": {"c": [{"d": 1}]}}

    assert serde.serialize(value) == value
    assert serde.deserialize(value) == value


def test_serialize_falls_back_to_str_for_a_type_without_a_serializer():
    assert serde.serialize(Unregistered()).startswith("<")
    assert serde.serialize([Unregistered])[0] == str(Unregistered)


def test_registered_serializer_output_names_its_deserializer_under_key():
    data = serde.serialize({"price": Money(5), "many": [Money(1)]})

    assert data == {
        "price": {serde.KEY: "burr_compat.money", "cents": 5},
        "many": [{serde.KEY: "burr_compat.money", "cents": 1}],
    }
    assert serde.deserialize(data) == {"price": Money(5), "many": [Money(1)]}


def test_namespaced_kwargs_reach_the_serializer_and_deserializer():
    data = serde.serialize(Money(5), money_kwargs={"scale": 100})

    assert data["cents"] == 500
    assert serde.deserialize(data, money_kwargs={"scale": 100}) == Money(5)


def test_state_serialize_uses_registered_serializers_and_kwargs():
    state = State({"price": Money(7), "n": 1})

    data = state.serialize(money_kwargs={"scale": 10})

    assert json.loads(json.dumps(data)) == data
    assert data["price"]["cents"] == 70
    assert State.deserialize(data, money_kwargs={"scale": 10}) == state


def test_unknown_deserializer_key_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'nobody-registered-this'"):
        serde.deserialize({serde.KEY: "nobody-registered-this"})


def test_string_dispatch_calls_the_function_registered_for_a_key():
    dispatch = serde.StringDispatch()

    @dispatch.register("double")
    def double(value, **kwargs):
        return value * 2

    assert dispatch.call("double", 21) == 42
    assert dispatch.func_map == {"double": double}
    with pytest.raises(ValueError, match="'triple'"):
        dispatch.call("triple", 1)


def test_register_type_types_go_through_serialize_and_deserialize_too():
    class Celsius:
        def __init__(self, degrees: float) -> None:
            self.degrees = degrees

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Celsius) and other.degrees == self.degrees

    serde.register_type(Celsius, lambda c: c.degrees, Celsius)

    data = serde.serialize({"t": Celsius(21.5)})

    assert json.loads(json.dumps(data)) == data
    assert serde.deserialize(data) == {"t": Celsius(21.5)}


def test_a_serialize_registration_wins_over_register_type_everywhere(tmp_path):
    class Both:
        def __init__(self, via: str) -> None:
            self.via = via

    serde.register_type(Both, lambda both: "x", lambda stored: Both("register_type"))
    serde.serialize.register(Both)(lambda both, **kwargs: {serde.KEY: "burr_compat.both"})
    serde.deserializer.register("burr_compat.both")(lambda value, **kwargs: Both("serialize"))
    persister = SQLitePersister(tmp_path / "state.db")
    persister.save(None, "app", 0, "start", State({"b": Both("live")}), "completed")

    assert State.deserialize(State({"b": Both("live")}).serialize())["b"].via == "serialize"
    assert persister.load(None, "app")["state"]["b"].via == "serialize"


@pytest.fixture(params=["memory", "sqlite"])
def persister(request, tmp_path):
    if request.param == "memory":
        return InMemoryPersister()
    return SQLitePersister(tmp_path / "state.db", serde_kwargs={"money_kwargs": {"scale": 3}})


def test_persisters_store_values_of_registered_serializers(persister):
    state = State({"price": Money(4), "nested": {"list": [Money(2)]}})

    persister.save(None, "app", 0, "start", state, "completed")

    assert persister.load(None, "app")["state"] == state


def test_sqlite_serde_kwargs_reach_the_serializers(tmp_path):
    path = tmp_path / "state.db"
    SQLitePersister(path, "t", {"money_kwargs": {"scale": 3}}).save(
        None, "app", 0, "start", State({"price": Money(4)}), "completed"
    )

    assert SQLitePersister(path, "t", {"money_kwargs": {"scale": 3}}).load(None, "app")[
        "state"
    ] == State({"price": Money(4)})
    # read with other kwargs, the stored 12 cents are scaled by them
    assert SQLitePersister(path, "t").load(None, "app")["state"]["price"] == Money(12)


def test_a_users_dict_that_holds_key_is_stored_as_itself(persister):
    # only what a serializer produced is dispatched on load: a user's dict is data
    state = State({"reply": {serde.KEY: "burr_compat.money", "cents": "not a number"}})

    persister.save(None, "app", 0, "start", state, "completed")

    assert persister.load(None, "app")["state"] == state


def test_persisters_still_refuse_a_value_no_serde_covers_naming_the_field(persister):
    with pytest.raises(TypeError, match="'blob'"):
        persister.save(None, "app", 0, "start", State({"blob": Unregistered()}), "completed")
    assert persister.load(None, "app") is None


# -- against Burr 0.43 itself (apache-burr is in the dev extra) ---------------------------


def test_the_same_registrations_give_burrs_serialized_form_and_read_burrs_back():
    from burr.core import serde as burr_serde
    from burr.core.state import State as BurrState

    burr_serde.serialize.register(Money)(serialize_money)
    burr_serde.deserializer.register("burr_compat.money")(deserialize_money)
    fields = {"price": Money(3), "prices": [Money(1), {"deep": Money(2)}], "n": 1}
    kwargs = {"money_kwargs": {"scale": 10}}

    burrs = BurrState(fields).serialize(**kwargs)

    assert State(fields).serialize(**kwargs) == burrs
    assert State.deserialize(burrs, **kwargs) == State(fields)
    assert dict(BurrState.deserialize(State(fields).serialize(**kwargs), **kwargs)) == fields
