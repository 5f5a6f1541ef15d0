"""The Kubernetes manifests parse and point at each other consistently."""

from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"


def documents() -> list[dict]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def test_every_manifest_lives_in_the_fanwise_namespace():
    namespaced = [d for d in documents() if d["kind"] != "Namespace"]
    assert namespaced
    assert {d["metadata"]["namespace"] for d in namespaced} == {"fanwise"}


def test_every_service_selects_pods_of_some_workload():
    workloads = [*by_kind("Deployment").values(), *by_kind("StatefulSet").values()]
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for name, service in by_kind("Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= pod.items() for pod in labels), name


def test_driver_job_addresses_resolve_to_defined_services_and_ports():
    services = by_kind("Service")
    env = {e["name"]: e for e in by_kind("Job")["fanwise-driver"]["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    for variable in ("RAY_ADDRESS", "DASK_SCHEDULER_ADDRESS"):
        host, port = env[variable]["value"].split("://")[1].split(":")
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, variable
    secret_ref = env["FANWISE_POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]
    secret = by_kind("Secret")[secret_ref["name"]]
    assert secret_ref["key"] in secret["stringData"]
    assert "@fanwise-postgres:5432/" in secret["stringData"][secret_ref["key"]]


def test_ray_workers_join_the_head_service_gcs_port():
    worker = by_kind("Deployment")["ray-worker"]["spec"]["template"]["spec"]["containers"][0]
    address = next(a for a in worker["command"] if a.startswith("--address="))
    host, port = address.split("=", 1)[1].split(":")
    assert int(port) in {p["port"] for p in by_kind("Service")[host]["spec"]["ports"]}
