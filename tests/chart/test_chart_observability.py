"""The observability pack of the chart: the PrometheusRule checked and unit-tested with the real promtool, the
Grafana dashboard held to the metrics the code really exports, and the optional in-cluster tracing backend.

promtool comes from ZAPTRIX_PROMTOOL (set by `make test`) or `dev/stack/tools.sh promtool` (built once with Go
into the cache, like helm).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_support import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    PRODUCTION_VALUES,
    REPO,
    Rendered,
    component_name,
    template_args,
)
from prometheus_client import REGISTRY

# The policy checks every component's pods pass, applied to the tracing pods too (aliased: not collected twice).
from test_chart_policies import test_every_container_has_resources as has_resources
from test_chart_policies import test_images_are_pinned_never_latest as images_are_pinned
from test_chart_policies import test_pods_run_non_root_read_only_without_capabilities as pods_are_restricted

Run = Callable[..., subprocess.CompletedProcess[str]]
DASHBOARD = CHART / "dashboards" / "zaptrix.json"
# Two files: the week-long cases are evaluated hourly, the others every minute.
ALERT_TESTS = tuple(
    Path(__file__).parent / "prometheus" / f for f in ("alerts-test.yaml", "alerts-week-test.yaml")
)
RULES_ON = ("prometheusRule.enabled=true",)
TRACING_ON = ("tracing.inCluster.enabled=true",)
# Every module that defines Prometheus metrics (prometheus_client registers them on import).
METRIC_MODULES = (
    "zaptrix.metrics",
    "zaptrix.web",
    "zaptrix.grpcauth",
    "zaptrix.health",
    "zaptrix.egress",
    "meta_ingress.metrics",
    "token_keeper.metrics",
    "mapper.metrics",
    "bitrix_ingress.metrics",
    "bitrix_ingress.bitrix_rest.pacing",
    "bitrix_ingress.web.install_guard",
)
# Labels Prometheus adds when it scrapes (ServiceMonitor targets), not the code.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}


# --- promtool -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    path = os.environ.get("ZAPTRIX_PROMTOOL")
    if not path:
        proc = subprocess.run(
            [str(REPO / "dev" / "stack" / "tools.sh"), "promtool"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"cannot get promtool from dev/stack/tools.sh: {proc.stderr[-2000:]}")
        path = proc.stdout.strip().splitlines()[-1]
    if not Path(path).is_file():
        pytest.fail(f"promtool not found at {path}")
    return path


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=120
    )


def _rule_groups(rendered: Rendered) -> dict[str, Any]:
    (rule,) = rendered.of_kind("PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def _alerts(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in _rule_groups(rendered)["groups"] for r in g["rules"] if "alert" in r}


def test_monitoring_resources_are_off_by_default_and_on_in_production(
    render: Callable[..., Rendered],
) -> None:
    default = render()
    assert not default.of_kind("PrometheusRule")
    assert not [c for c in default.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    production = render((PRODUCTION_VALUES,))
    (rule,) = production.of_kind("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(rule["spec"]) == {"groups"}
    # the fields of the PrometheusRule CRD (monitoring.coreos.com/v1 Rule), nothing else
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "partial_response_strategy", "limit"}
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}, r
            assert isinstance(r["expr"], str) and all(
                isinstance(v, str) for v in r.get("labels", {}).values()
            )
    dashboard = production.named("ConfigMap", "zt-zaptrix-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    # the file itself, byte for byte (Grafana parses it)
    assert dashboard["data"]["zaptrix.json"] == DASHBOARD.read_text().rstrip("\n")


def test_dashboard_labels_and_namespace_are_configurable(render: Callable[..., Rendered]) -> None:
    rendered = render(
        sets=(
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.labels.grafana_dashboard=null",
            "grafanaDashboard.labels.dashboards=zaptrix",
        )
    )
    cm = rendered.named("ConfigMap", "zt-zaptrix-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["dashboards"] == "zaptrix"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]


def test_every_alert_links_a_runbook_section_that_exists(render: Callable[..., Rendered]) -> None:
    headings = re.findall(r"^#{2,4} (.+)$", (REPO / "docs" / "runbook.md").read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    alerts = _alerts(render(sets=RULES_ON))
    assert len(alerts) == 8
    for name, rule in alerts.items():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://") and "/docs/runbook.md#" in url, name
        assert url.split("#", 1)[1] in anchors, f"{name}: {url} names no heading of docs/runbook.md"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_pass_promtool_check(promtool: str, render: Callable[..., Rendered], tmp_path: Path) -> None:
    for name, values in {
        "default thresholds": ((), RULES_ON),
        "production": ((PRODUCTION_VALUES,), ()),
    }.items():
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_groups(render(*values))))
        proc = _promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", "rules.yaml", cwd=tmp_path)
        assert proc.returncode == 0, f"{name}:\n{proc.stdout}{proc.stderr}"
        assert "SUCCESS: 8 rules found" in proc.stdout, proc.stdout


def test_promtool_check_refuses_a_broken_rule(
    promtool: str, render: Callable[..., Rendered], tmp_path: Path
) -> None:
    """Guards the test above: promtool really parses the expressions."""
    groups = copy.deepcopy(_rule_groups(render(sets=RULES_ON)))
    groups["groups"][0]["rules"][0]["expr"] = "sum by (topic) (increase(zaptrix_dead_letters_total[15m]) > 0"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    proc = _promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


def test_alerts_pass_their_promtool_unit_tests(
    promtool: str, render: Callable[..., Rendered], tmp_path: Path
) -> None:
    """tests/chart/prometheus/alerts-test.yaml: every alert fires on data that should raise it (with its exact
    labels and annotations) and stays quiet on data that should not."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_groups(render(sets=RULES_ON))))
    for path in ALERT_TESTS:
        shutil.copy(path, tmp_path / path.name)
    proc = _promtool(promtool, "test", "rules", *(path.name for path in ALERT_TESTS), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test(render: Callable[..., Rendered]) -> None:
    cases = [case for path in ALERT_TESTS for case in yaml.safe_load(path.read_text())["tests"]]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(_alerts(render(sets=RULES_ON)))
    assert fires == alerts and quiet == alerts


def test_a_wrong_expectation_fails_the_unit_tests(
    promtool: str, render: Callable[..., Rendered], tmp_path: Path
) -> None:
    """Guards the unit tests: an alert expected where it cannot fire makes promtool fail."""
    tests = yaml.safe_load(ALERT_TESTS[0].read_text())
    check = tests["tests"][0]["alert_rule_test"][0]
    check["exp_alerts"] = [{"exp_labels": {"severity": "warning", "topic": "zaptrix.wa-to-b24.dlq.v1"}}]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_groups(render(sets=RULES_ON))))
    (tmp_path / "alerts-test.yaml").write_text(yaml.safe_dump(tests))
    proc = _promtool(promtool, "test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout


def test_thresholds_come_from_values(render: Callable[..., Rendered]) -> None:
    alerts = _alerts(
        render(
            sets=(
                *RULES_ON,
                "prometheusRule.thresholds.consumerLag.records=42",
                "prometheusRule.thresholds.consumerLag.for=3m",
                "prometheusRule.thresholds.silentNumber.hours=12",
                "prometheusRule.alertLabels.team=messaging",
                "prometheusRule.runbookBaseUrl=https://docs.example.com/zaptrix/runbook.md",
            )
        )
    )
    lag = alerts["ZaptrixConsumerLagHigh"]
    assert lag["expr"].endswith("> 42") and lag["for"] == "3m"
    assert "[12h] offset 1w" in alerts["ZaptrixNumberSilent"]["expr"]
    assert all(a["labels"]["team"] == "messaging" for a in alerts.values())
    assert (
        lag["annotations"]["runbook_url"] == "https://docs.example.com/zaptrix/runbook.md#alert-consumer-lag"
    )
    assert all(f'namespace="{NAMESPACE}"' in a["expr"] for a in alerts.values())


# --- the dashboard ----------------------------------------------------------------------------------------


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the code exports (counters' _total, histograms' _bucket/_sum/_count...) -> its labels."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: dict[str, set[str]] = {}
    for collector, series in REGISTRY._collector_to_names.items():  # no public map of the exposed names
        labels = set(getattr(collector, "_labelnames", ()))
        for name in series:
            names[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return names


_FUNCTIONS_AND_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
}
_FUNCTIONS_AND_KEYWORDS |= {"unless", "offset", "inf", "nan", "atan2"}


def promql_names(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metric selectors of a PromQL expression (name -> label names in its matchers) and the label names of
    its grouping clauses (by, without, on, ignoring, group_left/right)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings say nothing about names
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    grouping: set[str] = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouping |= {x.strip() for x in clause.split(",") if x.strip()}
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    selectors: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}", expr):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        if name and name not in _FUNCTIONS_AND_KEYWORDS:
            selectors.setdefault(name, set()).update(labels)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    for name in re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", expr):
        if name not in _FUNCTIONS_AND_KEYWORDS and not re.fullmatch(r"\d.*", name):
            selectors.setdefault(name, set())
    return selectors, grouping


def unknown_names(expr: str, metrics: dict[str, set[str]]) -> list[str]:
    """What in `expr` the code does not export: metric names, and label names none of its metrics has."""
    selectors, grouping = promql_names(expr)
    problems = [f"metric {n}" for n in selectors if n not in metrics]
    for name, labels in selectors.items():
        problems += [f"label {lbl} of {name}" for lbl in labels - metrics.get(name, set()) - TARGET_LABELS]
    known = set().union(*(metrics.get(n, set()) for n in selectors)) | TARGET_LABELS
    problems += [f"grouping label {lbl}" for lbl in grouping - known]
    return problems


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = _panels()
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["title"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, p["title"]
        cell = (grid["x"], grid["y"])
        assert cell not in cells, f"{p['title']} overlaps another panel"
        cells.add(cell)
        assert p["targets"], f"{p['title']} has no query"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["legendFormat"], p["title"]
            assert 'namespace=~"$namespace"' in t["expr"], f"{p['title']}: {t['expr']}"


def test_dashboard_covers_what_sres_ask_for() -> None:
    """Issue 17: messages/s both ways, webhook and end-to-end latency, lag, retries and dead letters, Meta and
    Bitrix24 errors by code, token refreshes and NEEDS_REAUTH portals, rate-limit waits."""
    used = {name for p in _panels() for t in p["targets"] for name in promql_names(t["expr"])[0]}
    for metric in (
        "zaptrix_meta_inbound_messages_total",
        "zaptrix_bitrix_customer_messages_total",
        "zaptrix_meta_sends_total",
        "zaptrix_http_request_seconds_bucket",
        "zaptrix_event_age_seconds_bucket",
        "zaptrix_kafka_consumer_lag",
        "zaptrix_events_handled_total",
        "zaptrix_dead_letters_total",
        "zaptrix_external_api_calls_total",
        "zaptrix_token_refreshes_total",
        "zaptrix_token_portals_needing_reauth",
        "zaptrix_meta_pacing_wait_seconds_bucket",
        "zaptrix_bitrix_pacer_wait_seconds_bucket",
    ):
        assert metric in used, metric


def test_dashboard_and_alerts_use_only_metrics_the_code_exports(render: Callable[..., Rendered]) -> None:
    """The test that breaks when a metric or label is renamed in the code (or misspelt in the pack)."""
    metrics = exported_metrics()
    queries = [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]
    queries += [(name, a["expr"]) for name, a in _alerts(render(sets=RULES_ON)).items()]
    problems = [f"{where}: {problem}" for where, expr in queries for problem in unknown_names(expr, metrics)]
    assert not problems, "\n".join(problems)


def test_the_name_check_catches_what_the_code_does_not_export() -> None:
    """Guards the test above."""
    metrics = exported_metrics()
    assert unknown_names('sum by (topic) (rate(zaptrix_dead_letters_total{reason="x"}[5m]))', metrics) == []
    assert unknown_names("rate(zaptrix_dead_letter_total[5m])", metrics) == [
        "metric zaptrix_dead_letter_total"
    ]
    assert unknown_names('rate(zaptrix_dead_letters_total{code="1"}[5m])', metrics) == [
        "label code of zaptrix_dead_letters_total"
    ]
    assert unknown_names("sum by (code) (rate(zaptrix_dead_letters_total[5m]))", metrics) == [
        "grouping label code"
    ]
    assert unknown_names(
        "histogram_quantile(0.9, sum by (le) (rate(zaptrix_meta_sends_bucket[5m])))", metrics
    )


def test_dashboard_queries_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule: promtool parses them all."""
    rules = [
        {"record": f"zaptrix:panel{p['id']}_{t['refId']}", "expr": _grafana_to_promql(t["expr"])}
        for p in _panels()
        for t in p["targets"]
    ]
    (tmp_path / "panels.yaml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    proc = _promtool(promtool, "check", "rules", "panels.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")


# --- in-cluster tracing ----------------------------------------------------------------------------------


def _config(rendered: Rendered, component: str) -> dict[str, str]:
    return dict(rendered.named("ConfigMap", component_name(component))["data"])


def test_tracing_backend_is_off_by_default(render: Callable[..., Rendered]) -> None:
    rendered = render()
    names = {d["metadata"]["name"] for d in rendered.docs}
    assert component_name("otel-collector") not in names and component_name("jaeger") not in names
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in _config(rendered, "mapper")


def test_in_cluster_tracing_is_wired_to_every_component(render: Callable[..., Rendered]) -> None:
    rendered = render(sets=TRACING_ON)
    collector = component_name("otel-collector")
    endpoint = f"http://{collector}.{NAMESPACE}.svc:4317"
    for component in (
        "meta-ingress",
        "meta-dispatcher",
        "bitrix-ingress",
        "bitrix-dispatcher",
        "mapper",
        "token-keeper",
    ):
        assert _config(rendered, component)["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint, component
    # the endpoint's Service exists, selects the collector's pods and serves OTLP/gRPC on 4317
    service = rendered.named("Service", collector)
    assert {p["port"] for p in service["spec"]["ports"]} == {4317, 4318}
    deployment = rendered.named("Deployment", collector)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # the collector exports to Jaeger's Service
    config = yaml.safe_load(rendered.named("ConfigMap", collector)["data"]["config.yaml"])
    jaeger = component_name("jaeger")
    assert config["exporters"]["otlp"]["endpoint"] == f"{jaeger}.{NAMESPACE}.svc:4317"
    assert config["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "batch"],
        "exporters": ["otlp"],
    }
    jaeger_service = rendered.named("Service", jaeger)
    assert {p["name"]: p["port"] for p in jaeger_service["spec"]["ports"]} == {"ui": 16686, "otlp-grpc": 4317}
    jaeger_config = yaml.safe_load(rendered.named("ConfigMap", jaeger)["data"]["config.yaml"])
    assert jaeger_config["receivers"]["otlp"]["protocols"] == {"grpc": {"endpoint": "0.0.0.0:4317"}}
    assert jaeger_config["extensions"]["jaeger_query"]["http"]["endpoint"] == "0.0.0.0:16686"
    assert (
        jaeger_config["extensions"]["jaeger_storage"]["backends"]["memstore"]["memory"]["max_traces"] == 50000
    )
    jaeger_deployment = rendered.named("Deployment", jaeger)
    assert jaeger_service["spec"]["selector"] == jaeger_deployment["spec"]["selector"]["matchLabels"]
    assert (
        jaeger_deployment["spec"]["replicas"] == 1
        and jaeger_deployment["spec"]["strategy"]["type"] == "Recreate"
    )


def test_in_cluster_tracing_network_policies(render: Callable[..., Rendered]) -> None:
    rendered = render(sets=TRACING_ON)
    policies = {p["metadata"]["name"]: p["spec"] for p in rendered.of_kind("NetworkPolicy")}
    collector_pods = {"app.kubernetes.io/component": "otel-collector"}
    # every component may send to the collector's pods on 4317, and to no other OTLP place
    for component in (
        "meta-ingress",
        "meta-dispatcher",
        "bitrix-ingress",
        "bitrix-dispatcher",
        "mapper",
        "token-keeper",
    ):
        egress = policies[component_name(component)]["egress"]
        otlp = [r for r in egress if {"port": 4317, "protocol": "TCP"} in r["ports"]]
        assert len(otlp) == 1, component
        (peer,) = otlp[0]["to"]
        assert collector_pods.items() <= peer["podSelector"]["matchLabels"].items(), component
    # the collector takes OTLP from this release's components only and sends to Jaeger only
    collector = policies[component_name("otel-collector")]
    (source,) = collector["ingress"]
    (peer,) = source["from"]
    components = next(
        e for e in peer["podSelector"]["matchExpressions"] if e["key"] == "app.kubernetes.io/component"
    )
    assert set(components["values"]) == {
        "meta-ingress", "meta-dispatcher", "bitrix-ingress", "bitrix-dispatcher", "mapper", "token-keeper"
    }  # fmt: skip
    out = [r for r in collector["egress"] if r["ports"] == [{"port": 4317, "protocol": "TCP"}]]
    assert out[0]["to"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "zaptrix", "app.kubernetes.io/instance": "zt", "app.kubernetes.io/component": "jaeger"
    }}}]  # fmt: skip
    # Jaeger: OTLP from the collector only, no UI peers unless given, no egress
    jaeger = policies[component_name("jaeger")]
    assert len(jaeger["ingress"]) == 1
    assert collector_pods.items() <= jaeger["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items()
    assert jaeger["policyTypes"] == ["Ingress", "Egress"] and "egress" not in jaeger  # no rule: none allowed
    opened = render(
        sets=(*TRACING_ON, "tracing.inCluster.jaeger.uiFrom[0].namespaceSelector.matchLabels.team=sre")
    )
    ui = {p["metadata"]["name"]: p["spec"] for p in opened.of_kind("NetworkPolicy")}[component_name("jaeger")]
    assert ui["ingress"][1] == {
        "from": [{"namespaceSelector": {"matchLabels": {"team": "sre"}}}],
        "ports": [{"port": "ui", "protocol": "TCP"}],
    }


def test_in_cluster_tracing_pods_meet_the_restricted_profile(render: Callable[..., Rendered]) -> None:
    """The same policy checks as every component's pods (tests/chart/test_chart_policies.py), and strict
    validation against the Kubernetes schemas."""
    for kube in KUBE_VERSIONS:
        rendered = render(sets=TRACING_ON, kube=kube)
        pods_are_restricted(rendered)
        has_resources(rendered)
        images_are_pinned(rendered)
        for doc in rendered.docs:
            if doc["metadata"]["name"] in (component_name("otel-collector"), component_name("jaeger")):
                kubernetes_validate.validate(doc, kube, strict=True)


def test_in_cluster_tracing_and_an_endpoint_exclude_each_other(run_helm: Run) -> None:
    proc = run_helm(*template_args(sets=(*TRACING_ON, "otel.endpoint=http://collector.elsewhere:4317")))
    assert proc.returncode != 0
    assert "tracing.inCluster.enabled and otel.endpoint exclude each other" in proc.stderr


def test_the_chart_ships_the_dashboard_file() -> None:
    """helm packages dashboards/ (no .helmignore drops it)."""
    ignore = CHART / ".helmignore"
    assert not ignore.exists() or "dashboards" not in ignore.read_text()
    assert DASHBOARD.is_file()
