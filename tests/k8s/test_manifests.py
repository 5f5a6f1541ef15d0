"""Every rendered overlay and backend is valid and can run: what the manifests must say."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CLUSTER_SCOPED = {"Namespace"}
PINNED = re.compile(r"^[^:@]+(@sha256:[0-9a-f]{64}|:\d+(\.\d+)+[\w.-]*)$")
"""An image by digest, or by a tag that names an exact version (never `latest`)."""

pytestmark = pytest.mark.xdist_group("k8s")

Doc = dict[str, Any]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    (found,) = of_kind(docs, kind)
    return found


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(role, pod spec) of every pod a resource makes (none for a Service, a ConfigMap...)."""
    spec = doc.get("spec", {})
    if doc["kind"] in ("StatefulSet", "Deployment", "Job"):
        yield doc["kind"], spec["template"]["spec"]
    elif doc["kind"] in ("RayCluster", "RayJob"):
        cluster = spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec
        yield "ray-head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster["workerGroupSpecs"]:
            yield "ray-worker", group["template"]["spec"]
    elif doc["kind"] in ("DaskCluster", "DaskJob"):
        cluster = spec["cluster"]["spec"] if doc["kind"] == "DaskJob" else spec
        if doc["kind"] == "DaskJob":
            yield "dask-runner", spec["job"]["spec"]
        yield "dask-scheduler", cluster["scheduler"]["spec"]
        yield "dask-worker", cluster["worker"]["spec"]


def env_of(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def mounts(pod: Doc, container: Doc) -> dict[str, Doc]:
    """mount path -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def quantity(text: str | int) -> float:
    """A Kubernetes quantity in base units (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6}
    value = str(text)
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def entrypoint_args(doc: Doc) -> list[str]:
    """The job's command line: the RayJob's entrypoint or the DaskJob runner's args."""
    if doc["kind"] == "RayJob":
        return shlex.split(doc["spec"]["entrypoint"])
    return doc["spec"]["job"]["spec"]["containers"][0]["args"]


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def jobs(docs: list[Doc]) -> list[Doc]:
    return of_kind(docs, "RayJob") + of_kind(docs, "DaskJob")


def fanwise_pods(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] != "StatefulSet":
            yield from pod_specs(doc)


def test_every_variant_validates_strictly(validator, variants):
    for (overlay, backend), docs in variants.items():
        problems = [p for doc in docs for p in validator.errors(doc)]
        assert problems == [], (overlay, backend)


def test_each_variant_has_one_backend_and_the_shared_store(variants):
    backend_kinds = {
        "ray-job": "RayJob",
        "ray-cluster": "RayCluster",
        "dask-job": "DaskJob",
        "dask-cluster": "DaskCluster",
    }
    for (overlay, backend), docs in variants.items():
        kinds = sorted(doc["kind"] for doc in docs)
        assert kinds == sorted(
            [
                "ConfigMap",
                "Namespace",
                "PersistentVolumeClaim",
                "Service",
                "StatefulSet",
                backend_kinds[backend],
            ]
        ), (overlay, backend)


def test_every_resource_lives_in_the_fanwise_namespace(variants):
    for docs in variants.values():
        assert one(docs, "Namespace")["metadata"]["name"] == "fanwise"
        namespaced = [d for d in docs if d["kind"] not in CLUSTER_SCOPED]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"fanwise"}


def test_images_are_pinned_and_the_local_one_is_what_make_image_builds(variants):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for (overlay, _), docs in variants.items():
        images = {
            c["image"]
            for doc in docs
            for _, pod in pod_specs(doc)
            for c in pod["containers"]
        }
        assert images and all(PINNED.match(image) for image in images), images
        fanwise = {image for image in images if not image.startswith("postgres")}
        if overlay == "local":
            assert fanwise == {f"fanwise:{version}"}
        else:
            assert len(fanwise) == 1 and "/" in next(iter(fanwise))


def test_fanwise_pods_run_as_a_non_root_user_that_can_write_the_tracking_volume(variants):
    for docs in variants.values():
        for role, pod in fanwise_pods(docs):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, role
            claims = [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
            if claims:
                assert context["fsGroup"] == context["runAsGroup"], role


def test_user_code_is_in_the_driver_and_every_worker(variants):
    for (overlay, backend), docs in variants.items():
        code = one(docs, "ConfigMap")
        assert code["metadata"]["name"] == "fanwise-app"
        assert {"run_app.py", "sweep.py"} <= set(code["data"])
        for role, pod in fanwise_pods(docs):
            if role == "dask-scheduler":
                continue
            container = pod["containers"][0]
            app = mounts(pod, container)["/app"]
            assert app["configMap"]["name"] == "fanwise-app", (overlay, backend, role)
            assert env_of(container)["PYTHONPATH"]["value"] == "/app", role
        for job in jobs(docs):
            args = entrypoint_args(job)
            assert args[:2] == ["python", "/app/run_app.py"]
            module = args[2].split(":")[0]
            assert f"{module}.py" in code["data"]


def test_jobs_run_a_fixed_app_id_against_postgres_without_a_password(variants):
    for docs in variants.values():
        for job in jobs(docs):
            args = entrypoint_args(job)
            assert option(args, "--app-id") == "sweep-v1"
            db = option(args, "--db")
            assert re.fullmatch(r"postgresql://fanwise@fanwise-postgres:5432/fanwise", db)
            service = next(
                s for s in of_kind(docs, "Service") if s["metadata"]["name"] == "fanwise-postgres"
            )
            assert 5432 in {p["port"] for p in service["spec"]["ports"]}


def test_every_pod_that_writes_the_store_takes_the_password_from_the_users_secret(variants):
    for docs in variants.values():
        assert of_kind(docs, "Secret") == [], "the user creates the Secret; none is shipped"
        for role, pod in fanwise_pods(docs):
            if role == "dask-scheduler":
                continue
            ref = env_of(pod["containers"][0])["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "fanwise-postgres", "key": "password"}, role
        postgres = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        ref = env_of(postgres)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "fanwise-postgres", "key": "password"}


def test_postgres_keeps_pgdata_in_a_subdirectory_behind_a_headless_service(variants):
    for docs in variants.values():
        stateful_set = one(docs, "StatefulSet")
        container = stateful_set["spec"]["template"]["spec"]["containers"][0]
        (mount,) = container["volumeMounts"]
        claim = stateful_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        pgdata = PurePosixPath(env_of(container)["PGDATA"]["value"])
        assert mount["name"] == claim
        assert PurePosixPath(mount["mountPath"]) in pgdata.parents

        service = next(
            s
            for s in of_kind(docs, "Service")
            if s["metadata"]["name"] == stateful_set["spec"]["serviceName"]
        )
        assert service["spec"]["clusterIP"] == "None"
        labels = stateful_set["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert "pg_isready" in container["readinessProbe"]["exec"]["command"]


def test_the_driver_keeps_its_tracking_on_the_persistent_volume(variants):
    for docs in variants.values():
        claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
        for job in jobs(docs):
            tracking = option(entrypoint_args(job), "--tracking")
            driver_role = "ray-head" if job["kind"] == "RayJob" else "dask-runner"
            pod = dict(pod_specs(job))[driver_role]
            volume = mounts(pod, pod["containers"][0])[tracking]
            assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_ray_pods_have_cpus_from_their_limits_and_an_in_memory_object_store(variants):
    for docs in variants.values():
        for doc in of_kind(docs, "RayJob") + of_kind(docs, "RayCluster"):
            cluster = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
            groups = [("head", cluster["headGroupSpec"])] + [
                ("worker", g) for g in cluster["workerGroupSpecs"]
            ]
            for role, group in groups:
                pod = group["template"]["spec"]
                container = pod["containers"][0]
                limits = container["resources"]["limits"]
                assert limits == container["resources"]["requests"], role
                # KubeRay passes --num-cpus from the CPU limit, rounded up: keep it whole.
                assert quantity(limits["cpu"]).is_integer(), role
                params = group["rayStartParams"]
                if role == "head":
                    assert params["num-cpus"] == "0"
                else:
                    assert "num-cpus" not in params, "derived from the limit by KubeRay"
                    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
                shm = mounts(pod, container)["/dev/shm"]["emptyDir"]
                assert shm["medium"] == "Memory"
                store = int(params["object-store-memory"])
                assert store <= quantity(shm["sizeLimit"]) < quantity(limits["memory"]), role
                assert container["readinessProbe"]["httpGet"]["path"] == "/api/healthz"


def test_ray_jobs_retry_by_resuming_and_shut_their_cluster_down(variants):
    for docs in variants.values():
        for job in of_kind(docs, "RayJob"):
            spec = job["spec"]
            assert spec["shutdownAfterJobFinishes"] is True
            assert spec["ttlSecondsAfterFinished"] > 0
            assert spec["backoffLimit"] >= 1
            assert spec["submissionMode"] == "K8sJobMode"
            assert option(entrypoint_args(job), "--executor") == "ray"


def test_the_ray_version_is_the_one_the_image_installs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (image_ray,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    for path in (K8S / "components").rglob("ray-*.yaml"):
        doc = yaml.safe_load(path.read_text())
        cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert cluster["rayVersion"] == image_ray, path


def test_the_ray_cluster_is_the_cluster_the_ray_job_creates():
    job = yaml.safe_load((K8S / "components/ray-job/ray-job.yaml").read_text())
    cluster = yaml.safe_load((K8S / "components/ray-cluster/ray-cluster.yaml").read_text())
    assert cluster["spec"] == job["spec"]["rayClusterSpec"]


def test_dask_workers_have_memory_limits_from_their_container_limits(variants):
    for docs in variants.values():
        for doc in of_kind(docs, "DaskJob") + of_kind(docs, "DaskCluster"):
            roles = dict(pod_specs(doc))
            worker = roles["dask-worker"]["containers"][0]
            args, env = worker["args"], env_of(worker)
            memory = option(args, "--memory-limit")
            threads = option(args, "--nthreads")
            assert memory == "$(DASK_WORKER_MEMORY)" and threads == "$(DASK_WORKER_THREADS)"
            memory_ref = env["DASK_WORKER_MEMORY"]["valueFrom"]["resourceFieldRef"]
            cpu_ref = env["DASK_WORKER_THREADS"]["valueFrom"]["resourceFieldRef"]
            assert memory_ref["resource"] == "limits.memory"
            assert cpu_ref["resource"] == "limits.cpu"
            assert memory_ref["containerName"] == cpu_ref["containerName"] == worker["name"]
            assert quantity(worker["resources"]["limits"]["memory"]) > 0
            for role in ("dask-worker", "dask-scheduler"):
                probe = roles[role]["containers"][0]["readinessProbe"]
                assert probe["httpGet"]["path"] == "/health", role
            cluster = doc["spec"]["cluster"]["spec"] if doc["kind"] == "DaskJob" else doc["spec"]
            selector = cluster["scheduler"]["service"]["selector"]
            assert selector["dask.org/cluster-name"] == doc["metadata"]["name"]


def test_the_dask_runner_resumes_on_failure_and_ends_so_the_cluster_is_torn_down(variants):
    for docs in variants.values():
        for job in of_kind(docs, "DaskJob"):
            runner = job["spec"]["job"]["spec"]
            assert runner["restartPolicy"] == "OnFailure"
            assert runner["activeDeadlineSeconds"] > 0
            args = entrypoint_args(job)
            assert option(args, "--executor") == "dask"
            assert option(args, "--address") == "$(DASK_SCHEDULER_ADDRESS)"


def test_every_service_selects_pods_of_some_workload(variants):
    for docs in variants.values():
        labels = [
            w["spec"]["template"]["metadata"]["labels"]
            for w in of_kind(docs, "StatefulSet") + of_kind(docs, "Deployment")
        ]
        for service in of_kind(docs, "Service"):
            selector = service["spec"]["selector"]
            assert any(selector.items() <= pod.items() for pod in labels)
