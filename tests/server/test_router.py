"""The generated routes, driven through FastAPI's test client over real SQLite stores."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fanwise.core import ApplicationBuilder
from fanwise.core.persistence import InMemoryPersister
from fanwise.server import create_router
from fastapi import Request
from server_apps import (
    Gate,
    awkward,
    counter,
    fanning,
    gated,
    gated_fanning,
    speaking,
    sse_events,
)


def by_header(request: Request) -> str | None:
    return request.headers.get("x-user") or None


@pytest.fixture
def db(tmp_path: Any) -> str:
    return str(tmp_path / "server.db")


def test_create_runs_to_the_first_halt_and_names_the_inputs_it_waits_for(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    created = client.post("/apps", json={"app_id": "c1"})
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["app_id"] == "c1" and view["sequence_id"] == 0
    assert view["status"] == "waiting" and view["next_action"] == "add"
    schema = view["inputs_schema"]
    assert schema["required"] == ["by"]
    assert schema["properties"]["by"]["type"] == "integer"
    assert schema["properties"]["note"]["default"] == ""
    assert view["state"] == {"total": 0, "log": []}
    assert client.get("/apps/c1").json() == view


def test_an_action_route_runs_that_action_and_on_to_the_next_halt(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    client.post("/apps", json={"app_id": "c1"})
    added = client.post("/apps/c1/add", json={"by": 4, "note": "!"}).json()
    assert added["state"] == {"total": 4, "log": ["+4!"]} and added["sequence_id"] == 1
    done = client.post("/apps/c1/add", json={"by": 7}).json()
    assert done["status"] == "completed" and done["next_action"] is None
    assert done["state"]["done"] is True and done["inputs_schema"] is None
    again = client.post("/apps/c1/add", json={"by": 1})
    assert again.status_code == 409 and "done" in again.json()["detail"]


def test_a_generated_id_is_a_new_app_each_time(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    first, second = (client.post("/apps", json={}).json()["app_id"] for _ in range(2))
    assert first != second
    assert client.get(f"/apps/{first}").status_code == 200


def test_an_idempotency_key_returns_the_same_app_on_retry(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    headers = {"Idempotency-Key": "order-17"}
    first = client.post("/apps", json={}, headers=headers)
    retry = client.post("/apps", json={}, headers=headers)
    assert first.status_code == 201 and retry.status_code == 200
    assert retry.json() == first.json()
    history = client.get(f"/apps/{first.json()['app_id']}/history").json()
    assert [step["action"] for step in history["steps"]] == ["start"]  # ran once


def test_an_existing_app_id_cannot_be_created_again(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    client.post("/apps", json={"app_id": "c1"})
    again = client.post("/apps", json={"app_id": "c1"})
    assert again.status_code == 409 and "exists" in again.json()["detail"]


def test_an_action_the_app_does_not_wait_for_is_409_naming_the_awaited_one(serve, db):
    build = fanning(db)
    client = serve(build, halt_before=["numbers", "finish"], halt_after=[])
    client.post("/apps", json={"app_id": "f1", "inputs": {"count": 2}})
    refused = client.post("/apps/f1/numbers", json={"count": 1})
    assert refused.status_code == 409
    assert refused.json()["detail"] == "app 'f1' waits for 'finish', not 'numbers'"


def test_an_unknown_app_is_404_on_every_route(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    for method, path in [("get", "/apps/nope"), ("get", "/apps/nope/history"),
                         ("get", "/apps/nope/children"), ("get", "/apps/nope/stream"),
                         ("post", "/apps/nope/add")]:
        kwargs = {"json": {"by": 1}} if method == "post" else {}
        answer = getattr(client, method)(path, **kwargs)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["detail"] == "no app 'nope' here"


def test_another_partitions_app_answers_404(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"], auth=by_header)
    alice, bob = {"x-user": "alice"}, {"x-user": "bob"}
    created = client.post("/apps", json={"app_id": "shared-name"}, headers=alice).json()
    assert created["partition_key"] == "alice"
    assert client.get("/apps/shared-name", headers=bob).status_code == 404
    assert client.post("/apps/shared-name/add", json={"by": 1}, headers=bob).status_code == 404
    assert client.get("/apps/shared-name").status_code == 404  # no partition key
    # bob may use the same id: a different app
    assert client.post("/apps", json={"app_id": "shared-name"}, headers=bob).status_code == 201
    client.post("/apps/shared-name/add", json={"by": 5}, headers=bob)
    assert client.get("/apps/shared-name", headers=alice).json()["state"]["total"] == 0


def test_undeclared_or_mistyped_inputs_are_422(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    client.post("/apps", json={"app_id": "c1"})
    assert client.post("/apps/c1/add", json={"by": 1, "other": 2}).status_code == 422
    assert client.post("/apps/c1/add", json={"by": "many"}).status_code == 422
    assert client.post("/apps/c1/add", json={}).status_code == 422
    assert client.post("/apps/c1/add").status_code == 422  # no body at all
    assert client.post("/apps", json={"app_id": "has space"}).status_code == 422
    assert client.get("/apps/c1").json()["sequence_id"] == 0


def test_a_run_missing_a_later_steps_input_is_400_and_a_raising_action_500(serve, db):
    client = serve(awkward(db), halt_before=["explode"], halt_after=[])
    missing = client.post("/apps", json={"app_id": "a1"})
    assert missing.status_code == 400 and "'x'" in missing.json()["detail"]
    created = client.post("/apps", json={"app_id": "a2", "inputs": {"x": 3}})
    assert created.status_code == 201 and created.json()["state"] == {
        "total": 0, "log": [], "x": 3}
    broke = client.post("/apps/a2/explode")
    assert broke.status_code == 500 and "the action broke" in broke.json()["detail"]
    view = client.get("/apps/a2").json()
    assert view["status"] == "failed" and view["next_action"] == "explode"


def test_a_stopped_app_is_run_on_by_an_action_request_which_then_answers_409(serve, db):
    client = serve(fanning(db), halt_before=["finish"], halt_after=["numbers"])
    stopped = client.post("/apps", json={"app_id": "f1", "inputs": {"count": 3}}).json()
    assert stopped["status"] == "stopped" and stopped["next_action"] == "squares"
    refused = client.post("/apps/f1/finish")
    assert refused.status_code == 409
    assert "now waits for 'finish'" in refused.json()["detail"]
    view = client.get("/apps/f1").json()
    assert view["status"] == "waiting" and view["state"]["sum"] == 0 + 1 + 4
    finished = client.post("/apps/f1/finish").json()
    assert finished["status"] == "completed"
    steps = client.get("/apps/f1/history").json()["steps"]
    assert [s["action"] for s in steps] == ["numbers", "squares", "finish"]


def test_an_idempotent_retry_runs_on_a_first_run_that_stopped_short(serve, db):
    client = serve(fanning(db), halt_before=["finish"], halt_after=["numbers"])
    headers = {"Idempotency-Key": "k"}
    body = {"app_id": "f1", "inputs": {"count": 3}}
    assert client.post("/apps", json=body, headers=headers).json()["status"] == "stopped"
    retried = client.post("/apps", json=body, headers=headers)
    assert retried.status_code == 200
    assert retried.json()["status"] == "waiting" and retried.json()["state"]["sum"] == 5
    assert client.post("/apps", json=body, headers=headers).json() == retried.json()


def test_expose_limits_the_state_answered(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"], expose=["total"])
    client.post("/apps", json={"app_id": "c1"})
    assert client.post("/apps/c1/add", json={"by": 2}).json()["state"] == {"total": 2}
    steps = client.get("/apps/c1/history").json()["steps"]
    assert [step["state"] for step in steps] == [{"total": 0}, {"total": 2}]


def test_history_pages_through_the_saved_steps(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    client.post("/apps", json={"app_id": "c1"})
    for by in (1, 2, 3):
        client.post("/apps/c1/add", json={"by": by})
    first = client.get("/apps/c1/history", params={"limit": 3}).json()
    assert [s["sequence_id"] for s in first["steps"]] == [0, 1, 2]
    assert first["next_cursor"] == 3
    rest = client.get("/apps/c1/history", params={"cursor": 3, "limit": 3}).json()
    assert [(s["sequence_id"], s["action"]) for s in rest["steps"]] == [(3, "add")]
    assert rest["next_cursor"] is None


def test_children_of_a_fan_out_are_listed_by_status_with_counts(serve, db):
    client = serve(fanning(db), halt_before=["finish"], halt_after=[])
    view = client.post("/apps", json={"app_id": "f1", "inputs": {"count": 5}}).json()
    assert view["state"]["sum"] == 0 + 1 + 4 + 16
    assert view["fanout"] == {"sequence_id": 1, "counts": {"done": 4, "failed": 1}}
    page = client.get("/apps/f1/children", params={"limit": 3}).json()
    assert [c["position"] for c in page["children"]] == [0, 1, 2]
    assert page["next_cursor"] == 2 and page["sequence_id"] == 1
    rest = client.get("/apps/f1/children", params={"cursor": 2}).json()
    assert [c["position"] for c in rest["children"]] == [3, 4] and rest["next_cursor"] is None
    failed = client.get("/apps/f1/children", params={"status": "failed"}).json()
    assert [(c["position"], c["status"]) for c in failed["children"]] == [(3, "failed")]
    assert "three is refused" in failed["children"][0]["error"]


def test_a_running_fan_out_shows_its_counts_while_its_children_run(serve, db):
    gate = Gate()
    client = serve(gated_fanning(db, gate), halt_before=["finish"], halt_after=[])
    answers: list[Any] = []
    creating = threading.Thread(target=lambda: answers.append(
        client.post("/apps", json={"app_id": "f1", "inputs": {"count": 4}})))
    creating.start()
    assert gate.entered.wait(10)
    for _ in range(100):  # the event writer flushes every 50 ms
        view = client.get("/apps/f1").json()
        if view["fanout"] is not None:
            break
        time.sleep(0.05)
    assert view["status"] == "running"
    assert view["fanout"] == {"sequence_id": 1, "counts": {"running": 2}}
    running = client.get("/apps/f1/children", params={"status": "running"}).json()
    assert [c["position"] for c in running["children"]] == [0, 1]
    gate.release.set()
    creating.join(20)
    assert answers[0].status_code == 201
    assert answers[0].json()["fanout"]["counts"] == {"done": 4}
    assert answers[0].json()["state"]["sum"] == 0 + 1 + 4 + 9


def run_concurrently(client: Any, gate: Gate, path: str, labels: list[str]) -> list[Any]:
    """POST `path` once per label from threads; the first holds the gate until the others
    have answered or are waiting."""
    answers: dict[str, Any] = {}

    def post(label: str) -> None:
        answers[label] = client.post(path, json={"label": label})

    first = threading.Thread(target=post, args=(labels[0],))
    first.start()
    assert gate.entered.wait(10)
    others = [threading.Thread(target=post, args=(label,)) for label in labels[1:]]
    for thread in others:
        thread.start()
    return [first, *others], answers


def test_a_second_request_on_a_busy_app_is_409_naming_the_holder(serve, db):
    gate = Gate()
    client = serve(gated(db, gate), halt_before=["step"], halt_after=[])
    client.post("/apps", json={"app_id": "g1"})
    threads, answers = run_concurrently(client, gate, "/apps/g1/step", ["a", "b"])
    threads[1].join(10)
    refused = answers["b"]
    assert refused.status_code == 409, refused.text
    assert "busy" in refused.json()["detail"] and "pid" in refused.json()["holder"]
    assert client.get("/apps/g1").json()["status"] == "running"
    gate.release.set()
    threads[0].join(10)
    assert answers["a"].status_code == 200
    assert client.get("/apps/g1").json()["state"]["runs"] == ["a"]


def test_queued_requests_on_a_busy_app_each_run_once_in_turn(serve, db):
    gate = Gate()
    client = serve(gated(db, gate), halt_before=["step"], halt_after=[], busy="queue")
    client.post("/apps", json={"app_id": "g1"})
    threads, answers = run_concurrently(client, gate, "/apps/g1/step", ["a", "b", "c"])
    gate.release.set()
    for thread in threads:
        thread.join(20)
    assert {label: a.status_code for label, a in answers.items()} == {
        "a": 200, "b": 200, "c": 200}
    runs = client.get("/apps/g1").json()["state"]["runs"]
    assert runs[0] == "a" and sorted(runs) == ["a", "b", "c"]
    steps = client.get("/apps/g1/history").json()["steps"]
    assert [s["sequence_id"] for s in steps] == [0, 1, 2, 3]


def test_a_queued_request_that_waits_longer_than_queue_timeout_is_409(serve, db):
    gate = Gate()
    client = serve(gated(db, gate), halt_before=["step"], halt_after=[], busy="queue",
                   queue_timeout=0.3)
    client.post("/apps", json={"app_id": "g1"})
    threads, answers = run_concurrently(client, gate, "/apps/g1/step", ["a", "b"])
    threads[1].join(10)
    assert answers["b"].status_code == 409 and "pid" in answers["b"].json()["holder"]
    gate.release.set()
    threads[0].join(10)
    assert client.get("/apps/g1").json()["state"]["runs"] == ["a"]


def test_a_stream_gives_the_runs_items_and_resumes_after_last_event_id(serve, db):
    client = serve(speaking(db), halt_before=["speak"], halt_after=[])
    client.post("/apps", json={"app_id": "s1"})
    client.post("/apps/s1/speak", json={"words": 6})
    with client.stream("GET", "/apps/s1/stream") as stream:
        events = list(sse_events(stream.iter_lines()))
    kinds = [e["event"] for e in events]
    assert kinds == ["run", *["item"] * 6, "step", "step", "halted"]
    assert [e["data"]["item"]["delta"] for e in events if e["event"] == "item"] == [
        f"w{i}" for i in range(6)]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    with client.stream("GET", "/apps/s1/stream",
                       headers={"Last-Event-ID": events[3]["id"]}) as stream:
        rest = list(sse_events(stream.iter_lines()))
    assert [e["id"] for e in rest] == [e["id"] for e in events[4:]]


def test_a_stream_after_the_last_event_waits_for_the_next_run(serve, db):
    client = serve(speaking(db), halt_before=["speak"], halt_after=[])
    last = client.post("/apps", json={"app_id": "s1"}).json()["last_event_id"]
    poster = threading.Timer(0.3, client.post, args=("/apps/s1/speak",),
                             kwargs={"json": {"words": 2}})
    poster.start()
    with client.stream("GET", "/apps/s1/stream", params={"after": last}) as stream:
        events = list(sse_events(stream.iter_lines()))
    poster.join()
    assert [e["event"] for e in events] == ["run", "item", "item", "step", "step", "halted"]
    assert int(events[0]["id"]) > last


def test_a_stream_without_new_events_ends_after_idle_seconds(serve, db):
    client = serve(speaking(db), halt_before=["speak"], halt_after=[])
    last = client.post("/apps", json={"app_id": "s1"}).json()["last_event_id"]
    with client.stream("GET", "/apps/s1/stream", params={"after": last, "idle": 0.2}) as s:
        assert list(sse_events(s.iter_lines())) == []


def test_every_route_documents_its_error_answers(serve, db):
    client = serve(counter(db), halt_before=["add"], halt_after=["finish"])
    paths = client.get("/openapi.json").json()["paths"]
    documented = {(method, path): set(op["responses"]) for path, ops in paths.items()
                  for method, op in ops.items()}
    for key in [("get", "/apps/{app_id}"), ("get", "/apps/{app_id}/history"),
                ("get", "/apps/{app_id}/children"), ("get", "/apps/{app_id}/stream")]:
        assert {"200", "400", "404", "422"} <= documented[key], key
    assert {"201", "200", "400", "409", "422"} <= documented[("post", "/apps")]
    assert {"200", "400", "404", "409", "422"} <= documented[("post", "/apps/{app_id}/add")]
    body = paths["/apps/{app_id}/add"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/AddInputs")


def test_create_router_names_what_is_wrong_with_its_arguments(db):
    with pytest.raises(ValueError, match="busy='later'"):
        create_router(counter(db), halt_before=["add"], halt_after=[], busy="later")
    with pytest.raises(ValueError, match="nope"):
        create_router(counter(db), halt_before=["nope"], halt_after=[])

    def in_memory(app_id: str, partition_key: str | None) -> ApplicationBuilder:
        persister = InMemoryPersister()
        return counter(db)(app_id, partition_key).with_state_persister(persister)

    with pytest.raises(ValueError, match="with a persister"):
        create_router(lambda a, p: ApplicationBuilder(), halt_before=[], halt_after=[])
    with pytest.raises(ValueError, match="store=..."):
        create_router(in_memory, halt_before=["add"], halt_after=[])
