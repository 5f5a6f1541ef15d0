"""RayExecutor on a real local Ray that the executor starts: results, shipping, resume,
registry, missing extra, ownership."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter

import cloudpickle
import psutil
import pytest

ray = pytest.importorskip("ray")

from fanwise.core import ApplicationBuilder, GraphBuilder, Result, State, action  # noqa: E402
from fanwise.core.persistence import SQLitePersister  # noqa: E402
from fanwise.executors import create  # noqa: E402
from fanwise.executors.ray import RayExecutor  # noqa: E402
from fanwise.parallel import ChildFailedError, MapStates, RunnableGraph  # noqa: E402

# One xdist worker owns this module: its module-scoped cluster must not start twice.
pytestmark = pytest.mark.xdist_group("ray")

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes(temp_dir: str) -> list[psutil.Process]:
    """Our own descendants that belong to the Ray session under `temp_dir`."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any(temp_dir in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def executor():
    """A RayExecutor that starts its own local Ray: loopback, own temp dir, own token.

    RAY_AUTH_MODE is left unset, so Ray 2.60 turns token auth on for the new cluster and
    uses our token file (RAY_AUTH_TOKEN_PATH) for every process it starts, instead of
    writing ~/.ray/auth_token.
    """
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process; the test needs its own")
    base = tempfile.mkdtemp(prefix="fwray", dir="/tmp")  # short: Ray's socket paths
    token = os.path.join(base, "token")
    with open(token, "w") as f:
        f.write(uuid.uuid4().hex)
    saved = {name: os.environ.get(name) for name in _AUTH_VARS}
    os.environ.pop("RAY_AUTH_MODE", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = token
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    temp_dir = os.path.join(base, "r")
    ex = None
    try:
        ex = RayExecutor(init_kwargs={
            "num_cpus": 2,
            "include_dashboard": False,
            "log_to_driver": False,
            "object_store_memory": 100 * 1024 * 1024,
            "_node_ip_address": "127.0.0.2",
            "_temp_dir": temp_dir,
            "_metrics_export_port": _free_port(),
            # workers import this module's actions by name, as a user's own modules
            "runtime_env": {"env_vars": {"PYTHONPATH": os.path.dirname(__file__)}},
        })
        started = _ray_processes(temp_dir)
        yield ex
        ex.shutdown()
        ex = None
        assert not ray.is_initialized()
        _, alive = psutil.wait_procs(started, timeout=20)
        assert not alive, f"Ray processes left running after shutdown: {alive}"
    finally:
        if ex is not None:
            ex.shutdown(cancel_futures=True)
        for proc in _ray_processes(temp_dir):
            proc.kill()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(base, ignore_errors=True)


@action(reads=["x", "counts", "fail_flag"], writes=["y", "pid"])
def square(state: State) -> State:
    if state["counts"] is not None:
        with open(state["counts"], "a") as counts:
            counts.write(f"{state['x']}\n")
    flag = state["fail_flag"]
    if flag is not None and state["x"] == 3 and not os.path.exists(flag):
        raise ValueError("child 3 fails until the flag file exists")
    return state.update(y=state["x"] ** 2, pid=os.getpid())


class Squares(MapStates):
    """Squares every x of `xs`; `child` is the action each child runs."""

    reads = ["xs"]
    writes = ["ys", "pids"]

    def __init__(self, child=square, counts=None, fail_flag=None):
        super().__init__()
        self.child = child
        self.counts = counts
        self.fail_flag = fail_flag

    def action(self):
        return self.child

    def states(self, state: State):
        for x in state["xs"]:
            yield State({"x": x, "counts": self.counts, "fail_flag": self.fail_flag})

    def reduce(self, state: State, states) -> State:
        ys, pids = [], set()
        for child in states:
            ys.append(child["y"])
            pids.add(child["pid"])
        return state.update(ys=ys, pids=sorted(pids))


def _app(parallel, xs, *, executor=None, persister=None, app_id=None, resume=False):
    builder = (
        ApplicationBuilder()
        .with_actions(fan=parallel, done=Result("ys", "pids"))
        .with_transitions(("fan", "done"))
        .with_identifiers(app_id=app_id)
    )
    if executor is not None:
        builder.with_executor(executor)
    if persister is not None:
        builder.with_state_persister(persister)
    if resume:
        return builder.initialize_from(
            persister, default_state={"xs": xs}, default_entrypoint="fan"
        ).build()
    return builder.with_state(xs=xs).with_entrypoint("fan").build()


def _run(parallel, xs, **kwargs) -> State:
    return _app(parallel, xs, **kwargs).run(halt_after=["done"])[2]


def test_fan_out_on_ray_reduces_in_task_order(executor):
    state = _run(Squares(), list(range(20)), executor=executor)
    assert state["ys"] == [x * x for x in range(20)]
    assert os.getpid() not in state["pids"]


def test_locally_defined_action_and_closure_run_on_ray(executor):
    offset = 1000

    @action(reads=["x"], writes=["y", "pid"])
    def shifted(state: State) -> State:
        return state.update(y=state["x"] + offset, pid=os.getpid())

    state = _run(Squares(child=shifted), [1, 2, 3], executor=executor)
    assert state["ys"] == [1001, 1002, 1003]


def test_resume_after_child_failure_reruns_no_finished_child(executor, tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    counts, flag = tmp_path / "counts.txt", tmp_path / "flag"
    xs = list(range(8))
    parallel = Squares(counts=str(counts), fail_flag=str(flag))

    with pytest.raises(ChildFailedError) as failure:
        _run(parallel, xs, executor=executor, persister=persister, app_id="parent")
    assert failure.value.position == 3
    assert isinstance(failure.value.__cause__, ValueError)

    flag.touch()
    state = _run(
        parallel, xs, executor=executor, persister=persister, app_id="parent", resume=True
    )
    assert state["ys"] == [x * x for x in xs]
    runs = Counter(counts.read_text().split())
    assert runs == {**{str(x): 1 for x in xs}, "3": 2}


def test_with_executor_by_name_joins_the_running_ray(executor):
    state = _run(Squares(), [4, 5], executor="ray")
    assert state["ys"] == [16, 25]
    assert ray.is_initialized()
    assert executor.submit(pow, 2, 5).result(timeout=60) == 32


def test_missing_ray_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'fanwise\[ray\]'"):
        RayExecutor()
    with pytest.raises(ImportError, match=r"pip install 'fanwise\[ray\]'"):
        create("ray")


def test_importing_the_module_does_not_import_ray():
    code = "import sys, fanwise.executors, fanwise.executors.ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shutdown_stops_only_the_ray_it_started(executor):
    joined = RayExecutor()
    assert executor.owns_ray and not joined.owns_ray
    assert joined.submit(pow, 3, 2).result(timeout=60) == 9
    joined.shutdown()
    assert ray.is_initialized()
    assert executor.submit(pow, 2, 3).result(timeout=60) == 8


def test_executor_survives_cloudpickle_and_nested_joins_the_same_cluster(executor):
    copy = cloudpickle.loads(cloudpickle.dumps(executor))
    assert isinstance(copy, RayExecutor) and not copy.owns_ray
    assert (copy.max_concurrency, copy.chunk_size) == (executor.max_concurrency, "auto")
    assert copy.remote_options["max_retries"] == 3
    factory = cloudpickle.loads(cloudpickle.dumps(executor.nested()))

    def node_of_nested_executor():
        nested = factory()
        return nested.owns_ray, ray.get_runtime_context().get_node_id()

    owns, node = executor.submit(node_of_nested_executor).result(timeout=60)
    assert not owns
    assert node == ray.get_runtime_context().get_node_id()


def test_child_fan_out_inside_a_ray_worker_runs_on_ray(executor):
    """Parents fill every CPU of the cluster; their own fan-outs still run, because
    grandchildren reserve no CPU (a waiting parent keeps its own)."""

    class Outer(MapStates):
        reads = ["groups"]
        writes = ["ys", "pids"]

        def action(self):
            return inner_app

        def states(self, state: State):
            for group in state["groups"]:
                yield State({"xs": group})

        def reduce(self, state: State, states) -> State:
            children = list(states)
            pids = sorted({pid for child in children for pid in child["pids"]})
            return state.update(ys=[child["ys"] for child in children], pids=pids)

    inner_app = _inner_graph()
    outer = RayExecutor()
    app = (
        ApplicationBuilder()
        .with_actions(fan=Outer(), done=Result("ys", "pids"))
        .with_transitions(("fan", "done"))
        .with_executor(outer)
        .with_state(groups=[[1, 2], [3], [4], [5, 6]])
        .with_entrypoint("fan")
        .build()
    )
    try:
        state = app.run(halt_after=["done"])[2]
    finally:
        outer.shutdown()
    assert outer.max_concurrency >= 2
    assert state["ys"] == [[1, 4], [9], [16], [25, 36]]
    assert os.getpid() not in state["pids"]


def _inner_graph() -> RunnableGraph:
    graph = (
        GraphBuilder()
        .with_actions(fan=Squares(), done=Result("ys", "pids"))
        .with_transitions(("fan", "done"))
        .build()
    )
    return RunnableGraph(graph, "fan", ["done"])


def test_submit_after_shutdown_is_refused(executor):
    joined = RayExecutor()
    joined.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        joined.submit(pow, 2, 2)


# The executor on its own (no fan-out): batching over the cluster's two CPU slots.

WAIT = 60.0
"""Seconds to wait for Ray tasks (a worker may have to start first)."""


class CountingRayExecutor(RayExecutor):
    """Joins the running Ray; records the size of every batch task it sends, in order."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sizes = []

    def _send_batch(self, batch):
        self.sizes.append(len(batch.calls))
        super()._send_batch(batch)


class Failing(Exception):
    """A call's own exception type, with an attribute that must survive the trip back."""

    def __init__(self, code):
        super().__init__(f"failed with code {code}")
        self.code = code


def note(log, label):
    with open(log, "a") as f:
        f.write(f"{label}\n")


def runs(log) -> Counter:
    return Counter(open(log).read().split()) if os.path.exists(log) else Counter()


def hold(label, log, release):
    """Notes `label`, then keeps its CPU slot busy until the file `release` exists."""
    note(log, label)
    deadline = time.monotonic() + WAIT
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released this call")
        time.sleep(0.005)
    return label


def record(label, log):
    note(log, label)
    if label == "fail":
        raise Failing(7)
    return label


def wait_until(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def occupy_both_slots(joined, log, release):
    held = [joined.submit(hold, f"h{i}", log, release) for i in range(2)]
    wait_until(lambda: {"h0", "h1"} <= set(runs(log)), "both held calls to start")
    return held


def test_calls_beyond_the_slots_wait_and_go_out_together_capped_by_chunk_size(
    executor, tmp_path
):
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    joined = CountingRayExecutor(chunk_size=8)
    try:
        assert joined.max_concurrency == 2
        held = occupy_both_slots(joined, log, release)
        waiting = [joined.submit(record, f"c{i}", log) for i in range(20)]
        assert joined.sizes == [1, 1], "while both slots are busy, calls wait"
        open(release, "w").close()

        assert [f.result(timeout=WAIT) for f in waiting] == [f"c{i}" for i in range(20)]
        assert [f.result(timeout=WAIT) for f in held] == ["h0", "h1"]
    finally:
        joined.shutdown()
    assert joined.sizes == [1, 1, 8, 8, 4]
    assert ray.is_initialized()


def test_a_call_that_raises_fails_alone_with_its_own_exception(executor, tmp_path):
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    joined = CountingRayExecutor(chunk_size=8)
    try:
        occupy_both_slots(joined, log, release)
        before, failing, after = [joined.submit(record, x, log) for x in ("a", "fail", "b")]
        open(release, "w").close()

        error = failing.exception(timeout=WAIT)
        assert type(error) is Failing and error.code == 7
        assert any("failed with code 7" in line for line in error.__notes__)
        assert (before.result(timeout=WAIT), after.result(timeout=WAIT)) == ("a", "b")
    finally:
        joined.shutdown()
    assert joined.sizes == [1, 1, 3]


def test_buffered_calls_can_be_cancelled_and_shutdown_cancels_the_others(executor, tmp_path):
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    joined = CountingRayExecutor(chunk_size=8)
    try:
        held = occupy_both_slots(joined, log, release)
        waiting = [joined.submit(record, f"c{i}", log) for i in range(4)]

        assert waiting[1].cancel() is True
        assert held[0].cancel() is False, "a sent call counts as running"
        joined.shutdown(wait=False, cancel_futures=True)
        assert all(future.cancelled() for future in waiting)
    finally:
        open(release, "w").close()
        joined.shutdown()
    for future in held:
        future.exception(timeout=WAIT)  # cancelled on Ray, or finished: either way, done
    assert joined.sizes == [1, 1]
    assert not any(label.startswith("c") for label in runs(log))


def test_many_tiny_calls_share_few_tasks(executor):
    joined = CountingRayExecutor()
    try:
        futures = [joined.submit(pow, x, 2) for x in range(2000)]
        assert [f.result(timeout=WAIT) for f in futures] == [x * x for x in range(2000)]
    finally:
        joined.shutdown()
    assert sum(joined.sizes) == 2000
    assert max(joined.sizes) <= 512
    assert len(joined.sizes) < 2000 / 4


def test_a_fan_out_window_wider_than_the_slots_batches_children(executor):
    joined = CountingRayExecutor()
    parallel = Squares()
    parallel.max_concurrency = 200
    try:
        state = _run(parallel, list(range(100)), executor=joined)
    finally:
        joined.shutdown()
    assert state["ys"] == [x * x for x in range(100)]
    assert sum(joined.sizes) == 100
    assert len(joined.sizes) < 100


def test_stream_fanout_on_ray_reports_every_child_and_brings_their_items_back(executor):
    from fanwise.core import streaming_action

    @streaming_action(reads=["x"], writes=["y", "pid"])
    def chatty(state: State):
        for token in range(2):
            yield {"token": f"{state['x']}.{token}"}, None
        yield {}, state.update(y=state["x"] * state["x"], pid=os.getpid())

    app = _app(Squares(child=chatty), list(range(6)), executor=executor)
    events = list(app.stream_fanout(halt_after=["done"]))
    assert sorted(e.position for e in events if e.kind == "child_done") == list(range(6))
    items = sorted(e.data["token"] for e in events if e.kind == "child_item")
    assert items == sorted(f"{x}.{t}" for x in range(6) for t in range(2))
    assert app.state["ys"] == [x * x for x in range(6)]
