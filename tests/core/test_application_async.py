import asyncio

import pytest
from fanwise.core import (
    Action,
    ApplicationBuilder,
    AsyncMismatchError,
    Result,
    State,
    action,
    expr,
)
from fanwise.core.persistence.base import AsyncBaseStatePersister


@action(reads=["n"], writes=["n"])
async def acount(state):
    await asyncio.sleep(0)
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["parity"])
def classify(state):
    return state.update(parity="even" if state["n"] % 2 == 0 else "odd")


class AsyncDouble(Action):
    reads: list[str] = ["n"]
    writes: list[str] = ["n"]

    async def run(self, state):
        await asyncio.sleep(0)
        return {"n": state["n"] * 2}

    def update(self, result, state):
        return state.update(**result)


def mixed_app(n=0, **identifiers):
    return (
        ApplicationBuilder()
        .with_actions(acount, classify, double=AsyncDouble(), done=Result("n", "parity"))
        .with_transitions(
            ("acount", "acount", expr("n < 2")),
            ("acount", "double"),
            ("double", "classify"),
            ("classify", "done"),
        )
        .with_state(n=n)
        .with_entrypoint("acount")
        .with_identifiers(**identifiers)
        .build()
    )


def test_arun_runs_async_and_sync_actions_to_the_end():
    app = mixed_app()
    ran, result, state = asyncio.run(app.arun())
    assert ran.name == "done"
    assert result == {"n": 4, "parity": "even"}
    assert state == State({"n": 4, "parity": "even"})
    assert app.sequence_id == 4


def test_astep_runs_one_action_and_returns_none_at_the_end():
    app = mixed_app(n=5)

    async def go():
        names = []
        while (outcome := await app.astep()) is not None:
            names.append(outcome[0].name)
        return names

    assert asyncio.run(go()) == ["acount", "double", "classify", "done"]
    assert app.state["n"] == 12


def test_aiterate_yields_every_step_until_halt_after():
    app = mixed_app()

    async def go():
        return [(a.name, s["n"]) async for a, _, s in app.aiterate(halt_after=["double"])]

    assert asyncio.run(go()) == [("acount", 1), ("acount", 2), ("double", 4)]
    assert app.get_next_action().name == "classify"


def test_arun_with_halt_before_returns_the_next_action_and_no_result():
    app = mixed_app()
    ran, result, state = asyncio.run(app.arun(halt_before=["classify"]))
    assert ran.name == "classify"
    assert result is None
    assert state == State({"n": 4})


def test_arun_with_halt_after_returns_that_action_and_its_result():
    app = mixed_app()
    ran, result, _ = asyncio.run(app.arun(halt_after=["double"]))
    assert ran.name == "double"
    assert result == {"n": 4}


def test_async_action_passes_inputs():
    @action(reads=[], writes=["echo"])
    async def echo(state, text, suffix="!"):
        return state.update(echo=text + suffix)

    app = ApplicationBuilder().with_actions(echo).with_entrypoint("echo").build()
    _, _, state = asyncio.run(app.astep(inputs={"text": "hi", "unused": 1}))
    assert state["echo"] == "hi!"


def test_failing_async_action_leaves_state_and_next_action_in_place():
    calls = []

    @action(reads=["n"], writes=["n"])
    async def explode(state):
        calls.append(1)
        await asyncio.sleep(0)
        if len(calls) == 1:
            raise ValueError("boom")
        return state.update(n=state["n"] + 1)

    app = (
        ApplicationBuilder()
        .with_actions(explode)
        .with_state(n=0)
        .with_entrypoint("explode")
        .build()
    )
    with pytest.raises(ValueError, match="boom"):
        asyncio.run(app.arun())
    assert app.state == State({"n": 0})
    assert app.get_next_action().name == "explode"
    _, _, state = asyncio.run(app.astep())
    assert state["n"] == 1


def test_async_run_sees_context():
    @action(reads=[], writes=["seen"])
    async def spy(state, __context):
        return state.update(seen=(__context.app_id, __context.sequence_id))

    app = (
        ApplicationBuilder().with_actions(spy).with_entrypoint("spy").with_identifiers("a1").build()
    )
    _, _, state = asyncio.run(app.astep())
    assert state["seen"] == ("a1", 0)


def test_async_actions_of_two_apps_interleave_on_one_loop():
    order = []

    def make(label):
        @action(reads=[], writes=[])
        async def wait(state):
            order.append(f"{label}-start")
            await asyncio.sleep(0.01)
            order.append(f"{label}-end")
            return state

        return ApplicationBuilder().with_actions(wait).with_entrypoint("wait").build()

    async def go():
        await asyncio.gather(make("a").arun(), make("b").arun())

    asyncio.run(go())
    assert order[:2] == ["a-start", "b-start"]


# -- async persisters --------------------------------------------------------------------


class AsyncDictPersister(AsyncBaseStatePersister):
    def __init__(self):
        self.rows = {}

    async def load(self, partition_key, app_id, sequence_id=None):
        await asyncio.sleep(0)
        rows = self.rows.get((partition_key, app_id), {})
        if not rows:
            return None
        return rows[max(rows) if sequence_id is None else sequence_id]

    async def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        await asyncio.sleep(0)
        self.rows.setdefault((partition_key, app_id), {})[sequence_id] = {
            "partition_key": partition_key,
            "app_id": app_id,
            "sequence_id": sequence_id,
            "position": position,
            "state": state,
            "created_at": "now",
            "status": status,
        }


def persisted_app(persister, build):
    return build(
        ApplicationBuilder()
        .with_actions(acount, classify)
        .with_transitions(("acount", "classify"))
        .with_identifiers(app_id="async-app")
        .with_state_persister(persister)
        .initialize_from(persister, default_state={"n": 0}, default_entrypoint="acount")
    )


def test_build_with_an_async_persister_points_at_abuild():
    with pytest.raises(AsyncMismatchError, match="abuild"):
        persisted_app(AsyncDictPersister(), lambda b: b.build())


def test_abuild_with_an_async_persister_saves_and_resumes():
    persister = AsyncDictPersister()

    async def go():
        first = await persisted_app(persister, lambda b: b.abuild())
        await first.arun(halt_after=["acount"])
        second = await persisted_app(persister, lambda b: b.abuild())
        return second, await second.arun()

    second, (ran, _, state) = asyncio.run(go())
    assert ran.name == "classify"
    assert state == State({"n": 1, "parity": "odd"})
    assert second.sequence_id == 1
    rows = persister.rows[(None, "async-app")]
    assert [(s, r["position"], r["status"]) for s, r in sorted(rows.items())] == [
        (0, "acount", "completed"),
        (1, "classify", "completed"),
    ]


def test_sync_step_with_an_async_persister_fails_before_running_the_action():
    ran = []

    @action(reads=[], writes=[])
    def side_effect(state):
        ran.append(1)
        return state

    persister = AsyncDictPersister()

    async def build():
        return await (
            ApplicationBuilder()
            .with_actions(side_effect)
            .with_state_persister(persister)
            .initialize_from(persister, default_entrypoint="side_effect")
            .abuild()
        )

    app = asyncio.run(build())
    with pytest.raises(AsyncMismatchError, match="arun"):
        app.step()
    assert ran == []
    assert persister.rows == {}
