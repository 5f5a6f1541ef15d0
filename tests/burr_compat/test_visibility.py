"""Burr's visibility API (`burr.visibility` -> `fanwise.core.visibility`): the `__tracer`
action parameter, nested spans, attributes, `@trace()`, and the span hooks they call."""

import asyncio

import pytest
from fanwise.core import ApplicationBuilder, AsyncMismatchError, State, action
from fanwise.core.hooks import HookSet
from fanwise.core.visibility import ActionSpan, ActionSpanTracer, TracerFactory, trace


class SpanRecorder:
    """Span hooks, of no hook class."""

    def __init__(self):
        self.events = []

    def pre_start_span(self, **kwargs):
        self.events.append(("start", kwargs))

    def post_end_span(self, **kwargs):
        self.events.append(("end", kwargs))

    def do_log_attributes(self, **kwargs):
        self.events.append(("attributes", kwargs))

    def summary(self):
        out = []
        for kind, kw in self.events:
            span = kw["span"]
            where = span.uid if span is not None else None
            if kind == "attributes":
                out.append((kind, where, kw["attributes"]))
            else:
                out.append((kind, where, span.name))
        return out


@action(reads=["n"], writes=["n"])
def work(state: State, __tracer: TracerFactory) -> State:
    with __tracer("load") as load:
        assert isinstance(load, ActionSpanTracer)
        load.log_attributes(rows=3)
        with __tracer("parse", span_dependencies=["load"]) as parse:
            parse.log_attribute("ok", True)
    with __tracer("save"):
        pass
    __tracer.log_attributes(total=state["n"])
    return state.update(n=state["n"] + 1)


def app_with(*hooks, actions=(work,), entrypoint="work"):
    return (
        ApplicationBuilder()
        .with_actions(*actions)
        .with_transitions(*[(a.__name__, a.__name__) for a in actions])
        .with_state(n=0)
        .with_entrypoint(entrypoint)
        .with_identifiers(app_id="traced", partition_key="pk")
        .with_hooks(*hooks)
        .build()
    )


def test_tracer_is_injected_not_asked_as_an_input():
    graph_action = app_with().graph.get_action("work")
    assert graph_action.inputs == [] and graph_action.tracer_param == "__tracer"


def test_spans_nest_and_are_numbered_as_burr_numbers_them():
    recorder = SpanRecorder()
    app = app_with(recorder)
    app.step()
    app.step()
    assert recorder.summary() == [
        ("start", "0:0", "load"),
        ("attributes", "0:0", {"rows": 3}),
        ("start", "0:0.0", "parse"),
        ("attributes", "0:0.0", {"ok": True}),
        ("end", "0:0.0", "parse"),
        ("end", "0:0", "load"),
        ("start", "0:1", "save"),
        ("end", "0:1", "save"),
        ("attributes", None, {"total": 0}),
        ("start", "1:0", "load"),  # the second step starts its own numbering
        ("attributes", "1:0", {"rows": 3}),
        ("start", "1:0.0", "parse"),
        ("attributes", "1:0.0", {"ok": True}),
        ("end", "1:0.0", "parse"),
        ("end", "1:0", "load"),
        ("start", "1:1", "save"),
        ("end", "1:1", "save"),
        ("attributes", None, {"total": 1}),
    ]


def test_span_hooks_receive_burrs_keyword_arguments():
    recorder = SpanRecorder()
    app_with(recorder).step()
    kind, start = recorder.events[2]
    assert kind == "start"
    assert set(start) >= {
        "action", "action_sequence_id", "span", "span_dependencies", "app_id", "partition_key",
    }
    assert (start["action"], start["action_sequence_id"]) == ("work", 0)
    assert (start["app_id"], start["partition_key"]) == ("traced", "pk")
    assert start["span_dependencies"] == ["load"]
    assert start["span"].parent.name == "load"
    _, logged = recorder.events[1]
    assert set(logged) >= {
        "attributes", "action", "action_sequence_id", "span", "tags", "app_id", "partition_key",
    }
    assert logged["tags"] == {}


def test_a_tracer_without_any_span_hook_just_runs():
    app = app_with()
    assert app.run(halt_after=["work"])[2]["n"] == 1


@trace()
def helper(x, secret="hidden"):
    return x * 2


@trace(input_filterlist=["secret"], span_name="named")
def filtered(x, secret):
    return x


@action(reads=["n"], writes=["n"])
def calls_helpers(state: State) -> State:
    return state.update(n=helper(state["n"] + 1) + filtered(0, secret="s"))


def test_trace_decorator_opens_a_span_with_inputs_and_output_inside_an_action():
    recorder = SpanRecorder()
    app = app_with(recorder, actions=(calls_helpers,), entrypoint="calls_helpers")
    assert app.step()[2]["n"] == 2
    summary = recorder.summary()
    assert summary[0] == ("start", "0:0", "helper")
    assert summary[1] == ("attributes", "0:0", {"x": 1})
    assert summary[2][2]["__burr_function"] == "helper"
    assert len(summary[2][2]["__burr_function_hash"]) == 64
    assert summary[3] == ("attributes", "0:0", {"return": 2})
    assert summary[4] == ("end", "0:0", "helper")
    assert summary[5] == ("start", "0:1", "named")
    assert summary[6] == ("attributes", "0:1", {"x": 0})  # secret filtered out


def test_trace_decorator_outside_an_action_just_calls_the_function():
    assert helper(21) == 42


class AsyncSpanRecorder:
    def __init__(self):
        self.events = []

    async def pre_start_span(self, *, span, **future_kwargs):
        await asyncio.sleep(0)
        self.events.append(("start", span.uid))

    async def post_end_span(self, *, span, **future_kwargs):
        self.events.append(("end", span.uid))


@action(reads=["n"], writes=["n"])
async def async_work(state: State, __tracer) -> State:
    async with __tracer("remote"):
        await asyncio.sleep(0)
    return state.update(n=1)


def test_async_with_awaits_async_span_hooks_in_an_async_run():
    recorder, sync_recorder = AsyncSpanRecorder(), SpanRecorder()
    app = app_with(recorder, sync_recorder, actions=(async_work,), entrypoint="async_work")
    asyncio.run(app.astep())
    assert recorder.events == [("start", "0:0"), ("end", "0:0")]
    assert sync_recorder.summary() == [("start", "0:0", "remote"), ("end", "0:0", "remote")]


def test_async_span_hooks_in_a_sync_run_are_a_clear_error():
    app = app_with(AsyncSpanRecorder())
    with pytest.raises(AsyncMismatchError, match="AsyncSpanRecorder is async"):
        app.step()


def test_action_span_uid_and_spawn():
    root = ActionSpan.create_initial("act", "root", sequence_id=2, action_sequence_id=7)
    first, second = root.spawn("a"), root.spawn("b")
    assert (root.uid, first.uid, second.uid) == ("7:2", "7:2.0", "7:2.1")
    assert first.spawn("deep").uid == "7:2.0.0"
    assert second.parent is root and root.child_count == 2


def test_a_span_name_that_is_not_a_str_is_named():
    factory = TracerFactory("a", 0, "app", None, HookSet([]))
    with pytest.raises(TypeError, match="span's name"):
        factory(3)
