"""Burr's streaming actions as fanwise.core.actions / fanwise.core.streaming:
`StreamingAction`, `AsyncStreamingAction`, `SingleStepStreamingAction`,
`@streaming_action(..., tags=...)` and the result containers `stream_result` /
`astream_result` return, as Burr 0.43 documents them."""

import asyncio
import logging

import pytest
from fanwise.core import ApplicationBuilder, State
from fanwise.core.actions import (
    AsyncStreamingAction,
    AsyncStreamingResultContainer,
    SingleStepStreamingAction,
    StreamingAction,
    StreamingResultContainer,
    streaming_action,
)


class CountTo(StreamingAction):
    """Yields a growing count; the last dict is the result that `update` stores."""

    @property
    def reads(self):
        return ["limit"]

    @property
    def writes(self):
        return ["counted"]

    def stream_run(self, state, **run_kwargs):
        for n in range(1, state["limit"] + 1):
            yield {"counted": n}

    def update(self, result, state):
        return state.update(**result)


class ACountTo(AsyncStreamingAction):
    """Async twin of `CountTo`."""

    @property
    def reads(self):
        return ["limit"]

    @property
    def writes(self):
        return ["counted"]

    async def stream_run(self, state, **run_kwargs):
        for n in range(1, state["limit"] + 1):
            await asyncio.sleep(0)
            yield {"counted": n}

    def update(self, result, state):
        return state.update(**result)


def app_of(streamer, limit=3, hooks=()):
    return (
        ApplicationBuilder()
        .with_actions(count=streamer)
        .with_state(limit=limit)
        .with_entrypoint("count")
        .with_hooks(*hooks)
        .build()
    )


# -- two-step streaming actions -------------------------------------------------------------


def test_a_streaming_action_streams_all_but_its_last_dict_and_reduces_the_last():
    app = app_of(CountTo())
    ran, container = app.stream_result(halt_after=["count"])
    assert ran.name == "count" and ran.streaming
    assert isinstance(container, StreamingResultContainer)
    assert next(container) == {"counted": 1}
    assert list(container) == [{"counted": 2}]
    result, state = container.get()
    assert result == {"counted": 3}
    assert state == State({"limit": 3, "counted": 3})
    assert app.state == state


def test_a_streaming_action_run_by_step_or_run_keeps_only_the_final_result():
    _, result, state = app_of(CountTo()).step()
    assert result == {"counted": 3} and state["counted"] == 3
    assert CountTo().run(State({"limit": 2})) == {"counted": 2}


def test_a_streaming_action_failing_after_yielding_is_reduced_with_its_last_result(caplog):
    class Breaks(CountTo):
        def stream_run(self, state, **run_kwargs):
            yield {"counted": 1}
            yield {"counted": 2}
            raise ConnectionError("stream cut")

    app = app_of(Breaks())
    with caplog.at_level(logging.WARNING, logger="fanwise.core.streaming"):
        _, container = app.stream_result(halt_after=["count"])
        partials = list(container)
        result, state = container.get()
    assert partials == [{"counted": 1}]
    assert result == {"counted": 2} and state["counted"] == 2
    assert "'count'" in caplog.text and "stream cut" in caplog.text


def test_a_streaming_action_failing_before_yielding_raises_and_keeps_the_state():
    class Dead(CountTo):
        def stream_run(self, state, **run_kwargs):
            raise ConnectionError("no stream")
            yield  # a generator

    app = app_of(Dead())
    _, container = app.stream_result(halt_after=["count"])
    with pytest.raises(ConnectionError, match="no stream"):
        container.get()
    assert app.state == State({"limit": 3})


def test_a_streaming_action_that_yields_nothing_names_the_action():
    app = app_of(CountTo(), limit=0)
    with pytest.raises(ValueError, match="'count'.*no result"):
        app.step()


def test_an_async_streaming_action_streams_through_astream_result():
    app = app_of(ACountTo())

    async def go():
        ran, container = await app.astream_result(halt_after=["count"])
        assert isinstance(container, AsyncStreamingResultContainer)
        first = await container.__anext__()
        rest = [item async for item in container]
        return ran, first, rest, await container.get()

    ran, first, rest, (result, state) = asyncio.run(go())
    assert ran.is_async()
    assert (first, rest) == ({"counted": 1}, [{"counted": 2}])
    assert result == {"counted": 3} and app.state == state


def test_an_async_streaming_action_runs_to_the_end_with_arun():
    assert asyncio.run(ACountTo().run(State({"limit": 4}))) == {"counted": 4}
    _, result, _ = asyncio.run(app_of(ACountTo()).arun(halt_after=["count"]))
    assert result == {"counted": 3}


# -- single-step streaming actions --------------------------------------------------------


class Shout(SingleStepStreamingAction):
    """Yields bare dicts as partials, then (result, new state)."""

    @property
    def reads(self):
        return []

    @property
    def writes(self):
        return ["shout"]

    @property
    def inputs(self):
        return ["words"]

    def stream_run_and_update(self, state, words):
        for word in words:
            yield {"word": word}
        text = " ".join(words).upper()
        yield {"shout": text}, state.update(shout=text)


def test_a_single_step_streaming_action_may_yield_bare_dicts_as_partials():
    app = ApplicationBuilder().with_actions(shout=Shout()).with_entrypoint("shout").build()
    _, container = app.stream_result(halt_after=["shout"], inputs={"words": ["a", "b"]})
    assert list(container) == [{"word": "a"}, {"word": "b"}]
    assert container.get() == ({"shout": "A B"}, State({"shout": "A B"}))
    assert Shout().run_and_update(State(), words=["x"]) == ({"shout": "X"}, State({"shout": "X"}))


def test_a_single_step_streaming_action_yielding_something_else_names_the_action():
    class Odd(Shout):
        def stream_run_and_update(self, state, words):
            yield "a string"

    app = ApplicationBuilder().with_actions(odd=Odd()).with_entrypoint("odd").build()
    _, container = app.stream_result(halt_after=["odd"], inputs={"words": []})
    with pytest.raises(ValueError, match="'odd'.*str"):
        container.get()


@streaming_action(reads=["prompt"], writes=["response"], tags=["llm"])
def respond(state, suffix="!"):
    buffer = []
    for token in state["prompt"].split():
        buffer.append(token)
        yield {"response": token}, None
    text = " ".join(buffer) + suffix
    yield {"response": text}, state.update(response=text)


def test_a_streaming_action_function_is_found_by_its_tag_and_streams():
    app = (
        ApplicationBuilder()
        .with_actions(respond=respond)
        .with_state(prompt="hi there")
        .with_entrypoint("respond")
        .build()
    )
    ran, container = app.stream_result(halt_after=["@tag:llm"], inputs={"suffix": "?"})
    assert ran.name == "respond"
    assert respond.action_function.tags == ["llm"]
    assert [item["response"] for item in container] == ["hi", "there"]
    assert container.get()[0] == {"response": "hi there?"}


def test_binding_a_streaming_action_fixes_its_input():
    app = (
        ApplicationBuilder()
        .with_actions(respond=respond.bind(suffix="."))
        .with_state(prompt="ok")
        .with_entrypoint("respond")
        .build()
    )
    _, result, _ = app.step()
    assert result == {"response": "ok."}


# -- containers and stream hooks ------------------------------------------------------------


def test_pass_through_containers_have_no_partials_and_give_the_result():
    container = StreamingResultContainer.pass_through({"r": 1}, State({"a": 1}))
    assert list(container) == []
    assert container.get() == ({"r": 1}, State({"a": 1}))

    async def go():
        box = AsyncStreamingResultContainer.pass_through({"r": 2}, State())
        return [item async for item in box], await box.get()

    assert asyncio.run(go()) == ([], ({"r": 2}, State()))


def test_stream_hooks_see_every_partial_of_a_two_step_streaming_action():
    seen = []

    class Watcher:
        def pre_start_stream(self, *, action, **future_kwargs):
            seen.append(("start", action))

        def post_stream_item(self, *, item, **future_kwargs):
            seen.append(item)

        def post_end_stream(self, *, action, **future_kwargs):
            seen.append(("end", action))

    app = app_of(CountTo(), hooks=[Watcher()])
    _, container = app.stream_result(halt_after=["count"])
    container.get()
    assert seen == [("start", "count"), {"counted": 1}, {"counted": 2}, ("end", "count")]


def test_a_streaming_action_takes_the_context_and_declared_inputs_in_stream_run():
    class Tagged(CountTo):
        @property
        def inputs(self):
            return ["label"]

        def stream_run(self, state, label, __context):
            yield {"counted": f"{label}@{__context.action_name}"}
            yield {"counted": f"{label}@{__context.sequence_id}"}

    app = app_of(Tagged())
    _, container = app.stream_result(halt_after=["count"], inputs={"label": "x"})
    assert list(container) == [{"counted": "x@count"}]
    assert container.get()[0] == {"counted": "x@0"}
