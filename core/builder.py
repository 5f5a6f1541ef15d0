"""`ApplicationBuilder`: the fluent way to assemble and start (or resume) an application."""

from __future__ import annotations

import dataclasses
import uuid
import warnings
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from fanwise.core import _runner
from fanwise.core.application import Application
from fanwise.core.context import ParentPointer
from fanwise.core.errors import AsyncMismatchError, GraphError
from fanwise.core.graph import Graph, GraphBuilder
from fanwise.core.hooks import LifecycleHook, hooks_for
from fanwise.core.protocols import LeasingStore, conforms
from fanwise.core.state import State


class ApplicationBuilder:
    """Collects graph, state, identifiers and adapters, then `build()`s an `Application`."""

    def __init__(self) -> None:
        self._graph_builder: GraphBuilder | None = None
        self._state: State | None = None
        self._entrypoint: str | None = None
        self._app_id: str | None = None
        self._partition_key: str | None = None
        self._hooks: list[LifecycleHook] = []
        self._tracker: Any = None
        self._saver: Any = None
        self._executor: Any = None
        self._spawning_parent: ParentPointer | None = None
        self._initializer: dict[str, Any] | None = None
        self._sequence_id: int | None = None
        self._lease_wait = 0.0
        self._typing: Any = None

    # -- graph --------------------------------------------------------------------------

    def _builder(self) -> GraphBuilder:
        if self._graph_builder is None:
            self._graph_builder = GraphBuilder()
        return self._graph_builder

    def with_actions(self, *actions: Any, **named_actions: Any) -> ApplicationBuilder:
        self._builder().with_actions(*actions, **named_actions)
        return self

    def with_transitions(self, *transitions: tuple[Any, ...]) -> ApplicationBuilder:
        self._builder().with_transitions(*transitions)
        return self

    def with_graph(self, graph: Graph) -> ApplicationBuilder:
        """Add a built graph's actions and transitions (combines with `with_actions`,
        `with_transitions` and other graphs; action names must not clash)."""
        self._builder().with_graph(graph)
        return self

    def with_graphs(self, *graphs: Graph) -> ApplicationBuilder:
        """`with_graph` for each of `graphs`."""
        for graph in graphs:
            self.with_graph(graph)
        return self

    # -- where to start -----------------------------------------------------------------

    def with_state(self, state: State | dict[str, Any] | None = None, **fields: Any) -> (
        ApplicationBuilder
    ):
        if self._initializer is not None:
            raise ValueError(
                "with_state() after initialize_from(): the initializer sets the state; pass "
                "the fresh-start state as initialize_from(default_state=...)"
            )
        if state is not None and not isinstance(state, State | Mapping):
            if self._typing is None:
                raise ValueError(
                    f"with_state() got a {type(state).__name__}, not a State or dict: set a "
                    "typing system first (with_typing(...)) to give the state as a typed object"
                )
            state = self._typing.construct_state(state)
        data = state.get_all() if isinstance(state, State) else dict(state or {})
        data.update(fields)
        base = State(data)
        self._state = base if self._state is None else self._state.merge(base)
        return self

    def with_typing(self, typing_system: Any) -> ApplicationBuilder:
        """Burr's typing system (`fanwise.core.typing.TypingSystem`): the app's state is seen
        through it (`app.state.data`), and `with_state` may take its typed object."""
        if typing_system is not None:
            self._typing = typing_system
        return self

    def with_entrypoint(self, name: str) -> ApplicationBuilder:
        if self._initializer is not None:
            raise ValueError(
                "with_entrypoint() after initialize_from(): the initializer sets where the "
                "app goes on; pass the fresh-start action as initialize_from("
                "default_entrypoint=...)"
            )
        self._entrypoint = name
        return self

    def with_identifiers(
        self,
        app_id: str | None = None,
        partition_key: str | None = None,
        sequence_id: int | None = None,
    ) -> ApplicationBuilder:
        """The app id (default: a new uuid4), partition key, and the sequence id of the
        last step taken: a fresh app's first step gets `sequence_id + 1`; with
        `initialize_from` (not forking) that sequence id of the app is loaded."""
        if app_id is not None:
            self._app_id = app_id
        if partition_key is not None:
            self._partition_key = partition_key
        if sequence_id is not None:
            self._sequence_id = sequence_id
        return self

    def initialize_from(
        self,
        initializer: Any,
        resume_at_next_action: bool = True,
        default_state: State | dict[str, Any] | None = None,
        default_entrypoint: str | None = None,
        fork_from_app_id: str | None = None,
        fork_from_partition_key: str | None = None,
        fork_from_sequence_id: int | None = None,
        override_state_values: dict[str, Any] | None = None,
    ) -> ApplicationBuilder:
        """Resume the app id from `initializer` if it has it, else fork or start fresh.

        A saved app goes on after its last completed step (`resume_at_next_action`; else
        from `default_entrypoint` with the saved state), or again at a failed step;
        `override_state_values` then replace fields of the loaded state. A fork needs an
        app id of its own; a fork source that does not exist is a warning and a fresh start.
        """
        if self._state is not None or self._entrypoint is not None:
            raise ValueError(
                "initialize_from() replaces with_state()/with_entrypoint(): use its "
                "default_state= and default_entrypoint= instead"
            )
        if fork_from_app_id is None and (
            fork_from_partition_key is not None or fork_from_sequence_id is not None
        ):
            raise ValueError(
                "initialize_from(): fork_from_partition_key/fork_from_sequence_id need "
                "fork_from_app_id= (the app to fork from)"
            )
        self._initializer = {
            "loader": initializer,
            "resume_at_next_action": resume_at_next_action,
            "default_state": State(dict(default_state or {})),
            "default_entrypoint": default_entrypoint,
            "fork_from_app_id": fork_from_app_id,
            "fork_from_partition_key": fork_from_partition_key,
            "fork_from_sequence_id": fork_from_sequence_id,
            "override_state_values": dict(override_state_values or {}),
        }
        return self

    def resuming_from(self, loader: Any) -> ApplicationBuilder:
        """`initialize_from(loader)` whose fresh start is what `with_state()` and
        `with_entrypoint()` set (what `fanwise run` makes of the builder it is handed); a
        builder that has an initializer already keeps it."""
        if self._initializer is not None:
            return self
        state, entrypoint = self._state, self._entrypoint
        self._state = self._entrypoint = None
        return self.initialize_from(loader, default_state=state, default_entrypoint=entrypoint)

    def with_spawning_parent(
        self, app_id: str, sequence_id: int | None, partition_key: str | None = None
    ) -> ApplicationBuilder:
        self._spawning_parent = ParentPointer(app_id, sequence_id, partition_key)
        return self

    # -- adapters -----------------------------------------------------------------------

    def with_tracker(
        self,
        tracker: Any = "local",
        project: str = "default",
        params: dict[str, Any] | None = None,
        use_otel_tracing: bool = False,
        **kwargs: Any,
    ) -> ApplicationBuilder:
        """A tracker instance (any object with hook methods), or `"local"` (the default) for
        a `LocalTrackingClient(project, **params)`, e.g. `params={"storage_dir": ...}`;
        its arguments may also be given as keywords (`storage_dir=...`)."""
        if use_otel_tracing:
            raise ValueError(
                "with_tracker(use_otel_tracing=True) needs Burr's OpenTelemetry integration, "
                "which fanwise does not have: pass an OpenTelemetry hook with with_hooks()"
            )
        if isinstance(tracker, str):
            if tracker != "local":
                raise ValueError(f"unknown tracker {tracker!r}; the built-in one is 'local'")
            from fanwise.core.tracking import LocalTrackingClient

            both = sorted(set(params or {}) & set(kwargs))
            if both:
                raise ValueError(f"with_tracker() got {both} both in params= and as keywords")
            tracker = LocalTrackingClient(project, **{**(params or {}), **kwargs})
        elif params is not None or kwargs:
            raise ValueError(
                f"with_tracker() got params for the tracker {type(tracker).__name__}, which is "
                "already made: params= and keywords are for with_tracker('local', ...)"
            )
        self._tracker = tracker
        return self

    def with_state_persister(self, persister: Any, on_every: str = "step") -> ApplicationBuilder:
        """Save every step to `persister` (`on_every="step"`, the only interval, as in
        Burr)."""
        if on_every != "step":
            raise ValueError(f"with_state_persister(on_every={on_every!r}): only 'step' is "
                             "supported")
        self._saver = persister
        return self

    @property
    def state_persister(self) -> Any:
        """The persister `with_state_persister` set (None if none): what reads an app's saved
        steps and lease without building the app, which would take its lease."""
        return self._saver

    def with_lease_wait(self, seconds: float) -> ApplicationBuilder:
        """Wait up to `seconds` for another driver of this app id (another process, or another
        thread of this one) to reach its end or `close()`, instead of raising `AppLockedError`
        at once."""
        self._lease_wait = seconds
        return self

    def with_hooks(self, *hooks: LifecycleHook) -> ApplicationBuilder:
        self._hooks.extend(hooks)
        return self

    def with_executor(self, executor: Any) -> ApplicationBuilder:
        """Default executor of every parallel action: an Executor, a registered name, or a
        factory (called per fan-out; the executor it makes is shut down after it)."""
        self._executor = executor
        return self

    def with_parallel_executor(self, executor_factory: Callable[[], Executor]) -> (
        ApplicationBuilder
    ):
        """Burr's name: a factory of the executor each fan-out of this app runs its children
        on (`with_executor` also takes an instance or a name). Set once."""
        if self._executor is not None:
            raise ValueError(
                f"with_parallel_executor(): an executor is already set ({self._executor!r}); "
                "an app has one default executor"
            )
        return self.with_executor(executor_factory)

    # -- build --------------------------------------------------------------------------

    def build(self) -> Application:
        """Build for sync (and async) runs; async persisters need `abuild()`."""
        for adapter, role in ((self._saver, "state persister"), self._loader_role()):
            if adapter is not None and _runner.is_async_adapter(adapter):
                raise AsyncMismatchError(
                    f"the {role} {type(adapter).__name__} is async: build with abuild()"
                )
        return _runner.drive_sync(self._assemble(built_async=False))

    async def abuild(self) -> Application:
        """Build an application whose persister or loader is async."""
        return await _runner.drive_async(self._assemble(built_async=True))

    def _loader_role(self) -> tuple[Any, str]:
        return (self._initializer or {}).get("loader"), "state initializer"

    def _assemble(self, built_async: bool) -> Generator[Any, Any, Application]:
        app_id = self._app_id or str(uuid.uuid4())
        lease = yield from self._acquire_lease(app_id)
        try:
            return (yield from self._assemble_app(app_id, lease, built_async))
        except BaseException:
            if lease is not None:
                lease.release()
            raise

    def _acquire_lease(self, app_id: str) -> Generator[Any, Any, Any]:
        """This driver's lease on `app_id` if the persister has leases (None otherwise); a
        spawned child runs under its parent's lease and takes none."""
        if not conforms(self._saver, LeasingStore) or self._spawning_parent is not None:
            return None
        return (yield self._saver.acquire_lease(self._partition_key, app_id,
                                                wait=self._lease_wait))

    def _assemble_app(
        self, app_id: str, lease: Any, built_async: bool
    ) -> Generator[Any, Any, Application]:
        graph = (self._graph_builder or GraphBuilder()).build()
        if self._initializer is not None:
            start = yield from self._start_from_loader(graph, app_id)
        else:
            if self._entrypoint is None:
                raise GraphError("no entrypoint: call with_entrypoint(name)")
            first = 0 if self._sequence_id is None else self._sequence_id + 1
            start = _Start(self._state or State(), self._entrypoint, None, first, None)
        graph.get_action(start.entrypoint)
        if self._typing is not None:
            start = dataclasses.replace(start, state=start.state.with_typing_system(self._typing))
        hooks = [*self._hooks, *([self._tracker] if self._tracker is not None else [])]
        # the run's writes, and those of its children, carry the lease's fence
        saver = self._saver if lease is None or lease.store is None else lease.store
        loader = (self._initializer or {}).get("loader")
        app = Application(
            graph=graph,
            state=start.state,
            entrypoint=start.entrypoint,
            prior_action=start.prior_action,
            app_id=app_id,
            partition_key=self._partition_key,
            hooks=hooks,
            tracker=self._tracker,
            saver=saver,
            loader=saver if loader is self._saver else loader,
            executor=self._executor,
            spawning_parent=self._spawning_parent,
            parent_pointer=start.parent_pointer,
            next_sequence_id=start.next_sequence_id,
            lease=lease,
            built_async=built_async,
            builder=self,
        )
        for hook in hooks_for(hooks, "post_application_create"):
            hook.post_application_create(
                app_id=app_id,
                partition_key=self._partition_key,
                state=start.state,
                application_graph=app.graph,
                parent_pointer=start.parent_pointer,
                spawning_parent_pointer=self._spawning_parent,
            )
        return app

    def _start_from_loader(self, graph: Graph, app_id: str) -> Generator[Any, Any, _Start]:
        """Where the app starts, from the initializer's data: its own saved steps first (a
        fork built again goes on as itself), then the fork source, then a fresh start."""
        init = self._initializer
        loader, fork_id = init["loader"], init["fork_from_app_id"]
        fork_key, fork_seq = init["fork_from_partition_key"], init["fork_from_sequence_id"]
        if fork_id is not None and fork_id == app_id:
            raise ValueError(
                f"initialize_from(fork_from_app_id={fork_id!r}) forks into its own app id: give "
                "the fork an app id of its own with with_identifiers(app_id=...), or leave "
                "fork_from_app_id out to resume the app"
            )
        parent_pointer = None
        data = yield loader.load(self._partition_key, app_id, self._sequence_id)
        if data is not None and fork_id is not None:
            parent_pointer = ParentPointer(fork_id, fork_seq, fork_key)
        if data is None and fork_id is not None:
            data = yield loader.load(fork_key, fork_id, fork_seq)
            if data is None:
                warnings.warn(
                    f"cannot fork: no saved step of app {fork_id!r} (partition key "
                    f"{fork_key!r}, sequence id {fork_seq}); starting app {app_id!r} from "
                    "default_state at default_entrypoint instead",
                    stacklevel=2,
                )
            else:
                parent_pointer = ParentPointer(fork_id, data["sequence_id"], fork_key)
        default_entrypoint = init["default_entrypoint"]
        if data is None:
            if default_entrypoint is None:
                raise GraphError("initialize_from() needs default_entrypoint= for a fresh start")
            return _Start(init["default_state"], default_entrypoint, None, 0, None)
        position, state, sequence_id = data["position"], data["state"], data["sequence_id"]
        graph.get_action(position)
        if init["override_state_values"]:
            state = state.update(**init["override_state_values"])
        if data["status"] != "completed":  # that step again, under its own sequence id
            return _Start(state, position, None, sequence_id, parent_pointer)
        if init["resume_at_next_action"]:
            return _Start(state, default_entrypoint or position, position, sequence_id + 1,
                          parent_pointer)
        if default_entrypoint is None:
            raise GraphError("initialize_from(resume_at_next_action=False) needs "
                             "default_entrypoint=, where the app starts again")
        return _Start(state, default_entrypoint, None, sequence_id + 1, parent_pointer)


@dataclass(frozen=True)
class _Start:
    """Where a built app starts: `prior_action` (the last one run, if resumed after it) picks
    the next action by its transitions, else `entrypoint` is next."""

    state: State
    entrypoint: str
    prior_action: str | None
    next_sequence_id: int
    parent_pointer: ParentPointer | None
