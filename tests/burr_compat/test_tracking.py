"""The files LocalTrackingClient writes validate against Burr's own tracking models
(apache-burr 0.43, `burr.tracking.common.models`), and Burr's UI schema assembles an app
view from them (`burr.tracking.server.schema`), so Burr's UI can open a fanwise project.
Also Burr's tracking setup: `with_tracker(project=..., params=...)`, "local" by default,
`LocalTrackingClient(project, storage_dir, serde_kwargs)`."""

import asyncio
import json
import os
from pathlib import Path

import pytest
from burr.tracking.common import models
from burr.tracking.server import schema
from fanwise.core import ApplicationBuilder, Result, State, action, streaming_action
from fanwise.core.errors import StateSerialisationError
from fanwise.core.persistence import InMemoryPersister
from fanwise.core.tracking import LocalTrackingClient, SyncTrackingClient
from fanwise.core.tracking.local import partition_folder
from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor
from fanwise.parallel import MapStates, RunnableGraph

pytestmark = pytest.mark.filterwarnings(
    # Burr's UI schema calls pydantic's deprecated .dict(); not ours to fix
    "ignore::pydantic.warnings.PydanticDeprecatedSince20"
)

LOG_MODELS = {
    "begin_entry": models.BeginEntryModel,
    "end_entry": models.EndEntryModel,
    "begin_span": models.BeginSpanModel,
    "end_span": models.EndSpanModel,
    "attribute": models.AttributeModel,
    "begin_stream": models.InitializeStreamModel,
    "first_item_stream": models.FirstItemStreamModel,
    "end_stream": models.EndStreamModel,
}


def validate_app_folder(folder: Path) -> dict:
    """Every file of one app folder through Burr's models; what was validated, by model."""
    seen: dict[str, int] = {}
    graph = models.ApplicationModel.model_validate_json((folder / "graph.json").read_bytes())
    seen["ApplicationModel"] = 1
    metadata = models.ApplicationMetadataModel.model_validate_json(
        (folder / "metadata.json").read_bytes()
    )
    seen["ApplicationMetadataModel"] = 1
    lines = (folder / "log.jsonl").read_bytes().splitlines()
    for line in lines:
        kind = json.loads(line)["type"]
        assert kind in LOG_MODELS, f"{folder}/log.jsonl has a line of unknown type {kind!r}"
        model = LOG_MODELS[kind]
        model.model_validate_json(line)
        seen[model.__name__] = seen.get(model.__name__, 0) + 1
    children = []
    if (folder / "children.jsonl").exists():
        for line in (folder / "children.jsonl").read_bytes().splitlines():
            children.append(models.ChildApplicationModel.model_validate_json(line))
        seen["ChildApplicationModel"] = len(children)
    # what Burr's UI server builds for the app page from these files
    view = schema.ApplicationLogs(
        application=graph,
        steps=schema.Step.from_logs(lines),
        children=children,
        parent_pointer=metadata.parent_pointer,
        spawning_parent_pointer=metadata.spawning_parent_pointer,
    )
    return {"seen": seen, "view": view, "metadata": metadata}


@action(reads=["n"], writes=["n"])
def count(state: State, __tracer) -> State:
    with __tracer("outer") as span:
        span.log_attributes(step=state["n"], detail={"a": [1, 2]})
        with __tracer("inner", span_dependencies=["outer"]):
            pass
    __tracer.log_attributes(outside="spans")
    return state.update(n=state["n"] + 1)


@streaming_action(reads=["n"], writes=["text"])
def talk(state: State):
    for word in ("a", "b", "c"):
        yield {"delta": word}, None
    yield {"text": "abc"}, state.update(text="abc")


def counting_app(tmp_path, **identifiers):
    return (
        ApplicationBuilder()
        .with_actions(count, talk, done=Result("n", "text"))
        .with_transitions(("count", "talk"), ("talk", "done"))
        .with_state(n=0)
        .with_entrypoint("count")
        .with_identifiers(**identifiers)
        .with_tracker(project="burr-ui", params={"storage_dir": str(tmp_path)})
        .build()
    )


def test_every_file_of_a_run_with_spans_and_a_stream_validates_against_burrs_models(tmp_path):
    app = counting_app(tmp_path, app_id="app-1")
    app.run(halt_after=["done"])

    checked = validate_app_folder(tmp_path / "burr-ui" / "app-1")
    assert checked["seen"] == {
        "ApplicationModel": 1,
        "ApplicationMetadataModel": 1,
        "BeginEntryModel": 3,
        "EndEntryModel": 3,
        "BeginSpanModel": 2,
        "EndSpanModel": 2,
        "AttributeModel": 3,
        "InitializeStreamModel": 1,
        "FirstItemStreamModel": 1,
        "EndStreamModel": 1,
    }
    view = checked["view"]
    assert view.application.entrypoint == "count"
    assert [a.name for a in view.application.actions] == ["count", "talk", "done"]
    assert "def count(state: State, __tracer)" in view.application.actions[0].code
    assert [(t.from_, t.to) for t in view.application.transitions] == [
        ("count", "talk"), ("talk", "done")
    ]
    first, second, third = view.steps
    assert first.step_end_log.state == {"n": 1}
    spans = {s.begin_entry.span_name: s for s in first.spans}
    assert spans["outer"].begin_entry.span_id == "0:0"
    assert spans["inner"].begin_entry.parent_span_id == "0:0"
    assert spans["inner"].begin_entry.span_dependencies == ["outer"]
    assert all(s.end_entry is not None for s in first.spans)
    attributes = {a.key: (a.span_id, a.value) for a in first.attributes}
    assert attributes == {
        "step": ("0:0", 0),
        "detail": ("0:0", {"a": [1, 2]}),
        "outside": (None, "spans"),
    }
    end_stream = second.streaming_events[-1]
    assert end_stream.items_streamed == 3
    assert third.step_end_log.result == {"n": 1, "text": "abc"}


def test_a_failed_step_and_a_partitioned_app_validate_too(tmp_path):
    @action(reads=[], writes=[])
    def broken(state: State) -> State:
        raise RuntimeError("no luck")

    app = (
        ApplicationBuilder().with_actions(broken).with_transitions().with_entrypoint("broken")
        .with_identifiers(app_id="sad", partition_key="user@example.com")
        .with_tracker(project="burr-ui", params={"storage_dir": str(tmp_path)}).build()
    )
    with pytest.raises(RuntimeError, match="no luck"):
        app.step()

    folder = tmp_path / "burr-ui" / partition_folder("user@example.com") / "sad"
    checked = validate_app_folder(folder)
    assert checked["metadata"].partition_key == "user@example.com"
    (step,) = checked["view"].steps
    assert "RuntimeError: no luck" in step.step_end_log.exception


def test_a_forked_app_records_its_parent_pointer_as_burrs_pointer_model(tmp_path):
    persister = InMemoryPersister()
    source = (
        ApplicationBuilder().with_actions(count, talk, done=Result("n", "text"))
        .with_transitions(("count", "talk"), ("talk", "done")).with_state(n=0)
        .with_entrypoint("count").with_identifiers(app_id="source")
        .with_state_persister(persister).build()
    )
    source.run(halt_after=["talk"])
    fork = (
        ApplicationBuilder().with_actions(count, talk, done=Result("n", "text"))
        .with_transitions(("count", "talk"), ("talk", "done"))
        .initialize_from(persister, default_entrypoint="count", fork_from_app_id="source",
                         fork_from_sequence_id=0)
        .with_identifiers(app_id="fork")
        .with_tracker(project="burr-ui", params={"storage_dir": str(tmp_path)}).build()
    )
    fork.run(halt_after=["done"])

    checked = validate_app_folder(tmp_path / "burr-ui" / "fork")
    pointer = checked["metadata"].parent_pointer
    assert (pointer.app_id, pointer.sequence_id) == ("source", 0)


class Squares(MapStates):
    def action(self, state, inputs):
        return RunnableGraph.create(square)

    def states(self, state, context, inputs):
        for x in state["xs"]:
            yield state.update(x=x)

    def reduce(self, state, states):
        return state.update(ys=[s["y"] for s in states])

    @property
    def reads(self):
        return ["xs"]

    @property
    def writes(self):
        return ["ys"]


@action(reads=["x"], writes=["y"])
def square(state: State, __tracer) -> State:
    with __tracer("multiply") as span:
        span.log_attributes(x=state["x"], pid=os.getpid())
    return state.update(y=state["x"] ** 2)


def fan_out_app(tmp_path, executor):
    return (
        ApplicationBuilder()
        .with_actions(fan=Squares(), done=Result("ys"))
        .with_transitions(("fan", "done"))
        .with_state(xs=[1, 2, 3])
        .with_entrypoint("fan")
        .with_identifiers(app_id="parent")
        .with_tracker("local", project="burr-ui", params={"storage_dir": str(tmp_path)})
        .with_executor(executor)
        .build()
    )


def check_fan_out_files(tmp_path):
    project = tmp_path / "burr-ui"
    parent = validate_app_folder(project / "parent")
    children = parent["view"].children
    assert parent["seen"]["ChildApplicationModel"] == 3
    assert {c.event_type for c in children} == {"spawn_start"}
    assert {c.sequence_id for c in children} == {0}
    for child in children:
        checked = validate_app_folder(project / child.child.app_id)
        spawner = checked["metadata"].spawning_parent_pointer
        assert (spawner.app_id, spawner.sequence_id) == ("parent", 0)
        assert checked["seen"]["BeginSpanModel"] == 1
        assert checked["seen"]["AttributeModel"] == 2
    return children


def logged_pids(tmp_path, children):
    pids = set()
    for child in children:
        for line in (tmp_path / "burr-ui" / child.child.app_id / "log.jsonl").open():
            record = json.loads(line)
            if record["type"] == "attribute" and record["key"] == "pid":
                pids.add(record["value"])
    return pids


def test_a_fan_outs_parent_and_children_files_validate(tmp_path):
    with MultiThreadedExecutor(3) as executor:
        app = fan_out_app(tmp_path, executor)
        assert app.run(halt_after=["done"])[2]["ys"] == [1, 4, 9]
    children = check_fan_out_files(tmp_path)
    assert logged_pids(tmp_path, children) == {os.getpid()}


def test_children_run_in_other_processes_ship_records_that_validate(tmp_path):
    with MultiProcessExecutor(2) as executor:
        app = fan_out_app(tmp_path, executor)
        assert app.run(halt_after=["done"])[2]["ys"] == [1, 4, 9]
    children = check_fan_out_files(tmp_path)
    # the children ran in worker processes: the driver wrote the records they shipped back
    pids = logged_pids(tmp_path, children)
    assert pids and os.getpid() not in pids


def test_burrs_ui_server_lists_and_opens_a_fanwise_project(tmp_path):
    from burr.tracking.server.backend import LocalBackend

    counting_app(tmp_path, app_id="plain").run(halt_after=["done"])
    # an app with a partition key lives in a hidden folder, which Burr's UI skips
    counting_app(tmp_path, app_id="tenant-app", partition_key="tenant").run(
        halt_after=["done"])
    with MultiThreadedExecutor(2) as executor:
        fan_out_app(tmp_path, executor).run(halt_after=["done"])
    backend = LocalBackend(path=str(tmp_path))

    async def browse():
        projects = await backend.list_projects(None)
        apps, count = await backend.list_apps(None, "burr-ui", None)
        logs = {
            app.app_id: await backend.get_application_logs(None, "burr-ui", app.app_id, None)
            for app in apps
        }
        return projects, count, logs

    projects, count, logs = asyncio.run(browse())
    assert [p.name for p in projects] == ["burr-ui"]
    assert count == 5  # plain, parent and its three children
    assert [len(s.spans) for s in logs["plain"].steps] == [2, 0, 0]
    assert len(logs["parent"].children) == 3
    children = [logs[c.child.app_id] for c in logs["parent"].children]
    assert all(c.spawning_parent_pointer.app_id == "parent" for c in children)


# -- setup ------------------------------------------------------------------------------


def test_with_tracker_defaults_to_local_and_takes_params(tmp_path):
    builder = ApplicationBuilder().with_actions(count).with_transitions().with_state(n=0)
    app = (
        builder.with_entrypoint("count").with_identifiers(app_id="a")
        .with_tracker(project="defaults", params={"storage_dir": str(tmp_path)}).build()
    )
    app.step()
    assert LocalTrackingClient.app_log_exists("defaults", "a", storage_dir=str(tmp_path))


def test_with_tracker_keeps_fanwise_keyword_form(tmp_path):
    app = (
        ApplicationBuilder().with_actions(count).with_transitions().with_state(n=0)
        .with_entrypoint("count").with_identifiers(app_id="a")
        .with_tracker("local", project="kw", storage_dir=str(tmp_path)).build()
    )
    app.step()
    assert (tmp_path / "kw" / "a" / "log.jsonl").is_file()


def test_with_tracker_project_defaults_to_default_as_in_burr(tmp_path):
    app = (
        ApplicationBuilder().with_actions(count).with_transitions().with_state(n=0)
        .with_entrypoint("count").with_identifiers(app_id="a")
        .with_tracker(params={"storage_dir": str(tmp_path)}).build()
    )
    app.step()
    assert (tmp_path / "default" / "a" / "log.jsonl").is_file()


def test_a_key_given_both_in_params_and_as_keyword_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="storage_dir"):
        ApplicationBuilder().with_tracker(
            project="p", params={"storage_dir": str(tmp_path)}, storage_dir=str(tmp_path)
        )


def test_local_tracking_client_takes_burrs_positional_arguments(tmp_path):
    client = LocalTrackingClient("p", str(tmp_path), {"flag": True})
    assert (client.project_id, client.storage_dir, client.serde_kwargs) == (
        "p", str(tmp_path), {"flag": True}
    )
    assert isinstance(client, SyncTrackingClient)
    assert client.copy().serde_kwargs == {"flag": True}


def test_burrs_file_names_and_storage_path_are_there(tmp_path):
    assert (
        LocalTrackingClient.GRAPH_FILENAME, LocalTrackingClient.METADATA_FILENAME,
        LocalTrackingClient.LOG_FILENAME, LocalTrackingClient.CHILDREN_FILENAME,
    ) == ("graph.json", "metadata.json", "log.jsonl", "children.jsonl")
    app = counting_app(tmp_path, app_id="where")
    app.step()
    project = LocalTrackingClient.get_storage_path("burr-ui", str(tmp_path))
    assert os.path.isfile(os.path.join(project, "where", LocalTrackingClient.LOG_FILENAME))


def test_burrs_project_names_with_a_colon_are_taken(tmp_path):
    client = LocalTrackingClient("template:multi-agent", str(tmp_path))
    assert client.get_storage_path(client.project, str(tmp_path)).endswith("template:multi-agent")


def test_serde_kwargs_that_are_not_a_mapping_are_named(tmp_path):
    with pytest.raises(TypeError, match="serde_kwargs"):
        LocalTrackingClient("p", str(tmp_path), ["secret"])


def test_a_lone_surrogate_in_state_is_an_error_naming_the_field(tmp_path):
    @action(reads=[], writes=["text"])
    def decode(state: State) -> State:
        return state.update(text=b"caf\xe9".decode("utf-8", errors="surrogateescape"))

    app = (
        ApplicationBuilder().with_actions(decode).with_transitions().with_entrypoint("decode")
        .with_tracker(project="p", params={"storage_dir": str(tmp_path)}).build()
    )
    with pytest.raises(StateSerialisationError, match="state field 'text'.*lone surrogate"):
        app.step()


def test_a_character_outside_the_bmp_is_text_and_is_recorded(tmp_path):
    @action(reads=[], writes=["text"])
    def smile(state: State) -> State:
        return state.update(text="ok \N{GRINNING FACE}")

    app = (
        ApplicationBuilder().with_actions(smile).with_transitions().with_entrypoint("smile")
        .with_identifiers(app_id="a")
        .with_tracker(project="p", params={"storage_dir": str(tmp_path)}).build()
    )
    app.step()
    end = json.loads((tmp_path / "p" / "a" / "log.jsonl").read_text().splitlines()[-1])
    assert end["state"] == {"text": "ok \N{GRINNING FACE}"}


def test_a_lone_surrogate_in_an_input_is_an_error_naming_the_input(tmp_path):
    @action(reads=[], writes=["text"])
    def echo(state: State, text: str) -> State:
        return state.update(text=text)

    app = (
        ApplicationBuilder().with_actions(echo).with_transitions().with_entrypoint("echo")
        .with_tracker(project="p", params={"storage_dir": str(tmp_path)}).build()
    )
    with pytest.raises(StateSerialisationError, match="input 'text' holds a lone surrogate"):
        app.step(inputs={"text": "\udcff"})
    assert app.sequence_id is None  # refused before the action ran
