"""`ApplicationBuilder`: the fluent way to assemble and start (or resume) an application."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

from fanwise.core import _runner
from fanwise.core.application import Application
from fanwise.core.context import ParentPointer
from fanwise.core.errors import AsyncMismatchError, FanwiseError, GraphError
from fanwise.core.graph import Graph, GraphBuilder
from fanwise.core.hooks import LifecycleHook, hooks_for
from fanwise.core.protocols import LeasingStore, conforms
from fanwise.core.state import State


class ApplicationBuilder:
    """Collects graph, state, identifiers and adapters, then `build()`s an `Application`."""

    def __init__(self) -> None:
        self._graph_builder: GraphBuilder | None = None
        self._graph: Graph | None = None
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
        self._lease_wait = 0.0

    # -- graph --------------------------------------------------------------------------

    def _builder(self) -> GraphBuilder:
        if self._graph is not None:
            raise GraphError("with_graph() and with_actions()/with_transitions() cannot be mixed")
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
        if self._graph_builder is not None:
            raise GraphError("with_graph() and with_actions()/with_transitions() cannot be mixed")
        self._graph = graph
        return self

    # -- where to start -----------------------------------------------------------------

    def with_state(self, state: State | dict[str, Any] | None = None, **fields: Any) -> (
        ApplicationBuilder
    ):
        data = state.get_all() if isinstance(state, State) else dict(state or {})
        data.update(fields)
        base = State(data)
        self._state = base if self._state is None else self._state.merge(base)
        return self

    def with_entrypoint(self, name: str) -> ApplicationBuilder:
        self._entrypoint = name
        return self

    def with_identifiers(
        self, app_id: str | None = None, partition_key: str | None = None
    ) -> ApplicationBuilder:
        if app_id is not None:
            self._app_id = app_id
        if partition_key is not None:
            self._partition_key = partition_key
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
    ) -> ApplicationBuilder:
        """Resume the app id from `initializer` if it has it, else fork or start fresh."""
        self._initializer = {
            "loader": initializer,
            "resume_at_next_action": resume_at_next_action,
            "default_state": State(dict(default_state or {})),
            "default_entrypoint": default_entrypoint,
            "fork_from_app_id": fork_from_app_id,
            "fork_from_partition_key": fork_from_partition_key,
            "fork_from_sequence_id": fork_from_sequence_id,
        }
        return self

    def with_spawning_parent(
        self, app_id: str, sequence_id: int | None, partition_key: str | None = None
    ) -> ApplicationBuilder:
        self._spawning_parent = ParentPointer(app_id, sequence_id, partition_key)
        return self

    # -- adapters -----------------------------------------------------------------------

    def with_tracker(self, tracker: Any, project: str | None = None, **kwargs: Any) -> (
        ApplicationBuilder
    ):
        """A tracker instance, or `"local"` with `project=` for a `LocalTrackingClient`."""
        if tracker == "local":
            from fanwise.core.tracking import LocalTrackingClient

            if project is None:
                raise ValueError('with_tracker("local") needs project="..."')
            tracker = LocalTrackingClient(project, **kwargs)
        elif isinstance(tracker, str):
            raise ValueError(f"unknown tracker {tracker!r}; the built-in one is 'local'")
        self._tracker = tracker
        return self

    def with_state_persister(self, persister: Any) -> ApplicationBuilder:
        self._saver = persister
        return self

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
        """Default executor of every parallel action: an Executor or a registered name."""
        self._executor = executor
        return self

    # -- build --------------------------------------------------------------------------

    def build(self) -> Application:
        """Build for sync (and async) runs; async persisters need `abuild()`."""
        for adapter, role in ((self._saver, "state persister"), self._loader_role()):
            if adapter is not None and _runner.is_async_adapter(adapter):
                raise AsyncMismatchError(
                    f"the {role} {type(adapter).__name__} is async: build with abuild()"
                )
        return _runner.drive_sync(self._assemble())

    async def abuild(self) -> Application:
        """Build an application whose persister or loader is async."""
        return await _runner.drive_async(self._assemble())

    def _loader_role(self) -> tuple[Any, str]:
        return (self._initializer or {}).get("loader"), "state initializer"

    def _assemble(self) -> Generator[Any, Any, Application]:
        app_id = self._app_id or str(uuid.uuid4())
        lease = yield from self._acquire_lease(app_id)
        try:
            return (yield from self._assemble_app(app_id, lease))
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

    def _assemble_app(self, app_id: str, lease: Any) -> Generator[Any, Any, Application]:
        graph = self._graph or (self._graph_builder or GraphBuilder()).build()
        if self._initializer is not None:
            if self._state is not None or self._entrypoint is not None:
                raise ValueError(
                    "initialize_from() replaces with_state()/with_entrypoint(): use its "
                    "default_state= and default_entrypoint= instead"
                )
            start = yield from self._start_from_loader(graph, app_id)
        else:
            if self._entrypoint is None:
                raise GraphError("no entrypoint: call with_entrypoint(name)")
            start = (self._state or State(), self._entrypoint, 0, None)
        state, entrypoint, next_sequence_id, parent_pointer = start
        if entrypoint is not None:
            graph.get_action(entrypoint)
        hooks = [*self._hooks, *([self._tracker] if self._tracker is not None else [])]
        app = Application(
            graph=graph,
            state=state,
            entrypoint=entrypoint,
            app_id=app_id,
            partition_key=self._partition_key,
            hooks=hooks,
            tracker=self._tracker,
            saver=self._saver,
            loader=(self._initializer or {}).get("loader"),
            executor=self._executor,
            spawning_parent=self._spawning_parent,
            parent_pointer=parent_pointer,
            next_sequence_id=next_sequence_id,
            lease=lease,
        )
        for hook in hooks_for(hooks, "post_application_create"):
            hook.post_application_create(
                app_id=app_id,
                partition_key=self._partition_key,
                state=state,
                application_graph=graph,
                parent_pointer=parent_pointer,
                spawning_parent_pointer=self._spawning_parent,
            )
        return app

    def _start_from_loader(
        self, graph: Graph, app_id: str
    ) -> Generator[Any, Any, tuple[State, str | None, int, ParentPointer | None]]:
        """(state, entrypoint, next sequence id, fork pointer) from the initializer's data."""
        init = self._initializer
        loader = init["loader"]
        parent_pointer = None
        fork_key = init["fork_from_partition_key"]
        data = yield loader.load(self._partition_key, app_id)
        if data is not None and init["fork_from_app_id"] is not None:
            parent_pointer = ParentPointer(
                init["fork_from_app_id"], init["fork_from_sequence_id"], fork_key
            )
        if data is None and init["fork_from_app_id"] is not None:
            data = yield loader.load(
                fork_key, init["fork_from_app_id"], init["fork_from_sequence_id"]
            )
            if data is None:
                raise FanwiseError(
                    f"cannot fork: no saved step of app {init['fork_from_app_id']!r} "
                    f"(partition key {fork_key!r}, sequence id {init['fork_from_sequence_id']})"
                )
            parent_pointer = ParentPointer(
                init["fork_from_app_id"], data["sequence_id"], fork_key
            )
        if data is None:
            if init["default_entrypoint"] is None:
                raise GraphError("initialize_from() needs default_entrypoint= for a fresh start")
            return init["default_state"], init["default_entrypoint"], 0, None
        position, state, sequence_id = data["position"], data["state"], data["sequence_id"]
        graph.get_action(position)
        if data["status"] == "failed":
            return state, position, sequence_id, parent_pointer
        if init["resume_at_next_action"]:
            following = graph.next_action(position, state)
            entrypoint = following.name if following is not None else None
        else:
            entrypoint = position
        return state, entrypoint, sequence_id + 1, parent_pointer

