"""The retention CronJob (templates/retention.yaml): mapper-retention with the mapper's image, ConfigMap and
database secret, its days in the mapper's ConfigMap, switched off cleanly, validated by the schema."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from chart_support import CHART, RELEASE, Rendered, component_name, template_args

NAME = f"{component_name('mapper')}-retention"


def test_the_cronjob_runs_one_sweep_with_the_mappers_settings(rendered: Rendered) -> None:
    job = rendered.named("CronJob", NAME)
    spec = job["spec"]
    assert spec["schedule"] == "17 3 * * *" and spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["backoffLimit"] >= 1
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    mapper = rendered.named("Deployment", component_name("mapper"))
    (server,) = mapper["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mapper-retention"] and c["image"] == server["image"]
    assert c["envFrom"] == [{"configMapRef": {"name": component_name("mapper")}}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    (secret,) = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert [i["key"] for i in secret["items"]] == ["mapper-database-url"]
    config = rendered.named("ConfigMap", component_name("mapper"))["data"]
    assert config["ZAPTRIX_DATABASE_URL_FILE"].endswith("/mapper-database-url")
    assert (
        config["ZAPTRIX_LINK_RETENTION_DAYS"],
        config["ZAPTRIX_CONVERSATION_IDLE_DAYS"],
        config["ZAPTRIX_UNINSTALL_GRACE_DAYS"],
        config["ZAPTRIX_RETENTION_BATCH"],
    ) == ("90", "365", "30", "500")
    assert "ZAPTRIX_RETENTION_INTERVAL_S" not in config  # the server leaves the sweep to the CronJob
    names = [e["name"] for e in c["env"]]
    assert "ZAPTRIX_RETENTION_PUSHGATEWAY_URL" not in names


def test_values_reach_the_job(render: Callable[..., Rendered]) -> None:
    rendered = render(
        sets=(
            "retention.schedule=0 */6 * * *",
            "retention.linkRetentionDays=30",
            "retention.pushgatewayUrl=http://pushgateway.monitoring:9091",
            "retention.timeZone=Europe/Berlin",
        )
    )
    spec = rendered.named("CronJob", NAME)["spec"]
    assert spec["schedule"] == "0 */6 * * *" and spec["timeZone"] == "Europe/Berlin"
    (c,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["ZAPTRIX_RETENTION_PUSHGATEWAY_URL"]["value"] == "http://pushgateway.monitoring:9091"
    assert (
        env["ZAPTRIX_RETENTION_PUSH_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    )
    assert (
        rendered.named("ConfigMap", component_name("mapper"))["data"]["ZAPTRIX_LINK_RETENTION_DAYS"] == "30"
    )


@pytest.mark.parametrize("off", ["retention.enabled=false", "components.mapper.enabled=false"])
def test_no_cronjob_when_switched_off(render: Callable[..., Rendered], off: str) -> None:
    assert render(sets=(off,)).of_kind("CronJob") == []


@pytest.mark.parametrize(
    "bad", ["retention.batch=0", "retention.linkRetentionDays=-1", "retention.color=blue"]
)
def test_the_schema_refuses_bad_retention_values(
    run_helm: Callable[..., subprocess.CompletedProcess[str]], bad: str
) -> None:
    proc = run_helm(*template_args(sets=(bad,)))
    assert proc.returncode != 0 and "retention" in proc.stderr, proc.stderr[-800:]
    assert RELEASE and CHART.is_dir()
