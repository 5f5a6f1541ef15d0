"""`burr.core.state` as fanwise.core.state: State's methods, errors and serde hooks as
Burr 0.43 documents them."""

import dataclasses
import json

import pytest
from fanwise.core.state import (
    AppendFields,
    DeleteField,
    ExtendFields,
    IncrementFields,
    SetFields,
    State,
    StateDelta,
    register_field_serde,
)


def test_append_to_a_field_that_is_not_a_list_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'count'"):
        State({"count": 1}).append(count=2)


def test_extend_of_a_field_that_is_not_a_list_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'name'"):
        State({"name": "abc"}).extend(name=["d"])


def test_increment_of_a_field_that_is_not_a_number_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'label'"):
        State({"label": "a"}).increment(label=1)


def test_append_extend_and_increment_create_missing_fields():
    state = State().append(a=1).extend(b=[2, 3]).increment(c=4)

    assert state.get_all() == {"a": [1], "b": [2, 3], "c": 4}


def test_update_and_append_leave_the_original_state_and_its_lists_alone():
    items = [1]
    state = State({"items": items})

    state.append(items=2).update(other=1)

    assert state.get_all() == {"items": [1]}
    assert items == [1]


def test_keys_is_a_list_of_field_names_in_insertion_order():
    keys = State({"b": 1, "a": 2}).update(c=3).keys()

    assert keys == ["b", "a", "c"]
    assert isinstance(keys, list)


def test_keys_also_takes_the_set_operators_of_a_keys_view():
    keys = State({"a": 1, "b": 2}).keys()

    assert keys & {"a", "z"} == {"a"}
    assert {"b", "z"} - keys == {"z"}
    assert keys | ["c"] == {"a", "b", "c"}


def test_state_is_a_mapping_with_len_iteration_items_and_get():
    state = State({"a": 1, "b": 2})

    assert len(state) == 2
    assert list(state) == ["a", "b"]
    assert dict(state.items()) == {"a": 1, "b": 2}
    assert state.get("missing", "default") == "default"
    assert "a" in state and "missing" not in state


def test_get_all_is_a_copy():
    state = State({"a": 1})
    fields = state.get_all()
    fields["a"] = 2

    assert state["a"] == 1


def test_wipe_delete_removes_named_fields_and_keep_removes_the_others():
    state = State({"a": 1, "b": 2, "c": 3})

    assert state.wipe(delete=["a"]).get_all() == {"b": 2, "c": 3}
    assert state.wipe(keep=["a"]).get_all() == {"a": 1}


def test_wipe_with_both_delete_and_keep_is_a_value_error():
    with pytest.raises(ValueError):
        State({"a": 1}).wipe(delete=["a"], keep=["a"])


def test_subset_skips_missing_fields_unless_asked_not_to():
    state = State({"a": 1, "b": 2})

    assert state.subset("a", "missing").get_all() == {"a": 1}
    with pytest.raises(KeyError, match="missing"):
        state.subset("a", "missing", ignore_missing=False)


def test_merge_takes_the_other_states_values():
    merged = State({"a": 1, "b": 1}).merge(State({"b": 2, "c": 3}))

    assert merged.get_all() == {"a": 1, "b": 2, "c": 3}


def test_missing_field_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="'nope'"):
        State({"a": 1})["nope"]


def test_serialize_gives_json_data_and_deserialize_reads_it_back():
    state = State({"n": 1, "f": 0.5, "s": "x", "b": True, "none": None, "nested": {"l": [1, {}]}})

    data = state.serialize()

    assert json.loads(json.dumps(data)) == data
    assert State.deserialize(data) == state


def test_serialize_turns_a_value_with_no_serde_into_its_string():
    class Opaque:
        def __str__(self):
            return "opaque!"

    assert State({"o": Opaque()}).serialize() == {"o": "opaque!"}


def test_register_field_serde_controls_one_field_and_gets_the_serde_kwargs():
    seen = []

    def dump(value, **kwargs):
        seen.append(("dump", kwargs))
        return {"items": sorted(value)}

    def load(value, **kwargs):
        seen.append(("load", kwargs))
        return set(value["items"])

    register_field_serde("burr_compat_state_tags", dump, load)
    state = State({"burr_compat_state_tags": {"b", "a"}, "other": 1})

    data = state.serialize(flavour="x")
    loaded = State.deserialize(data, flavour="y")

    assert data == {"burr_compat_state_tags": {"items": ["a", "b"]}, "other": 1}
    assert loaded == state
    assert seen == [("dump", {"flavour": "x"}), ("load", {"flavour": "y"})]


@pytest.mark.parametrize("which", ["serializer", "deserializer"])
def test_register_field_serde_needs_kwargs_on_both_functions(which):
    def with_kwargs(value, **kwargs):
        return value

    def without_kwargs(value):
        return value

    functions = {"serializer": with_kwargs, "deserializer": with_kwargs, which: without_kwargs}

    with pytest.raises(ValueError, match=rf"(?i){which}.*'without_kwargs'.*\*\*kwargs"):
        register_field_serde("burr_compat_state_strict", **functions)


def test_a_field_serde_that_raises_is_a_value_error_naming_the_field():
    def dump(value, **kwargs):
        raise RuntimeError("cannot")

    register_field_serde("burr_compat_state_broken", dump, lambda value, **kwargs: value)

    with pytest.raises(ValueError, match="'burr_compat_state_broken'.*cannot"):
        State({"burr_compat_state_broken": 1}).serialize()


def test_apply_operation_applies_a_users_delta_to_deep_copies_of_what_it_reads():
    @dataclasses.dataclass
    class Push(StateDelta):
        """Appends in place to the list it reads."""

        key: str
        item: int

        @classmethod
        def name(cls):
            return "push"

        def reads(self):
            return [self.key]

        def writes(self):
            return [self.key]

        def apply_mutate(self, inputs):
            inputs[self.key].append(self.item)

    items = [1]
    state = State({"items": items, "other": {"x": 1}})

    pushed = state.apply_operation(Push("items", 2))

    assert pushed["items"] == [1, 2]
    assert items == [1] and state["items"] == [1]
    assert pushed["other"] is state["other"]  # not read: shared, as in Burr
    assert Push("items", 2).base_serialize() == {
        "name": "push", "operation": {"key": "items", "item": 2}
    }


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (SetFields({"a": 2}), {"a": 2, "items": [1]}),
        (AppendFields({"items": 2}), {"a": 1, "items": [1, 2]}),
        (ExtendFields({"items": [2, 3]}), {"a": 1, "items": [1, 2, 3]}),
        (IncrementFields({"a": 5}), {"a": 6, "items": [1]}),
        (DeleteField(["a", "missing"]), {"items": [1]}),
    ],
    ids=["set", "append", "extend", "increment", "delete"],
)
def test_burrs_built_in_deltas_apply_as_the_state_methods_do(delta, expected):
    state = State({"a": 1, "items": [1]})

    assert state.apply_operation(delta).get_all() == expected
    assert state.get_all() == {"a": 1, "items": [1]}
    assert type(delta).deserialize(delta.serialize()) == delta


def test_a_built_in_delta_on_the_wrong_kind_of_field_is_a_value_error():
    with pytest.raises(ValueError, match="'a'"):
        State({"a": 1}).apply_operation(AppendFields({"a": 2}))


# -- against Burr 0.43 itself (apache-burr is in the dev extra) ---------------------------

OPERATIONS = {
    "update": lambda S: S({"a": 1}).update(a=2, b=3),
    "append": lambda S: S({"items": [1]}).append(items=2, fresh="x"),
    "extend": lambda S: S({"items": [1]}).extend(items=[2, 3], fresh=["y"]),
    "increment": lambda S: S({"n": 1}).increment(n=2, fresh=5),
    "increment-missing-non-number": lambda S: S({}).increment(label="x"),
    "wipe-delete": lambda S: S({"a": 1, "b": 2}).wipe(delete=["a", "missing"]),
    "wipe-keep": lambda S: S({"a": 1, "b": 2}).wipe(keep=["b", "missing"]),
    "subset": lambda S: S({"a": 1, "b": 2}).subset("a", "missing"),
    "merge": lambda S: S({"a": 1, "b": 1}).merge(S({"b": 2})),
    "append-to-int": lambda S: S({"a": 1}).append(a=2),
    "append-to-tuple": lambda S: S({"a": (1,)}).append(a=2),
    "extend-a-str": lambda S: S({"a": "abc"}).extend(a=["d"]),
    "increment-a-str": lambda S: S({"a": "x"}).increment(a=1),
    "wipe-both": lambda S: S({"a": 1}).wipe(delete=["a"], keep=["a"]),
    "subset-strict": lambda S: S({"a": 1}).subset("a", "b", ignore_missing=False),
    "missing-field": lambda S: S({"a": 1})["b"],
}


def outcome(operation, state_class):
    try:
        return "ok", dict(operation(state_class))
    except Exception as exc:
        return "raised", next(
            kind for kind in (KeyError, ValueError, TypeError) if isinstance(exc, kind)
        )


@pytest.mark.parametrize("name", OPERATIONS)
def test_each_operation_gives_what_burrs_state_gives(name):
    from burr.core.state import State as BurrState

    assert outcome(OPERATIONS[name], State) == outcome(OPERATIONS[name], BurrState)


def test_keys_and_serialize_of_plain_data_are_burrs():
    from burr.core.state import State as BurrState

    fields = {"n": 1, "s": "x", "none": None, "nested": {"l": [1, {"b": False}]}}

    assert State(fields).keys() == BurrState(fields).keys()
    assert State(fields).serialize() == BurrState(fields).serialize()
    assert State.deserialize(BurrState(fields).serialize()) == State(fields)
