"""What the routes do, apart from HTTP: read an app without its lease, run it under its lease
to the next halt while recording the run into the shared event log, and follow that log for
a stream.

A request that runs the app builds it with `build_app(app_id, partition_key)` (taking the
persister's lease: the single-writer lock across workers and hosts), runs it, and closes it
(releasing the lease). A request that only reads builds it without its persister and
tracker (no lease, nothing written) and reads the persister's rows and lease directly.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from fanwise.core.application import Application
from fanwise.core.builder import ApplicationBuilder
from fanwise.core.errors import AppLockedError, InputError, LeaseLostError
from fanwise.core.persistence import LeaseInfo, SQLitePersister
from fanwise.core.protocols import conforms
from fanwise.parallel.actions import TaskBasedParallelAction
from fanwise.server import _models as models
from fanwise.server._events import EventWriter, Recorder, jsonable
from fanwise.server._store import ChildRow, ServerStore, open_store
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

BuildApp = Callable[[str, str | None], ApplicationBuilder]
"""`build_app(app_id, partition_key)`: a builder of that app, with a persister."""
Auth = Callable[[Request], str | None]
"""`auth(request)`: the partition key every lookup of the request is scoped by."""

PROBE_APP_ID = "fanwise-server-probe"
"""The app id the graph is read from when the router is made (nothing is written to it)."""
STREAM_POLL_SECONDS = 0.05
"""How often a stream looks for events another worker appended."""
_ENDS_STREAM = ("halted", "failed")


class Refused(Exception):
    """An answer other than 2xx: its status and `Problem` body."""

    def __init__(self, status: int, detail: str, holder: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.problem = models.Problem(detail=detail, holder=holder)

    def response(self) -> JSONResponse:
        return JSONResponse(self.problem.model_dump(exclude_none=True), status_code=self.status)


@runtime_checkable
class LeaseReader(Protocol):
    """A persister that tells who holds an app's lease (the bundled SQL ones do)."""

    def lease_info(self, partition_key: str | None, app_id: str) -> LeaseInfo | None: ...


class AppService:
    """What the routes share: the app's graph and halts, the stores, the busy policy."""

    def __init__(self, build_app: BuildApp, halt_before: Sequence[str],
                 halt_after: Sequence[str], expose: Sequence[str] | None, auth: Auth | None,
                 busy: Literal["reject", "queue"], store: str | ServerStore | None,
                 queue_timeout: float) -> None:
        if busy not in ("reject", "queue"):
            raise ValueError(f"busy={busy!r}: use 'reject' (409 naming the holder) or 'queue'")
        self.build_app, self.auth, self.busy = build_app, auth, busy
        self.halt_before, self.halt_after = list(halt_before), list(halt_after)
        self.expose = None if expose is None else list(expose)
        self.queue_timeout = queue_timeout
        probe = build_app(PROBE_APP_ID, None)
        persister = probe.state_persister
        if persister is None:
            raise ValueError("build_app() must return an ApplicationBuilder with a persister "
                             "(with_state_persister(...)): the server keeps apps there")
        self.persister = persister
        graph = self._read_only(probe).graph
        for name in (*self.halt_before, *self.halt_after):
            graph.get_action(name)
        self.entrypoint = graph.entrypoint
        self.actions = {action.name: action for action in graph.actions}
        self.fans_out = any(isinstance(a, TaskBasedParallelAction) for a in graph.actions)
        self.inputs_models = {name: models.inputs_model(self.actions[name], "forbid")
                              for name in self.halt_before}
        self.entry_model = models.inputs_model(self.entrypoint, "allow")
        self.store = self._open_store(store)

    def _open_store(self, store: str | ServerStore | None) -> ServerStore:
        if store is None:
            if not isinstance(self.persister, SQLitePersister):
                raise ValueError(
                    f"create_router(store=...) is needed with {type(self.persister).__name__}: "
                    "a SQLite file path or postgresql:// DSN the server's workers share "
                    "(with a SQLitePersister its database file is the default)")
            return open_store(self.persister.db_path)
        return open_store(store) if isinstance(store, str) else store

    @staticmethod
    def _read_only(builder: ApplicationBuilder) -> Application:
        """The app as saved, built without persister and tracker: no lease, no writes."""
        return builder.with_state_persister(None).with_tracker(None).build()

    def partition(self, request: Request) -> str | None:
        key = None if self.auth is None else self.auth(request)
        if key == "":
            raise HTTPException(400, "auth() gave the partition key '': give None for none")
        return key

    # -- reads ----------------------------------------------------------------------------

    def saved(self, partition_key: str | None, app_id: str) -> Any:
        saved = self.persister.load(partition_key, app_id)
        if saved is None:
            raise Refused(404, f"no app {app_id!r} here")
        return saved

    def view(self, partition_key: str | None, app_id: str) -> models.AppView:
        saved = self.saved(partition_key, app_id)
        app = self._read_only(self.build_app(app_id, partition_key))
        status = self._status(app)
        if saved["status"] != "completed":
            status = "failed"
        if conforms(self.persister, LeaseReader):
            lease = self.persister.lease_info(partition_key, app_id)
            if lease is not None and lease.live:
                status = "running"
        return self._view_of(app, status)

    def _status(self, app: Application) -> models.AppStatus:
        following = app.get_next_action()
        if following is None:
            return "completed"
        return "waiting" if following.name in self.halt_before else "stopped"

    def _view_of(self, app: Application, status: models.AppStatus) -> models.AppView:
        following = app.get_next_action()
        schema = None
        if following is not None:
            model = self.inputs_models.get(following.name)
            schema = (model or models.inputs_model(following, "forbid")).model_json_schema()
        summary = self.store.summary(app.partition_key, app.uid)
        fanout = None
        if summary.fanout is not None:
            fanout = models.FanoutCounts(sequence_id=summary.fanout[0],
                                         counts=summary.fanout[1])
        return models.AppView(
            app_id=app.uid, partition_key=app.partition_key, sequence_id=app.sequence_id,
            status=status, next_action=None if following is None else following.name,
            inputs_schema=schema, state=self._exposed(app.state.get_all()), fanout=fanout,
            last_event_id=summary.last_event_id,
        )

    def _exposed(self, state: dict[str, Any]) -> dict[str, Any]:
        if self.expose is not None:
            state = {key: state[key] for key in self.expose if key in state}
        return jsonable(state)

    def history(self, partition_key: str | None, app_id: str, cursor: int,
                limit: int) -> models.HistoryPage:
        last = self.saved(partition_key, app_id)["sequence_id"]
        steps = []
        for sequence_id in range(cursor, min(cursor + limit, last + 1)):
            row = self.persister.load(partition_key, app_id, sequence_id)
            if row is not None:
                steps.append(models.HistoryStep(
                    sequence_id=row["sequence_id"], action=row["position"],
                    status=row["status"], created_at=str(row["created_at"]),
                    state=self._exposed(row["state"].get_all())))
        following = cursor + limit
        return models.HistoryPage(steps=steps, next_cursor=following if following <= last
                                  else None)

    def children(self, partition_key: str | None, app_id: str, sequence_id: int | None,
                 status: str | None, cursor: int, limit: int) -> models.ChildrenPage:
        self.saved(partition_key, app_id)
        page = self.store.children(partition_key, app_id, sequence_id, status, cursor, limit)
        return models.ChildrenPage(
            sequence_id=page.sequence_id, children=[_child(row) for row in page.rows],
            counts=page.counts, next_cursor=page.next_cursor)

    # -- runs -----------------------------------------------------------------------------

    def run(self, partition_key: str | None, app_id: str, inputs: dict[str, Any],
            action: str | None = None,
            create: Literal["new", "retry"] | None = None) -> models.AppView:
        """Run the app to its next halt under its lease; with `action`, only if that is the
        action it waits for; with `create`, only if it has no step yet (`"retry"`: an
        idempotent retry answers the app as it is, having first run on a first run that was
        cut short).

        A `stopped` app (halted before an action no route takes: a run a crash cut short)
        is run on to its next halt by any action request, which then answers 409 with what
        it waits for: the request may have been the one that was cut short, so it is not
        applied twice without the client seeing the state first."""
        builder = self.build_app(app_id, partition_key)
        if self.busy == "queue":
            builder.with_lease_wait(self.queue_timeout)
        writer = EventWriter(self.store, partition_key, app_id)
        recorder = Recorder(writer)
        builder.with_hooks(recorder)
        try:
            app = builder.build()
        except AppLockedError as exc:
            raise Refused(409, f"app {app_id!r} is busy: another request runs it",
                           holder=exc.holder) from exc
        with app, writer:
            stopped = app.sequence_id is not None and self._status(app) == "stopped"
            if create is not None and app.sequence_id is not None:
                if create == "new":
                    raise Refused(409, f"app {app_id!r} exists already")
                if not stopped:
                    return self._view_of(app, self._status(app))
                inputs = {}
            elif create is None:
                if app.sequence_id is None:  # built fresh, or its first step failed
                    self.saved(partition_key, app_id)
                if stopped:
                    self._run_recorded(app, {}, recorder, writer)
                    raise Refused(409, self._continued(app, action))
                self._check_waits_for(app, action)
            self._run_recorded(app, inputs, recorder, writer)
        # after the writer's last flush: the view counts this run's children and events
        return self._view_of(app, self._status(app))

    def _run_recorded(self, app: Application, inputs: dict[str, Any], recorder: Recorder,
                      writer: EventWriter) -> None:
        """Run to the next halt between a `run` and a `halted` (or `failed`) event."""
        writer.add("run", sequence_id=app.sequence_id, action=app.get_next_action().name)
        try:
            self._drive(app, inputs, recorder, writer)
        except InputError as exc:
            writer.add("failed", error=str(exc))
            raise Refused(400, str(exc)) from exc
        except LeaseLostError as exc:
            writer.add("failed", error=str(exc))
            raise Refused(409, str(exc)) from exc
        except Exception as exc:
            writer.add("failed", error=repr(exc))
            raise Refused(500, f"app {app.uid!r} failed: {exc!r}") from exc
        following = app.get_next_action()
        writer.add("halted", sequence_id=app.sequence_id,
                   next_action=None if following is None else following.name)

    @staticmethod
    def _continued(app: Application, action: str | None) -> str:
        following = app.get_next_action()
        now = "is done" if following is None else f"now waits for {following.name!r}"
        return (f"app {app.uid!r} had stopped short of a halt (a run cut short): it ran on "
                f"and {now}; {action!r} was not run: check its state, then send the request "
                "again if it still applies")

    def _check_waits_for(self, app: Application, action: str | None) -> None:
        following = app.get_next_action()
        if following is None:
            raise Refused(409, f"app {app.uid!r} is done: it waits for no action")
        if following.name != action:
            raise Refused(409, f"app {app.uid!r} waits for {following.name!r}, not {action!r}")

    def _drive(self, app: Application, inputs: dict[str, Any], recorder: Recorder,
               writer: EventWriter) -> None:
        if not self.fans_out:
            app.run(halt_before=self.halt_before, halt_after=self.halt_after, inputs=inputs)
            return
        for event in app.stream_fanout(halt_before=self.halt_before,
                                       halt_after=self.halt_after, inputs=inputs):
            writer.fanout(event, recorder.sequence_id or 0)

    # -- stream ---------------------------------------------------------------------------

    async def events(self, request: Request, partition_key: str | None, app_id: str,
                     after: int | None, idle: float) -> AsyncIterator[dict[str, Any]]:
        """The app's events after `after` (none: from its latest run's start), followed as
        they are appended by whichever worker runs it, up to a `halted` or `failed` event,
        or `idle` seconds without one."""
        loop = asyncio.get_running_loop()
        if after is None:
            start = await asyncio.to_thread(self.store.last_run_start, partition_key, app_id)
            after = 0 if start is None else start - 1
        quiet_since = loop.time()
        while not await request.is_disconnected():
            events = await asyncio.to_thread(self.store.events_after, partition_key, app_id,
                                             after, 500)
            for event in events:
                after = event.event_id
                yield {"id": str(event.event_id), "event": event.kind,
                       "data": _json(event.data)}
                if event.kind in _ENDS_STREAM:
                    return
            if events:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= idle:
                return
            else:
                await asyncio.sleep(STREAM_POLL_SECONDS)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _child(row: ChildRow) -> models.ChildView:
    return models.ChildView(position=row.position, child_id=row.child_id, status=row.status,
                            attempts=row.attempts, error=row.error)


