"""Helpers of the chart, image and skaffold tests (imported by name: see conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "zaptrix"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
DEV_VALUES = CHART / "values-dev.yaml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ("1.27.0", "1.34.0")
RELEASE = "zt"
NAMESPACE = "zaptrix"

# Named value sets rendered by the tests: (values files, --set flags).
VALUE_SETS: dict[str, tuple[tuple[Path, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "production": ((PRODUCTION_VALUES,), ()),
    "dev": ((DEV_VALUES,), ()),
}

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    docs: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[Manifest]:
        kinds = ("Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob")
        return [d for d in self.docs if d["kind"] in kinds]


def component_name(component: str) -> str:
    return f"{RELEASE}-zaptrix-{component}"


def template_args(
    values: tuple[Path, ...] = (), sets: tuple[str, ...] = (), kube: str = KUBE_VERSIONS[-1]
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube]
    for f in values:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return args


def pod_specs(rendered: Rendered) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for w in rendered.workloads():
        spec = w["spec"]["jobTemplate"]["spec"] if w["kind"] == "CronJob" else w["spec"]
        yield w, spec["template"]["spec"]
