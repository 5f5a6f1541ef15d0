"""`create_app`: the tracking UI's routes, read-only, over the run index of each project.

    GET /                                          projects (folders of storage_dir)
    GET /p/{project}                               root apps: filter, search, pages; live
    GET /p/{project}/a/{app_id}?pk=                one app: header, graph, steps, fan-outs; live
    GET /p/{project}/a/{app_id}/steps/{seq}        its state at a step, diffed (fragment)
    GET /p/{project}/a/{app_id}/steps/{seq}/value/{key}   one state value, whole (download)
    GET /p/{project}/a/{app_id}/fanout/{seq}/children     a page of children (fragment)
    GET .../events                                 the page's server-sent events

Lists and counts are index queries (a page at a time); only an app's own page opens that
app's folder (its log and graph, as JSON).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Literal

from fanwise.core.tracking.index import ANY, STATUSES, AppRow, RunIndex
from fanwise.ui import _appfiles, _graph, _views
from fanwise.ui._events import snapshot_id, stream
from fanwise.ui._live import AppLive, AppsLive
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from sse_starlette import EventSourceResponse

Status = Literal["", "created", "running", "completed", "failed"]
"""A status filter; "" (what the filter form sends for "any") is none."""
Sort = Literal["spawn", "duration"]
_HERE = Path(__file__).parent
_PROJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
PAGE_SIZE = 50
"""Rows per page of every list: what a browser renders at once, whatever the project's size."""


def create_app(project: str | None, storage_dir: str = "~/.fanwise", *,
               poll_seconds: float = 0.5, page_size: int = PAGE_SIZE) -> FastAPI:
    """The tracking UI of the projects under `storage_dir`, opening at `project`'s apps
    (None: at the list of projects). Mount it in another FastAPI app with `app.mount(...)`;
    live pages poll the index every `poll_seconds`."""
    projects = _Projects(os.path.expanduser(str(storage_dir)), project)
    app = FastAPI(title="fanwise tracking", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    env = templates.env
    env.globals.update(href=_href, duration=_views.duration, parts=_views.PARTS,
                       statuses=STATUSES, short=_short)
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context)

    def render(request: Request, name: str, **context: Any) -> str:
        return env.get_template(name).render(request=request, **context)

    @app.get("/", response_class=HTMLResponse, name="projects")
    def projects_page(request: Request) -> HTMLResponse:
        return page(request, "projects.html", projects=projects.names(),
                    default=projects.default, storage_dir=projects.storage_dir)

    @app.get("/p/{project}", response_class=HTMLResponse, name="apps")
    def apps_page(request: Request, project: str, partition_key: str | None = None,
                  status: Status | None = None, prefix: str | None = None,
                  cursor: int | None = None) -> HTMLResponse:
        live = AppsLive(projects.index(project), project, _filters(partition_key, status,
                        prefix), page_size, cursor, lambda **kw: render(request, **kw))
        versions = live.versions()
        return page(request, "apps.html", project=project, live=live,
                    since=snapshot_id(versions), page=live.page, partition_key=partition_key,
                    status=status or None, prefix=prefix, cursor=cursor)

    @app.get("/p/{project}/events", name="apps_events")
    async def apps_events(request: Request, project: str, partition_key: str | None = None,
                          status: Status | None = None, prefix: str | None = None,
                          cursor: int | None = None,
                          since: str | None = None) -> EventSourceResponse:
        live = AppsLive(projects.index(project), project, _filters(partition_key, status,
                        prefix), page_size, cursor, lambda **kw: render(request, **kw))
        resume = request.headers.get("last-event-id") or since
        return EventSourceResponse(stream(live, resume, poll_seconds))

    @app.get("/p/{project}/a/{app_id}", response_class=HTMLResponse, name="app")
    def app_page(request: Request, project: str, app_id: str,
                 pk: str | None = None) -> HTMLResponse:
        index = projects.index(project)
        live = _app_live(request, index, project, app_id, pk, render, page_size)
        versions = live.versions()
        graph = _appfiles.read_graph(live.source)
        current = live.row.next_action or live.row.position
        drawing = _graph.layout(graph, current) if graph else None
        return page(request, "app.html", project=project, live=live, row=live.row,
                    pk=pk, since=snapshot_id(versions), drawing=drawing, steps=live.steps,
                    last_step=live.steps[-1] if live.steps else None,
                    usage=_children_usage(index, live.row) if live.bars else None)

    @app.get("/p/{project}/a/{app_id}/events", name="app_events")
    async def app_events(request: Request, project: str, app_id: str, pk: str | None = None,
                         since: str | None = None) -> EventSourceResponse:
        live = _app_live(request, projects.index(project), project, app_id, pk, render,
                         page_size)
        resume = request.headers.get("last-event-id") or since
        return EventSourceResponse(stream(live, resume, poll_seconds))

    @app.get("/p/{project}/a/{app_id}/steps/{sequence_id}", response_class=HTMLResponse,
             name="step_state")
    def step_state(request: Request, project: str, app_id: str, sequence_id: int,
                   pk: str | None = None) -> HTMLResponse:
        index = projects.index(project)
        _app_row(index, app_id, pk)
        steps = _appfiles.read_steps(_appfiles.app_source(index, app_id, pk))
        return page(request, "_state.html", **_state_context(steps, sequence_id),
                    project=project, app_id=app_id, pk=pk)

    @app.get("/p/{project}/a/{app_id}/steps/{sequence_id}/value/{key}", name="value")
    def value(project: str, app_id: str, sequence_id: int, key: str,
              pk: str | None = None) -> JSONResponse:
        index = projects.index(project)
        _app_row(index, app_id, pk)
        steps = _appfiles.read_steps(_appfiles.app_source(index, app_id, pk))
        state = _state_context(steps, sequence_id)["step"].state or {}
        if key not in state:
            raise HTTPException(404, f"step {sequence_id} of app {app_id!r} has no state "
                                     f"field {key!r}")
        filename = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{app_id[:16]}-{sequence_id}-{key}.json")
        return JSONResponse(state[key], headers={
            "Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/p/{project}/a/{app_id}/fanout/{sequence_id}/children",
             response_class=HTMLResponse, name="children")
    def children(request: Request, project: str, app_id: str, sequence_id: int,
                 pk: str | None = None, status: Status | None = None, sort: Sort = "spawn",
                 cursor: int | None = Query(None, ge=0)) -> HTMLResponse:
        index = projects.index(project)
        _app_row(index, app_id, pk)
        return page(request, "_children.html", **children_context(
            index, project, app_id, pk, sequence_id, status or None, sort, cursor, page_size))

    return app


def children_context(index: RunIndex, project: str, app_id: str, pk: str | None,
                     sequence_id: int, status: str | None, sort: str, cursor: int | None,
                     page_size: int) -> dict[str, Any]:
    """What `_children.html` shows: one page of a fan-out step's children."""
    if sort == "duration":
        found = index.children_by_duration(app_id, pk, sequence_id=sequence_id, status=status,
                                           limit=page_size, offset=cursor or 0)
    else:
        found = index.children(app_id, pk, sequence_id=sequence_id, status=status,
                               limit=page_size, cursor=cursor)
    return {"project": project, "app_id": app_id, "pk": pk, "sequence_id": sequence_id,
            "status": status, "sort": sort, "cursor": cursor, "page": found}


def _app_live(request: Request, index: RunIndex, project: str, app_id: str, pk: str | None,
              render: Any, page_size: int) -> AppLive:
    row = _app_row(index, app_id, pk)
    return AppLive(index, project, row, _appfiles.app_source(index, app_id, pk),
                   lambda **kw: render(request, **kw), children_context, page_size)


def _app_row(index: RunIndex, app_id: str, pk: str | None) -> AppRow:
    row = index.app(app_id, pk)
    if row is None:
        key = "" if pk is None else f" (partition key {pk!r})"
        raise HTTPException(404, f"project {index.project!r} has no app {app_id!r}{key}")
    return row


def _state_context(steps: list[_appfiles.Step], sequence_id: int) -> dict[str, Any]:
    by_id = {step.sequence_id: number for number, step in enumerate(steps)}
    if sequence_id not in by_id:
        raise HTTPException(404, f"the app has no step {sequence_id} in its log")
    number = by_id[sequence_id]
    step = steps[number]
    previous = next((s.state for s in reversed(steps[:number]) if s.state is not None), None)
    fields = (_views.state_fields(step.state, previous if number else None)
              if step.state is not None else [])
    return {"step": step, "fields": fields, "has_previous": number > 0}


def _filters(partition_key: str | None, status: str | None,
             prefix: str | None) -> dict[str, Any]:
    return {"partition_key": ANY if not partition_key else partition_key,
            "status": status or None, "prefix": prefix or None}


class _Projects:
    """The projects under a storage folder, each read through its own run index."""

    def __init__(self, storage_dir: str, default: str | None) -> None:
        self.storage_dir = storage_dir
        self.default = default
        self._indexes: dict[str, RunIndex] = {}
        self._lock = threading.Lock()
        if default is not None:
            self.index(default)

    def names(self) -> list[str]:
        """Project folders, the default first (it may not exist yet)."""
        try:
            with os.scandir(self.storage_dir) as entries:
                found = sorted(entry.name for entry in entries
                               if entry.is_dir() and _PROJECT_NAME.fullmatch(entry.name))
        except FileNotFoundError:
            found = []
        if self.default is not None:
            found = [self.default] + [name for name in found if name != self.default]
        return found

    def index(self, project: str) -> RunIndex:
        """The project's index, opened (rebuilt if missing or stale) on first use."""
        with self._lock:
            index = self._indexes.get(project)
            if index is not None:
                return index
            if project != self.default and (
                not _PROJECT_NAME.fullmatch(project)
                or not os.path.isdir(os.path.join(self.storage_dir, project))
            ):
                raise HTTPException(404, f"no project {project!r} in {self.storage_dir}")
            index = self._indexes[project] = RunIndex.open(project, self.storage_dir)
            return index


@pass_context
def _href(context: Any, name: str, **params: Any) -> str:
    """The URL of route `name`: its path parameters from `params`, the others (None
    left out) as the query string; relative to wherever the UI is mounted."""
    request: Request = context["request"]
    route = next(r for r in request.app.router.routes if getattr(r, "name", None) == name)
    path_names = set(route.param_convertors)
    path = {k: v for k, v in params.items() if k in path_names}
    query = {k: v for k, v in params.items() if k not in path_names and v is not None}
    url = request.url_for(name, **path)
    return str(url.include_query_params(**query)) if query else str(url)


def _short(app_id: str) -> str:
    """A long (sha256) child id cut for a table cell; the full id is in its link."""
    return app_id if len(app_id) <= 24 else f"{app_id[:12]}…{app_id[-6:]}"


def _children_usage(index: Any, row: Any) -> Any:
    """What the app's children logged as usage, summed (`fanwise.llm.summarize`), on the
    page as it loads (it reads every child's row, so live updates leave it out); None when
    none logged any, or without the llm extra."""
    try:
        from fanwise.llm.usage import summarize
    except ImportError:
        return None
    summary = summarize(index, row.app_id, row.partition_key)
    return summary if summary.children else None
