"""The Dockerfile builds the image the manifests pin: checked statically (no Docker engine).

hadolint lints it; the rest reads it: a pinned base, every dependency of fanwise[all]
pinned, a non-root user, a build context that holds what `pip wheel .` needs, and a
`make image` that tags it as the local overlay expects.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

pytestmark = pytest.mark.xdist_group("k8s")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def requirement_names(pyproject: dict, extra: str) -> set[str]:
    """Distribution names fanwise[extra] depends on, with fanwise's own extras expanded."""
    extras = pyproject["project"]["optional-dependencies"]
    names, pending = set(), list(extras[extra]) + list(pyproject["project"]["dependencies"])
    while pending:
        requirement = pending.pop()
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        if name == "fanwise":
            for nested in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                pending.extend(extras[nested.strip()])
        else:
            names.add(name)
    return names


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")

    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)

    assert done.returncode == 0, done.stdout + done.stderr


def test_every_stage_starts_from_an_exact_python_release_or_a_digest():
    bases = [args.split()[0] for keyword, args in instructions() if keyword == "FROM"]

    assert bases
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base


def test_every_dependency_of_fanwise_all_is_installed_at_a_pinned_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    arguments = dict(
        re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    )
    pins = {}
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[\w,]+\])?==([^"]+)"', runs):
        pins[name.lower()] = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], version)

    assert set(pins) == requirement_names(pyproject, "all")
    assert all(re.fullmatch(r"\d+(\.\d+)+", version) for version in pins.values()), pins
    assert "pip install --no-cache-dir --no-deps /wheels/fanwise-" in runs


def test_the_image_runs_as_a_numeric_non_root_user_after_installing():
    steps = instructions()
    users = [i for i, (keyword, _) in enumerate(steps) if keyword == "USER"]
    runs = [i for i, (keyword, _) in enumerate(steps) if keyword == "RUN"]

    assert users and users[-1] > runs[-1]
    uid = steps[users[-1]][1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert f"--uid {uid}" in steps[runs[-1]][1]


def test_the_build_context_keeps_the_package_and_drops_the_rest():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns
        )

    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    folders = pyproject["tool"]["setuptools"]["package-dir"].values()
    needed += [f"{folder}/__init__.py" for folder in folders]
    assert [path for path in needed if ignored(path)] == []
    assert all(ignored(path) for path in (".git", ".venv", "tests", "k8s"))


def test_make_image_tags_the_project_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    done = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", "image"], cwd=ROOT,
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")},
    )

    assert done.stdout.strip() == f"docker build --tag fanwise:{version} ."
