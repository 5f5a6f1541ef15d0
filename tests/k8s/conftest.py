"""Fixtures of the manifest tests: k8s/validate.py as a module, and every rendered variant.

A variant is an overlay (local, production) with one backend component: the overlays ship
with ray-job, and switching is a change of their `components` line, so each other backend is
rendered from a copy of k8s/ whose overlay names it instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("local", "production")
BACKENDS = ("ray-job", "ray-cluster", "dask-job", "dask-cluster")
SHIPPED_BACKEND = "ray-job"

Docs = list[dict[str, Any]]


def require_kubectl() -> None:
    """Rendering needs `kubectl kustomize`: without kubectl a local run skips, CI fails."""
    if shutil.which("kubectl") is None:
        message = ("kubectl is not on PATH: the manifests are rendered with `kubectl kustomize` "
                   "(install kubectl 1.21 or newer; CI has it)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def kubectl() -> None:
    require_kubectl()


def load_validate() -> ModuleType:
    """k8s/validate.py, which lives beside the manifests rather than in the package."""
    spec = importlib.util.spec_from_file_location("fanwise_k8s_validate", K8S / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def validate() -> ModuleType:
    return load_validate()


@pytest.fixture(scope="session")
def validator(validate: ModuleType) -> Any:
    return validate.Validator()


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of k8s/ (without the CRDs) to render edited kustomizations from."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    for part in ("base", "components", "overlays"):
        shutil.copytree(K8S / part, copy / part)
    return copy


@pytest.fixture(scope="session")
def variants(validate: ModuleType, k8s_copy: Path) -> dict[tuple[str, str], Docs]:
    """(overlay, backend) -> rendered documents, for every overlay and backend."""
    require_kubectl()
    rendered = {}
    for overlay in OVERLAYS:
        rendered[overlay, SHIPPED_BACKEND] = validate.render(K8S / "overlays" / overlay)
        for backend in BACKENDS:
            if backend == SHIPPED_BACKEND:
                continue
            folder = k8s_copy / "overlays" / f"{overlay}-{backend}"
            shutil.copytree(k8s_copy / "overlays" / overlay, folder)
            kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
            kustomization["components"] = [f"../../components/{backend}"]
            (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            rendered[overlay, backend] = validate.render(folder)
    return rendered

