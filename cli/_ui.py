"""`fanwise ui`: serve the tracking UI (`fanwise.ui.create_app`, extra `ui`) with uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from fanwise.cli._common import EXIT_OK, CliError, add_tracking, project_of, tracking_dir

DEFAULT_PORT = 7241


def add_parser(commands: Any) -> None:
    ui = commands.add_parser("ui", help="serve the tracking UI in the browser")
    add_tracking(ui)
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"port (default {DEFAULT_PORT})")
    ui.set_defaults(run=_ui)


def _ui(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("fanwise.ui") is None:
        raise CliError("the tracking UI is not available: this installation has no "
                       "fanwise.ui module (pip install 'fanwise[ui]')")
    try:
        import uvicorn
        from fanwise.ui import create_app
    except ImportError as exc:
        raise CliError(f"the tracking UI cannot start: {exc} (pip install 'fanwise[ui]')"
                       ) from exc
    app = create_app(project_of(args), tracking_dir(args))
    print(f"fanwise ui: http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK
