import pickle

import cloudpickle
import pytest
from fanwise.core import State


def test_state_copies_its_initial_mapping():
    initial = {"a": 1}
    state = State(initial)
    initial["a"] = 2
    initial["b"] = 3
    assert state.get_all() == {"a": 1}


def test_state_without_initial_mapping_is_empty():
    assert State().get_all() == {}
    assert State(None).get_all() == {}
    assert len(State()) == 0


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update(a=10),
        lambda s: s.append(items=3),
        lambda s: s.extend(items=[3, 4]),
        lambda s: s.increment(a=1),
        lambda s: s.wipe(delete=["a"]),
        lambda s: s.wipe(keep=["a"]),
        lambda s: s.merge({"a": 5}),
        lambda s: s.subset("a"),
    ],
    ids=["update", "append", "extend", "increment", "wipe-delete", "wipe-keep", "merge", "subset"],
)
def test_every_method_returns_a_new_state_and_leaves_the_original_untouched(change):
    items = [1, 2]
    state = State({"a": 1, "items": items, "other": "x"})
    changed = change(state)
    assert isinstance(changed, State)
    assert changed is not state
    assert state.get_all() == {"a": 1, "items": [1, 2], "other": "x"}
    assert state["items"] is items
    assert items == [1, 2]


def test_state_rejects_item_assignment_and_deletion():
    state = State({"a": 1})
    with pytest.raises(TypeError):
        state["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        del state["a"]  # type: ignore[attr-defined]
    assert state["a"] == 1


def test_update_sets_and_replaces_fields():
    state = State({"a": 1}).update(a=2, b=3)
    assert state.get_all() == {"a": 2, "b": 3}


def test_append_adds_one_item_and_creates_missing_list():
    state = State({"items": [1]}).append(items=2, fresh="x")
    assert state["items"] == [1, 2]
    assert state["fresh"] == ["x"]


def test_append_to_a_non_list_field_names_the_field():
    with pytest.raises(TypeError, match="'count'"):
        State({"count": 1}).append(count=2)


def test_extend_adds_every_item_and_creates_missing_list():
    state = State({"items": [1]}).extend(items=(2, 3), fresh=iter(["x", "y"]))
    assert state["items"] == [1, 2, 3]
    assert state["fresh"] == ["x", "y"]


def test_extend_of_a_non_list_field_names_the_field():
    with pytest.raises(TypeError, match="'name'"):
        State({"name": "abc"}).extend(name=["d"])


def test_increment_adds_and_starts_missing_fields_at_zero():
    state = State({"n": 1, "x": 0.5}).increment(n=2, x=0.25, fresh=5)
    assert state.get_all() == {"n": 3, "x": 0.75, "fresh": 5}


def test_increment_of_a_non_number_names_the_field():
    with pytest.raises(TypeError, match="'label'"):
        State({"label": "a"}).increment(label=1)


def test_wipe_delete_drops_named_fields_and_ignores_unknown_ones():
    state = State({"a": 1, "b": 2, "c": 3}).wipe(delete=["a", "c", "missing"])
    assert state.get_all() == {"b": 2}


def test_wipe_keep_drops_every_other_field():
    state = State({"a": 1, "b": 2, "c": 3}).wipe(keep=["b", "missing"])
    assert state.get_all() == {"b": 2}


@pytest.mark.parametrize("kwargs", [{}, {"delete": ["a"], "keep": ["b"]}])
def test_wipe_needs_exactly_one_of_delete_or_keep(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        State({"a": 1}).wipe(**kwargs)


def test_merge_lets_the_other_fields_win():
    merged = State({"a": 1, "b": 2}).merge(State({"b": 20, "c": 30}))
    assert merged.get_all() == {"a": 1, "b": 20, "c": 30}
    assert State({"a": 1}).merge({"a": 2}).get_all() == {"a": 2}


def test_subset_keeps_named_fields_and_skips_missing_ones():
    state = State({"a": 1, "b": 2, "c": 3})
    assert state.subset("a", "c", "missing").get_all() == {"a": 1, "c": 3}


def test_subset_with_ignore_missing_false_names_the_missing_field():
    with pytest.raises(KeyError, match="missing"):
        State({"a": 1}).subset("a", "missing", ignore_missing=False)


def test_get_all_returns_a_copy():
    state = State({"a": 1})
    fields = state.get_all()
    fields["a"] = 2
    fields["b"] = 3
    assert state.get_all() == {"a": 1}


def test_mapping_protocol():
    state = State({"a": 1, "b": None})
    assert state["a"] == 1
    assert "a" in state
    assert "z" not in state
    assert state.get("a") == 1
    assert state.get("b", "fallback") is None
    assert state.get("z") is None
    assert state.get("z", "fallback") == "fallback"
    assert sorted(state.keys()) == ["a", "b"]
    assert sorted(state) == ["a", "b"]
    assert len(state) == 2
    assert dict(state.items()) == {"a": 1, "b": None}


def test_missing_field_error_names_the_field_and_lists_existing_ones():
    with pytest.raises(KeyError, match="'absent'.*'a'"):
        State({"a": 1})["absent"]


def test_states_compare_by_content():
    assert State({"a": 1}) == State({"a": 1})
    assert State({"a": 1}) == {"a": 1}
    assert State({"a": 1}) != State({"a": 2})
    assert State({"a": 1}) != 1


def test_deepcopy_does_not_share_mutable_values():
    state = State({"items": [[1]]})
    copied = state.deepcopy()
    copied["items"][0].append(2)
    assert state["items"] == [[1]]
    assert copied == State({"items": [[1, 2]]})


@pytest.mark.parametrize(
    "dumps, loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)]
)
def test_state_survives_pickling(dumps, loads):
    state = State({"a": 1, "items": [1, 2]})
    restored = loads(dumps(state))
    assert isinstance(restored, State)
    assert restored == state
    assert restored.update(a=2)["a"] == 2
