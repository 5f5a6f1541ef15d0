"""The step runner: one generator per step, driven either synchronously or by asyncio.

The step logic is written once, as a generator that yields whatever may need waiting
(a coroutine from an async action, hook or persister, or a plain value). The sync driver
sends plain values straight back and refuses awaitables; the async driver awaits them.
Streaming actions additionally yield `Partial` items, which `stream_result` hands out.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fanwise.core import context, visibility
from fanwise.core._declared_reads import UndeclaredWriteWarning
from fanwise.core.errors import AsyncMismatchError, GraphError, InputError, LeaseLostError
from fanwise.core.hooks import (
    ExecuteMethod,
    HookSet,
    afinish_call,
    async_hook_reason,
    finish_call,
)
from fanwise.core.persistence.base import FencedStore
from fanwise.core.protocols import MaybeAsync, conforms
from fanwise.core.state import State

if TYPE_CHECKING:
    from fanwise.core.actions import Action
    from fanwise.core.application import Application

StepGen = Generator[Any, Any, "StepOutcome"]


@dataclass(frozen=True)
class StepOutcome:
    """What one step produced."""

    action: Action
    result: dict[str, Any] | None
    state: State


@dataclass(frozen=True)
class Partial:
    """An intermediate result of a streaming action."""

    value: Any


def select_inputs(action: Action, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs `action` declares, after checking none is missing or reserved."""
    reserved = [k for k in inputs if k.startswith("__")]
    if reserved:
        raise InputError(f"input key(s) {reserved} start with '__', which is reserved")
    required, optional = action.input_spec
    # "__" names (`__context`, `__tracer`) are the engine's to give, as Burr's class
    # actions list them among their inputs
    missing = [k for k in required if k not in inputs and not k.startswith("__")]
    if missing:
        raise InputError(
            f"action {action.name!r} needs input(s) {missing}: pass them as inputs={{...}}"
        )
    if action.takes_any_inputs:
        return dict(inputs)
    return {k: inputs[k] for k in (*required, *optional) if k in inputs}


def apply_writes(action: Action, before: State, after: State) -> State:
    """`before` with the fields `action` declares as writes taken from `after`.

    A field changed but not declared is an error for a two-step action (`run` + `update`),
    as in Burr; a single-step action (`@action` functions) keeps it with an
    `UndeclaredWriteWarning`, since Burr lets such a write through."""
    old, new = before._data, after._data
    writes = action.writes
    undeclared: list[str] = []
    for key, value in new.items():
        if key not in writes and (key not in old or old[key] is not value):
            if not action.single_step:
                raise GraphError(
                    f"action {action.name!r} changed state field {key!r}, which is not in its "
                    f"writes={list(writes)}"
                )
            undeclared.append(key)
    data = dict(old)
    for key in writes:
        if key in new:
            data[key] = new[key]
        else:
            data.pop(key, None)
    if undeclared:
        warnings.warn(
            UndeclaredWriteWarning(
                f"action {action.name!r} changed state field(s) {undeclared}, which are not "
                f"in its writes={list(writes)}: kept, as Burr does; declare them in writes"
            ),
            stacklevel=2,
        )
        data.update((key, new[key]) for key in undeclared)
    return State(data, before._typing)


def is_async_adapter(adapter: Any) -> bool:
    """Whether a persister, loader or tracker says it is async (`is_async()`)."""
    return conforms(adapter, MaybeAsync) and bool(adapter.is_async())


def async_only_reason(hooks: list[Any], saver: Any, built_async: bool = False) -> str | None:
    """Why an application with these hooks and saver (built with `abuild()` if
    `built_async`) can run only with arun/astep/aiterate."""
    if built_async:  # as Burr: an abuild() app runs async, whatever its parts
        return (
            "the application was built with .abuild(), so it runs with the async methods "
            "(astep/arun/aiterate/astream_result); build it with .build() to run it sync"
        )
    reason = async_hook_reason(hooks)
    if reason is not None:
        return reason
    if is_async_adapter(saver):
        return (
            f"the state persister {type(saver).__name__} is async: run the application "
            "with arun/astep/aiterate"
        )
    return None


def _check_async_allowed(app: Application, action: Action, async_run: bool) -> None:
    if async_run:
        return
    if action.is_async():
        raise AsyncMismatchError(
            f"action {action.name!r} is async: run the application with arun/astep/aiterate"
        )
    if app._async_only_reason is not None:
        raise AsyncMismatchError(app._async_only_reason)


class _StreamReport:
    """The stream hooks of one streaming step (`pre_start_stream`, `post_stream_item`,
    `post_end_stream`), as effects of the step generator."""

    def __init__(self, hooks: HookSet, ids: dict[str, Any]) -> None:
        self._hooks = hooks
        self._ids = ids
        self._started = datetime.now(UTC)
        self._first_item: datetime | None = None
        self._items = 0

    def started(self) -> Iterator[Any]:
        for hook in self._hooks.methods("pre_start_stream"):
            yield hook(**self._ids)

    def item(self, value: Any) -> Iterator[Any]:
        self._items += 1
        if self._first_item is None:
            self._first_item = datetime.now(UTC)
        for hook in self._hooks.methods("post_stream_item"):
            yield hook(
                **self._ids,
                item=value,
                item_index=self._items,
                stream_initialize_time=self._started,
                first_stream_item_start_time=self._first_item,
            )

    def ended(self) -> Iterator[Any]:
        for hook in self._hooks.methods("post_end_stream"):
            yield hook(**self._ids)


def _stream_report(app: Application, action: Action, sequence_id: int) -> _StreamReport | None:
    if not action.streaming or not app._hook_set.streams:
        return None
    ids = {
        "action": action.name,
        "sequence_id": sequence_id,
        "app_id": app.uid,
        "partition_key": app.partition_key,
    }
    return _StreamReport(app._hook_set, ids)


def _run_action(
    action: Action, state: State, inputs: dict[str, Any], report: _StreamReport | None = None
) -> StepGen:
    """Yield what the action needs awaited; return (result, state)."""
    if not action.streaming:
        return (yield action.execute(state, inputs))
    if report is not None:
        yield from report.started()
    stream = action.stream(state, inputs)
    if inspect.isasyncgen(stream):
        while True:
            try:
                item = yield stream.__anext__()
            except StopAsyncIteration:
                break
            if item[1] is not None:
                return item
            if report is not None:
                yield from report.item(item[0])
            yield Partial(item[0])
    else:
        for item in stream:
            if item[1] is not None:
                return item
            if report is not None:
                yield from report.item(item[0])
            yield Partial(item[0])
    raise GraphError(
        f"streaming action {action.name!r} ended without yielding a final (result, state)"
    )


def step(app: Application, inputs: dict[str, Any] | None, async_run: bool) -> StepGen:
    """Run the next action of `app`: hooks, action, persistence, transition."""
    action = app.get_next_action()
    if action is None:
        return None
    app._check_open()
    if app._saver is not None and conforms(app._saver, FencedStore):
        app._saver.check_fence()  # a driver that knows it lost its lease runs no more actions
    _check_async_allowed(app, action, async_run)
    chosen = select_inputs(action, inputs or {})
    sequence_id = app._next_sequence_id
    context_param = action.context_param
    if context_param is not None:
        chosen_with_context = {**chosen, context_param: app._context(action, sequence_id)}
    else:
        chosen_with_context = chosen
    tracer = _tracer(app, action, sequence_id)
    if tracer is not None and action.tracer_param is not None:
        chosen_with_context = {**chosen_with_context, action.tracer_param: tracer}
    report = _stream_report(app, action, sequence_id)
    before = app._state
    ids = {"app_id": app.uid, "partition_key": app.partition_key, "sequence_id": sequence_id}
    for hook in app._pre_hooks:
        yield hook.pre_run_step(**ids, state=before, action=action, inputs=chosen)
    try:
        token = visibility.activate(tracer) if tracer is not None else None
        running = context.running_action.set((app, action, sequence_id))
        try:
            result, returned = yield from _run_action(action, before, chosen_with_context, report)
        finally:
            context.left(running)
            if token is not None:
                visibility.deactivate(token)
        after = apply_writes(action, before, returned)
        if app._saver is not None:
            yield app._saver.save(
                app.partition_key, app.uid, sequence_id, action.name, after, "completed"
            )
            if app._stored_form is not None:  # go on as a resumed run would
                after = app._stored_form(after)
    except Exception as exc:
        lost = yield from save_failed_step(
            app._saver, app.partition_key, app.uid, sequence_id, action.name, before, exc
        )
        for hook in app._post_hooks:
            yield hook.post_run_step(
                **ids, state=before, action=action, result=None, exception=exc
            )
        if report is not None:
            yield from report.ended()
        if lost is not None:
            raise lost from exc
        raise
    app._advance(action, after, sequence_id)
    for hook in app._post_hooks:
        yield hook.post_run_step(**ids, state=after, action=action, result=result, exception=None)
    if report is not None:
        yield from report.ended()
    return StepOutcome(action, result, after)


def save_failed_step(
    saver: Any, partition_key: str | None, app_id: str, sequence_id: int, action_name: str,
    before: State, exc: Exception,
) -> StepGen:
    """Save `before` as the failed step `sequence_id` (so that a resume restarts it), unless
    there is no saver or the step itself lost the lease. Returns the `LeaseLostError` of
    that save, which outranks the step's own error `exc` (this driver must stop); any other
    error of the save is noted on `exc`, which stays the one raised."""
    if saver is None or isinstance(exc, LeaseLostError):
        return None
    try:
        yield saver.save(partition_key, app_id, sequence_id, action_name, before, "failed")
    except LeaseLostError as lost:
        return lost
    except Exception as save_exc:
        exc.add_note(f"saving the failed step {sequence_id} also failed: {save_exc!r}")
    return None


def ending_call(app: Application, gen: StepGen, method: ExecuteMethod, async_run: bool) -> StepGen:
    """The step `gen` of a `stream_result` call that `start_call` reported: the call ends
    (`post_run_execute_call`) when its stream does, as in Burr, not when the container is
    returned."""
    try:
        result = yield from gen
    except GeneratorExit:  # the stream was dropped unfinished: nothing can be awaited now
        finish_call(app, method, None)
        raise
    except BaseException as exc:
        yield from _finish(app, method, exc, async_run)
        raise
    yield from _finish(app, method, None, async_run)
    return result


def _finish(
    app: Application, method: ExecuteMethod, exc: BaseException | None, async_run: bool
) -> Generator[Any, Any, None]:
    if async_run:
        yield afinish_call(app, method, exc)
    else:
        finish_call(app, method, exc)


def _tracer(app: Application, action: Action, sequence_id: int) -> visibility.TracerFactory | None:
    """The step's `TracerFactory`: for a `__tracer` parameter, or for `@trace()` functions
    when some hook records spans (without one, a span would reach no one)."""
    if action.tracer_param is None and not app._hook_set.traces:
        return None
    return visibility.TracerFactory(
        action.name, sequence_id, app.uid, app.partition_key, app._hook_set
    )


_PLAIN = frozenset({type(None), list, dict, tuple, bool, int, str})
"""Types of effects that are never awaitable, checked before the slower protocol tests (a
fan-out sends several such effects per child: the trivial-children row of
`benchmarks/workloads.py`)."""


class Driver:
    """Runs one step generator; iterate it (sync or async) to receive streamed partials."""

    def __init__(self, gen: StepGen) -> None:
        self._gen = gen
        self.result: Any = None

    def _advance(self, send: Any, throw: BaseException | None) -> tuple[bool, Any]:
        try:
            effect = self._gen.throw(throw) if throw is not None else self._gen.send(send)
        except StopIteration as stop:
            self.result = stop.value
            return True, None
        return False, effect

    def __iter__(self) -> Iterator[Any]:
        send: Any = None
        throw: BaseException | None = None
        try:
            while True:
                done, effect = self._advance(send, throw)
                if done:
                    return
                send, throw = None, None
                if type(effect) in _PLAIN:  # most effects: values to send straight back
                    send = effect
                elif isinstance(effect, Partial):
                    yield effect.value
                elif inspect.isawaitable(effect):
                    if inspect.iscoroutine(effect):
                        effect.close()
                    throw = AsyncMismatchError(
                        "an async function was reached from a sync run: use arun/astep/aiterate"
                    )
                else:
                    send = effect
        finally:
            self._gen.close()

    async def __aiter__(self) -> AsyncIterator[Any]:
        send: Any = None
        throw: BaseException | None = None
        try:
            while True:
                done, effect = self._advance(send, throw)
                if done:
                    return
                send, throw = None, None
                if type(effect) in _PLAIN:
                    send = effect
                elif isinstance(effect, Partial):
                    yield effect.value
                elif inspect.isawaitable(effect):
                    try:
                        send = await effect
                    except BaseException as exc:  # handed back into the step logic
                        throw = exc
                else:
                    send = effect
        finally:
            self._gen.close()


def drive_sync(gen: StepGen) -> Any:
    """Run a step generator to completion without an event loop; partials are dropped."""
    driver = Driver(gen)
    for _ in driver:
        pass
    return driver.result


async def drive_async(gen: StepGen) -> Any:
    """Run a step generator to completion under asyncio; partials are dropped."""
    driver = Driver(gen)
    async for _ in driver:
        pass
    return driver.result
