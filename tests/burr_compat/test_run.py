"""Burr's run semantics: a halt is checked after each step, so `run`/`iterate` (and their
async twins) always run the next action, even one named in `halt_before`; what they return
when they stop; `iterate()`'s `StopIteration` value."""

import asyncio

import pytest
from fanwise.core import ApplicationBuilder, State, action, default, expr, streaming_action
from fanwise.core.persistence import SQLLitePersister


@action(reads=["n"], writes=["n"])
def count(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["n"])
async def acount(state: State) -> State:
    await asyncio.sleep(0)
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["total"])
def finish(state: State) -> tuple[dict, State]:
    return {"total": state["n"]}, state.update(total=state["n"])


def counter(counter_action=count, limit=3):
    return (
        ApplicationBuilder()
        .with_actions(finish, count=counter_action)
        .with_transitions(("count", "count", expr(f"n < {limit}")), ("count", "finish", default))
        .with_state(n=0)
        .with_entrypoint("count")
        .build()
    )


def drain(generator):
    """Every item of a generator, and its return value."""
    items = []
    while True:
        try:
            items.append(next(generator))
        except StopIteration as stop:
            return items, stop.value


def test_run_halting_before_the_next_action_runs_it_then_halts_before_its_next_turn():
    app = counter()
    ran, result, state = app.run(halt_before=["count"])
    assert (ran.name, result, state["n"]) == ("count", None, 1)
    assert app.sequence_id == 0
    assert app.run(halt_before=["count"])[2]["n"] == 2  # every call makes progress


def test_run_halting_before_returns_the_next_action_with_no_result():
    app = counter()
    ran, result, state = app.run(halt_before=["finish"])
    assert (ran.name, result, state["n"]) == ("finish", None, 3)
    assert app.get_next_action().name == "finish"


def test_run_halting_after_returns_that_action_and_its_result():
    ran, result, state = counter().run(halt_after=["finish"])
    assert (ran.name, result, state["total"]) == ("finish", {"total": 3}, 3)


def test_halt_before_wins_over_halt_after_in_what_run_returns():
    app = counter(limit=1)
    ran, result, _ = app.run(halt_before=["finish"], halt_after=["count"])
    assert (ran.name, result) == ("finish", None)


def test_run_to_the_end_without_halts_returns_the_last_step():
    ran, result, state = counter().run()
    assert (ran.name, result, state["total"]) == ("finish", {"total": 3}, 3)


def test_run_with_nothing_left_to_run_returns_none_none_and_the_state():
    app = counter()
    app.run()
    assert app.run(halt_after=["finish"]) == (None, None, app.state)


def test_iterate_yields_each_step_and_returns_what_run_would():
    steps, returned = drain(counter().iterate(halt_before=["finish"]))
    assert [(a.name, s["n"]) for a, _, s in steps] == [("count", 1), ("count", 2), ("count", 3)]
    action_, result, state = returned
    assert (action_.name, result, state["n"]) == ("finish", None, 3)

    steps, returned = drain(counter().iterate(halt_after=["finish"]))
    assert returned[0].name == "finish" and returned[1] == {"total": 3}
    assert steps[-1][0].name == "finish"


def test_iterate_halting_before_the_next_action_still_yields_one_step():
    steps, returned = drain(counter().iterate(halt_before=["count"]))
    assert [a.name for a, _, _ in steps] == ["count"]
    assert (returned[0].name, returned[1], returned[2]["n"]) == ("count", None, 1)


def test_arun_and_aiterate_halt_as_run_and_iterate_do():
    async def scenario():
        app = counter(acount)
        first = await app.arun(halt_before=["count"])
        names = [a.name async for a, _, _ in app.aiterate(halt_before=["count"])]
        last = await app.arun(halt_before=["finish"])
        return first, names, last

    first, names, last = asyncio.run(scenario())
    assert (first[0].name, first[1], first[2]["n"]) == ("count", None, 1)
    assert names == ["count"]
    assert (last[0].name, last[1], last[2]["n"]) == ("finish", None, 3)


def test_stream_fanout_and_astream_fanout_make_progress_like_iterate():
    app = counter()
    events = list(app.stream_fanout(halt_before=["count"]))
    assert [e.kind for e in events] == ["done"]
    assert events[0].data[2]["n"] == 1

    async def scenario():
        return [e async for e in counter(acount).astream_fanout(halt_before=["count"])]

    events = asyncio.run(scenario())
    assert [(e.kind, e.data[2]["n"]) for e in events] == [("done", 1)]


# -- the web-server pattern: each request resumes the app at a human-input step --------


@action(reads=[], writes=["email", "instructions"])
def take_email(state: State, email: str, instructions: str) -> State:
    return state.update(email=email, instructions=instructions)


@action(reads=["instructions"], writes=["questions"])
def ask(state: State) -> State:
    return state.update(questions=["tone?"] if "?" in state["instructions"] else [])


@action(reads=["questions"], writes=["answers"])
def clarify_instructions(state: State, clarification_inputs: list[str]) -> State:
    return state.update(answers=list(clarification_inputs))


@action(reads=["email", "feedback"], writes=["draft", "drafts"])
def draft(state: State) -> State:
    text = f"re: {state['email']} {state.get('feedback', '')}".strip()
    return state.update(draft=text).append(drafts=text)


@action(reads=[], writes=["feedback"])
def process_feedback(state: State, feedback: str) -> State:
    return state.update(feedback=feedback)


@action(reads=["draft"], writes=["final"])
def final_result(state: State) -> State:
    return state.update(final=state["draft"])


def resumed(db_path, app_id):
    """What each request of the tutorial's server does: build the app from its saved state."""
    persister = SQLLitePersister(db_path, "email")
    persister.initialize()
    return (
        ApplicationBuilder()
        .with_actions(take_email, ask, clarify_instructions, draft, process_feedback, final_result)
        .with_transitions(
            ("take_email", "ask"),
            ("ask", "clarify_instructions", expr("len(questions) > 0")),
            ("ask", "draft"),
            ("clarify_instructions", "draft"),
            ("draft", "process_feedback"),
            ("process_feedback", "draft", expr("len(feedback) > 0")),
            ("process_feedback", "final_result"),
        )
        .with_identifiers(app_id=app_id)
        .with_state_persister(persister)
        .initialize_from(persister, resume_at_next_action=True,
                         default_state={"drafts": []}, default_entrypoint="take_email")
        .build()
    )


def request(db_path, app_id, **inputs):
    with resumed(db_path, app_id) as app:
        app.run(halt_before=["clarify_instructions", "process_feedback"],
                halt_after=["final_result"], inputs=inputs)
        following = app.get_next_action()
        return (following.name if following else None), app.state


@pytest.mark.parametrize("instructions", ["say yes?", "say yes"])
def test_the_web_server_tutorial_flow_moves_forward_on_every_request(tmp_path, instructions):
    db = tmp_path / "email.db"
    waiting, _ = request(db, "a1", email="hi", instructions=instructions)
    if instructions.endswith("?"):
        assert waiting == "clarify_instructions"
        waiting, state = request(db, "a1", clarification_inputs=["friendly"])
        assert state["answers"] == ["friendly"]
    assert waiting == "process_feedback"
    waiting, state = request(db, "a1", feedback="shorter")
    assert (waiting, state["drafts"]) == ("process_feedback", ["re: hi", "re: hi shorter"])
    waiting, state = request(db, "a1", feedback="")
    assert (waiting, state["final"]) == (None, "re: hi shorter")


# -- stream_iterate / astream_iterate ---------------------------------------------------


@action(reads=[], writes=["prompt"])
def prepare(state: State, text: str = "hi there") -> State:
    return state.update(prompt=text)


@streaming_action(reads=["prompt"], writes=["response"])
def words(state: State):
    for word in state["prompt"].split():
        yield {"delta": word}, None
    yield {"response": state["prompt"].upper()}, state.update(response=state["prompt"].upper())


@streaming_action(reads=["prompt"], writes=["response"])
async def awords(state: State):
    for word in state["prompt"].split():
        await asyncio.sleep(0)
        yield {"delta": word}, None
    yield {"response": state["prompt"].upper()}, state.update(response=state["prompt"].upper())


@action(reads=["response"], writes=["length"])
def measure(state: State) -> State:
    return state.update(length=len(state["response"]))


def chat(streamer=words):
    return (
        ApplicationBuilder()
        .with_actions(prepare, measure, words=streamer)
        .with_transitions(("prepare", "words"), ("words", "measure"), ("measure", "prepare"))
        .with_entrypoint("prepare")
        .build()
    )


def test_stream_iterate_streams_every_step_until_a_halt():
    app = chat()
    seen = [(a.name, list(container)) for a, container in app.stream_iterate(
        halt_after=["measure"])]
    assert seen == [("prepare", []), ("words", [{"delta": "hi"}, {"delta": "there"}]),
                    ("measure", [])]
    assert (app.state["length"], app.get_next_action().name) == (8, "prepare")


def test_stream_iterate_drains_a_container_left_unread_and_halts_like_iterate():
    app = chat()
    names = [a.name for a, _ in app.stream_iterate(halt_before=["measure"])]
    assert names == ["prepare", "words"]
    assert app.state["response"] == "HI THERE"
    assert [a.name for a, _ in app.stream_iterate(halt_before=["prepare"])] == ["measure"]


def test_astream_iterate_streams_async_steps():
    async def scenario():
        app = chat(awords)
        seen = []
        async for a, container in app.astream_iterate(halt_after=["words"]):
            seen.append((a.name, [item async for item in container]))
        return seen, (await container.get())[0]

    seen, result = asyncio.run(scenario())
    assert seen == [("prepare", []), ("words", [{"delta": "hi"}, {"delta": "there"}])]
    assert result == {"response": "HI THERE"}
