"""Policies asserted on the rendered manifests of every value set (default, production, dev)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

import pytest
from chart_support import PRODUCTION_VALUES, RELEASE, Rendered, component_name, pod_specs

COMPONENTS = (
    "meta-ingress",
    "meta-dispatcher",
    "bitrix-ingress",
    "bitrix-dispatcher",
    "mapper",
    "token-keeper",
)
WEB = ("meta-ingress", "bitrix-ingress")
DISPATCHERS = ("meta-dispatcher", "bitrix-dispatcher")
GRPC = ("mapper", "token-keeper")
UID = 10001
IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._/:-]*?):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(@sha256:[a-f0-9]{64})?$"
)


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_component_is_deployed(rendered: Rendered) -> None:
    names = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in rendered.of_kind("Deployment")}
    assert names == set(COMPONENTS)
    for kind in ("Service", "ServiceAccount", "ConfigMap"):
        assert {d["metadata"]["name"] for d in rendered.of_kind(kind)} >= {
            component_name(c) for c in COMPONENTS
        }


def test_pods_run_non_root_read_only_without_capabilities(rendered: Rendered) -> None:
    for workload, spec in pod_specs(rendered):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (UID, UID, UID), where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            # Python needs a writable /tmp: an emptyDir, the only writable path.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, where
            volume = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in volume, where


def test_every_container_has_resources(rendered: Rendered) -> None:
    for workload, spec in pod_specs(rendered):
        for c in containers(spec):
            res = c["resources"]
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert res["requests"]["cpu"] and res["requests"]["memory"], where
            assert res["limits"]["memory"] and res["limits"]["cpu"], where


def test_images_are_pinned_never_latest(rendered: Rendered) -> None:
    for _workload, spec in pod_specs(rendered):
        for c in containers(spec):
            m = IMAGE.match(c["image"])
            assert m, f"{c['image']} has no tag"
            assert m["tag"].lower() != "latest", c["image"]
            assert c["imagePullPolicy"] in ("IfNotPresent", "Always")


def test_service_containers_have_probes_on_declared_ports(rendered: Rendered) -> None:
    for d in rendered.of_kind("Deployment"):
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c[kind]
            if component in GRPC:
                # The kubelet cannot present a client certificate: probes use the plaintext health-only port.
                assert probe["grpc"]["port"] == ports["health"], (component, kind)
            else:
                get = probe["httpGet"]
                assert get["port"] in ports, (component, kind)
                expected = "/ready" if kind == "readinessProbe" else "/health"
                assert get["path"] == expected, (component, kind)
        if component in WEB:
            assert c["livenessProbe"]["httpGet"]["port"] == "http"
        if component in DISPATCHERS:
            assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
        assert c["livenessProbe"]["failureThreshold"] >= 3


def test_probes_ask_the_pods_own_state_never_a_dependencys(rendered: Rendered) -> None:
    """The readiness cascade (issue 13): startup and liveness ask "is the process working" (gRPC
    "liveness", HTTP /health), so a PostgreSQL or Kafka outage neither restarts pods nor keeps new ones
    from starting; readiness asks "" or /ready, which follow only the pod's own start-up (zaptrix.health)."""
    for d in rendered.of_kind("Deployment"):
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        if component in GRPC:
            assert c["startupProbe"]["grpc"].get("service") == "liveness", component
            assert c["livenessProbe"]["grpc"].get("service") == "liveness", component
            assert c["readinessProbe"]["grpc"].get("service", "") == "", component
        else:
            assert c["startupProbe"]["httpGet"]["path"] == "/health", component


def test_migrations_are_pre_install_and_pre_upgrade_hook_jobs(rendered: Rendered) -> None:
    jobs = {j["metadata"]["name"]: j for j in rendered.of_kind("Job")}
    assert set(jobs) == {f"{component_name('mapper')}-migrate", f"{component_name('token-keeper')}-migrate"}
    for name, job in jobs.items():
        ann = job["metadata"]["annotations"]
        assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}, name
        assert set(ann["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
        assert int(ann["helm.sh/hook-weight"]) < 0
        assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > 0
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never"
        (c,) = spec["containers"]
        assert c["command"] == [
            name.removeprefix(f"{RELEASE}-zaptrix-")
        ]  # mapper-migrate, token-keeper-migrate
        # Pre-install hooks run before the release's own objects exist: nothing but a Secret may be referenced.
        assert "serviceAccountName" not in spec and "envFrom" not in c
        assert not [e for e in c["env"] if "valueFrom" in e], "secrets are files, not variables"
        refs = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
        assert refs, "the migration gets its database URL from a Secret (a mounted file)"
        assert any(e["name"] == "ZAPTRIX_DATABASE_URL_FILE" for e in c["env"])
        secrets = {s["metadata"]["name"]: s for s in rendered.of_kind("Secret")}
        for ref in refs:
            if ref in secrets:  # chart-created: must itself be an earlier hook
                hook = secrets[ref]["metadata"].get("annotations", {})
                assert "pre-install" in hook.get("helm.sh/hook", ""), ref
                assert int(hook["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"])


def test_each_secret_goes_only_to_its_users(rendered: Rendered) -> None:
    owner = {
        "mapper-database-url": {"mapper", "mapper-migrate", "mapper-retention"},
        "token-keeper-database-url": {"token-keeper", "token-keeper-migrate"},
        "token-keeper-keys": {"token-keeper"},
        "media-url-secret": {"meta-ingress", "meta-dispatcher"},
        "bitrix-client-secret": {"bitrix-ingress"},
        "settings-session-secret": {"bitrix-ingress"},
    }
    for workload, spec in pod_specs(rendered):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in containers(spec):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert not ref or ref["key"] not in owner, (component, "secret as a variable", ref)
        for volume in spec.get("volumes", []):
            for item in volume.get("secret", {}).get("items", []):
                if item["key"] in owner:
                    assert component in owner[item["key"]], (component, item["key"])


@pytest.mark.parametrize("production", [False, True], ids=["default", "production"])
def test_network_policies_restrict_ingress(render: Callable[..., Rendered], production: bool) -> None:
    rendered = render((PRODUCTION_VALUES,) if production else ())
    policies = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
        for p in rendered.of_kind("NetworkPolicy")
    }
    assert set(policies) == set(COMPONENTS)
    for component, p in policies.items():
        assert "Ingress" in p["spec"]["policyTypes"]
        for rule in p["spec"]["ingress"]:
            assert rule.get("from"), f"{component}: an ingress rule without `from` admits everyone"
            assert rule.get("ports"), f"{component}: an ingress rule without ports admits every port"
        ports = {port["port"] for rule in p["spec"]["ingress"] for port in rule["ports"]}
        if component in WEB:
            assert ports == {"http"}
        elif component in DISPATCHERS:
            assert ports == {"metrics"}, "dispatchers serve nothing but metrics"
        else:
            assert ports == {"grpc", "metrics"}
    for component in GRPC:
        grpc_rules = [r for r in policies[component]["spec"]["ingress"] if r["ports"][0]["port"] == "grpc"]
        assert len(grpc_rules) == 1
        (peer,) = grpc_rules[0]["from"]
        assert "namespaceSelector" not in peer and "ipBlock" not in peer, "only pods of this namespace"
        expr = {e["key"]: e["values"] for e in peer["podSelector"]["matchExpressions"]}
        assert expr["app.kubernetes.io/instance"] == [RELEASE]
        assert set(expr["app.kubernetes.io/component"]) == {
            "meta-ingress",
            "meta-dispatcher",
            "bitrix-ingress",
            "bitrix-dispatcher",
        }


def test_ingress_routes_the_webhooks_and_media_to_the_right_services(rendered: Rendered) -> None:
    (ingress,) = rendered.of_kind("Ingress")
    routes = {
        p["path"]: (p["pathType"], p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert routes == {
        "/webhooks/meta": ("Prefix", component_name("meta-ingress"), "http"),
        "/media": ("Prefix", component_name("meta-ingress"), "http"),
        "/webhooks/bitrix24": ("Prefix", component_name("bitrix-ingress"), "http"),
    }
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    for _, service, port in routes.values():
        assert port in {p["name"] for p in services[service]["spec"]["ports"]}


def test_production_ingress_has_tls_and_class(render: Callable[..., Rendered]) -> None:
    (ingress,) = render((PRODUCTION_VALUES,)).of_kind("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "zaptrix-tls", "hosts": ["zaptrix.example.com"]}]
    assert ingress["spec"]["rules"][0]["host"] == "zaptrix.example.com"


def test_services_select_their_pods_and_expose_declared_ports(rendered: Rendered) -> None:
    deployments = {d["metadata"]["name"]: d for d in rendered.of_kind("Deployment")}
    for s in rendered.of_kind("Service"):
        d = deployments[s["metadata"]["name"]]
        assert s["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in s["spec"]["selector"].items())
        container_ports = {p["name"] for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in s["spec"]["ports"]} == container_ports


def test_production_autoscales_web_and_dispatchers_with_disruption_budgets(
    render: Callable[..., Rendered],
) -> None:
    rendered = render((PRODUCTION_VALUES,))
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in rendered.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {component_name(c) for c in (*WEB, *DISPATCHERS)}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in rendered.named("Deployment", name)["spec"], "the HPA owns the replica count"
    pdbs = {p["metadata"]["name"] for p in rendered.of_kind("PodDisruptionBudget")}
    assert pdbs == {component_name(c) for c in COMPONENTS}


def test_dev_profile_runs_one_replica_with_debug_logs(render: Callable[..., Rendered]) -> None:
    from chart_support import DEV_VALUES

    rendered = render((DEV_VALUES,))
    assert not rendered.of_kind("HorizontalPodAutoscaler")
    assert not rendered.of_kind("NetworkPolicy"), (
        "local clusters rarely enforce them; values-dev.yaml turns them off"
    )
    for d in rendered.of_kind("Deployment"):
        assert d["spec"]["replicas"] == 1
    for cm in rendered.of_kind("ConfigMap"):
        assert cm["data"]["ZAPTRIX_LOG_LEVEL"] == "DEBUG"


def test_config_and_secret_changes_roll_the_pods(render: Callable[..., Rendered]) -> None:
    base = render()
    changed = render(sets=("config.logLevel=WARNING",))
    for d in base.of_kind("Deployment"):
        other = changed.named("Deployment", d["metadata"]["name"])
        assert (
            d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            != other["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        )


def test_service_accounts_do_not_mount_tokens(rendered: Rendered) -> None:
    for sa in rendered.of_kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    for d in rendered.of_kind("Deployment"):
        assert d["spec"]["template"]["spec"]["serviceAccountName"] == d["metadata"]["name"]


def test_labels_and_selectors(rendered: Rendered) -> None:
    for d in rendered.of_kind("Deployment"):
        selector = d["spec"]["selector"]["matchLabels"]
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }
        assert len(d["metadata"]["name"]) <= 63


def _policies(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
        for p in rendered.of_kind("NetworkPolicy")
    }


NEVER = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "100.64.0.0/10")]
PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8")]


def _reachable(block: dict[str, Any], network: ipaddress.IPv4Network) -> bool:
    """Whether an ipBlock admits any address of `network` (not removed by its `except`)."""
    cidr = ipaddress.ip_network(block["cidr"])
    if not cidr.overlaps(network):
        return False
    return not any(network.subnet_of(ipaddress.ip_network(e)) for e in block.get("except", []))  # type: ignore[arg-type]


@pytest.mark.parametrize("production", [False, True], ids=["default", "production"])
def test_egress_is_closed_by_default(render: Callable[..., Rendered], production: bool) -> None:
    """Review M8: every component has an egress policy; nothing reaches link-local (cloud metadata) or
    carrier-grade NAT ranges, and private ranges only as declared dependency peers (PostgreSQL, Kafka, OTLP)."""
    from chart_support import PRODUCTION_VALUES as PROD

    rendered = render((PROD,) if production else ())
    policies = _policies(rendered)
    assert set(policies) == set(COMPONENTS)
    for component, p in policies.items():
        assert "Egress" in p["spec"]["policyTypes"], component
        for rule in p["spec"]["egress"]:
            assert rule.get("to"), f"{component}: an egress rule without `to` reaches every address"
            assert rule.get("ports"), f"{component}: an egress rule without ports reaches every port"
            ports = {port["port"] for port in rule["ports"]}
            for peer in rule["to"]:
                block = peer.get("ipBlock")
                if block is None:
                    continue
                for net in NEVER:
                    assert not _reachable(block, net), f"{component}: egress reaches {net} ({block})"
                if ports == {443}:  # the internet rule: public addresses only
                    for net in PRIVATE:
                        assert not _reachable(block, net), f"{component}: 443 reaches {net}"
                else:
                    assert ports & {5432, 9092, 9093, 4317}, f"{component}: undeclared ipBlock rule {rule}"

    # Who reaches what.
    def ports_of(component: str) -> set[Any]:
        return {port["port"] for r in policies[component]["spec"]["egress"] for port in r["ports"]}

    assert 5432 not in ports_of("meta-ingress") and 5432 not in ports_of("bitrix-ingress")
    assert 5432 in ports_of("mapper") and 5432 in ports_of("token-keeper")
    assert 443 not in ports_of("mapper"), "the mapper calls nothing outside"
    assert "grpc" not in ports_of("mapper") and "grpc" not in ports_of("token-keeper")
    for component in (*WEB, *DISPATCHERS):
        assert "grpc" in ports_of(component) and 443 in ports_of(component)


def test_grpc_clients_and_servers_have_their_certificates(render: Callable[..., Rendered]) -> None:
    """Review M7: every component that serves or calls the internal gRPC mounts its own certificate, and
    cert-manager issues it for the identity zaptrix.grpcauth authorises."""
    from chart_support import PRODUCTION_VALUES as PROD
    from zaptrix import grpcauth

    identity = {
        "meta-ingress": grpcauth.META_INGRESS_WEB,
        "meta-dispatcher": grpcauth.META_DISPATCHER,
        "bitrix-ingress": grpcauth.BITRIX_INGRESS_WEB,
        "bitrix-dispatcher": grpcauth.BITRIX_DISPATCHER,
        "mapper": grpcauth.MAPPER,
        "token-keeper": grpcauth.TOKEN_KEEPER,
    }
    for rendered in (render(), render((PROD,))):
        certificates = {c["spec"]["secretName"]: c for c in rendered.of_kind("Certificate")}
        for d in rendered.of_kind("Deployment"):
            component = d["metadata"]["labels"]["app.kubernetes.io/component"]
            spec = d["spec"]["template"]["spec"]
            (c,) = spec["containers"]
            data = rendered.named("ConfigMap", d["metadata"]["name"])["data"]
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            for var in (
                "ZAPTRIX_GRPC_TLS_CERT_FILE",
                "ZAPTRIX_GRPC_TLS_KEY_FILE",
                "ZAPTRIX_GRPC_TLS_CA_FILE",
            ):
                directory, _, name = data[var].rpartition("/")
                secret = volumes[mounts[directory]["name"]]["secret"]
                assert {"key": name, "path": name} in secret["items"], (component, var)
                assert secret["defaultMode"] == 0o400
            cert = certificates[secret["secretName"]]
            assert cert["spec"]["commonName"] == identity[component]
            assert cert["spec"]["dnsNames"] == [identity[component]]
            assert {"client auth", "server auth"} <= set(cert["spec"]["usages"])


def test_ingress_body_limit_matches_meta_ingress(rendered: Rendered) -> None:
    """Review M8: nginx's default 1 MB would refuse webhooks meta-ingress accepts (up to 4 MiB)."""
    from meta_ingress.settings import WebSettings

    (ingress,) = rendered.of_kind("Ingress")
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m")
    assert int(size[:-1]) * 1024 * 1024 == WebSettings.model_fields["web_max_body_bytes"].default
