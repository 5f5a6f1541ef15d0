import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from fanwise.core import (
    Action,
    ApplicationBuilder,
    ApplicationContext,
    GraphError,
    InputError,
    ParentPointer,
    Result,
    State,
    action,
    expr,
)
from fanwise.core.actions import UndeclaredWriteWarning


@action(reads=["n"], writes=["n"])
def count(state):
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["parity"])
def classify(state):
    return state.update(parity="even" if state["n"] % 2 == 0 else "odd")


def counter_app(n=0, limit=3, **identifiers):
    return (
        ApplicationBuilder()
        .with_actions(count, classify, done=Result("n", "parity"))
        .with_transitions(
            ("count", "count", expr(f"n < {limit}")),
            ("count", "classify"),
            ("classify", "done"),
        )
        .with_state(n=n)
        .with_entrypoint("count")
        .with_identifiers(**identifiers)
        .build()
    )


# -- run / step / iterate ----------------------------------------------------------------


def test_run_goes_to_the_end_and_returns_the_last_action_result_and_state():
    app = counter_app()
    ran, result, state = app.run()
    assert ran.name == "done"
    assert result == {"n": 3, "parity": "odd"}
    assert state == State({"n": 3, "parity": "odd"})
    assert app.state == state
    assert app.get_next_action() is None


def test_step_runs_one_action_at_a_time_and_returns_none_at_the_end():
    app = counter_app(limit=1)
    assert app.get_next_action().name == "count"
    assert app.step()[0].name == "count"
    assert app.get_next_action().name == "classify"
    assert app.step()[0].name == "classify"
    assert app.step()[0].name == "done"
    assert app.step() is None
    assert app.state["parity"] == "odd"


def test_sequence_id_is_none_before_the_first_step_then_counts_steps():
    app = counter_app()
    assert app.sequence_id is None
    app.step()
    assert app.sequence_id == 0
    app.step()
    assert app.sequence_id == 1
    app.run()
    assert app.sequence_id == 4


def test_iterate_yields_every_step_with_its_state():
    app = counter_app()
    steps = list(app.iterate())
    assert [a.name for a, _, _ in steps] == ["count", "count", "count", "classify", "done"]
    assert [s["n"] for _, _, s in steps] == [1, 2, 3, 3, 3]
    assert steps[0][1] == {"n": 1}


def test_iterate_stops_after_a_halt_after_action_including_it():
    app = counter_app()
    steps = list(app.iterate(halt_after=["classify"]))
    assert [a.name for a, _, _ in steps] == ["count", "count", "count", "classify"]
    assert app.get_next_action().name == "done"


def test_iterate_stops_before_a_halt_before_action_excluding_it():
    app = counter_app()
    steps = list(app.iterate(halt_before=["classify"]))
    assert [a.name for a, _, _ in steps] == ["count", "count", "count"]
    assert app.get_next_action().name == "classify"


def test_run_with_halt_after_returns_that_action_and_its_result():
    app = counter_app()
    ran, result, state = app.run(halt_after=["classify"])
    assert ran.name == "classify"
    assert result == {"parity": "odd"}
    assert state["parity"] == "odd"


def test_run_with_halt_before_returns_the_next_action_and_no_result():
    app = counter_app()
    ran, result, state = app.run(halt_before=["classify"])
    assert ran.name == "classify"
    assert result is None
    assert state == State({"n": 3})
    assert app.get_next_action().name == "classify"


def test_run_with_halt_before_the_next_action_runs_it_and_halts_before_the_one_after():
    app = counter_app()
    ran, result, state = app.run(halt_before=["count"])
    assert ran.name == "count"
    assert result is None
    assert state == State({"n": 1})
    assert app.sequence_id == 0


def test_run_again_continues_where_the_halt_left_off():
    app = counter_app()
    app.run(halt_after=["classify"])
    ran, result, _ = app.run()
    assert ran.name == "done"
    assert result == {"n": 3, "parity": "odd"}


def test_run_of_a_finished_application_runs_nothing():
    app = counter_app()
    _, _, state = app.run()
    ran, result, again = app.run()
    assert (ran, result) == (None, None)
    assert again == state
    assert app.sequence_id == 4


def test_halt_names_may_be_given_as_tuples():
    app = counter_app()
    ran, _, _ = app.run(halt_after=("classify",))
    assert ran.name == "classify"


# -- identifiers and state ---------------------------------------------------------------


def test_identifiers_are_exposed():
    app = counter_app(app_id="my-app", partition_key="user-1")
    assert app.uid == "my-app"
    assert app.app_id == "my-app"
    assert app.partition_key == "user-1"


def test_app_id_defaults_to_a_fresh_uuid():
    first, second = counter_app(), counter_app()
    assert uuid.UUID(first.uid)
    assert first.uid != second.uid
    assert first.partition_key is None


def test_with_state_accepts_a_state_a_dict_or_keywords_and_merges_calls():
    app = (
        ApplicationBuilder()
        .with_actions(done=Result("a"))
        .with_state(State({"a": 1, "b": 1}))
        .with_state({"b": 2}, c=3)
        .with_state(c=4)
        .with_entrypoint("done")
        .build()
    )
    assert app.state == State({"a": 1, "b": 2, "c": 4})


def test_state_defaults_to_empty():
    app = ApplicationBuilder().with_actions(count).with_entrypoint("count").build()
    assert app.state == State()


def test_graph_property_exposes_the_actions():
    app = counter_app()
    assert sorted(a.name for a in app.graph.actions) == ["classify", "count", "done"]


# -- inputs ------------------------------------------------------------------------------


@action(reads=[], writes=["got"])
def needs_inputs(state, required, optional="fallback"):
    return state.update(got=(required, optional))


def single(fn):
    """A one-action application running the decorated function `fn`."""
    return ApplicationBuilder().with_actions(fn).with_entrypoint(fn.__name__).build()


def test_missing_required_input_names_the_action_and_the_input():
    app = single(needs_inputs)
    with pytest.raises(InputError, match=r"'needs_inputs'.*\['required'\]"):
        app.step()
    assert app.sequence_id is None
    assert app.get_next_action().name == "needs_inputs"


def test_optional_input_falls_back_to_its_default():
    _, _, state = single(needs_inputs).step(inputs={"required": 1})
    assert state["got"] == (1, "fallback")
    _, _, state = single(needs_inputs).step(inputs={"required": 1, "optional": 2})
    assert state["got"] == (1, 2)


def test_input_keys_starting_with_double_underscore_are_rejected():
    with pytest.raises(InputError, match="__context"):
        single(needs_inputs).step(inputs={"required": 1, "__context": "fake"})


def test_undeclared_inputs_are_not_passed_to_the_action():
    seen = {}

    @action(reads=[], writes=[])
    def greedy(state, wanted, **kwargs):
        seen.update(wanted=wanted, kwargs=kwargs)
        return state

    single(greedy).step(inputs={"wanted": 1, "unwanted": 2})
    assert seen == {"wanted": 1, "kwargs": {}}


def test_run_inputs_reach_every_step_that_declares_them():
    @action(reads=["total"], writes=["total"])
    def add(state, amount):
        return state.update(total=state["total"] + amount)

    app = (
        ApplicationBuilder()
        .with_actions(add, done=Result("total"))
        .with_transitions(("add", "add", expr("total < 10")), ("add", "done"))
        .with_state(total=0)
        .with_entrypoint("add")
        .build()
    )
    _, result, _ = app.run(inputs={"amount": 4})
    assert result == {"total": 12}


# -- writes ------------------------------------------------------------------------------


def test_a_function_action_writing_an_undeclared_field_warns_naming_it_and_keeps_it():
    # Burr lets a single-step action write undeclared fields; fanwise warns.
    @action(reads=[], writes=["allowed"])
    def sneaky(state):
        return state.update(allowed=1, forbidden=2)

    app = single(sneaky)
    with pytest.warns(UndeclaredWriteWarning, match=r"'sneaky'.*'forbidden'"):
        app.step()
    assert app.state == State({"allowed": 1, "forbidden": 2})


def test_undeclared_writes_as_errors_leave_the_state_unchanged():
    @action(reads=["n"], writes=[])
    def meddle(state):
        return state.update(n=state["n"] + 1)

    app = (
        ApplicationBuilder().with_actions(meddle).with_state(n=1).with_entrypoint("meddle").build()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndeclaredWriteWarning)
        with pytest.raises(UndeclaredWriteWarning, match="'n'"):
            app.step()
    assert app.state["n"] == 1
    assert app.get_next_action().name == "meddle"


def test_a_run_and_update_action_writing_an_undeclared_field_is_an_error_naming_it():
    class Sneaky(Action):
        reads, writes = [], ["allowed"]

        def run(self, state):
            return {}

        def update(self, result, state):
            return state.update(allowed=1, forbidden=2)

    app = ApplicationBuilder().with_actions(sneaky=Sneaky()).with_entrypoint("sneaky").build()
    with pytest.raises(GraphError, match=r"'sneaky'.*'forbidden'"):
        app.step()
    assert app.state == State()
    assert app.get_next_action().name == "sneaky"


def test_unchanged_undeclared_fields_pass_through():
    @action(reads=["n"], writes=["m"])
    def copy_n(state):
        return state.update(m=state["n"])

    app = (
        ApplicationBuilder()
        .with_actions(copy_n)
        .with_state(n=[1], k="x")
        .with_entrypoint("copy_n")
        .build()
    )
    _, result, state = app.step()
    assert result == {"m": [1]}
    assert state == State({"n": [1], "k": "x", "m": [1]})


def test_action_may_delete_a_field_it_writes():
    @action(reads=[], writes=["tmp"])
    def cleanup(state):
        return state.wipe(delete=["tmp"])

    app = (
        ApplicationBuilder()
        .with_actions(cleanup)
        .with_state(tmp=1, keep=2)
        .with_entrypoint("cleanup")
        .build()
    )
    _, _, state = app.step()
    assert state == State({"keep": 2})


@pytest.mark.xfail(
    strict=True,
    reason="design question: deleting a field outside `writes` is silently ignored "
    "(the field stays); it should either raise like other undeclared writes or be honoured",
)
def test_deleting_an_undeclared_field_names_it():
    @action(reads=[], writes=[])
    def drop(state):
        return state.wipe(delete=["precious"])

    app = (
        ApplicationBuilder()
        .with_actions(drop)
        .with_state(precious=1)
        .with_entrypoint("drop")
        .build()
    )
    with pytest.raises(GraphError, match="'precious'"):
        app.step()


# -- failures ----------------------------------------------------------------------------


def test_failed_step_keeps_state_and_next_action_so_a_retry_reruns_it():
    attempts = []

    @action(reads=["n"], writes=["n"])
    def flaky(state):
        attempts.append(state["n"])
        if len(attempts) == 1:
            raise RuntimeError("transient")
        return state.update(n=state["n"] + 1)

    app = ApplicationBuilder().with_actions(flaky).with_state(n=5).with_entrypoint("flaky").build()
    with pytest.raises(RuntimeError, match="transient"):
        app.run()
    assert app.state == State({"n": 5})
    assert app.sequence_id is None
    assert app.get_next_action().name == "flaky"
    ran, _, state = app.step()
    assert ran.name == "flaky"
    assert state["n"] == 6
    assert attempts == [5, 5]
    assert app.sequence_id == 0


# -- ApplicationContext ------------------------------------------------------------------


class RecordingPersister:
    """Just enough of a persister: load finds nothing, save records rows."""

    def __init__(self):
        self.rows = []

    def load(self, partition_key, app_id, sequence_id=None):
        return None

    def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        self.rows.append((partition_key, app_id, sequence_id, position, status))


def test_action_sees_every_application_context_field():
    seen = []
    tracker, persister = object(), RecordingPersister()

    @action(reads=[], writes=[])
    def spy(state, __context):
        seen.append(__context)
        return state

    with ThreadPoolExecutor(max_workers=1) as executor:
        app = (
            ApplicationBuilder()
            .with_actions(spy)
            .with_transitions(("spy", "spy"))
            .with_identifiers(app_id="child", partition_key="pk")
            .with_tracker(tracker)
            .with_state_persister(persister)
            .initialize_from(persister, default_entrypoint="spy")
            .with_executor(executor)
            .with_spawning_parent("parent", 7, "parent-pk")
            .build()
        )
        app.run(halt_after=["spy"])
        app.step()
    first, second = seen
    assert isinstance(first, ApplicationContext)
    assert (first.app_id, first.partition_key, first.action_name) == ("child", "pk", "spy")
    assert (first.sequence_id, second.sequence_id) == (0, 1)
    assert first.tracker is tracker
    assert first.state_persister is persister
    assert first.state_initializer is persister
    assert first.executor is executor
    assert first.spawning_parent == ParentPointer("parent", 7, "parent-pk")
    assert persister.rows == [
        ("pk", "child", 0, "spy", "completed"),
        ("pk", "child", 1, "spy", "completed"),
    ]


def test_context_without_adapters_has_none_in_their_fields():
    seen = []

    @action(reads=[], writes=[])
    def spy(state, __context):
        seen.append(__context)
        return state

    ApplicationBuilder().with_actions(spy).with_entrypoint("spy").build().step()
    (context,) = seen
    assert context.tracker is None
    assert context.state_persister is None
    assert context.state_initializer is None
    assert context.executor is None
    assert context.spawning_parent is None
    assert context.partition_key is None
