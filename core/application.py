"""`Application`: runs a graph step by step from a state; sync and async entry points."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from fanwise.core import _runner
from fanwise.core.actions import Action
from fanwise.core.context import ApplicationContext, ParentPointer
from fanwise.core.errors import ApplicationClosedError, AsyncMismatchError
from fanwise.core.graph import ApplicationGraph, Graph
from fanwise.core.hooks import (
    ExecuteMethod,
    HookSet,
    LifecycleHook,
    aexecute_call,
    afinish_call,
    astart_call,
    execute_call,
    finish_call,
    hooks_for,
    start_call,
)
from fanwise.core.protocols import StoresForm, conforms
from fanwise.core.state import State
from fanwise.core.streaming import AsyncStreamingResultContainer, StreamingResultContainer

if TYPE_CHECKING:
    import graphviz
    from fanwise.core.builder import ApplicationBuilder

RunOutcome = tuple[Action | None, dict[str, Any] | None, State]


class Application:
    """A built application; create one with `ApplicationBuilder`.

    With a persister that has leases, the app holds the single-runner lease on its app id from
    `build()` until the end of its graph or `close()` (`with app:` closes it), whichever comes
    first; garbage collection does not release it.
    """

    def __init__(
        self,
        *,
        graph: Graph,
        state: State,
        entrypoint: str,
        prior_action: str | None,
        app_id: str,
        partition_key: str | None,
        hooks: list[LifecycleHook],
        tracker: Any,
        saver: Any,
        loader: Any,
        executor: Any,
        spawning_parent: ParentPointer | None,
        parent_pointer: ParentPointer | None,
        next_sequence_id: int,
        lease: Any = None,
        built_async: bool = False,
        builder: ApplicationBuilder | None = None,
    ) -> None:
        """`entrypoint` is where the app starts (and `reset_to_entrypoint` goes back to);
        `prior_action`, the last action run before it was built (resumed), if any: the next
        action is chosen by its transitions."""
        self._graph = graph.starting_at(entrypoint)
        self._state = state
        self._entrypoint = entrypoint
        self._prior_action_name = prior_action
        self._next_action_name: str | None = None
        self._uid = app_id
        self._partition_key = partition_key
        self._hook_set = HookSet(hooks)
        self._executing: ExecuteMethod | None = None
        """The outermost public method running (execute-call hooks report it alone)."""
        self._pre_hooks = hooks_for(hooks, "pre_run_step")
        self._post_hooks = hooks_for(hooks, "post_run_step")
        self._async_only_reason = _runner.async_only_reason(hooks, saver, built_async)
        self._tracker = tracker
        self._saver = saver
        self._stored_form = saver.stored_form if conforms(saver, StoresForm) else None
        self._loader = loader
        self._executor = executor
        self._spawning_parent = spawning_parent
        self._parent_pointer = parent_pointer
        self._next_sequence_id = next_sequence_id
        self._event_sink: Any = None
        """Set while `stream_fanout` runs: the fan-outs of this app's steps emit there."""
        self._event_path: tuple[int, ...] = ()
        self._builder = builder
        self._lease = lease
        self._lease_released = False
        self._closed = False
        self._choose_next()

    @property
    def state(self) -> State:
        return self._state

    @property
    def uid(self) -> str:
        return self._uid

    @property
    def app_id(self) -> str:
        return self._uid

    @property
    def partition_key(self) -> str | None:
        return self._partition_key

    @property
    def sequence_id(self) -> int | None:
        """The sequence id of the last step run (None before the first)."""
        return self._next_sequence_id - 1 if self._next_sequence_id > 0 else None

    @property
    def graph(self) -> ApplicationGraph:
        """The graph, with `entrypoint` (an `Action`)."""
        return self._graph

    @property
    def builder(self) -> ApplicationBuilder | None:
        """The `ApplicationBuilder` that built this app."""
        return self._builder

    def validate_correct_async_use(self) -> None:
        """Raise the `AsyncMismatchError` (a `ValueError`) a sync run of this app would
        (built with `abuild()`, async hooks or an async persister); else nothing."""
        if self._async_only_reason is not None:
            raise AsyncMismatchError(self._async_only_reason)

    @property
    def entrypoint(self) -> str:
        """The action this app started at (resumed apps: the failed or default one)."""
        return self._entrypoint

    @property
    def parent_pointer(self) -> ParentPointer | None:
        """The app and step this one was forked from, if any."""
        return self._parent_pointer

    @property
    def spawning_parent_pointer(self) -> ParentPointer | None:
        """The app and step whose parallel action spawned this one, if any (Burr's name)."""
        return self._spawning_parent

    @property
    def spawning_parent(self) -> ParentPointer | None:
        """Same as `spawning_parent_pointer`."""
        return self._spawning_parent

    @property
    def context(self) -> ApplicationContext | None:
        """The `ApplicationContext` the next action would get (None when there is none)."""
        following = self.get_next_action()
        if following is None:
            return None
        return self._context(following, self._next_sequence_id)

    def get_next_action(self) -> Action | None:
        """The action the next `step()` will run, or None when the application is done."""
        if self._next_action_name is None:
            return None
        return self._graph.get_action(self._next_action_name)

    def has_next_action(self) -> bool:
        return self._next_action_name is not None

    def update_state(self, new_state: State) -> None:
        """Replace the state (e.g. to add a human's answer between runs); the next action
        is chosen again from the last action's transitions on the new state."""
        if not isinstance(new_state, State):
            raise TypeError(f"update_state() takes a State, got {type(new_state).__name__}")
        self._state = new_state
        self._choose_next()

    def reset_to_entrypoint(self) -> None:
        """Make the entrypoint the next action again (the state stays)."""
        self._prior_action_name = None
        self._choose_next()

    def visualize(
        self,
        output_file_path: str | pathlib.Path | None = None,
        include_conditions: bool = False,
        include_state: bool = False,
        view: bool = False,
        engine: Literal["graphviz"] = "graphviz",
        write_dot: bool = False,
        **engine_kwargs: Any,
    ) -> graphviz.Digraph:
        """Draw the graph with Graphviz (extra `graphviz`): returns the `graphviz.Digraph`,
        also written to `output_file_path` when given (e.g. `"statemachine"` with
        `format="png"`); see `fanwise.core.visualize.visualize`."""
        return self._graph.visualize(
            output_file_path=output_file_path,
            include_conditions=include_conditions,
            include_state=include_state,
            view=view,
            engine=engine,
            write_dot=write_dot,
            **engine_kwargs,
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> Any:
        """Notebooks draw the app's graph when it is the value of a cell."""
        return self._graph._repr_mimebundle_(include=include, exclude=exclude, **kwargs)

    def _advance(self, action: Action, state: State, sequence_id: int) -> None:
        self._state = state
        self._next_sequence_id = sequence_id + 1
        self._prior_action_name = action.name
        self._choose_next()

    def _choose_next(self) -> None:
        """The next action from the last one's transitions (the entrypoint before any); at
        the end of the graph the lease goes, so another driver may take the app id."""
        following = self._graph.get_next_node(self._prior_action_name, self._state,
                                              self._entrypoint)
        self._next_action_name = following.name if following is not None else None
        if following is None:
            self._release_lease()

    def _release_lease(self) -> None:
        """Let another driver run this app id (`Lease.release` is idempotent)."""
        if self._lease is not None:
            self._lease.release()
            self._lease_released = True

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Release this app's lease, so that another driver (process or thread) can build its
        app id; idempotent. The app stays readable (`state`, `sequence_id`, ...), but a step
        is then an `ApplicationClosedError`."""
        self._closed = True
        self._release_lease()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        """Called before an action runs: a closed app runs none, as it holds no lease (nor
        one whose lease went at the end of its graph and that `update_state` reopened)."""
        if self._closed or self._lease_released:
            raise ApplicationClosedError(self._uid)

    def __enter__(self) -> Application:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Application:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _context(self, action: Action, sequence_id: int) -> ApplicationContext:
        return ApplicationContext(
            app_id=self._uid,
            partition_key=self._partition_key,
            sequence_id=sequence_id,
            action_name=action.name,
            tracker=self._tracker,
            state_persister=self._saver,
            state_initializer=self._loader,
            executor=self._executor,
            spawning_parent=self._spawning_parent,
            event_sink=self._event_sink,
            event_path=self._event_path,
        )

    # -- sync ---------------------------------------------------------------------------

    def step(self, inputs: dict[str, Any] | None = None) -> RunOutcome | None:
        """Run the next action; None when there is none."""
        with execute_call(self, ExecuteMethod.step):
            outcome = _runner.drive_sync(_runner.step(self, inputs, async_run=False))
        return None if outcome is None else (outcome.action, outcome.result, outcome.state)

    def iterate(
        self,
        halt_before: Sequence[str] | None = None,
        halt_after: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> Generator[RunOutcome, None, RunOutcome]:
        """Yield (action, result, state) per step until a halt or the end of the graph.

        Halts are checked after each step, so every call runs at least the next action (even
        one in `halt_before`); it stops before the next action in `halt_before` or after one
        in `halt_after`. The generator returns what `run` returns (its `StopIteration.value`).
        """
        halt_before, halt_after = self._check_halts(halt_before, halt_after)
        prior: Action | None = None
        result: dict[str, Any] | None = None
        with execute_call(self, ExecuteMethod.iterate):
            while self.get_next_action() is not None:
                outcome = self.step(inputs)
                prior, result = outcome[0], outcome[1]
                yield outcome
                if self._should_halt(halt_before, halt_after, prior):
                    break
        return self._final(halt_before, halt_after, prior, result)

    def run(
        self,
        halt_before: Sequence[str] | None = None,
        halt_after: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> RunOutcome:
        """Run until a halt, as `iterate` does. Returns (next action, None, state) when halted
        before an action, else the last (action, result, state) run."""
        with execute_call(self, ExecuteMethod.run):
            steps = self.iterate(halt_before, halt_after, inputs)
            while True:
                try:
                    next(steps)
                except StopIteration as stop:
                    return stop.value

    def stream_result(
        self,
        halt_after: Sequence[str],
        halt_before: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> tuple[Action | None, StreamingResultContainer]:
        """Run up to the next action in `halt_after` and stream its partial results.

        Unless the next action is already in `halt_after`, this first runs as `run` does with
        both lists as `halt_before`; halted before an action of `halt_before` only (or at the
        end of the graph), the container is empty and `get()` gives (None, state)."""
        halt_before, halt_after = self._check_halts(halt_before, halt_after)
        self.validate_correct_async_use()  # at the call, as Burr: not once streaming
        method = ExecuteMethod.stream_result
        reported = start_call(self, method)  # the call ends with its stream (as in Burr)
        try:
            action = self.get_next_action()
            if action is not None and action.name not in halt_after:
                self.run(halt_before=[*halt_after, *halt_before], inputs=inputs)
                action = self.get_next_action()
            if action is not None and action.name in halt_after:
                self._check_open()
        except BaseException as exc:
            if reported:
                finish_call(self, method, exc)
            raise
        if action is None or action.name not in halt_after:
            if reported:
                finish_call(self, method, None)
            return action, StreamingResultContainer.pass_through(None, self._state)
        step = _runner.step(self, inputs, async_run=False)
        if reported:
            step = _runner.ending_call(self, step, method, async_run=False)
        return action, StreamingResultContainer(_runner.Driver(step))

    def stream_iterate(
        self,
        halt_after: Sequence[str] | None = None,
        halt_before: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> Iterator[tuple[Action, StreamingResultContainer]]:
        """Stream every step until a halt (as `iterate` halts): yields (action, container)
        per step, streaming or not; a container left unread is drained before the next
        step starts."""
        halt_before, halt_after = self._check_halts(halt_before, halt_after)
        with execute_call(self, ExecuteMethod.stream_iterate):
            while (following := self.get_next_action()) is not None:
                _, container = self.stream_result(halt_after=[following.name], inputs=inputs)
                yield following, container
                container.get()
                if self._should_halt(halt_before, halt_after, following):
                    break

    def stream_fanout(
        self,
        halt_before: Sequence[str] | None = None,
        halt_after: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        """Run as `iterate` does, yielding the `FanoutEvent`s of every fan-out it runs
        (child started / item / done / failed / resumed) and a `done` event per step with
        `(action, result, state)`. Closing the iterator early stops the running fan-out
        from starting more children (finished ones stay saved)."""
        from fanwise.parallel._stream import stream_fanout

        return stream_fanout(self, halt_before, halt_after, inputs)

    # -- async --------------------------------------------------------------------------

    async def astep(self, inputs: dict[str, Any] | None = None) -> RunOutcome | None:
        """Async `step`: awaits async actions, hooks and persisters."""
        async with aexecute_call(self, ExecuteMethod.astep):
            outcome = await _runner.drive_async(_runner.step(self, inputs, async_run=True))
        return None if outcome is None else (outcome.action, outcome.result, outcome.state)

    async def aiterate(
        self,
        halt_before: Sequence[str] | None = None,
        halt_after: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> AsyncIterator[RunOutcome]:
        """Async `iterate` (an async generator returns nothing: `arun` gives the outcome)."""
        halt_before, halt_after = self._check_halts(halt_before, halt_after)
        async with aexecute_call(self, ExecuteMethod.aiterate):
            while self.get_next_action() is not None:
                outcome = await self.astep(inputs)
                yield outcome
                if self._should_halt(halt_before, halt_after, outcome[0]):
                    break

    async def arun(
        self,
        halt_before: Sequence[str] | None = None,
        halt_after: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> RunOutcome:
        """Async `run`."""
        halt_before, halt_after = self._check_halts(halt_before, halt_after)
        prior: Action | None = None
        result: dict[str, Any] | None = None
        async with aexecute_call(self, ExecuteMethod.arun):
            async for prior, result, _ in self.aiterate(halt_before, halt_after, inputs):
                pass
        return self._final(halt_before, halt_after, prior, result)

    async def astream_result(
        self,
        halt_after: Sequence[str],
        halt_before: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> tuple[Action | None, AsyncStreamingResultContainer]:
        """Async `stream_result`."""
        halt_before, halt_after = self._check_halts(halt_before, halt_after)
        method = ExecuteMethod.astream_result
        reported = await astart_call(self, method)  # the call ends with its stream
        try:
            action = self.get_next_action()
            if action is not None and action.name not in halt_after:
                await self.arun(halt_before=[*halt_after, *halt_before], inputs=inputs)
                action = self.get_next_action()
            if action is not None and action.name in halt_after:
                self._check_open()
        except BaseException as exc:
            if reported:
                await afinish_call(self, method, exc)
            raise
        if action is None or action.name not in halt_after:
            if reported:
                await afinish_call(self, method, None)
            return action, AsyncStreamingResultContainer.pass_through(None, self._state)
        step = _runner.step(self, inputs, async_run=True)
        if reported:
            step = _runner.ending_call(self, step, method, async_run=True)
        return action, AsyncStreamingResultContainer(_runner.Driver(step))

    async def astream_iterate(
        self,
        halt_after: Sequence[str] | None = None,
        halt_before: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> AsyncIterator[tuple[Action, AsyncStreamingResultContainer]]:
        """Async `stream_iterate`."""
        halt_before, halt_after = self._check_halts(halt_before, halt_after)
        async with aexecute_call(self, ExecuteMethod.astream_iterate):
            while (following := self.get_next_action()) is not None:
                _, container = await self.astream_result(
                    halt_after=[following.name], inputs=inputs
                )
                yield following, container
                await container.get()
                if self._should_halt(halt_before, halt_after, following):
                    break

    def astream_fanout(
        self,
        halt_before: Sequence[str] | None = None,
        halt_after: Sequence[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """Async `stream_fanout`: `async for event in app.astream_fanout(...)`."""
        from fanwise.parallel._stream import astream_fanout

        return astream_fanout(self, halt_before, halt_after, inputs)

    # -- shared -------------------------------------------------------------------------

    def _check_halts(
        self, halt_before: Sequence[str] | None, halt_after: Sequence[str] | None
    ) -> tuple[list[str], list[str]]:
        """The halt lists (None is empty, `"@tag:<tag>"` the actions with that tag), after
        checking that each names an action."""
        if isinstance(halt_before, str) or isinstance(halt_after, str):
            raise TypeError("halt_before/halt_after take a list of action names, not a string")
        return (
            self._graph.expand_names(halt_before or (), "halt_before"),
            self._graph.expand_names(halt_after or (), "halt_after"),
        )

    def _should_halt(
        self, halt_before: Sequence[str], halt_after: Sequence[str], prior: Action
    ) -> bool:
        """Checked after each step: the next action is in `halt_before`, or `prior` (the one
        just run) is in `halt_after`."""
        following = self.get_next_action()
        return (following is not None and following.name in halt_before) or (
            prior.name in halt_after
        )

    def _final(
        self,
        halt_before: Sequence[str],
        halt_after: Sequence[str],
        prior: Action | None,
        result: dict[str, Any] | None,
    ) -> RunOutcome:
        """What `run` returns: (next action, None, state) when halted before it (this wins
        over `halt_after`), else (last action run, its result, state); (None, None, state)
        when nothing ran."""
        following = self.get_next_action()
        if following is not None and following.name in halt_before:
            return following, None, self._state
        return prior, result, self._state



def __getattr__(name: str) -> Any:
    """`from fanwise.core.application import ApplicationBuilder`, as Burr programs import it
    from `burr.core.application` (it lives in `builder`, which imports this module)."""
    if name == "ApplicationBuilder":
        from fanwise.core.builder import ApplicationBuilder

        return ApplicationBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
