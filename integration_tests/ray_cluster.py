"""A real Ray cluster on loopback for the integration tests, and the driver they run on it.

`RayCluster` starts `ray start --head --block` on 127.0.0.2 and worker nodes on 127.0.0.3,
..., each with explicit free ports, a temp dir and a token of its own, and stops every
process it started by PID (never `ray stop`, which would stop every Ray on the machine).
Worker nodes can be denied the sight of `RayCluster.private_dir` (a tmpfs mounted over it
in their own mount namespace), so that nothing they write there reaches the driver unless
it travels back: no shared filesystem is assumed.

Run as a script, this file is a driver: one fan-out on `RayExecutor(address=...)`, whose
result it prints as a single `FANWISE_RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import psutil

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
HEAD_IP = "127.0.0.2"
RESULT_PREFIX = "FANWISE_RESULT "
_STARTED = "Ray runtime started"
_WORKER_PORTS = 40


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free on every interface right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(size: int, taken: set[int]) -> tuple[int, int]:
    """A block of `size` consecutive free ports (for Ray's worker processes)."""
    for _ in range(200):
        low = random.randrange(20000, 60000 - size)
        block = range(low, low + size)
        if not taken.intersection(block) and all(_port_is_free(p) for p in block):
            taken.update(block)
            return low, low + size - 1
    raise RuntimeError(f"no block of {size} free ports found")


@dataclass
class RayNode:
    """One `ray start --block` process and the log it writes."""

    ip: str
    process: subprocess.Popen
    log_path: str
    temp_dir: str
    pids: set[int] = field(default_factory=set)

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and every process below it (also remembered ones)."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        except psutil.NoSuchProcess:
            pass
        for pid in self.pids - set(found):
            try:
                found[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
        self.pids.update(found)
        return list(found.values())

    def log_tail(self, lines: int = 40) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


class RayCluster:
    """A head node and worker nodes on loopback addresses, all started and stopped here."""

    def __init__(self, worker_ports: int = _WORKER_PORTS) -> None:
        self.worker_ports = worker_ports
        self.base = tempfile.mkdtemp(prefix="fwrc", dir="/tmp")  # short: Ray socket paths
        self.private_dir = os.path.join(self.base, "driver-only")
        os.makedirs(self.private_dir)
        token_path = os.path.join(self.base, "token")
        with open(token_path, "w") as f:
            f.write(uuid.uuid4().hex)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": token_path,
            "RAY_USAGE_STATS_ENABLED": "0",
            # a killed node is declared dead within seconds, not the default half minute
            "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, RayNode] = {}
        self.address = ""
        self.dashboard_url = ""
        self._taken: set[int] = set()

    def _ports(self, count: int) -> list[int]:
        ports = [p for p in free_ports(count + 8) if p not in self._taken][:count]
        self._taken.update(ports)
        return ports

    def _common_args(self, ip: str, temp_dir: str, num_cpus: int) -> list[str]:
        node_manager, object_manager, agent_http, agent_grpc, runtime_env, metrics = (
            self._ports(6)
        )
        low, high = free_port_range(self.worker_ports, self._taken)
        return [
            "--block", "--disable-usage-stats", f"--node-ip-address={ip}",
            f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
            "--object-store-memory=100000000",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
            f"--min-worker-port={low}", f"--max-worker-port={high}",
        ]

    def start_head(self, ip: str = HEAD_IP, num_cpus: int = 1) -> None:
        """`ray start --head` with a dashboard (the Jobs API lives there)."""
        gcs, client, dashboard = self._ports(3)
        temp_dir = os.path.join(self.base, "head")
        args = [
            "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
            "--include-dashboard=true", f"--dashboard-host={ip}",
            f"--dashboard-port={dashboard}", *self._common_args(ip, temp_dir, num_cpus),
        ]
        self._start(ip, [RAY, "start", *args], temp_dir)
        self.address = f"{ip}:{gcs}"
        self.dashboard_url = f"http://{ip}:{dashboard}"

    def add_worker(self, ip: str, num_cpus: int = 1, hide_private_dir: bool = True) -> None:
        """`ray start --address=<head>`; with `hide_private_dir` it cannot see `private_dir`."""
        temp_dir = os.path.join(self.base, f"node-{ip}")
        command = [
            RAY, "start", f"--address={self.address}",
            *self._common_args(ip, temp_dir, num_cpus),
        ]
        if hide_private_dir:
            command = [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs fanwise-hidden "$0" && exec "$@"', self.private_dir, *command,
            ]
        self._start(ip, command, temp_dir)

    def hides_private_dir(self, ip: str) -> bool:
        """Whether node `ip` sees a tmpfs of its own where the driver has `private_dir`."""
        with open(f"/proc/{self.nodes[ip].process.pid}/mountinfo") as f:
            return any(line.split()[4] == self.private_dir for line in f)

    def _start(self, ip: str, command: list[str], temp_dir: str) -> None:
        log_path = os.path.join(self.base, f"ray-start-{ip}.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                stdin=subprocess.DEVNULL,
            )
        node = self.nodes[ip] = RayNode(ip, process, log_path, temp_dir)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            node.processes()
            with open(log_path, errors="replace") as f:
                if _STARTED in f.read():
                    return
            if process.poll() is not None:
                raise RuntimeError(f"ray start on {ip} exited:\n{node.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"ray start on {ip} did not come up:\n{node.log_tail()}")

    def wait_for_cpus(self, cpus: int, timeout: float = 60) -> None:
        """Until the cluster reports `cpus` CPUs (every started node has registered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                [RAY, "status", f"--address={self.address}"],
                capture_output=True, text=True, env=self.env, timeout=60,
            ).stdout
            if f"/{float(cpus)} CPU" in out:
                return
            time.sleep(1)
        raise TimeoutError(f"the cluster never reached {cpus} CPUs:\n{out}")

    def kill_node(self, ip: str) -> None:
        """SIGKILL every process of one node at once: the node is lost, not stopped."""
        processes = self.nodes[ip].processes()
        for proc in processes:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)

    def stop(self) -> None:
        """Stop every process started here, worker nodes first, then remove the temp dir."""
        for ip in sorted(self.nodes, key=lambda ip: ip == HEAD_IP):
            processes = self.nodes[ip].processes()
            for proc in processes:
                _signal(proc, signal.SIGTERM)
            _, alive = psutil.wait_procs(processes, timeout=5)
            for proc in alive:
                _signal(proc, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=5)
        for proc in self._leftovers():
            _signal(proc, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)

    def _leftovers(self) -> list[psutil.Process]:
        """Processes that escaped the trees above but belong to this cluster's temp dir."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(self.base in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        return found

    def driver(self, *args: str) -> list[str]:
        """The command that runs this file as a fan-out driver against the cluster."""
        return [sys.executable, os.path.abspath(__file__), *args]

    def job_submit(self, *driver_args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`ray job submit` of the driver to the head's Jobs API; waits and returns its logs."""
        return subprocess.run(
            [RAY, "job", "submit", f"--address={self.dashboard_url}", "--",
             *self.driver(*driver_args)],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def parse_result(output: str) -> dict:
    """The driver's result from its output (or from a job's logs)."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise AssertionError(f"no {RESULT_PREFIX.strip()} line in:\n{output[-3000:]}")


def _fan_out(args: argparse.Namespace) -> dict:
    import ray
    from fanwise.core import ApplicationBuilder, Result, State, action
    from fanwise.core.tracking import LocalTrackingClient
    from fanwise.executors.ray import RayExecutor
    from fanwise.parallel import MapStates

    @action(reads=["x", "sleep", "markers"], writes=["y", "node_ip", "app_id"])
    def work(state: State, __context) -> State:
        node_ip = ray.util.get_node_ip_address()
        if state["markers"]:
            marker = os.path.join(state["markers"], f"{state['x']}-{uuid.uuid4().hex}")
            with open(marker, "w") as f:
                f.write(node_ip)
        time.sleep(state["sleep"])
        return state.update(y=state["x"] ** 2, node_ip=node_ip, app_id=__context.app_id)

    class Work(MapStates):
        reads = ["n"]
        writes = ["ys", "node_ips", "app_ids"]

        def action(self):
            return work

        def states(self, state: State):
            for x in range(state["n"]):
                yield State({"x": x, "sleep": args.sleep, "markers": args.markers})

        def reduce(self, state: State, states) -> State:
            children = list(states)
            return state.update(
                ys=[c["y"] for c in children],
                node_ips=[c["node_ip"] for c in children],
                app_ids=[c["app_id"] for c in children],
            )

    executor = RayExecutor(address=args.address, init_kwargs={"log_to_driver": False})
    builder = (
        ApplicationBuilder()
        .with_actions(fan=Work(), done=Result("ys", "node_ips", "app_ids"))
        .with_transitions(("fan", "done"))
        .with_executor(executor)
        .with_state(n=args.children)
        .with_entrypoint("fan")
    )
    if args.tracking:
        builder.with_tracker(LocalTrackingClient(args.project, storage_dir=args.tracking))
    try:
        app = builder.build()
        state = app.run(halt_after=["done"])[2]
    finally:
        executor.shutdown()
    return {
        "ys": state["ys"], "node_ips": state["node_ips"], "app_ids": state["app_ids"],
        "parent_app_id": app.uid, "max_concurrency": executor.max_concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="one fan-out on RayExecutor")
    parser.add_argument("--address", default="auto")
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--markers", default=None, help="a folder for child start markers")
    parser.add_argument("--tracking", default=None, help="LocalTrackingClient storage dir")
    parser.add_argument("--project", default="ray-cluster")
    result = _fan_out(parser.parse_args())
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
