"""The tracking UI in the browser (extra `ui`): `create_app(project, storage_dir)` is a
read-only FastAPI app over the run index; `serve(...)` runs it with uvicorn (`fanwise ui`).

Server-rendered pages (Jinja2) with a vendored htmx (static/, its version in docs/ui.md)
and one server-sent-event stream per open page; nothing recorded is ever unpickled.
"""

from __future__ import annotations

from fanwise.ui._app import PAGE_SIZE, create_app

DEFAULT_HOST = "127.0.0.1"
"""This machine only: the UI has no authentication."""
DEFAULT_PORT = 7241


def serve(project: str | None, storage_dir: str = "~/.fanwise", host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT) -> None:
    """Serve `create_app(project, storage_dir)` on `host:port` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(project, storage_dir), host=host, port=port, log_level="warning")


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "PAGE_SIZE", "create_app", "serve"]
