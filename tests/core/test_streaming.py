import asyncio

import pytest
from fanwise.core import (
    ApplicationBuilder,
    AsyncMismatchError,
    GraphError,
    State,
    action,
    streaming_action,
)
from fanwise.core.actions import UndeclaredWriteWarning
from fanwise.core.hooks import PostRunStepHook


@action(reads=[], writes=["prompt"])
def prepare(state, text="hi"):
    return state.update(prompt=text)


@streaming_action(reads=["prompt"], writes=["response"])
def stream_words(state):
    words = []
    for word in state["prompt"].split():
        words.append(word)
        yield {"delta": word}, None
    response = " ".join(words).upper()
    yield {"response": response}, state.update(response=response)


@streaming_action(reads=["prompt"], writes=["response"])
async def astream_words(state):
    words = []
    for word in state["prompt"].split():
        await asyncio.sleep(0)
        words.append(word)
        yield {"delta": word}, None
    response = " ".join(words).upper()
    yield {"response": response}, state.update(response=response)


@action(reads=["response"], writes=["length"])
def measure(state):
    return state.update(length=len(state["response"]))


def stream_app(streamer, hooks=()):
    return (
        ApplicationBuilder()
        .with_actions(prepare, measure, streamer=streamer)
        .with_transitions(("prepare", "streamer"), ("streamer", "measure"))
        .with_entrypoint("prepare")
        .with_hooks(*hooks)
        .build()
    )


# -- sync --------------------------------------------------------------------------------


def test_stream_result_runs_up_to_the_streaming_action_and_yields_partials():
    app = stream_app(stream_words)
    ran, container = app.stream_result(halt_after=["streamer"], inputs={"text": "a b c"})
    assert ran.name == "streamer"
    assert app.state == State({"prompt": "a b c"})
    assert list(container) == [{"delta": "a"}, {"delta": "b"}, {"delta": "c"}]
    result, state = container.get()
    assert result == {"response": "A B C"}
    assert state == State({"prompt": "a b c", "response": "A B C"})
    assert app.state == state
    assert app.sequence_id == 1
    assert app.get_next_action().name == "measure"


def test_stream_result_get_without_iterating_drains_the_stream():
    app = stream_app(stream_words)
    _, container = app.stream_result(halt_after=["streamer"], inputs={"text": "x y"})
    result, state = container.get()
    assert result == {"response": "X Y"}
    assert state["response"] == "X Y"


def test_stream_result_get_after_a_partial_read_finishes_the_step():
    app = stream_app(stream_words)
    _, container = app.stream_result(halt_after=["streamer"], inputs={"text": "x y z"})
    for partial in container:
        assert partial == {"delta": "x"}
        break
    result, state = container.get()
    assert result == {"response": "X Y Z"}
    assert app.state == state


def test_application_continues_normally_after_a_stream():
    app = stream_app(stream_words)
    _, container = app.stream_result(halt_after=["streamer"], inputs={"text": "ab"})
    container.get()
    ran, _, state = app.run()
    assert ran.name == "measure"
    assert state["length"] == 2


def test_stream_result_of_a_non_streaming_action_yields_nothing_and_gives_its_result():
    app = stream_app(stream_words)
    ran, container = app.stream_result(halt_after=["prepare"], inputs={"text": "q"})
    assert ran.name == "prepare"
    assert list(container) == []
    assert container.get() == ({"prompt": "q"}, State({"prompt": "q"}))


def test_stream_result_halted_before_gives_an_empty_container():
    app = stream_app(stream_words)
    ran, container = app.stream_result(halt_after=["measure"], halt_before=["streamer"])
    assert ran.name == "streamer"
    assert list(container) == []
    assert container.get() == (None, State({"prompt": "hi"}))
    assert app.get_next_action().name == "streamer"


def test_streaming_action_run_by_step_drops_partials_and_updates_state():
    app = stream_app(stream_words)
    app.step(inputs={"text": "one two"})
    ran, result, state = app.step()
    assert ran.name == "streamer"
    assert result == {"response": "ONE TWO"}
    assert state == State({"prompt": "one two", "response": "ONE TWO"})
    assert app.run()[2]["length"] == 7


def test_streaming_action_post_hook_fires_once_the_stream_ends():
    seen = []

    class Recorder(PostRunStepHook):
        def post_run_step(self, *, action, result, **future_kwargs):
            seen.append((action.name, result))

    app = stream_app(stream_words, hooks=[Recorder()])
    _, container = app.stream_result(halt_after=["streamer"], inputs={"text": "k"})
    assert seen == [("prepare", {"prompt": "k"})]
    next(iter(container))
    assert len(seen) == 1
    container.get()
    assert seen[-1] == ("streamer", {"response": "K"})


def test_streaming_action_without_a_final_state_names_the_action():
    @streaming_action(reads=[], writes=[])
    def never_done(state):
        yield {"delta": 1}, None

    app = ApplicationBuilder().with_actions(never_done).with_entrypoint("never_done").build()
    with pytest.raises(GraphError, match="'never_done'"):
        app.step()
    assert app.sequence_id is None


def test_streaming_action_failing_midway_raises_from_the_stream_and_keeps_state():
    @streaming_action(reads=[], writes=["out"])
    def breaks(state):
        yield {"delta": 1}, None
        raise RuntimeError("stream broke")

    app = (
        ApplicationBuilder().with_actions(breaks).with_state(a=1).with_entrypoint("breaks").build()
    )
    _, container = app.stream_result(halt_after=["breaks"])
    stream = iter(container)
    assert next(stream) == {"delta": 1}
    with pytest.raises(RuntimeError, match="stream broke"):
        next(stream)
    assert app.state == State({"a": 1})
    assert app.get_next_action().name == "breaks"


def test_streaming_action_final_state_is_checked_against_writes():
    # As Burr, an undeclared write of a single-step action is kept; fanwise warns.
    @streaming_action(reads=[], writes=["out"])
    def sneaky(state):
        yield {"out": 1}, state.update(out=1, other=2)

    app = ApplicationBuilder().with_actions(sneaky).with_entrypoint("sneaky").build()
    _, container = app.stream_result(halt_after=["sneaky"])
    with pytest.warns(UndeclaredWriteWarning, match="'other'"):
        _, state = container.get()
    assert state == State({"out": 1, "other": 2})


def test_async_streaming_action_in_sync_stream_result_says_to_use_arun():
    app = stream_app(astream_words)
    _, container = app.stream_result(halt_after=["streamer"])
    with pytest.raises(AsyncMismatchError, match="arun"):
        list(container)
    assert "response" not in app.state


# -- async -------------------------------------------------------------------------------


def test_astream_result_streams_partials_of_an_async_streaming_action():
    app = stream_app(astream_words)

    async def go():
        ran, container = await app.astream_result(halt_after=["streamer"], inputs={"text": "a b"})
        partials = [p async for p in container]
        return ran, partials, await container.get()

    ran, partials, (result, state) = asyncio.run(go())
    assert ran.name == "streamer"
    assert partials == [{"delta": "a"}, {"delta": "b"}]
    assert result == {"response": "A B"}
    assert state == State({"prompt": "a b", "response": "A B"})
    assert app.state == state
    assert app.get_next_action().name == "measure"


def test_astream_result_also_streams_a_sync_streaming_action():
    app = stream_app(stream_words)

    async def go():
        _, container = await app.astream_result(halt_after=["streamer"], inputs={"text": "p q"})
        return [p async for p in container], await container.get()

    partials, (result, _) = asyncio.run(go())
    assert partials == [{"delta": "p"}, {"delta": "q"}]
    assert result == {"response": "P Q"}


def test_async_streaming_action_run_by_astep_drops_partials_and_updates_state():
    app = stream_app(astream_words)

    async def go():
        await app.astep(inputs={"text": "x"})
        return await app.astep()

    ran, result, state = asyncio.run(go())
    assert ran.name == "streamer"
    assert result == {"response": "X"}
    assert state["response"] == "X"


def test_async_streaming_action_in_sync_step_says_to_use_arun():
    app = stream_app(astream_words)
    app.step()
    with pytest.raises(AsyncMismatchError, match="arun"):
        app.step()


def test_astream_result_get_after_a_partial_read_finishes_the_step():
    app = stream_app(astream_words)

    async def go():
        _, container = await app.astream_result(halt_after=["streamer"], inputs={"text": "u v w"})
        async for partial in container:
            assert partial == {"delta": "u"}
            break
        rest = [p async for p in container]
        return rest, await container.get()

    rest, (result, state) = asyncio.run(go())
    assert rest == [{"delta": "v"}, {"delta": "w"}]
    assert result == {"response": "U V W"}
    assert app.state == state
