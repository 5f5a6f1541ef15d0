import asyncio

import pytest
from fanwise.core import ApplicationBuilder, AsyncMismatchError, Graph, ParentPointer, State, action
from fanwise.core.hooks import (
    PostApplicationCreateHook,
    PostRunStepHook,
    PostRunStepHookAsync,
    PreRunStepHook,
    PreRunStepHookAsync,
)


@action(reads=["n"], writes=["n"])
def count(state, by=1):
    return state.update(n=state["n"] + by)


@action(reads=[], writes=[])
def fail(state):
    raise RuntimeError("nope")


class Pre(PreRunStepHook):
    def __init__(self, log):
        self.log = log

    def pre_run_step(self, **kwargs):
        self.log.append(("pre", kwargs))


class Post(PostRunStepHook):
    def __init__(self, log):
        self.log = log

    def post_run_step(self, **kwargs):
        self.log.append(("post", kwargs))


class AsyncPre(PreRunStepHookAsync):
    def __init__(self, log):
        self.log = log

    async def pre_run_step(self, **kwargs):
        await asyncio.sleep(0)
        self.log.append(("apre", kwargs))


class AsyncPost(PostRunStepHookAsync):
    def __init__(self, log):
        self.log = log

    async def post_run_step(self, **kwargs):
        await asyncio.sleep(0)
        self.log.append(("apost", kwargs))


class Created(PostApplicationCreateHook):
    def __init__(self, log):
        self.log = log

    def post_application_create(self, **kwargs):
        self.log.append(("created", kwargs))


def app_with(*hooks, first="count", **identifiers):
    return (
        ApplicationBuilder()
        .with_actions(count, fail)
        .with_transitions(("count", "count"))
        .with_state(n=0)
        .with_entrypoint(first)
        .with_identifiers(**identifiers)
        .with_hooks(*hooks)
        .build()
    )


def test_pre_and_post_hooks_receive_the_documented_keyword_arguments():
    log = []
    app = app_with(Pre(log), Post(log), app_id="hooked", partition_key="pk")
    app.step(inputs={"by": 2, "undeclared": 3})
    (pre_name, pre), (post_name, post) = log
    assert (pre_name, post_name) == ("pre", "post")
    assert set(pre) == {"app_id", "partition_key", "sequence_id", "state", "action", "inputs"}
    assert set(post) == {
        "app_id",
        "partition_key",
        "sequence_id",
        "state",
        "action",
        "result",
        "exception",
    }
    assert (pre["app_id"], pre["partition_key"], pre["sequence_id"]) == ("hooked", "pk", 0)
    assert pre["action"].name == "count"
    assert pre["inputs"] == {"by": 2}
    assert pre["state"] == State({"n": 0})
    assert (post["app_id"], post["partition_key"], post["sequence_id"]) == ("hooked", "pk", 0)
    assert post["state"] == State({"n": 2})
    assert post["result"] == {"n": 2}
    assert post["exception"] is None


def test_hooks_see_increasing_sequence_ids():
    log = []
    app_with(Pre(log)).run(halt_after=["count"])
    app = app_with(Pre(log))
    for _ in range(3):
        app.step()
    assert [kw["sequence_id"] for _, kw in log] == [0, 0, 1, 2]


def test_post_hook_of_a_failed_step_gets_the_exception_and_the_old_state():
    log = []
    app = app_with(Pre(log), Post(log), first="fail")
    with pytest.raises(RuntimeError, match="nope"):
        app.step()
    (_, pre), (_, post) = log
    assert post["result"] is None
    assert isinstance(post["exception"], RuntimeError)
    assert post["state"] == State({"n": 0})
    assert post["sequence_id"] == pre["sequence_id"] == 0


def test_hooks_tolerate_new_arguments_through_future_kwargs():
    seen = []

    class Minimal(PreRunStepHook, PostRunStepHook):
        def pre_run_step(self, *, action, **future_kwargs):
            seen.append(("pre", action.name))

        def post_run_step(self, *, result, **future_kwargs):
            seen.append(("post", result))

    app_with(Minimal()).step()
    assert seen == [("pre", "count"), ("post", {"n": 1})]


def test_hooks_run_in_registration_order():
    log = []
    first, second = Pre(log), Pre(log)
    first.pre_run_step = lambda **kw: log.append("first")
    second.pre_run_step = lambda **kw: log.append("second")
    app_with(first, second).step()
    assert log == ["first", "second"]


def test_pre_hook_that_raises_stops_the_step_before_the_action():
    ran = []

    class Veto(PreRunStepHook):
        def pre_run_step(self, **future_kwargs):
            raise PermissionError("vetoed")

    @action(reads=[], writes=[])
    def guarded(state):
        ran.append(1)
        return state

    app = (
        ApplicationBuilder()
        .with_actions(guarded)
        .with_entrypoint("guarded")
        .with_hooks(Veto())
        .build()
    )
    with pytest.raises(PermissionError, match="vetoed"):
        app.step()
    assert ran == []
    assert app.sequence_id is None


def test_post_application_create_is_called_once_at_build():
    log = []
    app = (
        ApplicationBuilder()
        .with_actions(count)
        .with_state(n=5)
        .with_entrypoint("count")
        .with_identifiers(app_id="made", partition_key="pk")
        .with_spawning_parent("parent", 3, "parent-pk")
        .with_hooks(Created(log))
        .build()
    )
    assert len(log) == 1
    _, created = log[0]
    assert set(created) == {
        "app_id",
        "partition_key",
        "state",
        "application_graph",
        "parent_pointer",
        "spawning_parent_pointer",
    }
    assert (created["app_id"], created["partition_key"]) == ("made", "pk")
    assert created["state"] == State({"n": 5})
    assert isinstance(created["application_graph"], Graph)
    assert created["application_graph"] is app.graph
    assert created["parent_pointer"] is None
    assert created["spawning_parent_pointer"] == ParentPointer("parent", 3, "parent-pk")
    app.run(halt_after=["count"])
    assert len(log) == 1


def test_post_application_create_is_called_by_abuild():
    log = []

    async def go():
        return await (
            ApplicationBuilder()
            .with_actions(count)
            .with_entrypoint("count")
            .with_hooks(Created(log))
            .abuild()
        )

    app = asyncio.run(go())
    assert log[0][1]["app_id"] == app.uid


# -- the sync/async matrix ---------------------------------------------------------------


def test_sync_hooks_run_in_an_async_run():
    log = []
    asyncio.run(app_with(Pre(log), Post(log)).arun(halt_after=["count"]))
    assert [name for name, _ in log] == ["pre", "post"]
    assert log[1][1]["state"] == State({"n": 1})


def test_async_hooks_are_awaited_in_an_async_run():
    log = []
    asyncio.run(app_with(AsyncPre(log), AsyncPost(log)).arun(halt_after=["count"]))
    assert [name for name, _ in log] == ["apre", "apost"]
    assert log[0][1]["state"] == State({"n": 0})
    assert log[1][1]["result"] == {"n": 1}


def test_async_post_hook_gets_the_exception_of_a_failed_async_run_step():
    log = []
    app = app_with(AsyncPost(log), first="fail")
    with pytest.raises(RuntimeError, match="nope"):
        asyncio.run(app.arun())
    assert isinstance(log[0][1]["exception"], RuntimeError)


def test_sync_and_async_hooks_mix_in_an_async_run_in_registration_order():
    log = []
    asyncio.run(app_with(AsyncPre(log), Pre(log), Post(log), AsyncPost(log)).astep())
    assert [name for name, _ in log] == ["apre", "pre", "post", "apost"]


@pytest.mark.parametrize("hook_class", [AsyncPre, AsyncPost])
def test_async_hook_in_a_sync_run_is_an_error_not_skipped(hook_class):
    log = []
    app = app_with(hook_class(log))
    with pytest.raises(AsyncMismatchError, match=f"{hook_class.__name__}.*arun"):
        app.step()
    assert log == []
    assert app.state == State({"n": 0})
    assert app.sequence_id is None


def test_sync_hook_class_with_an_async_method_is_an_error_in_a_sync_run():
    class Mistaken(PreRunStepHook):
        async def pre_run_step(self, **future_kwargs):
            raise AssertionError("never awaited")

    app = app_with(Mistaken())
    with pytest.raises(AsyncMismatchError, match="arun"):
        app.step()
    assert app.state == State({"n": 0})
