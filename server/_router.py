"""`create_router` / `create_app`: the routes of one application, generated from its graph
(what each route does is `_service.AppService`)."""

import asyncio
import inspect
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from fanwise.server import _models as models
from fanwise.server._service import AppService, Auth, BuildApp, Refused
from fanwise.server._store import ServerStore
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request, Response
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "the request cannot be run as given (e.g. inputs a step of the run needs)",
        404: "no such app in this partition",
        409: "the app is busy (another request holds its lease: `holder` names it), waits "
             "for another action, is done, or exists already",
        500: "an action raised; the app stays at that step (its row is saved as failed)",
    }
    return {code: {"model": models.Problem, "description": described[code]} for code in codes}


def _answer(work: Callable[[], Any]) -> Any:
    """`work()`, or the answer it was refused with."""
    try:
        return work()
    except Refused as refused:
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
    server = AppService(build_app, halt_before, halt_after, expose, auth, busy, store,
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


def _add_reads(router: APIRouter, server: AppService) -> None:
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
        except Refused as refused:
            return refused.response()
        start = last_event_id if last_event_id is not None else after
        return EventSourceResponse(server.events(request, partition_key, app_id, start, idle),
                                   ping=15)


def _add_create(router: APIRouter, server: AppService) -> None:
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


def _add_action(router: APIRouter, server: AppService, name: str) -> None:
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
