"""`fanwise submit` and `fanwise jobs`: `fanwise run` as a Ray job, and the jobs that run apps.

    fanwise submit --address http://HEAD:8265 [--working-dir DIR] [--runtime-env JSON]
                   [--no-wait] -- MODULE:FUNC --app-id ID [run options]
    fanwise jobs --address http://HEAD:8265 [--tracking DIR --project P]

A submission runs `python -m fanwise.cli run ...` through `ray.job_submission`: its id is
`fanwise-<app id>-<attempt>` (readable, unique per attempt) and its metadata names the app
id, so that a second submit of an app id whose job still runs follows that job's logs
instead of starting a second driver, and a resubmit (a new attempt) resumes the app: its
finished children are read back from the store, not run again. The paths of `--db` (a
SQLite file) and `--tracking` are made absolute here, so the job's driver writes where
the user asked whatever its working directory. The exit code mirrors the job's end: the
driver's own exit code, else 1 for a failed job and 4 for a stopped one (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shlex
import sys
from typing import Any

from fanwise.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    CliError,
    add_json,
    add_tracking,
    print_json,
)

APP_ID_KEY = "fanwise_app_id"
"""The job metadata key that names the app a job runs."""
ATTEMPT_KEY = "fanwise_attempt"
_LIVE = ("PENDING", "RUNNING")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def add_parsers(commands: Any) -> None:
    submit = commands.add_parser(
        "submit", help="run MODULE:FUNC as a Ray job (resubmitting resumes it)",
        usage="fanwise submit --address URL [options] -- MODULE:FUNC --app-id ID [run options]",
    )
    submit.add_argument("--address", required=True,
                        help="the Ray dashboard of the cluster, http://HEAD:8265")
    submit.add_argument("--working-dir", default=None,
                        help="folder uploaded as the job's working directory")
    submit.add_argument("--runtime-env", default=None,
                        help="a Ray runtime_env as JSON, or a .json file holding one")
    submit.add_argument("--python", default="python",
                        help="the job driver's Python, with fanwise installed (default: "
                             "`python` on the cluster)")
    submit.add_argument("--no-wait", action="store_true",
                        help="print the submission id and return at once")
    add_json(submit)
    submit.add_argument("run_args", nargs=argparse.REMAINDER,
                        help="after --: what `fanwise run` takes")
    submit.set_defaults(run=_submit)

    jobs = commands.add_parser("jobs", help="the Ray jobs that run fanwise apps")
    jobs.add_argument("--address", required=True,
                      help="the Ray dashboard of the cluster, http://HEAD:8265")
    add_tracking(jobs)
    add_json(jobs)
    jobs.set_defaults(run=_jobs)


def submission_id(app_id: str, attempt: int) -> str:
    """The submission id of attempt `attempt` of `app_id`: readable and unique."""
    digest = hashlib.sha256(app_id.encode()).hexdigest()[:8]
    return f"fanwise-{_UNSAFE.sub('_', app_id)[:40]}-{digest}-{attempt}"


def _submit(args: argparse.Namespace) -> int:
    run_args = list(args.run_args)
    if run_args[:1] == ["--"]:
        run_args = run_args[1:]
    run = _parsed_run(run_args)
    client = _client(args.address)
    mine = [job for job in _list_jobs(client) if (job.metadata or {}).get(APP_ID_KEY)
            == run.app_id]
    live = [job for job in mine if str(job.status.value) in _LIVE]
    if live:
        job_id = live[0].submission_id
        print(f"fanwise submit: app {run.app_id} already runs as job {job_id}: following it",
              file=sys.stderr)
    else:
        job_id = submission_id(run.app_id, len(mine) + 1)
        entrypoint = " ".join(shlex.quote(part) for part in
                              [args.python, "-m", "fanwise.cli", "run",
                               *_absolute_paths(run_args)])
        try:
            client.submit_job(
                entrypoint=entrypoint, submission_id=job_id,
                runtime_env=_runtime_env(args),
                metadata={APP_ID_KEY: run.app_id, ATTEMPT_KEY: str(len(mine) + 1)},
            )
        except RuntimeError as exc:
            raise CliError(f"the cluster at {args.address} refused the job: {exc}",
                           EXIT_FAILED) from exc
        if args.json:
            print_json({"type": "submitted", "submission_id": job_id, "app_id": run.app_id,
                        "attempt": len(mine) + 1})
        else:
            print(f"fanwise submit: job {job_id} runs app {run.app_id}", file=sys.stderr)
    if args.no_wait:
        if not args.json:
            print(job_id)
        return EXIT_OK
    try:
        asyncio.run(_follow(client, job_id))
    except KeyboardInterrupt:
        print(f"fanwise submit: stopped following job {job_id} (it goes on; "
              f"`ray job stop {job_id}` stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _exit_code(client.get_job_info(job_id), args)


async def _follow(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def _exit_code(info: Any, args: argparse.Namespace) -> int:
    status = str(info.status.value)
    code = info.driver_exit_code
    if code is None:
        code = {"SUCCEEDED": EXIT_OK, "STOPPED": EXIT_STOPPED}.get(status, EXIT_FAILED)
    if args.json:
        print_json({"type": "result", "submission_id": info.submission_id, "status": status,
                    "exit_code": code, "message": info.message})
    elif status != "SUCCEEDED":
        print(f"fanwise submit: job {info.submission_id} {status.lower()}: {info.message}",
              file=sys.stderr)
    return int(code)


def _parsed_run(run_args: list[str]) -> argparse.Namespace:
    from fanwise.cli.main import parser

    if not run_args:
        raise CliError("nothing to run: `fanwise submit --address URL -- MODULE:FUNC "
                       "--app-id ID ...`")
    try:
        parsed = parser().parse_args(["run", *run_args])
    except SystemExit as exc:
        raise CliError("the arguments after -- are not those of `fanwise run` (see "
                       "`fanwise run --help`)") from exc
    return parsed


def _absolute_paths(run_args: list[str]) -> list[str]:
    """`run_args` with the paths of `--tracking` and of a SQLite `--db` made absolute."""
    made = []
    take = None
    for arg in run_args:
        if take is not None:
            is_dsn = take == "--db" and arg.startswith(("postgresql://", "postgres://"))
            made.append(arg if is_dsn else os.path.abspath(os.path.expanduser(arg)))
            take = None
            continue
        name, sep, value = arg.partition("=")
        if name in ("--db", "--tracking") and sep:
            is_dsn = name == "--db" and value.startswith(("postgresql://", "postgres://"))
            made.append(arg if is_dsn else f"{name}={os.path.abspath(os.path.expanduser(value))}")
            continue
        if arg in ("--db", "--tracking"):
            take = arg
        made.append(arg)
    return made


def _runtime_env(args: argparse.Namespace) -> dict[str, Any] | None:
    env: dict[str, Any] = {}
    if args.runtime_env:
        raw = args.runtime_env
        if raw.endswith(".json") and os.path.isfile(raw):
            with open(raw) as f:
                raw = f.read()
        try:
            env = json.loads(raw)
        except ValueError as exc:
            raise CliError(f"--runtime-env is not JSON (nor a .json file): {exc}") from exc
        if not isinstance(env, dict):
            raise CliError("--runtime-env must be a JSON object")
    if args.working_dir:
        env["working_dir"] = os.path.abspath(args.working_dir)
    return env or None


def _client(address: str) -> Any:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise CliError("submit and jobs need Ray: pip install 'fanwise[ray]'") from exc
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CliError(f"no Ray cluster answers at {address}: {exc}", EXIT_FAILED) from exc


def _list_jobs(client: Any) -> list[Any]:
    try:
        return list(client.list_jobs())
    except Exception as exc:  # the dashboard's own error
        raise CliError(f"cannot list the cluster's jobs: {exc}", EXIT_FAILED) from exc


def _jobs(args: argparse.Namespace) -> int:
    client = _client(args.address)
    jobs = [job for job in _list_jobs(client) if APP_ID_KEY in (job.metadata or {})]
    jobs.sort(key=lambda job: job.start_time or 0, reverse=True)
    index = _index_or_none(args)
    try:
        for job in jobs:
            app_id = job.metadata[APP_ID_KEY]
            progress = _progress(index, app_id)
            if args.json:
                print_json({"type": "job", "submission_id": job.submission_id,
                            "status": str(job.status.value), "app_id": app_id,
                            "attempt": job.metadata.get(ATTEMPT_KEY),
                            "start_time": job.start_time, "end_time": job.end_time,
                            "progress": progress})
            else:
                counts = "" if progress is None else "  " + ", ".join(
                    f"{n:,} {status}" for status, n in sorted(progress.items()))
                print(f"{job.submission_id}  {str(job.status.value):9} app {app_id}{counts}")
    finally:
        if index is not None:
            index.close()
    return EXIT_OK


def _index_or_none(args: argparse.Namespace) -> Any:
    from fanwise.cli._common import open_index

    if args.tracking is None and args.project is None:
        return None
    return open_index(args)


def _progress(index: Any, app_id: str) -> dict[str, int] | None:
    """The counts by status of the app's last fan-out step, if the index has the app."""
    if index is None:
        return None
    from fanwise.core.tracking.index import ANY

    try:
        row = index.app(app_id, ANY)
    except ValueError:
        return None
    if row is None:
        return None
    steps = index.fanout_steps(row.app_id, row.partition_key)
    return dict(steps[-1].counts) if steps else {}
