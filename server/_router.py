"""`create_router` / `create_app`: the routes of one application, generated from its graph.

A request that runs the app builds it with `build_app(app_id, partition_key)` (taking the
persister's lease: the single-writer lock across workers and hosts), runs it to its next
halt, records what happened into the shared event log, and closes it (releasing the lease).
A request that only reads builds it without its persister and tracker (no lease, nothing
written) and reads the persister's rows and lease directly.
"""

import asyncio
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from fanwise.core.application import Application
from fanwise.core.builder import ApplicationBuilder
from fanwise.core.errors import AppLockedError, InputError, LeaseLostError
from fanwise.core.persistence import LeaseInfo, SQLitePersister
from fanwise.core.protocols import conforms
from fanwise.parallel.actions import TaskBasedParallelAction
from fanwise.server import _models as models
from fanwise.server._events import EventWriter, Recorder, jsonable
from fanwise.server._store import ChildRow, ServerStore, open_store
from fastapi import (
    APIRouter,
    Body,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

BuildApp = Callable[[str, str | None], ApplicationBuilder]
"""`build_app(app_id, partition_key)`: a builder of that app, with a persister."""
Auth = Callable[[Request], str | None]
"""`auth(request)`: the partition key every lookup of the request is scoped by."""

PROBE_APP_ID = "fanwise-server-probe"
"""The app id the graph is read from when the router is made (nothing is written to it)."""
STREAM_POLL_SECONDS = 0.05
"""How often a stream looks for events another worker appended."""
_ENDS_STREAM = ("halted", "failed")


class _Refused(Exception):
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


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "the request cannot be run as given (e.g. inputs a step of the run needs)",
        404: "no such app in this partition",
        409: "the app is busy (another request holds its lease: `holder` names it), waits "
             "for another action, is done, or exists already",
        500: "an action raised; the app stays at that step (its row is saved as failed)",
    }
    return {code: {"model": models.Problem, "description": described[code]} for code in codes}


class _Server:
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
            raise _Refused(404, f"no app {app_id!r} here")
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
            raise _Refused(409, f"app {app_id!r} is busy: another request runs it",
                           holder=exc.holder) from exc
        with app, writer:
            stopped = app.sequence_id is not None and self._status(app) == "stopped"
            if create is not None and app.sequence_id is not None:
                if create == "new":
                    raise _Refused(409, f"app {app_id!r} exists already")
                if not stopped:
                    return self._view_of(app, self._status(app))
                inputs = {}
            elif create is None:
                if app.sequence_id is None:  # built fresh, or its first step failed
                    self.saved(partition_key, app_id)
                if stopped:
                    self._run_recorded(app, {}, recorder, writer)
                    raise _Refused(409, self._continued(app, action))
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
            raise _Refused(400, str(exc)) from exc
        except LeaseLostError as exc:
            writer.add("failed", error=str(exc))
            raise _Refused(409, str(exc)) from exc
        except Exception as exc:
            writer.add("failed", error=repr(exc))
            raise _Refused(500, f"app {app.uid!r} failed: {exc!r}") from exc
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
            raise _Refused(409, f"app {app.uid!r} is done: it waits for no action")
        if following.name != action:
            raise _Refused(409, f"app {app.uid!r} waits for {following.name!r}, not {action!r}")

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


def _answer(work: Callable[[], Any]) -> Any:
    """`work()`, or the answer it was refused with."""
    try:
        return work()
    except _Refused as refused:
        return refused.response()


def create_router(
    build_app: BuildApp,
    *,
    halt_before: Sequence[str],
    halt_after: Sequence[str],
    expose: Sequence[str] | None = None,
    auth: Auth | None = None,
    busy: Literal["reject", "queue"] = "reject",
    store: str | ServerStore | None = None,
    queue_timeout: float = 60.0,
) -> APIRouter:
    """The routes of the application `build_app` builds (see the module and docs/server.md).

    `halt_before` actions wait for a person: each gets `POST /apps/{app_id}/{action}` with
    its inputs as the body; `expose` limits the state fields answered; `auth(request)` gives
    the partition key of every lookup; `busy` says what a request on an app another request
    runs gets: 409 naming the holder (`"reject"`) or its turn, waiting up to `queue_timeout`
    seconds (`"queue"`). `store` holds the event log, fan-out children and idempotency keys
    (a SQLite path or postgresql:// DSN every worker reaches; default: the SQLite
    persister's file)."""
    server = _Server(build_app, halt_before, halt_after, expose, auth, busy, store,
                     queue_timeout)
    router = APIRouter()
    _add_reads(router, server)
    _add_create(router, server)
    for name in server.halt_before:
        _add_action(router, server, name)
    return router


def create_app(build_app: BuildApp, *, title: str = "fanwise application",
               **options: Any) -> FastAPI:
    """A FastAPI app serving `create_router(build_app, **options)`."""
    app = FastAPI(title=title)
    app.include_router(create_router(build_app, **options))
    return app


AppIdPath = Path(description="the app's id")


def _add_reads(router: APIRouter, server: _Server) -> None:
    partition = Depends(server.partition)

    @router.get("/apps/{app_id}", response_model=models.AppView,
                responses=_responses(400, 404))
    def get_app(app_id: str = AppIdPath, partition_key: str | None = partition) -> Any:
        """The app: where it is, what it waits for (and the JSON schema of those inputs),
        its state."""
        return _answer(lambda: server.view(partition_key, app_id))

    @router.get("/apps/{app_id}/history", response_model=models.HistoryPage,
                responses=_responses(400, 404))
    def get_history(app_id: str = AppIdPath, cursor: int = Query(0, ge=0, le=2**31),
                    limit: int = Query(50, ge=1, le=500),
                    partition_key: str | None = partition) -> Any:
        """The app's saved steps from sequence id `cursor` on, oldest first."""
        return _answer(lambda: server.history(partition_key, app_id, cursor, limit))

    @router.get("/apps/{app_id}/children", response_model=models.ChildrenPage,
                responses=_responses(400, 404))
    def get_children(
        app_id: str = AppIdPath,
        status: Literal["running", "done", "resumed", "failed"] | None = Query(None),
        sequence_id: int = Query(None, ge=0, le=2**31,
                                        description="the fan-out step (default: the latest)"),
        cursor: int = Query(-1, ge=-1, le=2**31, description="list after this position"),
        limit: int = Query(100, ge=1, le=1000),
        partition_key: str | None = partition,
    ) -> Any:
        """The children of a fan-out step the server ran, by position, with counts."""
        return _answer(lambda: server.children(partition_key, app_id, sequence_id, status,
                                               cursor, limit))

    @router.get(
        "/apps/{app_id}/stream",
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                         "description": "server-sent events, each with an id"},
                   **_responses(400, 404)},
    )
    async def stream(
        request: Request,
        app_id: str = AppIdPath,
        # typed int (not int | None): the schema then says what a client sends, a number
        last_event_id: int = Header(None, alias="Last-Event-ID", ge=0, le=2**62),
        after: int = Query(None, ge=0, le=2**62,
                                  description="as Last-Event-ID, for clients that cannot "
                                              "set headers"),
        idle: float = Query(60.0, gt=0, le=3600,
                            description="end after this many seconds without an event"),
        partition_key: str | None = partition,
    ) -> Any:
        """The app's events: streaming actions' items, fan-out events, step ends, up to the
        run's `halted`/`failed`. Reconnect with `Last-Event-ID` to continue after it."""
        try:
            await asyncio.to_thread(server.saved, partition_key, app_id)
        except _Refused as refused:
            return refused.response()
        start = last_event_id if last_event_id is not None else after
        return EventSourceResponse(server.events(request, partition_key, app_id, start, idle),
                                   ping=15)


def _add_create(router: APIRouter, server: _Server) -> None:
    body_model = models.create_model(server.entry_model)

    @router.post("/apps", response_model=models.AppView, status_code=201,
                 responses={200: {"model": models.AppView,
                                  "description": "a retry (its Idempotency-Key seen before)"},
                            **_responses(400, 409, 500)})
    def create(
        body: Annotated[body_model, Body()],  # type: ignore[valid-type]
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1,
                                             max_length=200),
        partition_key: str | None = Depends(server.partition),
        *,
        response: Response,
    ) -> Any:
        """Create an app (the given id, or a new one) and run it to its first halt."""
        def work() -> models.AppView:
            app_id = body.app_id or str(uuid.uuid4())
            create: Literal["new", "retry"] = "new"
            if idempotency_key is not None:
                app_id, first = server.store.claim_key(partition_key, idempotency_key, app_id)
                create = "new" if first else "retry"
            inputs = body.inputs.model_dump(exclude_unset=True)
            if create == "retry":
                response.status_code = 200
            return server.run(partition_key, app_id, inputs, create=create)

        return _answer(work)


def _add_action(router: APIRouter, server: _Server, name: str) -> None:
    model: type[BaseModel] = server.inputs_models[name]
    required = any(field.is_required() for field in model.model_fields.values())

    def run_action(app_id: str, body: BaseModel | None, partition_key: str | None) -> Any:
        def work() -> models.AppView:
            inputs = {} if body is None else body.model_dump(exclude_unset=True)
            return server.run(partition_key, app_id, inputs, action=name)

        return _answer(work)

    # the signature FastAPI reads: the body is this action's model, required only when the
    # action has a required input (an action without one may be posted with no body)
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    run_action.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("app_id", keyword, default=AppIdPath, annotation=str),
        inspect.Parameter("body", keyword, annotation=model if required else model | None,
                          default=Body(...) if required else Body(None)),
        inspect.Parameter("partition_key", keyword, default=Depends(server.partition),
                          annotation=str | None),
    ])
    run_action.__doc__ = (f"Run `{name}` with these inputs (409 unless the app waits for it), "
                          "then on to the next halt.")
    router.post(f"/apps/{{app_id}}/{name}", response_model=models.AppView,
                responses=_responses(400, 404, 409, 500), name=f"run_{name}",
                summary=f"Give {name} its inputs and run to the next halt")(run_action)
