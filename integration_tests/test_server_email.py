"""The email assistant of examples/email_server.py served by real uvicorn processes on
127.0.0.1 (started here on free ports, killed with SIGKILL by process group), driven with
httpx request by request, over one SQLite file.

`EmailServer` and `sse_events` are also used by test_server_postgres.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parent.parent
EMAIL = {"email_to_respond": "Can we meet on Friday?", "response_instructions": "Say yes"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmailServer:
    """`uvicorn --app-dir examples email_server:app` in a process group of its own (its
    workers with it), so that `kill()` ends all of them with SIGKILL."""

    def __init__(self, db: str, workers: int = 1, **env: str) -> None:
        self.db, self.workers, self.env = db, workers, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EmailServer:
        env = {**os.environ, "FANWISE_EMAIL_DB": self.db, **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples"),
             "email_server:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers), "--log-level", "warning"],
            env=env, cwd=ROOT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the server exited at start"
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server on port {self.port} did not answer in 60 s")

    def kill(self) -> None:
        """SIGKILL the server and its workers (its process group), then reap it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self) -> EmailServer:
        self.kill()
        return self.start()

    def client(self) -> Any:
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture
def servers() -> Iterator[list[EmailServer]]:
    started: list[EmailServer] = []
    yield started
    for server in started:
        server.kill()


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events as {"id", "event", "data"} (data parsed), pings skipped."""
    event: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[field] = json.loads(value) if field == "data" else value


def test_the_conversation_goes_on_from_the_store_across_kill_9s(servers, tmp_path):
    server = EmailServer(str(tmp_path / "email.db"))
    servers.append(server.start())
    user = {"x-user": "alice"}
    with server.client() as http:
        created = http.post("/apps", json={"app_id": "mail-1", "inputs": EMAIL}, headers=user)
        assert created.status_code == 201, created.text
        view = created.json()
        assert view["next_action"] == "clarify_instructions"
        assert view["inputs_schema"]["required"] == ["clarification_inputs"]
        questions = view["state"]["clarification_questions"]
        assert len(questions) == 2
    server.restart()
    with server.client() as http:
        assert http.get("/apps/mail-1").status_code == 404  # another partition
        answered = http.post("/apps/mail-1/clarify_instructions", headers=user,
                             json={"clarification_inputs": ["my boss", "friendly"]}).json()
        assert answered["next_action"] == "process_feedback"
        assert len(answered["state"]["draft_history"]) == 1
    server.restart()
    with server.client() as http:
        revised = http.post("/apps/mail-1/process_feedback", headers=user,
                            json={"feedback": "shorter"}).json()
        assert revised["next_action"] == "process_feedback"
    server.restart()
    with server.client() as http:
        again = http.post("/apps/mail-1/process_feedback", headers=user,
                          json={"feedback": "warmer"}).json()
        drafts = again["state"]["draft_history"]
        assert len(drafts) == 3 and "warmer" in drafts[-1] and "shorter" in drafts[-2]
    server.restart()
    with server.client() as http:
        done = http.post("/apps/mail-1/process_feedback", headers=user,
                         json={"feedback": ""}).json()
        assert done["status"] == "completed" and done["next_action"] is None
        assert done["state"]["final_draft"] == drafts[-1]
        assert done["state"]["feedback_history"] == ["shorter", "warmer", ""]
        steps = http.get("/apps/mail-1/history", headers=user).json()["steps"]
    assert [s["action"] for s in steps] == [
        "process_input", "determine_clarifications", "clarify_instructions",
        "formulate_draft", "process_feedback", "formulate_draft", "process_feedback",
        "formulate_draft", "process_feedback", "final_result"]
    assert [s["sequence_id"] for s in steps] == list(range(10))


def test_a_run_killed_mid_draft_is_run_on_by_the_next_request(servers, tmp_path):
    server = EmailServer(str(tmp_path / "email.db"), FANWISE_EMAIL_TOKEN_DELAY="0.2")
    servers.append(server.start())
    create_waiting_for_feedback(server.url, "mail-5")
    with server.client() as http:
        last = http.get("/apps/mail-5").json()["last_event_id"]
    poster = threading.Thread(target=lambda: _post_ignoring_drop(
        f"{server.url}/apps/mail-5/process_feedback", {"feedback": "shorter"}))
    poster.start()
    with httpx.stream("GET", f"{server.url}/apps/mail-5/stream",
                      headers={"Last-Event-ID": str(last)}, timeout=60) as stream:
        for event in sse_events(stream.iter_lines()):
            if event["event"] == "item":
                break  # the draft is being written: kill the server now
    server.restart()
    poster.join(60)
    with server.client() as http:
        view = http.get("/apps/mail-5").json()
        assert view["status"] == "stopped" and view["next_action"] == "formulate_draft"
        retried = http.post("/apps/mail-5/process_feedback", json={"feedback": "shorter"})
        assert retried.status_code == 409
        assert "now waits for 'process_feedback'" in retried.json()["detail"]
        view = http.get("/apps/mail-5").json()
        steps = http.get("/apps/mail-5/history").json()["steps"]
    assert view["status"] == "waiting" and view["state"]["feedback_history"] == ["shorter"]
    assert len(view["state"]["draft_history"]) == 2 and "shorter" in view["state"][
        "current_draft"]
    assert [s["action"] for s in steps].count("process_feedback") == 1


def _post_ignoring_drop(url: str, body: dict[str, Any]) -> None:
    """A request whose server is killed under it: its connection drops."""
    try:
        httpx.post(url, json=body, timeout=60)
    except httpx.TransportError:
        pass


def concurrent_feedback(urls: list[str], app_id: str) -> dict[str, Any]:
    """POST two different feedbacks to `app_id` at the same moment, one per url."""
    barrier = threading.Barrier(len(urls))
    answers: dict[str, Any] = {}

    def post(url: str, feedback: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            answers[feedback] = http.post(f"/apps/{app_id}/process_feedback",
                                          json={"feedback": feedback})

    threads = [threading.Thread(target=post, args=(url, f"feedback-{i}"))
               for i, url in enumerate(urls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return answers


def create_waiting_for_feedback(url: str, app_id: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        http.post("/apps", json={"app_id": app_id, "inputs": EMAIL}).raise_for_status()
        http.post(f"/apps/{app_id}/clarify_instructions",
                  json={"clarification_inputs": ["a", "b"]}).raise_for_status()


def check_one_ran(urls: list[str], app_id: str) -> None:
    """Two concurrent requests on one app: one 200, one 409 naming the holder; the app's
    steps hold exactly the winner's feedback, once."""
    answers = concurrent_feedback(urls, app_id)
    codes = sorted(answer.status_code for answer in answers.values())
    assert codes == [200, 409], {k: (a.status_code, a.text) for k, a in answers.items()}
    winner = next(k for k, a in answers.items() if a.status_code == 200)
    loser = next(a for a in answers.values() if a.status_code == 409)
    assert "pid" in loser.json()["holder"] and "busy" in loser.json()["detail"]
    with httpx.Client(base_url=urls[0], timeout=60) as http:
        view = http.get(f"/apps/{app_id}").json()
        steps = http.get(f"/apps/{app_id}/history").json()["steps"]
    assert view["state"]["feedback_history"] == [winner]
    assert [s["action"] for s in steps].count("process_feedback") == 1
    assert [s["sequence_id"] for s in steps] == list(range(len(steps)))


def check_both_ran_in_turn(urls: list[str], app_id: str) -> None:
    """`busy="queue"`: both requests run, one after the other, each step once."""
    answers = concurrent_feedback(urls, app_id)
    assert [a.status_code for a in answers.values()] == [200, 200], answers
    with httpx.Client(base_url=urls[0], timeout=60) as http:
        view = http.get(f"/apps/{app_id}").json()
        steps = http.get(f"/apps/{app_id}/history").json()["steps"]
    assert sorted(view["state"]["feedback_history"]) == ["feedback-0", "feedback-1"]
    actions = [s["action"] for s in steps]
    assert actions.count("process_feedback") == 2 and actions.count("formulate_draft") == 3
    assert [s["sequence_id"] for s in steps] == list(range(len(steps)))


def test_two_requests_on_one_app_from_two_servers_exactly_one_runs(servers, tmp_path):
    db = str(tmp_path / "email.db")
    slow = {"FANWISE_EMAIL_TOKEN_DELAY": "0.05"}
    servers.extend(EmailServer(db, workers=2, **slow).start() for _ in range(2))
    create_waiting_for_feedback(servers[0].url, "mail-2")
    check_one_ran([s.url for s in servers], "mail-2")


def test_queued_requests_on_one_app_from_two_servers_run_in_turn(servers, tmp_path):
    db = str(tmp_path / "email.db")
    env = {"FANWISE_EMAIL_TOKEN_DELAY": "0.05", "FANWISE_EMAIL_BUSY": "queue"}
    servers.extend(EmailServer(db, **env).start() for _ in range(2))
    create_waiting_for_feedback(servers[0].url, "mail-3")
    check_both_ran_in_turn([s.url for s in servers], "mail-3")


def test_a_dropped_stream_resumes_on_another_server_with_last_event_id(servers, tmp_path):
    db = str(tmp_path / "email.db")
    slow = {"FANWISE_EMAIL_TOKEN_DELAY": "0.1"}
    servers.extend(EmailServer(db, **slow).start() for _ in range(2))
    create_waiting_for_feedback(servers[0].url, "mail-4")
    with httpx.Client(base_url=servers[0].url, timeout=60) as http:
        last = http.get("/apps/mail-4").json()["last_event_id"]
    answers: list[Any] = []
    poster = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{servers[0].url}/apps/mail-4/process_feedback", json={"feedback": "shorter"},
        timeout=60)))
    poster.start()
    first: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{servers[0].url}/apps/mail-4/stream",
                      headers={"Last-Event-ID": str(last)}, timeout=60) as stream:
        for event in sse_events(stream.iter_lines()):
            first.append(event)
            if sum(e["event"] == "item" for e in first) == 3:
                break  # the connection drops mid-stream
    with httpx.stream("GET", f"{servers[1].url}/apps/mail-4/stream",
                      headers={"Last-Event-ID": first[-1]["id"]}, timeout=60) as stream:
        rest = list(sse_events(stream.iter_lines()))
    poster.join(60)
    assert answers[0].status_code == 200, answers[0].text
    events = first + rest
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)), "an event was repeated or came out of order"
    assert events[-1]["event"] == "halted"
    drafting = [e["data"] for e in events if e["event"] == "item"]
    assert all(d["action"] == "formulate_draft" for d in drafting)
    assert [d["index"] for d in drafting] == list(range(1, len(drafting) + 1))
    streamed = "".join(d["item"]["delta"] for d in drafting).strip()
    assert streamed == answers[0].json()["state"]["current_draft"]
    assert len(rest) > 1 and any(e["event"] == "item" for e in rest)
