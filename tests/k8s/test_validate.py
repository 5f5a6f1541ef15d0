"""k8s/validate.py refuses what the API server would silently prune or reject."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
SHIPPED_BACKEND = "ray-job"

pytestmark = pytest.mark.xdist_group("k8s")


@pytest.fixture(scope="module")
def ray_job(variants):
    return next(d for d in variants["local", SHIPPED_BACKEND] if d["kind"] == "RayJob")


def test_a_misspelt_ray_start_params_fails(validator, ray_job):
    bad = copy.deepcopy(ray_job)
    head = bad["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["rayStartParms"] = head.pop("rayStartParams")

    errors = validator.errors(bad)

    assert errors == [
        "RayJob/fanwise-sweep: spec.rayClusterSpec.headGroupSpec: Additional properties "
        "are not allowed ('rayStartParms' was unexpected)"
    ]


def test_a_misspelt_field_deep_in_a_crd_pod_template_fails(validator, ray_job):
    bad = copy.deepcopy(ray_job)
    worker = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")

    (error,) = validator.errors(bad)

    assert "workerGroupSpecs.0.template.spec.containers.0" in error
    assert "'volumeMount' was unexpected" in error


def test_a_misspelt_pod_template_label_field_fails(validator, ray_job):
    bad = copy.deepcopy(ray_job)
    template = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    template["metadata"]["lables"] = template["metadata"].pop("labels")

    (error,) = validator.errors(bad)

    assert "workerGroupSpecs.0.template.metadata" in error and "'lables'" in error


def test_a_wrong_type_and_a_non_string_ray_start_param_fail(validator, ray_job):
    bad = copy.deepcopy(ray_job)
    cluster = bad["spec"]["rayClusterSpec"]
    cluster["workerGroupSpecs"][0]["replicas"] = "two"
    cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0

    errors = validator.errors(bad)

    assert any("workerGroupSpecs.0.replicas: 'two' is not of type 'integer'" in e for e in errors)
    assert any("rayStartParams.num-cpus: 0 is not of type 'string'" in e for e in errors)


def test_custom_resource_metadata_is_checked_as_object_meta(validator, ray_job):
    bad = copy.deepcopy(ray_job)
    bad["metadata"]["label"] = {"a": "b"}

    (error,) = validator.errors(bad)

    assert error.startswith("RayJob/fanwise-sweep: metadata:")
    assert "'label' was unexpected" in error


def test_a_misspelt_dask_job_field_fails(validator, variants):
    job = next(d for d in variants["local", "dask-job"] if d["kind"] == "DaskJob")
    bad = copy.deepcopy(job)
    worker = bad["spec"]["cluster"]["spec"]["worker"]
    worker["replica"] = worker.pop("replicas")

    (error,) = validator.errors(bad)

    assert "spec.cluster.spec.worker" in error and "'replica' was unexpected" in error


def test_a_misspelt_field_of_a_builtin_kind_fails(validator, variants):
    stateful_set = next(
        d for d in variants["local", SHIPPED_BACKEND] if d["kind"] == "StatefulSet"
    )
    bad = copy.deepcopy(stateful_set)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}

    (error,) = validator.errors(bad)

    assert error.startswith("StatefulSet/fanwise-postgres: spec.template.spec.containers.0:")
    assert "'readinessProb' was unexpected" in error


def test_a_kind_without_a_schema_fails_naming_what_is_known(validator):
    (error,) = validator.errors(
        {"apiVersion": "ray.io/v2", "kind": "RayJob", "metadata": {"name": "x"}}
    )

    assert "ray.io/v2 RayJob is neither a Kubernetes" in error
    assert "ray.io/v1 RayJob" in error and "kubernetes.dask.org/v1 DaskJob" in error


def test_maps_and_preserved_fields_stay_open(validate):
    schema = validate.strict(
        {
            "type": "object",
            "properties": {
                "params": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                "note": {"type": "string", "nullable": True},
            },
        }
    )

    assert schema["additionalProperties"] is False
    assert schema["properties"]["params"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["note"]["type"] == ["string", "null"]


def test_the_command_fails_on_a_typo_and_passes_the_shipped_overlays(k8s_copy: Path, kubectl):
    broken = k8s_copy / "overlays" / "typo"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../../base"],
                "components": ["../../components/ray-job"],
                "patches": [
                    {
                        "target": {"kind": "RayJob"},
                        "patch": yaml.safe_dump(
                            [
                                {
                                    "op": "move",
                                    "from": "/spec/rayClusterSpec/headGroupSpec/rayStartParams",
                                    "path": "/spec/rayClusterSpec/headGroupSpec/rayStartParms",
                                }
                            ]
                        ),
                    }
                ],
            }
        )
    )
    command = [sys.executable, str(K8S / "validate.py")]

    failed = subprocess.run([*command, str(broken)], capture_output=True, text=True)
    passed = subprocess.run(
        [*command, str(K8S / "overlays" / "local"), str(K8S / "overlays" / "production")],
        capture_output=True,
        text=True,
    )

    assert failed.returncode == 1
    assert "'rayStartParms' was unexpected" in failed.stderr
    assert passed.returncode == 0, passed.stderr
    assert "0 problems" in passed.stdout


def test_the_vendored_crds_are_the_upstream_files_listed_in_their_checksums():
    crds = K8S / "crds"
    listed = {}
    for line in (crds / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest

    assert sorted(listed) == sorted(str(p.relative_to(crds)) for p in crds.rglob("*.yaml"))
    for name, digest in listed.items():
        assert hashlib.sha256((crds / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (crds / "kuberay" / "LICENSE").read_text()
    assert "BSD 3-Clause" in (crds / "dask-operator" / "LICENSE").read_text()
