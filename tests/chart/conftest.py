"""Fixtures of the chart, image and skaffold tests: helm and the rendered chart.

helm comes from ZAPTRIX_HELM (set by `make test`) or `dev/stack/tools.sh helm` (built once with Go into
the cache). Nothing here needs a cluster, a Docker engine or the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))  # chart_support (pytest runs with --import-mode=importlib)

from chart_support import KUBE_VERSIONS, REPO, VALUE_SETS, Rendered, template_args


@pytest.fixture(scope="session")
def helm() -> str:
    path = os.environ.get("ZAPTRIX_HELM")
    if not path:
        proc = subprocess.run(
            [str(REPO / "dev" / "stack" / "tools.sh"), "helm"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            pytest.fail(f"cannot get helm from dev/stack/tools.sh: {proc.stderr[-2000:]}")
        path = proc.stdout.strip().splitlines()[-1]
    if not Path(path).is_file():
        pytest.fail(f"helm not found at {path}")
    return path


@pytest.fixture(scope="session")
def run_helm(helm: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": "/tmp/zaptrix-helm/cache",
            "HELM_CONFIG_HOME": "/tmp/zaptrix-helm/config",
            "HELM_DATA_HOME": "/tmp/zaptrix-helm/data",
        }
        return subprocess.run(
            [helm, *args], capture_output=True, text=True, check=False, env=env, timeout=120
        )

    return run


@pytest.fixture(scope="session")
def render(run_helm: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., Rendered]:
    cache: dict[tuple[Any, ...], Rendered] = {}

    def do(
        values: tuple[Path, ...] = (), sets: tuple[str, ...] = (), kube: str = KUBE_VERSIONS[-1]
    ) -> Rendered:
        key = (values, sets, kube)
        if key not in cache:
            proc = run_helm(*template_args(values, sets, kube))
            assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            cache[key] = Rendered(docs)
        return cache[key]

    return do


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def rendered(render: Callable[..., Rendered], value_set: str) -> Rendered:
    values, sets = VALUE_SETS[value_set]
    return render(values, sets)
