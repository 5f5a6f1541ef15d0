"""Requests per second of `fanwise.server` against the same routes written by hand as in
Burr's web-server tutorial (`_get_application` builds the app from the persister per
request, the endpoint runs it to its next halt), on SQLite and on PostgreSQL, each served
by uvicorn with several workers on 127.0.0.1.

    .venv/bin/python benchmarks/server.py [--seconds 5] [--workers 2] [--clients 16]

Two operations per server: `GET` of an app (`/apps/{id}` / the tutorial's `/state/{id}`)
and a one-step action (`POST /apps/{id}/add` / `/add/{id}`: `add` runs and the app halts
before `add` again). Every client works on its own app (the hand-written GET builds the app,
taking its lease, so two GETs of one app would collide there). The load generator shares
the machine with the servers; compare rows with each other, not with other machines.

The module is also what uvicorn serves: `server:generated` and `server:handwritten`, over
the store named by `FANWISE_BENCH_DB` (a SQLite path or postgresql:// DSN) and the table
`FANWISE_BENCH_TABLE`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import pydantic
from fanwise.core import ApplicationBuilder, State, action
from fastapi import FastAPI

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@action(reads=[], writes=["total"])
def start(state: State) -> State:
    return state.update(total=0)


@action(reads=["total"], writes=["total"])
def add(state: State, by: int) -> State:
    return state.update(total=state["total"] + by)


def _persister() -> Any:
    url = os.environ["FANWISE_BENCH_DB"]
    table = os.environ.get("FANWISE_BENCH_TABLE", "bench_state")
    if url.startswith("postgresql://"):
        from fanwise.core.persistence import PostgreSQLPersister

        return PostgreSQLPersister(url, table_name=table, max_connections=8)
    from fanwise.core.persistence import SQLitePersister

    return SQLitePersister(url, table_name=table)


def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(start, add)
        .with_transitions(("start", "add"), ("add", "add"))
        .initialize_from(PERSISTER, default_entrypoint="start", default_state={})
        .with_state_persister(PERSISTER)
        .with_identifiers(app_id=app_id, partition_key=partition_key)
    )


def generated() -> Any:
    """`create_app` over the counter (uvicorn `--factory server:generated`)."""
    from fanwise.server import create_app, open_store

    table = os.environ.get("FANWISE_BENCH_TABLE", "bench_state")
    return create_app(build_app, halt_before=["add"], halt_after=[],
                      store=open_store(os.environ["FANWISE_BENCH_DB"], f"{table}_server"))


class CounterState(pydantic.BaseModel):
    """What the hand-written endpoints answer (the tutorial's `EmailAssistantState`)."""

    app_id: str
    total: int | None
    next_step: str | None

    @staticmethod
    def from_app(counter: Any) -> CounterState:
        following = counter.get_next_action()
        return CounterState(app_id=counter.uid, total=counter.state.get("total"),
                            next_step=None if following is None else following.name)


class AddBody(pydantic.BaseModel):
    by: int


def _run_through(app_id: str, inputs: dict[str, Any]) -> CounterState:
    with build_app(app_id, None).build() as counter:
        counter.run(halt_before=["add"], inputs=inputs)
        return CounterState.from_app(counter)


def handwritten() -> FastAPI:
    """The tutorial's shape, by hand (uvicorn `--factory server:handwritten`)."""
    app = FastAPI()

    @app.post("/create/{app_id}")
    def create(app_id: str) -> CounterState:
        return _run_through(app_id, {})

    @app.post("/add/{app_id}")
    def add_to(app_id: str, body: AddBody) -> CounterState:
        return _run_through(app_id, {"by": body.by})

    @app.get("/state/{app_id}")
    def get_state(app_id: str) -> CounterState:
        with build_app(app_id, None).build() as counter:
            return CounterState.from_app(counter)

    return app


PERSISTER = _persister() if "FANWISE_BENCH_DB" in os.environ else None

ROUTES = {
    "generated": {"create": ("POST", "/apps", lambda i: {"app_id": i}),
                  "get": ("GET", "/apps/{id}", None),
                  "action": ("POST", "/apps/{id}/add", {"by": 1})},
    "handwritten": {"create": ("POST", "/create/{id}", None),
                    "get": ("GET", "/state/{id}", None),
                    "action": ("POST", "/add/{id}", {"by": 1})},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """uvicorn serving one factory of this module, in a process group of its own."""

    def __init__(self, factory: str, db: str, table: str, workers: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FANWISE_BENCH_DB": db, "FANWISE_BENCH_TABLE": table}
        here = pathlib.Path(__file__).resolve().parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", f"server:{factory}",
             "--app-dir", str(here), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
            env=env, start_new_session=True)

    async def ready(self, client: Any) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn on port {self.port} exited at start")
            try:
                if (await client.get(f"{self.url}/openapi.json")).status_code == 200:
                    return
            except Exception:  # not listening yet
                await asyncio.sleep(0.2)
        raise RuntimeError(f"uvicorn on port {self.port} did not start")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)


async def _load(client: Any, url: str, route: tuple[str, str, Any], app_ids: list[str],
                seconds: float) -> tuple[float, int]:
    """Each client loops on its own app for `seconds`: (requests per second, failures)."""
    method, path, body = route
    done, failed = 0, 0
    deadline = time.monotonic() + seconds

    async def one_client(app_id: str) -> None:
        nonlocal done, failed
        target = url + path.replace("{id}", app_id)
        while time.monotonic() < deadline:
            answer = await client.request(method, target, json=body)
            done += 1
            failed += answer.status_code >= 300

    began = time.monotonic()
    await asyncio.gather(*(one_client(app_id) for app_id in app_ids))
    return done / (time.monotonic() - began), failed


async def measure(kind: str, db: str, workers: int, clients: int,
                  seconds: float) -> dict[str, tuple[float, int]]:
    import httpx

    table = f"bench_{uuid.uuid4().hex[:8]}"
    served = Served(kind, db, table, workers)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    try:
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await served.ready(client)
            routes = ROUTES[kind]
            app_ids = [f"app-{i}" for i in range(clients)]
            method, path, body = routes["create"]
            for app_id in app_ids:
                payload = body(app_id) if callable(body) else body
                answer = await client.request(method, served.url + path.replace(
                    "{id}", app_id), json=payload)
                answer.raise_for_status()
            return {op: await _load(client, served.url, routes[op], app_ids, seconds)
                    for op in ("get", "action")}
    finally:
        served.stop()
        if db.startswith("postgresql://"):
            _drop(db, table)


def _drop(dsn: str, table: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        for suffix in ("", "_lease", "_server_events", "_server_children",
                       "_server_idempotency"):
            connection.execute(f"DROP TABLE IF EXISTS {table}{suffix}")


def _postgres_reachable() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
        return True
    except Exception as exc:  # no driver, no server: the PostgreSQL rows are left out
        print(f"PostgreSQL rows skipped: {POSTGRES_DSN}: {exc}", file=sys.stderr)
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per operation")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    args = parser.parse_args()
    stores = [("SQLite", None)] + ([("PostgreSQL", POSTGRES_DSN)]
                                   if _postgres_reachable() else [])
    print(f"{args.workers} uvicorn workers, {args.clients} clients (one app each), "
          f"{args.seconds:g} s per operation\n")
    print("| store | operation | generated (req/s) | by hand (req/s) | generated / by hand |")
    print("|---|---|---:|---:|---:|")
    for name, dsn in stores:
        with tempfile.TemporaryDirectory() as folder:
            db = dsn or os.path.join(folder, "bench.db")
            rows = {kind: asyncio.run(measure(kind, db, args.workers, args.clients,
                                              args.seconds))
                    for kind in ("generated", "handwritten")}
        for op, label in (("get", "GET app"), ("action", "one-step action")):
            (gen, gen_failed), (hand, hand_failed) = rows["generated"][op], rows[
                "handwritten"][op]
            failures = "" if not (gen_failed or hand_failed) else (
                f" ({gen_failed} / {hand_failed} failed)")
            print(f"| {name} | {label} | {gen:,.0f} | {hand:,.0f} | {gen / hand:.2f}x"
                  f"{failures} |")


if __name__ == "__main__":
    main()
