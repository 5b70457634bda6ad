"""helm lint, rendering validated against the Kubernetes schemas, and values.schema.json refusing bad values."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from chart_support import CHART, KUBE_VERSIONS, NAMESPACE, RELEASE, VALUE_SETS, Rendered, template_args

Run = Callable[..., subprocess.CompletedProcess[str]]

# Custom resources: kubernetes-validate ships only the built-in kinds; these are checked by hand below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("cert-manager.io/v1", "Certificate"),
}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(run_helm: Run, name: str) -> None:
    values, sets = VALUE_SETS[name]
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSIONS[-1]]
    for f in values:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    proc = run_helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_rendered_manifests_are_valid_kubernetes_objects(
    render: Callable[..., Rendered], value_set: str, kube: str
) -> None:
    """Every built-in object validates in strict mode (no unknown fields) against that version's schema."""
    values, sets = VALUE_SETS[value_set]
    rendered = render(values, sets, kube)
    errors = []
    for doc in rendered.docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: no schema ({exc.message})")
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_unknown_fields(render: Callable[..., Rendered]) -> None:
    """Guards the test above: strict mode really refuses a misplaced field."""
    deployment = copy.deepcopy(render().of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_custom_resources_are_well_formed(render: Callable[..., Rendered]) -> None:
    from chart_support import PRODUCTION_VALUES

    rendered = render((PRODUCTION_VALUES,))
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == {
        "meta-ingress",
        "meta-dispatcher",
        "bitrix-ingress",
        "bitrix-dispatcher",
        "mapper",
        "token-keeper",
    }
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(m["spec"]) == {"selector", "endpoints"}
        service = services[m["metadata"]["name"]]
        assert m["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for ep in m["spec"]["endpoints"]:
            assert ep["port"] in port_names and ep["path"] == "/metrics"
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    topics = rendered.of_kind("KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(
        [
            *(
                f"zaptrix.{flow}{variant}.v1"
                for flow in ("wa-to-b24", "b24-to-wa", "wa-history")
                for variant in ("", ".retry", ".dlq")
            ),
            "zaptrix.admin-audit.v1",
        ]
    )
    for t in topics:
        assert t["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert t["metadata"]["namespace"] == "kafka"
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == "kafka"
        assert t["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert set(t["spec"]) == {"topicName", "partitions", "replicas", "config"}
        assert isinstance(t["spec"]["partitions"], int) and isinstance(t["spec"]["replicas"], int)
        assert all(isinstance(v, str) for v in t["spec"]["config"].values())
    dlq = next(t for t in topics if t["spec"]["topicName"].endswith(".dlq.v1"))
    assert dlq["spec"]["config"]["retention.ms"] == "2592000000"
    audit = next(t for t in topics if t["spec"]["topicName"].endswith(".admin-audit.v1"))
    assert audit["spec"]["config"]["retention.ms"] == "-1", "the audit of replays is kept forever"
    # Review L9: acks=all is only as strong as min.insync.replicas, on every topic.
    for t in topics:
        assert int(t["spec"]["config"]["min.insync.replicas"]) >= 2, t["spec"]["topicName"]
        assert t["spec"]["replicas"] > int(t["spec"]["config"]["min.insync.replicas"])

    certificates = rendered.of_kind("Certificate")
    assert len(certificates) == 6
    for cert in certificates:
        assert cert["apiVersion"] == "cert-manager.io/v1"
        assert set(cert["spec"]) == {
            "secretName",
            "commonName",
            "dnsNames",
            "duration",
            "renewBefore",
            "privateKey",
            "usages",
            "issuerRef",
        }
        assert cert["spec"]["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
        assert cert["spec"]["privateKey"]["rotationPolicy"] == "Always"


BAD_VALUES = {
    "negative replicas": ["components.mapper.replicas=-1"],
    "replicas not a number": ["components.metaIngress.replicas=two"],
    "unknown component": ["components.smsIngress.enabled=true"],
    "unknown top-level key": ["replicaCount=3"],
    "global latest tag": ["image.tag=latest"],
    "component latest tag": ["components.tokenKeeper.image.tag=latest"],
    "port out of range": ["components.metaIngress.ports.http=70000"],
    "port zero": ["components.mapper.ports.grpc=0"],
    "unknown port name": ["components.mapper.ports.admin=8000"],
    "unknown component kind": ["components.mapper.kind=worker"],
    "writable root filesystem": ["defaults.securityContext.readOnlyRootFilesystem=false"],
    "root user allowed": ["components.mapper.podSecurityContext.runAsNonRoot=false"],
    "seccomp unconfined (pod)": ["defaults.podSecurityContext.seccompProfile.type=Unconfined"],
    "seccomp unconfined (container)": ["components.mapper.securityContext.seccompProfile.type=Unconfined"],
    "privilege escalation": ["components.metaIngress.securityContext.allowPrivilegeEscalation=true"],
    "bad kafka protocol": ["kafka.securityProtocol=TLS"],
    "bad digest": ["components.mapper.image.digest=md5:abc"],
    "secret env to an unknown key": ["components.mapper.secretEnv.ZAPTRIX_DATABASE_URL=postgresPassword"],
    "secret file to an unknown key": ["components.mapper.secretFiles.ZAPTRIX_DATABASE_URL=postgresPassword"],
    "plain env outside our prefixes": ["components.mapper.env.PATH=/tmp"],
    "sampler ratio above 1": ["otel.samplerArg=2"],
    "create and existing secret": ["secrets.create=true", "secrets.existingSecret=mine"],
    "probe without handler": ["components.mapper.livenessProbe.grpc=null"],
    "resources without limits": ["components.mapper.resources.limits=null"],
    "unknown grpc tls source": ["grpcTls.source=vault"],
    "unknown connection": ["components.mapper.connections.redis=true"],
    "alert ratio above 1": ["prometheusRule.thresholds.webhook5xx.ratio=1.5"],
    "alert duration without unit": ["prometheusRule.thresholds.consumerLag.for=10"],
    "unknown alert threshold": ["prometheusRule.thresholds.diskFull.for=5m"],
    "runbook url with an anchor": ["prometheusRule.runbookBaseUrl=https://x.example/runbook.md#top"],
    "dashboard label not a string": ["grafanaDashboard.labels.grafana_dashboard=1"],
    "tracing collector latest tag": ["tracing.inCluster.collector.image.tag=latest"],
    "tracing jaeger without tag": ["tracing.inCluster.jaeger.image.tag="],
    "unknown tracing key": ["tracing.inCluster.tempo.enabled=true"],
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_refuses_bad_values(run_helm: Run, case: str) -> None:
    proc = run_helm(*template_args(sets=tuple(BAD_VALUES[case])))
    assert proc.returncode != 0, f"{case}: helm template accepted {BAD_VALUES[case]}"
    assert "schema" in proc.stderr, proc.stderr


def test_values_schema_refuses_bad_values_in_lint(run_helm: Run) -> None:
    proc = run_helm("lint", "--strict", str(CHART), "--set", "components.mapper.replicas=-1")
    assert proc.returncode != 0


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["secrets.create=true"], "secrets.values.mapperDatabaseUrl is required"),
        (
            ["kafka.sasl.enabled=true", "kafka.sasl.username="],
            "kafka.sasl.username is required",
        ),
        (["grpcTls.enabled=false"], "the processes refuse plaintext internal gRPC"),
    ],
)
def test_missing_required_values_fail_with_a_clear_message(
    run_helm: Run, sets: list[str], message: str
) -> None:
    proc = run_helm(*template_args(sets=tuple(sets)))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_templates_render_fast_enough_for_many_scenarios(run_helm: Run) -> None:
    """Optional branches render too: hooks off, network policies off, egress on, components off."""
    scenarios = [
        ["migrations.useHelmHooks=false"],
        ["networkPolicy.enabled=false", "ingress.enabled=false", "defaults.pdb.enabled=false"],
        [
            "networkPolicy.egress.enabled=true",
            "serviceMonitor.enabled=true",
            "kafka.strimziTopics.enabled=true",
        ],
        ["components.metaIngress.enabled=false", "components.metaDispatcher.enabled=false"],
        ["defaults.autoscaling.enabled=true", "defaults.pdb.minAvailable=1"],
        ["fullnameOverride=zx", "image.registry=", "components.mapper.image.digest=sha256:" + "a" * 64],
        ["networkPolicy.egress.enabled=false", "grpcTls.source=secret", "secrets.hasBitrixClientSecret=true"],
        ["config.environment=dev", "grpcTls.enabled=false"],
    ]
    for sets in scenarios:
        proc = run_helm(*template_args(sets=tuple(sets)))
        assert proc.returncode == 0, f"{sets}: {proc.stderr}"


def test_chart_metadata() -> None:
    import yaml

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] and chart["appVersion"] != "latest"
    assert (CHART / "values.schema.json").is_file()
    assert Path(CHART / "templates" / "NOTES.txt").is_file()
    assert RELEASE  # the release name used by every rendering


def test_grpc_certificates_from_own_secrets(render: Callable[..., Rendered]) -> None:
    rendered = render(sets=("grpcTls.source=secret", "grpcTls.secretNames.mapper=my-mapper-tls"))
    assert not rendered.of_kind("Certificate")
    mapper = rendered.named("Deployment", f"{RELEASE}-zaptrix-mapper")
    volumes = {v["name"]: v for v in mapper["spec"]["template"]["spec"]["volumes"]}
    assert volumes["grpc-tls"]["secret"]["secretName"] == "my-mapper-tls"
    meta = rendered.named("Deployment", f"{RELEASE}-zaptrix-meta-ingress")
    volumes = {v["name"]: v for v in meta["spec"]["template"]["spec"]["volumes"]}
    assert volumes["grpc-tls"]["secret"]["secretName"] == f"{RELEASE}-zaptrix-meta-ingress-grpc-tls"


def test_optional_client_secret_is_mounted_only_when_it_exists(render: Callable[..., Rendered]) -> None:
    def files(rendered: Rendered) -> set[str]:
        data = rendered.named("ConfigMap", f"{RELEASE}-zaptrix-bitrix-ingress")["data"]
        return {k for k in data if k.endswith("_FILE") and not k.startswith("ZAPTRIX_GRPC_TLS_")}

    always = {"ZAPTRIX_SETTINGS_SESSION_SECRET_FILE"}  # the settings page's session key (required)
    assert files(render()) == always
    assert files(render(sets=("secrets.hasBitrixClientSecret=true",))) == {
        "ZAPTRIX_BITRIX_CLIENT_SECRET_FILE",
        *always,
    }


def test_every_values_key_has_a_description() -> None:
    """Editor hovers and docs: every property of values.schema.json says what it is (its own description or
    that of the $defs entry it refers to); if/then conditions are no keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def described(node: dict[str, Any]) -> bool:
        if "description" in node:
            return True
        ref = node.get("$ref", "")
        return ref.startswith("#/$defs/") and "description" in schema["$defs"][ref.removeprefix("#/$defs/")]

    missing: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            if not described(sub):
                missing.append(f"{path}.{key}")
            walk(sub, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            walk(node.get(key), path)
        for key in ("oneOf", "anyOf"):
            for sub in node.get(key, []):
                walk(sub, path)

    walk(schema, "")
    for name, sub in schema["$defs"].items():
        walk(sub, f"$defs.{name}")
    assert not missing, missing


def test_each_property_schema_is_defined_once() -> None:
    """A key that stands in several places (defaults and a component: resources, probes, ports...) is one
    $defs entry they refer to, never a copy: no key name carries the same non-trivial schema inline twice."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    places: dict[str, list[str]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list):
            for sub in node:
                walk(sub, path)
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            body = {k: v for k, v in sub.items() if k != "description"}
            if "$ref" not in body and len(body) > 1:  # a bare {"type": ...} is no definition worth sharing
                places.setdefault(key + json.dumps(body, sort_keys=True), []).append(f"{path}.{key}")
        for key, sub in node.items():
            walk(sub, f"{path}/{key}")

    walk(schema, "")
    copies = [where for where in places.values() if len(where) > 1]
    assert not copies, copies
