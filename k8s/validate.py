"""Validate Kubernetes manifests offline and strictly: `python k8s/validate.py DIR...`.

Each DIR is a kustomization, rendered with `kubectl kustomize` (no cluster is contacted).
Built-in kinds are checked against the Kubernetes API's strict JSON schemas (the package
`kubernetes-validate`); KubeRay and Dask operator resources against the CRD schemas vendored
in k8s/crds/. Strict means that an unknown field is an error: the API server prunes fields a
structural CRD schema does not declare, so a typo such as `rayStartParms` would be dropped
without a word and the cluster started with defaults. Here every object schema that declares
its properties, and neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields`,
refuses any other key. CEL rules (`x-kubernetes-validations`) need an API server: not checked.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.32.0"
"""The API version the built-in kinds are checked against (kind's and kubectl's here)."""

CRDS = Path(__file__).resolve().parent / "crds"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml when present: the vendored CRDs are 3 MB of YAML."""

Schema = dict[str, Any]


class ManifestError(Exception):
    """A manifest that cannot be rendered or does not match its schema."""


def render(kustomization: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize` renders from the kustomization folder."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ManifestError(
            "kubectl is not on PATH: install kubectl 1.21 or newer (its kustomize must know "
            "components); Debian's kubernetes-client 1.20 is too old"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ManifestError(f"kubectl kustomize {kustomization} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.load_all(done.stdout, Loader=_LOADER) if doc]


class Validator:
    """Checks documents against the Kubernetes schemas and the CRDs found under `crds`."""

    def __init__(self, crds: Path = CRDS, kubernetes_version: str = KUBERNETES_VERSION) -> None:
        self.kubernetes_version = kubernetes_version
        self._custom = {
            key: jsonschema.Draft4Validator(schema) for key, schema in _crd_schemas(crds)
        }

    @property
    def custom_kinds(self) -> list[tuple[str, str]]:
        """(apiVersion, kind) of every custom resource this validator knows."""
        return sorted(self._custom)

    def errors(self, doc: Mapping[str, Any]) -> list[str]:
        """Every problem found in `doc`, each naming the resource and the field's path."""
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{kind}/{name}"
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [f"{where}: a manifest needs apiVersion and kind"]
        custom = self._custom.get((api_version, kind))
        if custom is not None:
            found = [
                f"{where}: {_path(e.absolute_path)}: {e.message}"
                for e in sorted(custom.iter_errors(doc), key=lambda e: list(e.absolute_path))
            ]
            # A CRD declares `metadata` as a bare object; the API server checks it as
            # ObjectMeta, so do the same through a kind whose schema embeds it.
            carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata")}
            return found + self._builtin_errors(carrier, where)
        return self._builtin_errors(doc, where)

    def _builtin_errors(self, doc: Mapping[str, Any], where: str) -> list[str]:
        try:
            kubernetes_validate.validate(dict(doc), self.kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{where}: {_path(exc.path)}: {exc.message}"]
        except kubernetes_validate.SchemaNotFoundError:
            known = ", ".join(f"{a} {k}" for a, k in self.custom_kinds)
            return [
                f"{where}: {doc['apiVersion']} {doc['kind']} is neither a Kubernetes "
                f"{self.kubernetes_version} kind nor a CRD vendored in k8s/crds ({known})"
            ]
        return []


def _crd_schemas(folder: Path) -> Iterator[tuple[tuple[str, str], Schema]]:
    """((group/version, kind), strict schema) of every served version of every CRD file."""
    for path in sorted(folder.rglob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    schema = version["schema"]["openAPIV3Schema"]
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    yield key, _root(strict(schema), key)


def _root(schema: Schema, key: tuple[str, str]) -> Schema:
    """The resource's own apiVersion and kind are fixed; metadata is checked as ObjectMeta."""
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"enum": [key[0]]}
    properties["kind"] = {"enum": [key[1]]}
    properties.setdefault("metadata", {"type": "object"})
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    return schema


def strict(schema: Schema) -> Schema:
    """A copy of an OpenAPI v3 (structural) schema as JSON Schema that refuses unknown keys."""
    out: Schema = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        out["type"] = [schema["type"], "null"]
    if schema.get("x-kubernetes-embedded-resource"):
        embedded = out.setdefault("properties", {})
        for field in ("apiVersion", "kind"):
            embedded.setdefault(field, {"type": "string"})
        embedded.setdefault("metadata", {"type": "object"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(part) for part in parts) or "(root)"


def main(argv: Sequence[str] | None = None) -> int:
    """Render and check each kustomization folder; print every problem; 1 if there is one."""
    folders = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if not folders:
        print("usage: python k8s/validate.py KUSTOMIZATION_DIR...", file=sys.stderr)
        return 2
    validator = Validator()
    failed = False
    for folder in folders:
        try:
            docs = render(folder)
        except ManifestError as exc:
            print(f"{folder}: {exc}", file=sys.stderr)
            failed = True
            continue
        problems = [problem for doc in docs for problem in validator.errors(doc)]
        for problem in problems:
            print(f"{folder}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        print(f"{folder}: {len(docs)} manifests, {len(problems)} problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
