"""Burr's lifecycle hooks (`burr.lifecycle` -> `fanwise.core.hooks`): every documented hook,
called at Burr's points with Burr's keyword arguments, whether the hook object subclasses a
hook class or only has the methods."""

import asyncio
import datetime
import gc
import json
import types

import pytest
from fanwise.core import (
    ApplicationBuilder,
    AsyncMismatchError,
    Result,
    State,
    action,
    streaming_action,
)
from fanwise.core import hooks as lifecycle
from fanwise.core.hooks import ExecuteMethod, LifecycleAdapter
from fanwise.core.tracking import SyncTrackingClient

BURR_HOOK_CLASSES = [
    "PreRunStepHook", "PreRunStepHookAsync", "PostRunStepHook", "PostRunStepHookAsync",
    "PreApplicationExecuteCallHook", "PreApplicationExecuteCallHookAsync",
    "PostApplicationExecuteCallHook", "PostApplicationExecuteCallHookAsync",
    "PostApplicationCreateHook", "PreStartSpanHook", "PreStartSpanHookAsync",
    "PostEndSpanHook", "PostEndSpanHookAsync", "DoLogAttributeHook", "DoLogAttributeHookAsync",
    "PreStartStreamHook", "PreStartStreamHookAsync", "PostStreamItemHook",
    "PostStreamItemHookAsync", "PostEndStreamHook", "PostEndStreamHookAsync",
]

BURR_KWARGS = {
    "post_application_create": {
        "app_id", "partition_key", "state", "application_graph", "parent_pointer",
        "spawning_parent_pointer",
    },
    "pre_run_execute_call": {"app_id", "partition_key", "state", "method"},
    "post_run_execute_call": {"app_id", "partition_key", "state", "method", "exception"},
    "pre_run_step": {"app_id", "partition_key", "sequence_id", "state", "action", "inputs"},
    "post_run_step": {
        "app_id", "partition_key", "sequence_id", "state", "action", "result", "exception",
    },
    "pre_start_stream": {"action", "sequence_id", "app_id", "partition_key"},
    "post_stream_item": {
        "item", "item_index", "stream_initialize_time", "first_stream_item_start_time",
        "action", "sequence_id", "app_id", "partition_key",
    },
    "post_end_stream": {"action", "sequence_id", "app_id", "partition_key"},
}


class Recorder:
    """A hook of no fanwise class: only methods (as a Burr user's own tracker may be)."""

    def __init__(self):
        self.calls = []

    def _record(self, name, kwargs):
        self.calls.append((name, kwargs))

    def post_application_create(self, **future_kwargs):
        self._record("post_application_create", future_kwargs)

    def pre_run_execute_call(self, **future_kwargs):
        self._record("pre_run_execute_call", future_kwargs)

    def post_run_execute_call(self, **future_kwargs):
        self._record("post_run_execute_call", future_kwargs)

    def pre_run_step(self, **future_kwargs):
        self._record("pre_run_step", future_kwargs)

    def post_run_step(self, **future_kwargs):
        self._record("post_run_step", future_kwargs)

    def pre_start_stream(self, **future_kwargs):
        self._record("pre_start_stream", future_kwargs)

    def post_stream_item(self, **future_kwargs):
        self._record("post_stream_item", future_kwargs)

    def post_end_stream(self, **future_kwargs):
        self._record("post_end_stream", future_kwargs)

    def names(self):
        return [name for name, _ in self.calls]

    def of(self, name):
        return [kwargs for called, kwargs in self.calls if called == name]


@action(reads=["n"], writes=["n"])
def count(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=[], writes=[])
def explode(state: State) -> State:
    raise RuntimeError("kaboom")


@streaming_action(reads=["n"], writes=["text"])
def talk(state: State):
    for word in ("x", "y"):
        yield {"delta": word}, None
    yield {"text": "xy"}, state.update(text="xy")


def app_with(*hooks, tracker=None):
    builder = (
        ApplicationBuilder()
        .with_actions(count, talk, explode, done=Result("n"))
        .with_transitions(("count", "talk"), ("talk", "done"), ("done", "explode"))
        .with_state(n=0)
        .with_entrypoint("count")
        .with_identifiers(app_id="hooked", partition_key="pk")
        .with_hooks(*hooks)
    )
    if tracker is not None:
        builder = builder.with_tracker(tracker)
    return builder.build()


def test_every_burr_hook_class_and_execute_method_exists():
    for name in BURR_HOOK_CLASSES:
        assert isinstance(getattr(lifecycle, name), type), name
    assert [m.value for m in ExecuteMethod] == [
        "step", "astep", "iterate", "aiterate", "run", "arun", "stream_result",
        "astream_result", "stream_iterate", "astream_iterate",
    ]
    assert lifecycle.PreRunStepHook in LifecycleAdapter.__args__


def test_a_hook_of_no_hook_class_receives_every_call_with_burrs_keyword_arguments():
    recorder = Recorder()
    app = app_with(recorder)
    app.run(halt_after=["done"])

    assert recorder.names() == [
        "post_application_create",
        "pre_run_execute_call",
        "pre_run_step", "post_run_step",  # count
        "pre_run_step", "pre_start_stream", "post_stream_item", "post_stream_item",
        "post_run_step", "post_end_stream",  # talk
        "pre_run_step", "post_run_step",  # done
        "post_run_execute_call",
    ]
    for name, kwargs in recorder.calls:
        assert set(kwargs) >= BURR_KWARGS[name], name
    created = recorder.of("post_application_create")[0]
    assert (created["app_id"], created["partition_key"]) == ("hooked", "pk")
    assert created["application_graph"].entrypoint.name == "count"
    assert [kw["method"] for kw in recorder.of("pre_run_execute_call")] == [ExecuteMethod.run]
    assert recorder.of("post_run_execute_call")[0]["exception"] is None


def test_stream_item_hooks_count_from_one_and_carry_the_stream_times():
    recorder = Recorder()
    app_with(recorder).run(halt_after=["talk"])

    items = recorder.of("post_stream_item")
    assert [(i["item"], i["item_index"]) for i in items] == [({"delta": "x"}, 1),
                                                             ({"delta": "y"}, 2)]
    assert all(i["action"] == "talk" and i["sequence_id"] == 1 for i in items)
    started = items[0]["stream_initialize_time"]
    assert isinstance(started, datetime.datetime)
    assert started <= items[0]["first_stream_item_start_time"]
    assert items[1]["first_stream_item_start_time"] == items[0]["first_stream_item_start_time"]


def test_stream_result_reports_its_stream_to_the_hooks():
    recorder = Recorder()
    app = app_with(recorder)
    app.step()
    _, container = app.stream_result(halt_after=["talk"])
    assert [item["delta"] for item in container] == ["x", "y"]
    assert container.get()[0] == {"text": "xy"}
    assert recorder.names()[-8:] == [
        "pre_run_execute_call", "pre_run_step", "pre_start_stream",
        "post_stream_item", "post_stream_item", "post_run_step", "post_end_stream",
        "post_run_execute_call",  # the call ends with its stream, as in Burr
    ]
    methods = [kw["method"] for kw in recorder.of("pre_run_execute_call")]
    assert methods == [ExecuteMethod.step, ExecuteMethod.stream_result]


def test_a_stream_left_unfinished_still_ends_its_call():
    recorder = Recorder()
    app = app_with(recorder)
    app.step()
    _, container = app.stream_result(halt_after=["talk"])
    next(container)
    del container  # dropped unfinished: its step is closed
    gc.collect()
    assert recorder.names()[-1] == "post_run_execute_call"
    assert recorder.of("post_run_execute_call")[-1]["exception"] is None
    app.step()  # later calls are reported again
    assert recorder.of("pre_run_execute_call")[-1]["method"] is ExecuteMethod.step


def test_astream_result_ends_its_call_with_its_stream():
    asynchronous = AsyncRecorder()
    app = app_with(asynchronous)

    async def consume():
        await app.astep()
        _, container = await app.astream_result(halt_after=["talk"])
        before_items = list(asynchronous.calls)
        await container.get()
        return before_items

    before_items = asyncio.run(consume())
    assert before_items[-1] == ("pre_call", ExecuteMethod.astream_result)
    assert asynchronous.calls[-1] == ("post_call", ExecuteMethod.astream_result, None)


@pytest.mark.parametrize(
    ("call", "method"),
    [
        (lambda app: app.step(), ExecuteMethod.step),
        (lambda app: list(app.iterate(halt_after=["talk"])), ExecuteMethod.iterate),
        (lambda app: app.run(halt_after=["talk"]), ExecuteMethod.run),
    ],
    ids=["step", "iterate", "run"],
)
def test_execute_call_hooks_report_only_the_outermost_method(call, method):
    recorder = Recorder()
    app = app_with(recorder)
    call(app)
    assert [kw["method"] for kw in recorder.of("pre_run_execute_call")] == [method]
    assert [kw["method"] for kw in recorder.of("post_run_execute_call")] == [method]


def test_post_execute_call_receives_the_exception_that_ended_the_call():
    recorder = Recorder()
    app = app_with(recorder)
    with pytest.raises(RuntimeError, match="kaboom"):
        app.run(halt_after=["explode"])
    (post,) = recorder.of("post_run_execute_call")
    assert isinstance(post["exception"], RuntimeError)
    failed = recorder.of("post_run_step")[-1]
    assert failed["action"].name == "explode" and isinstance(failed["exception"], RuntimeError)


def test_closing_iterate_early_reports_no_exception():
    recorder = Recorder()
    steps = app_with(recorder).iterate(halt_after=["done"])
    next(steps)
    steps.close()
    (post,) = recorder.of("post_run_execute_call")
    assert post["method"] is ExecuteMethod.iterate and post["exception"] is None


def test_a_burr_style_tracker_subclassing_sync_tracking_client_is_called():
    class MyTracker(SyncTrackingClient):
        def __init__(self):
            self.steps = []

        def post_application_create(self, **future_kwargs):
            pass

        def pre_run_step(self, *, action, sequence_id, **future_kwargs):
            self.steps.append(("pre", action.name, sequence_id))

        def post_run_step(self, *, action, sequence_id, **future_kwargs):
            self.steps.append(("post", action.name, sequence_id))

        def pre_start_span(self, **future_kwargs):
            pass

        def post_end_span(self, **future_kwargs):
            pass

        def do_log_attributes(self, **future_kwargs):
            pass

        def pre_start_stream(self, **future_kwargs):
            pass

        def post_stream_item(self, **future_kwargs):
            pass

        def post_end_stream(self, **future_kwargs):
            pass

        def copy(self):
            return MyTracker()

    tracker = MyTracker()
    app_with(tracker=tracker).run(halt_after=["talk"])
    assert tracker.steps == [("pre", "count", 0), ("post", "count", 0),
                             ("pre", "talk", 1), ("post", "talk", 1)]


class AsyncRecorder:
    """Async hook methods, of no hook class."""

    def __init__(self):
        self.calls = []

    async def pre_run_execute_call(self, *, method, **future_kwargs):
        await asyncio.sleep(0)
        self.calls.append(("pre_call", method))

    async def pre_run_step(self, *, action, **future_kwargs):
        await asyncio.sleep(0)
        self.calls.append(("pre", action.name))

    async def post_run_step(self, *, action, **future_kwargs):
        self.calls.append(("post", action.name))

    async def post_run_execute_call(self, *, method, exception, **future_kwargs):
        self.calls.append(("post_call", method, exception))


def test_async_hooks_are_awaited_in_an_async_run_with_sync_ones_too():
    asynchronous, synchronous = AsyncRecorder(), Recorder()
    app = app_with(asynchronous, synchronous)
    asyncio.run(app.arun(halt_after=["count"]))
    assert asynchronous.calls == [
        ("pre_call", ExecuteMethod.arun), ("pre", "count"), ("post", "count"),
        ("post_call", ExecuteMethod.arun, None),
    ]
    assert synchronous.names() == [
        "post_application_create", "pre_run_execute_call", "pre_run_step", "post_run_step",
        "post_run_execute_call",
    ]


def test_astep_is_reported_as_astep():
    asynchronous = AsyncRecorder()
    asyncio.run(app_with(asynchronous).astep())
    assert asynchronous.calls[0] == ("pre_call", ExecuteMethod.astep)


def test_an_async_hook_of_no_hook_class_in_a_sync_run_is_a_clear_error():
    app = app_with(AsyncRecorder())
    expected = "hook AsyncRecorder is async: .*arun.*pre_run_execute_call"
    with pytest.raises(AsyncMismatchError, match=expected):
        app.step()
    assert app.sequence_id is None


def test_an_object_with_no_hook_method_receives_nothing_and_breaks_nothing():
    class Bystander:
        def unrelated(self, **kwargs):
            raise AssertionError("never called")

    app = app_with(Bystander())
    assert app.run(halt_after=["count"])[2]["n"] == 1


@streaming_action(reads=[], writes=["text"])
async def async_talk(state: State):
    for word in ("p", "q"):
        yield {"delta": word}, None
    yield {"text": "pq"}, state.update(text="pq")


class AsyncStreamRecorder:
    def __init__(self):
        self.calls = []

    async def pre_start_stream(self, *, action, **future_kwargs):
        await asyncio.sleep(0)
        self.calls.append(("start", action))

    async def post_stream_item(self, *, item, item_index, **future_kwargs):
        self.calls.append(("item", item["delta"], item_index))

    async def post_end_stream(self, *, action, **future_kwargs):
        self.calls.append(("end", action))


def test_async_stream_hooks_are_awaited_around_an_async_stream():
    recorder = AsyncStreamRecorder()
    app = (
        ApplicationBuilder().with_actions(async_talk).with_transitions()
        .with_entrypoint("async_talk").with_hooks(recorder).build()
    )

    async def consume():
        _, container = await app.astream_result(halt_after=["async_talk"])
        deltas = [item["delta"] async for item in container]
        return deltas, (await container.get())[0]

    assert asyncio.run(consume()) == (["p", "q"], {"text": "pq"})
    assert recorder.calls == [
        ("start", "async_talk"), ("item", "p", 1), ("item", "q", 2), ("end", "async_talk"),
    ]


def test_state_and_results_full_logger_writes_a_line_per_step(tmp_path):
    path = tmp_path / "steps.jsonl"
    with lifecycle.StateAndResultsFullLogger(str(path)) as logger:
        app_with(logger).run(halt_after=["done"])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["action"], line["state"]["n"]) for line in lines] == [
        ("count", 1), ("talk", 1), ("done", 1)
    ]
    assert lines[0]["result"] == {"n": 1} and lines[0]["exception"] == "None"
    assert lines[0]["start_time"] <= lines[0]["end_time"]


def test_state_and_results_full_logger_wants_a_jsonl_path(tmp_path):
    with pytest.raises(ValueError, match=".jsonl"):
        lifecycle.StateAndResultsFullLogger(str(tmp_path / "steps.txt"))


def test_hooks_set_on_objects_themselves_are_decided_per_object():
    calls = []
    before = types.SimpleNamespace(pre_run_step=lambda **kw: calls.append("pre"))
    after = types.SimpleNamespace(post_run_step=lambda **kw: calls.append("post"))
    app_with(before, after).step()
    assert calls == ["pre", "post"]
