"""Server-sent events of the tracking UI's pages, read from a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from fanwise.core import ApplicationBuilder
from fanwise.core.tracking import LocalTrackingClient
from ui_apps import finish, reply

PROJECT = "live"


def _chat(storage: str, app_id: str):
    return (ApplicationBuilder().with_actions(reply, finish)
            .with_transitions(("reply", "finish"))
            .with_state(prompt="hi").with_entrypoint("reply")
            .with_tracker(LocalTrackingClient(PROJECT, storage_dir=storage))
            .with_identifiers(app_id=app_id).build())


@pytest.fixture
def served(tmp_path):
    """(base URL, storage folder) of a UI served by uvicorn in a thread, polling fast."""
    import uvicorn
    from fanwise.ui import create_app

    storage = str(tmp_path)
    _chat(storage, "first").run(halt_after=["finish"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(PROJECT, storage, poll_seconds=0.05),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", storage
    server.should_exit = True
    thread.join(10)


def _events(response: httpx.Response):
    """Each event of an SSE response as a dict of its fields (data lines joined)."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = event[name] + "\n" + value if name in event else value


def test_a_new_stream_sends_the_page_fragments_with_a_snapshot_id(served):
    base, _ = served
    with httpx.stream("GET", f"{base}/p/{PROJECT}/events", timeout=5) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = next(_events(response))
    assert event["event"] == "apps"
    assert "/a/first" in event["data"] and len(event["id"]) == 16


def test_resuming_from_the_last_event_id_sends_only_what_changed_since(served):
    base, storage = served
    url = f"{base}/p/{PROJECT}/events"
    with httpx.stream("GET", url, timeout=5) as response:
        seen = next(_events(response))
    with httpx.stream("GET", url, headers={"Last-Event-ID": seen["id"]},
                      timeout=httpx.Timeout(5, read=1.0)) as response:
        with pytest.raises(httpx.ReadTimeout):
            next(_events(response))  # the page it resumes is current: nothing to send
    with httpx.stream("GET", url, headers={"Last-Event-ID": seen["id"]},
                      timeout=5) as response:
        events = _events(response)
        _chat(storage, "second").run(halt_after=["finish"])
        event = next(events)
    assert event["event"] == "apps" and "/a/second" in event["data"]
    assert event["id"] != seen["id"]


def test_an_app_page_stream_sends_its_steps_as_the_app_moves(served):
    base, storage = served
    app = _chat(storage, "stepping")
    app.step()
    url = f"{base}/p/{PROJECT}/a/stepping/events"
    with httpx.stream("GET", url, timeout=5) as response:
        first = {event["event"]: event for _, event in zip(range(3), _events(response))}
    assert set(first) == {"app-header", "steps", "fanouts"}
    assert first["steps"]["data"].count("<tr class=") == 1
    with httpx.stream("GET", url, headers={"Last-Event-ID": first["steps"]["id"]},
                      timeout=5) as response:
        events = _events(response)
        app.step()
        moved = {}
        while "steps" not in moved:
            event = next(events)
            moved[event["event"]] = event
    assert moved["steps"]["data"].count("<tr class=") == 2
    assert "fanouts" not in moved  # unchanged fragments are not sent again
