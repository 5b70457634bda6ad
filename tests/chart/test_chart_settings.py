"""Every component's environment matches the settings its service actually reads.

Discovery convention (see docs/deploy.md): each service package exposes its pydantic-settings classes in
``<pkg>/settings.py`` as ``SETTINGS_CLASSES = [...]`` (shared ones from zaptrix.settings included), and
may refine them per console script with ``PROCESS_SETTINGS = {"meta-dispatcher": [...], ...}``.
A variable is ``env_prefix + field name`` (or the field's alias) upper-cased; telemetry reads OTEL_*.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from chart_support import DEV_VALUES, PRODUCTION_VALUES, REPO, Rendered, pod_specs
from pydantic_settings import BaseSettings
from zaptrix import settings as shared

# The OpenTelemetry SDK reads these itself (zaptrix.telemetry).
OTEL_VARS = {
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}
# Downward-API helpers that exist only to be expanded inside another variable ($(K8S_POD_NAME)).
HELPER_VARS = {"K8S_POD_NAME"}
SHARED_CLASSES: list[type[BaseSettings]] = [
    shared.CommonSettings,
    shared.KafkaSettings,
    shared.DatabaseSettings,
    shared.GrpcClientSettings,
]
# Non-secret values the chart keeps in the Secret and passes as variables (a key id, not key material).
SECRET_ENV_ALLOWED = {"ZAPTRIX_TOKEN_KEEPER_ACTIVE_KEY_ID"}
# What a real Secret holds under each key (shapes the services validate).
SECRET_SAMPLES = {
    "mapper-database-url": "postgresql://mapper:pw@postgres:5432/zaptrix",
    "token-keeper-database-url": "postgresql://token_keeper:pw@postgres:5432/zaptrix",
    "token-keeper-keys": "k1:" + base64.b64encode(bytes(range(32))).decode(),
    "token-keeper-active-key-id": "k1",
    "kafka-sasl-password": "kafka-password",
    "media-url-secret": "m" * 48,
    "bitrix-client-secret": "bitrix-client-secret",
    "settings-session-secret": "s" * 48,
}


def scripts() -> dict[str, str]:
    """Console script -> Python package, from every services/*/pyproject.toml."""
    out = {}
    for pyproject in sorted(REPO.glob("services/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        for script, target in project.get("scripts", {}).items():
            out[script] = target.split(":")[0].split(".")[0]
    return out


def settings_module(package: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{package}.settings")
    except ModuleNotFoundError as exc:
        if exc.name in (package, f"{package}.settings"):
            return None
        raise


def classes_for(script: str) -> tuple[list[type[BaseSettings]], str | None]:
    """The settings classes a process reads, and why the list is only approximate (None: exact)."""
    package = scripts()[script]
    module = settings_module(package)
    if module is None:
        return list(SHARED_CLASSES), f"{package}.settings does not exist yet"
    per_process = getattr(module, "PROCESS_SETTINGS", None)
    if per_process and script in per_process:
        return list(per_process[script]), None
    if hasattr(module, "SETTINGS_CLASSES"):
        return list(module.SETTINGS_CLASSES), None
    own = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseSettings) and obj.__module__ == module.__name__
    ]
    return own + SHARED_CLASSES, f"{package}.settings has no SETTINGS_CLASSES yet"


def env_names(cls: type[BaseSettings], *, files: bool = True) -> dict[str, str]:
    """Environment variable -> field name; secret fields also as ``<VAR>_FILE`` (zaptrix.settings)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    secret = set(shared.secret_fields(cls))
    out = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        var = (alias or f"{prefix}{name}").upper()
        out[var] = name
        if files and name in secret:
            out[var + shared.FILE_SUFFIX] = name
    return out


def container_env(rendered: Rendered, container: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """Values the container gets (secrets as samples) and the names of optional secret references."""
    env: dict[str, str] = {}
    optional: set[str] = set()
    for source in container.get("envFrom", []):
        cm = rendered.named("ConfigMap", source["configMapRef"]["name"])
        env.update(cm["data"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRET_SAMPLES[ref["key"]]
            if ref.get("optional"):
                optional.add(e["name"])
        else:
            env[e["name"]] = "downward-api"
    return env, optional


def processes(rendered: Rendered) -> list[tuple[str, str, dict[str, Any]]]:
    """(workload name, console script, container) of every container the chart runs."""
    out = []
    for workload, spec in pod_specs(rendered):
        for c in spec["containers"]:
            out.append((workload["metadata"]["name"], c["command"][0], c))
    return out


@pytest.fixture(scope="module", params=["default", "production", "dev"])
def chart(request: pytest.FixtureRequest, render: Callable[..., Rendered]) -> Rendered:
    files = {"default": (), "production": (PRODUCTION_VALUES,), "dev": (DEV_VALUES,)}[request.param]
    return render(files)


def test_every_command_is_a_console_script_of_its_image(chart: Rendered) -> None:
    known = scripts()
    for name, script, c in processes(chart):
        assert script in known, f"{name}: {script} is no console script of any service"
        # The image is the one built with SERVICE=<dir> whose package provides the script.
        image_service = c["image"].rsplit("/", 1)[-1].split(":")[0]
        assert known[script] == image_service.replace("-", "_"), f"{name}: {script} is not in {c['image']}"


def test_env_names_are_real_settings_and_required_ones_are_set(chart: Rendered) -> None:
    pending: list[str] = []
    for name, script, c in processes(chart):
        classes, approximate = classes_for(script)
        known = set().union(*(env_names(cls) for cls in classes))
        env, optional = container_env(chart, c)
        unknown = sorted(n for n in env if n not in known and n not in OTEL_VARS and n not in HELPER_VARS)
        if unknown and approximate:
            pending.append(f"{name}: {unknown} ({approximate})")
        else:
            assert not unknown, f"{name} ({script}) sets variables its settings do not read: {unknown}"
        for cls in classes:
            for var, field in env_names(cls, files=False).items():
                if cls.model_fields[field].is_required():
                    given = var in env or var + shared.FILE_SUFFIX in env
                    assert given and var not in optional, f"{name}: required {var} ({cls.__name__}) not set"
    if pending:
        pytest.xfail("settings not discoverable yet: " + "; ".join(pending))


def test_each_process_starts_with_the_rendered_configuration(
    chart: Rendered, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Instantiate every settings class with exactly the container's environment: validators included
    (production demands https public URLs, a long media secret, encryption keys). Secret files are
    written where the container would see them, under tmp_path."""
    import os

    for name, script, c in processes(chart):
        classes, _ = classes_for(script)
        env, optional = container_env(chart, c)
        for var, value in list(env.items()):
            if var.endswith(shared.FILE_SUFFIX) and not var.startswith("ZAPTRIX_GRPC_TLS_"):
                key = value.rsplit("/", 1)[-1]
                assert key in SECRET_SAMPLES, f"{name}: {var} names {value}, not a Secret key"
                path = tmp_path / key
                path.write_text(SECRET_SAMPLES[key] + "\n")
                env[var] = str(path)
        with monkeypatch.context() as m:
            for var in list(os.environ):
                if var.startswith(("ZAPTRIX_", "OTEL_")):
                    m.delenv(var)
            for var, value in env.items():
                if var not in optional:
                    m.setenv(var, value)
            for cls in classes:
                try:
                    cls()
                except Exception as exc:  # pydantic ValidationError or a service's own check
                    if env.get("ZAPTRIX_PUBLIC_BASE_URL") is None and "public_base_url" in cls.model_fields:
                        # Default values know no public URL; NOTES.txt and docs/deploy.md say to set one.
                        continue
                    raise AssertionError(
                        f"{name} ({script}): {cls.__name__} refuses the configuration: {exc}"
                    ) from exc


def test_listening_ports_match_the_chart(chart: Rendered) -> None:
    """Every port the chart exposes and probes is a port the process listens on (setting value or default)."""
    for workload, spec in pod_specs(chart):
        if workload["kind"] != "Deployment":
            continue
        (c,) = spec["containers"]
        classes, _ = classes_for(c["command"][0])
        env, _ = container_env(chart, c)
        listening = set()
        for cls in classes:
            for var, field in env_names(cls).items():
                if field.endswith("_port"):
                    default = cls.model_fields[field].get_default(call_default_factory=True)
                    listening.add(int(env.get(var, default)))
        for port in c["ports"]:
            assert port["containerPort"] in listening, (
                f"{workload['metadata']['name']}: port {port['name']}={port['containerPort']} is not one of "
                f"the ports its settings listen on {sorted(listening)}"
            )


@pytest.mark.parametrize("package", ["meta_ingress", "bitrix_ingress", "mapper", "token_keeper"])
def test_services_follow_the_settings_convention(package: str) -> None:
    module = settings_module(package)
    if module is None or not hasattr(module, "SETTINGS_CLASSES"):
        pytest.xfail(f"{package}.settings should list its classes in SETTINGS_CLASSES (docs/deploy.md)")
    for cls in module.SETTINGS_CLASSES:
        assert issubclass(cls, BaseSettings)


def test_the_check_catches_a_variable_no_setting_reads(render: Callable[..., Rendered]) -> None:
    rendered = render(sets=("components.metaIngress.env.ZAPTRIX_NOT_A_SETTING=1",))
    (c,) = [c for _, script, c in processes(rendered) if script == "meta-ingress-web"]
    classes, approximate = classes_for("meta-ingress-web")
    assert approximate is None
    env, _ = container_env(rendered, c)
    known = set().union(*(env_names(cls) for cls in classes))
    assert "ZAPTRIX_NOT_A_SETTING" in env and "ZAPTRIX_NOT_A_SETTING" not in known


def test_secrets_reach_the_processes_as_files_never_as_variables(chart: Rendered) -> None:
    """Review M8: secrets in the environment sit in /proc/*/environ and are inherited by subprocesses."""
    for workload, spec in pod_specs(chart):
        where = workload["metadata"]["name"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            classes, _ = classes_for(c["command"][0])
            secret_vars = {
                var
                for cls in classes
                for var, f in env_names(cls, files=False).items()
                if f in shared.secret_fields(cls)
            }
            for e in c.get("env", []):
                assert e["name"] not in secret_vars, f"{where}: secret {e['name']} as a variable"
                if "secretKeyRef" in e.get("valueFrom", {}):
                    assert e["name"] in SECRET_ENV_ALLOWED, (
                        f"{where}: {e['name']} from a Secret as a variable"
                    )
            env, _ = container_env(chart, c)
            assert not secret_vars & set(env), f"{where}: {secret_vars & set(env)} in the ConfigMap"
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for var, value in env.items():
                if var.endswith(shared.FILE_SUFFIX) and not var.startswith("ZAPTRIX_GRPC_TLS_"):
                    directory, _, key = value.rpartition("/")
                    mount = mounts[directory]
                    assert mount["readOnly"] is True, where
                    secret = volumes[mount["name"]]["secret"]
                    assert secret["defaultMode"] == 0o400, f"{where}: {var} readable by more than its owner"
                    assert {"key": key, "path": key} in secret["items"], f"{where}: {key} not mounted"


def test_production_sets_the_portal_host_allowlist(render: Callable[..., Rendered]) -> None:
    import json

    rendered = render((PRODUCTION_VALUES,))
    for component in ("bitrix-ingress", "bitrix-dispatcher"):
        cm = rendered.named("ConfigMap", f"zt-zaptrix-{component}")
        suffixes = json.loads(cm["data"]["ZAPTRIX_BITRIX_PORTAL_HOST_SUFFIXES"])
        assert "bitrix24.com" in suffixes, component


def test_no_deprecated_name_is_rendered_or_means_a_current_setting(chart: Rendered) -> None:
    """A renamed setting's old variable (zaptrix.settings.Formerly) is only for operators' own overrides."""
    for name, script, c in processes(chart):
        classes, _ = classes_for(script)
        current = set().union(*(env_names(cls) for cls in classes))
        old = {var for cls in classes for var in shared.deprecated_aliases(cls)}
        assert not old & current, (
            f"{script}: {sorted(old & current)} are both a deprecated and a current name"
        )
        env, _ = container_env(chart, c)
        assert not old & env.keys(), f"{name} sets deprecated {sorted(old & env.keys())}: use the new names"
