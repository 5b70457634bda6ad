"""`make k8s-test`: the chart installed with the real helm client into a real (throwaway) control plane.

Run by dev/k8s/k8s-test.sh, which builds the binaries and passes their paths in the environment
(K8S_TOOL_<NAME>). Every check prints PASS/FAIL with its reason; the last line is `N passed, N failed`
and the exit status is non-zero when one failed. Everything it starts is stopped at exit.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "zaptrix"
PROD_VALUES = CHART / "ci" / "production-values.yaml"
CRDS = Path(__file__).resolve().parent / "crds"
RESTRICTED = "pod-security.kubernetes.io/enforce"
INSTANCE = "app.kubernetes.io/instance"

Obj = dict[str, Any]


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def run(self, name: str, fn: Callable[[], object]) -> bool:
        start = time.monotonic()
        try:
            fn()
        except Exception as exc:
            self.failed.append(name)
            detail = str(exc) if isinstance(exc, AssertionError) else traceback.format_exc(limit=3)
            print(f"FAIL {name} ({time.monotonic() - start:.1f}s): {detail.strip()}", flush=True)
            return False
        self.passed += 1
        print(f"PASS {name} ({time.monotonic() - start:.1f}s)", flush=True)
        return True


def eventually(fn: Callable[[], object], timeout: float = 120, what: str = "condition") -> None:
    """Polls fn until it stops raising AssertionError (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fn()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def docs(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


class Harness:
    def __init__(self, cluster: Cluster, helm: str, crd_dir: Path, skaffold: str) -> None:
        self.c = cluster
        self.helm_bin = helm
        self.skaffold_bin = skaffold
        self.crd_dir = crd_dir
        self.work = Path(tempfile.mkdtemp(prefix="zaptrix-k8s-values-"))

    # -- helpers ------------------------------------------------------------------------------------
    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [self.helm_bin, *args], env=self.c.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {r.stderr.strip()[-2000:]}")
        return r

    def template(self, release: str, ns: str, *values: str) -> list[Obj]:
        return docs(
            self.helm("template", release, str(CHART), "-n", ns, *self.kube_version(), *values).stdout
        )

    def kube_version(self) -> list[str]:
        """`helm template` assumes Kubernetes 1.20 unless told: the live API server's version."""
        if not self._kube_version:
            info = json.loads(self.c.kubectl("version", "-o", "json").stdout)["serverVersion"]
            self._kube_version = str(info["gitVersion"])
        return ["--kube-version", self._kube_version]

    _kube_version = ""

    def items(self, kind: str, ns: str, selector: str | None = None) -> list[Obj]:
        args = [kind, "-n", ns] + (["-l", selector] if selector else [])
        return list(self.c.get_json(*args)["items"])

    def namespace(self, name: str, restricted: bool = True) -> None:
        # The commands of docs/deploy.md, step 0.
        if self.c.kubectl("get", "namespace", name, check=False).returncode != 0:
            self.c.kubectl("create", "namespace", name)
        if restricted:
            self.c.kubectl(
                "label", "--overwrite", "namespace", name,
                f"{RESTRICTED}=restricted", f"{RESTRICTED}-version=latest",
            )  # fmt: skip
        # The ServiceAccount controller creates "default" (the migration Jobs run as it).
        eventually(lambda: self._assert_sa(name), 60, f"default ServiceAccount in {name}")

    def _assert_sa(self, ns: str) -> None:
        r = self.c.kubectl("get", "serviceaccount", "default", "-n", ns, check=False)
        assert r.returncode == 0, r.stderr

    def prerequisites(self, release: str, ns: str, *values: str) -> None:
        """What a platform team creates before `helm install` (docs/deploy.md): the application Secret,
        the image pull Secret and, in place of cert-manager, the gRPC TLS Secrets the Certificates name."""
        rendered = self.template(release, ns, *values)
        secret_names, pull_secrets = set(), set()
        for d in rendered:
            for vol in _pod_spec(d).get("volumes", []):
                if "secret" in vol:
                    secret_names.add(vol["secret"]["secretName"])
            pull_secrets |= {ps["name"] for ps in _pod_spec(d).get("imagePullSecrets", [])}
        for name in sorted(pull_secrets):
            self._pull_secret(ns, name)
        certs = {
            d["spec"]["secretName"]: d["spec"]["commonName"] for d in rendered if d["kind"] == "Certificate"
        }
        for name in sorted(secret_names):
            if name in certs:
                crt, key = self.c.pki.issue(f"grpc-{name}", certs[name], dns=(certs[name],), server=True)
                data = {
                    "tls.crt": crt.read_bytes(),
                    "tls.key": key.read_bytes(),
                    "ca.crt": self.c.pki.ca.read_bytes(),
                }
                self._secret(ns, name, data, "kubernetes.io/tls")
            elif name.endswith("-grpc-tls"):
                raise AssertionError(f"{name}: a TLS Secret without a Certificate (grpcTls.source=secret?)")
            else:
                literals = [f"--from-literal={k}={v.decode()}" for k, v in _app_secret().items()]
                self.c.kubectl("-n", ns, "create", "secret", "generic", name, *literals)

    def _pull_secret(self, ns: str, name: str) -> None:
        # The commands of docs/deploy.md, step 0.
        self.c.kubectl(
            "-n", ns, "create", "secret", "docker-registry", name, "--docker-server=registry.example.com",
            "--docker-username=ci", "--docker-password=ci",
        )  # fmt: skip

    def _secret(self, ns: str, name: str, data: dict[str, bytes], type_: str) -> None:
        obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "type": type_,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        self.c.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def snapshot(self, *namespaces: str) -> set[tuple[str, str, str]]:
        """Every listable namespaced object (kind, namespace, name) except Events and Leases."""
        kinds = self.c.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
        kinds = [k for k in kinds if not k.startswith(("events", "leases"))]
        out = set()
        for ns in namespaces:
            for item in self.c.get_json(",".join(kinds), "-n", ns)["items"]:
                out.add((item["kind"], ns, item["metadata"]["name"]))
        return out

    @contextmanager
    def watch(self, ns: str) -> Iterator[list[tuple[int, str, str, Obj]]]:
        """Records (resourceVersion, event type, kind, object) of the Jobs and Deployments of ns while
        the block runs: the API server's order of creation, even for hook Jobs Helm deletes afterwards."""
        events: list[tuple[int, str, str, Obj]] = []
        conns: list[http.client.HTTPSConnection] = []
        ctx = ssl.create_default_context(cafile=str(self.c.pki.ca))
        ctx.load_cert_chain(str(self.c.pki.root / "admin.crt"), str(self.c.pki.root / "admin.key"))
        started = threading.Barrier(3)

        def follow(path: str) -> None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.c.api_port, context=ctx, timeout=900)
            conns.append(conn)
            conn.request("GET", f"{path}?watch=1&allowWatchBookmarks=false")
            resp = conn.getresponse()
            started.wait()
            with suppress(Exception):
                for line in resp:
                    ev = json.loads(line)
                    obj = ev["object"]
                    events.append((int(obj["metadata"]["resourceVersion"]), ev["type"], obj["kind"], obj))

        threads = [
            threading.Thread(target=follow, args=(p,), daemon=True)
            for p in (f"/apis/batch/v1/namespaces/{ns}/jobs", f"/apis/apps/v1/namespaces/{ns}/deployments")
        ]
        for t in threads:
            t.start()
        started.wait(timeout=30)
        try:
            yield events
        finally:
            time.sleep(1)  # the last events of the block are in flight; nothing is asserted on time
            for conn in conns:
                with suppress(Exception):
                    if conn.sock is not None:
                        conn.sock.shutdown(2)
                conn.close()

    # -- checks -------------------------------------------------------------------------------------
    def control_plane(self) -> None:
        nodes = self.c.add_nodes()

        def ready() -> None:
            for n in self.c.get_json("nodes")["items"]:
                cond = {c["type"]: c["status"] for c in n["status"].get("conditions", [])}
                assert cond.get("Ready") == "True", f"{n['metadata']['name']} not Ready: {cond}"
            assert len(nodes) == 3

        eventually(ready, 120, "kwok nodes Ready")
        version = json.loads(self.c.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
        print(f"     kube-apiserver {version}, {len(nodes)} kwok nodes in 3 zones")

    def crds(self) -> None:
        files = [
            self.crd_dir / "monitoring.coreos.com_servicemonitors.yaml",
            self.crd_dir / "monitoring.coreos.com_prometheusrules.yaml",
            CRDS / "strimzi-kafkatopic.yaml",
            CRDS / "cert-manager-certificate.yaml",
        ]
        for f in files:
            assert f.is_file(), f"{f} missing"
            # Server-side: the generated CRDs are larger than client-side apply's annotation allows.
            self.c.kubectl("apply", "--server-side", "-f", str(f))
        names = [docs(f.read_text())[0]["metadata"]["name"] for f in files]
        self.c.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
        gen = docs(files[0].read_text())[0]["metadata"].get("annotations", {})
        assert "controller-gen.kubebuilder.io/version" in gen, f"not generated by controller-gen: {gen}"

    def install(self, release: str, ns: str, values: list[str], expect: dict[str, int]) -> None:
        self.namespace(ns)
        if any("production" in v for v in values):
            self.namespace("kafka", restricted=False)
        self.prerequisites(release, ns, *values)
        before = self.snapshot(ns, "kafka")
        self.baseline[ns] = before
        with self.watch(ns) as events:
            r = self.helm("install", release, str(CHART), "-n", ns, *values, "--wait", "--timeout", "5m")
        assert "STATUS: deployed" in r.stdout, r.stdout
        self.assert_available(ns)
        self.assert_hooks_first(events, ns)
        manifest = docs(self.helm("get", "manifest", release, "-n", ns).stdout)
        counts: dict[str, int] = {}
        for d in manifest:
            counts[d["kind"]] = counts.get(d["kind"], 0) + 1
            d_ns = d["metadata"].get("namespace", ns)
            r2 = self.c.kubectl("get", _kind_ref(d), d["metadata"]["name"], "-n", d_ns, check=False)
            assert r2.returncode == 0, f"{d['kind']}/{d['metadata']['name']} rendered but absent: {r2.stderr}"
        for kind, n in expect.items():
            assert counts.get(kind, 0) == n, f"{kind}: {counts.get(kind, 0)} rendered, expected {n}"
        # HPAs, PDBs and NetworkPolicies as rendered: every field of the rendered spec is in the live
        # object (which only adds defaults), so nothing was dropped or rewritten on the way in.
        for d in manifest:
            if d["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
                live = self.c.get_json(_kind_ref(d), d["metadata"]["name"], "-n", ns)
                _assert_subset(d["spec"], live["spec"], f"{d['kind']}/{d['metadata']['name']}.spec")
        print(f"     {release} in {ns}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))

    baseline: dict[str, set[tuple[str, str, str]]] = {}

    def assert_available(self, ns: str) -> None:
        assert self.items("deployments", ns), f"no Deployment in {ns}"
        self.c.kubectl("wait", "--for=condition=Available", "--timeout=180s", "deployment", "--all", "-n", ns)

        def all_replicas_available() -> None:
            for d in self.items("deployments", ns):
                st = d["status"]
                assert st.get("availableReplicas") == d["spec"]["replicas"], f"{d['metadata']['name']}: {st}"

        eventually(all_replicas_available, 120, "every replica available")
        pods = [p for p in self.items("pods", ns) if p["status"].get("phase") == "Running"]
        assert pods, "no Running pod"
        for p in pods:
            assert p["spec"]["nodeName"].startswith("kwok-node-"), p["spec"].get("nodeName")

    def assert_hooks_first(self, events: list[tuple[int, str, str, Obj]], ns: str, after: int = 0) -> None:
        jobs: dict[str, int] = {}
        done: dict[str, int] = {}
        deploy_changes = []
        for rv, typ, kind, obj in events:
            name = obj["metadata"]["name"]
            if kind == "Job" and rv > after:
                jobs.setdefault(name, rv)
                if obj.get("status", {}).get("succeeded"):
                    done.setdefault(name, rv)
            elif kind == "Deployment" and typ in ("ADDED", "MODIFIED") and rv > after:
                deploy_changes.append(rv)
        assert jobs, f"no migration Job seen in {ns}"
        assert sorted(jobs) == sorted(done), f"hook Jobs that did not succeed: {set(jobs) - set(done)}"
        assert deploy_changes, "no Deployment created or changed"
        assert max(done.values()) < min(deploy_changes), (
            f"a Deployment was written (rv {min(deploy_changes)}) before the migrations finished "
            f"(rv {max(done.values())})"
        )
        print(f"     hook Jobs {sorted(jobs)} succeeded before any Deployment was written")

    def upgrade(self, release: str, ns: str, values: list[str]) -> None:
        old = {d["metadata"]["name"]: _rs_of(self, ns, d) for d in self.items("deployments", ns)}
        with self.watch(ns) as events:
            # The list's resourceVersion: every write after this point is part of the upgrade.
            raw = self.c.kubectl("get", "--raw", f"/apis/apps/v1/namespaces/{ns}/deployments").stdout
            rv0 = int(json.loads(raw)["metadata"]["resourceVersion"])
            self.helm(
                "upgrade", release, str(CHART), "-n", ns, *values, "--set", "image.tag=0.1.1",
                "--set", "config.logLevel=DEBUG", "--wait", "--timeout", "5m",
            )  # fmt: skip
        self.assert_hooks_first(events, ns, after=rv0)
        self.assert_available(ns)
        for d in self.items("deployments", ns):
            name = d["metadata"]["name"]
            image = d["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image.endswith(":0.1.1"), f"{name}: {image}"
            self.c.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, "--timeout=120s")
            new = _rs_of(self, ns, d)
            assert new != old[name], f"{name}: no new ReplicaSet ({new})"
            rs = {r["metadata"]["name"]: r for r in self.items("replicasets", ns)}
            assert rs[old[name]]["spec"]["replicas"] == 0, (
                f"{name}: old ReplicaSet {old[name]} not scaled down"
            )
        print(f"     every Deployment rolled to a new ReplicaSet ({len(old)})")

    def rollback(self, release: str, ns: str) -> None:
        self.helm("rollback", release, "1", "-n", ns, "--wait", "--timeout", "5m")
        self.assert_available(ns)
        for d in self.items("deployments", ns):
            image = d["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image.endswith(":0.1.0"), f"{d['metadata']['name']}: {image}"
        history = json.loads(self.helm("history", release, "-n", ns, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2, 3], history
        assert "Rollback to 1" in history[-1]["description"], history[-1]

    def uninstall(self, release: str, ns: str, kept: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "3m")
        namespaces = [ns, "kafka"] if "kafka" in self.c.kubectl("get", "ns", "-o", "name").stdout else [ns]

        def nothing_left() -> None:
            extra = self.snapshot(*namespaces) - self.baseline[ns]
            unexpected = {e for e in extra if e[0] not in kept}
            assert not unexpected, f"left behind: {sorted(unexpected)}"

        eventually(nothing_left, 120, "uninstall leaves nothing")
        left = sorted(e for e in self.snapshot(*namespaces) - self.baseline[ns])
        if left:
            print(f"     kept on purpose (helm.sh/resource-policy: keep): {left}")

    def refused(self, ns: str) -> None:
        bad = self.work / "breaks-restricted.yaml"
        # seccomp Unconfined breaks the restricted profile. The values schema refuses it too (only
        # RuntimeDefault/Localhost), so the manifests are broken after rendering: admission must stop them.
        bad.write_text(
            yaml.safe_dump(
                {
                    "defaults": {
                        "podSecurityContext": {"seccompProfile": {"type": "Unconfined"}},
                        "securityContext": {"seccompProfile": {"type": "Unconfined"}},
                    }
                }
            )
        )
        unsafe = ["-f", str(bad)]
        probe = self.helm(
            "template", "unsafe", str(CHART), "-n", ns, *self.kube_version(), *unsafe, check=False
        )
        if probe.returncode != 0:  # the values schema refuses it: break the rendered manifests instead
            assert "schema" in probe.stderr, probe.stderr
            post = self.work / "unconfined.sh"
            post.write_text("#!/bin/sh\nexec sed 's/type: RuntimeDefault/type: Unconfined/'\n")
            post.chmod(0o755)
            unsafe = ["--post-renderer", str(post)]
            print("     the values schema refuses seccomp Unconfined: a post-renderer sets it instead")
        rendered = self.template("unsafe", ns, *unsafe)
        assert "Unconfined" in json.dumps(rendered), "the unsafe manifests are not unsafe"
        deploy = next(d for d in rendered if d["kind"] == "Deployment")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "unsafe-probe", "namespace": ns},
            # The release's own ServiceAccount does not exist yet (ServiceAccount admission runs first).
            "spec": {**deploy["spec"]["template"]["spec"], "serviceAccountName": "default"},
        }
        r = self.c.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        assert r.returncode != 0, f"the API server admitted a pod with seccomp Unconfined: {r.stdout}"
        assert 'violates PodSecurity "restricted:latest"' in r.stderr, r.stderr
        assert "seccompProfile" in r.stderr, r.stderr
        # The release itself: the pods of its migration Jobs are refused, so the install fails.
        self.prerequisites("unsafe", ns, *unsafe)
        r = self.helm(
            "install", "unsafe", str(CHART), "-n", ns, *unsafe, "--wait", "--timeout", "40s", check=False
        )
        assert r.returncode != 0, "helm install of a release breaking restricted succeeded"
        ev = self.items("events", ns)
        refusals = [
            e for e in ev
            if e.get("reason") == "FailedCreate" and "violates PodSecurity" in e.get("message", "")
            and e["involvedObject"]["name"].startswith("unsafe")
        ]  # fmt: skip
        assert refusals, f"no FailedCreate event citing PodSecurity: {[e.get('message') for e in ev][-5:]}"
        assert not self.items("pods", ns, f"{INSTANCE}=unsafe"), "a pod of the unsafe release exists"
        print(f"     refused: {refusals[0]['message'][:160]}...")
        self.helm("uninstall", "unsafe", "-n", ns, "--wait", "--timeout", "2m", check=False)

    def skaffold_render(self, ns: str) -> None:
        for profile in ("dev", "production"):
            manifests = skaffold_render(self, profile, ns)
            kinds = {d["kind"] for d in docs(manifests)}
            assert {"Deployment", "Job"} <= kinds, kinds
            # Every object names its namespace (the chart sets it): zaptrix, and kafka for the KafkaTopics.
            r = self.c.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "-f",
                "-",
                input=manifests,
                check=False,
            )
            assert r.returncode == 0, f"profile {profile}: {r.stderr.strip()[-2000:]}"
            assert "Warning" not in r.stderr, f"profile {profile}: {r.stderr.strip()[-2000:]}"
            print(f"     skaffold profile {profile}: {len(docs(manifests))} objects accepted (dry run)")


def _assert_subset(want: Any, got: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not a mapping"
        for k, v in want.items():
            assert k in got, f"{where}.{k} rendered but missing in the cluster"
            _assert_subset(v, got[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            _assert_subset(w, g, f"{where}[{i}]")
    else:
        assert want == got, f"{where}: rendered {want!r}, cluster has {got!r}"


def _pod_spec(d: Obj) -> Obj:
    if d.get("kind") in ("Deployment", "Job"):
        return dict(d["spec"]["template"]["spec"])
    return {}


def _kind_ref(d: Obj) -> str:
    """KIND.GROUP as kubectl resolves it (KIND alone for the core group)."""
    api = d["apiVersion"]
    return f"{d['kind']}.{api.split('/')[0]}" if "/" in api else str(d["kind"])


def _rs_of(h: Harness, ns: str, d: Obj) -> str:
    """The ReplicaSet of the Deployment's current pod template (pod-template-hash)."""
    name = d["metadata"]["name"]
    dep = h.c.get_json("deployment", name, "-n", ns)
    for rs in h.items("replicasets", ns):
        owners = [o["name"] for o in rs["metadata"].get("ownerReferences", [])]
        if name in owners and rs["metadata"]["annotations"].get("deployment.kubernetes.io/revision") == dep[
            "metadata"
        ]["annotations"].get("deployment.kubernetes.io/revision"):
            return str(rs["metadata"]["name"])
    raise AssertionError(f"no current ReplicaSet for {name}")


def _app_secret() -> dict[str, bytes]:
    """The keys of the application Secret (secrets.keys in values.yaml); throwaway values."""
    key = base64.b64encode(os.urandom(32)).decode()
    return {
        "mapper-database-url": b"postgresql://mapper:secret@postgres:5432/zaptrix",
        "token-keeper-database-url": b"postgresql://token_keeper:secret@postgres:5432/zaptrix",
        "token-keeper-keys": f"k1:{key}".encode(),
        "token-keeper-active-key-id": b"k1",
        "kafka-sasl-password": b"secret",
        "media-url-secret": base64.b64encode(os.urandom(32)),
        "settings-session-secret": base64.b64encode(os.urandom(32)),
    }


def skaffold_render(h: Harness, profile: str, ns: str) -> str:
    """`skaffold render -p PROFILE` of skaffold.yaml with the real skaffold binary (it runs the helm client
    for the chart), given the image references a build would have produced (--build-artifacts: no Docker
    engine here); production references carry a digest, as images pushed to a registry do."""
    cfg = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    digest = "@sha256:" + "ab" * 32 if profile == "production" else ""
    builds = [
        {"imageName": a["image"], "tag": f"registry.example.com/zaptrix/{a['image']}:0123abc{digest}"}
        for a in cfg["build"]["artifacts"]
    ]
    artifacts = h.work / f"skaffold-builds-{profile}.json"
    artifacts.write_text(json.dumps({"builds": builds}))
    # skaffold runs `helm` from PATH (ours is named helm-<version>: a link named helm in the work dir).
    bin_dir = h.work / "bin"
    bin_dir.mkdir(exist_ok=True)
    with suppress(FileExistsError):
        (bin_dir / "helm").symlink_to(h.helm_bin)
    env = {
        **h.c.env(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(h.work),  # skaffold's global config and metrics prompt stay in the throwaway dir
        "SKAFFOLD_UPDATE_CHECK": "false",
        "SKAFFOLD_INTERACTIVE": "false",
    }
    out = h.work / f"skaffold-render-{profile}.yaml"  # stdout also carries skaffold's own notices
    args = ["render", "-f", str(REPO / "skaffold.yaml"), "-p", profile, "-n", ns, f"--output={out}"]
    args += [f"--build-artifacts={artifacts}", "--offline=true", "--digest-source=none"]
    r = subprocess.run(
        [h.skaffold_bin, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, f"skaffold render -p {profile}: {(r.stderr or r.stdout).strip()[-2000:]}"
    manifests = out.read_text()
    for b in builds:  # the built references reached the manifests, not the chart's defaults
        assert b["tag"] in manifests, f"{b['imageName']}: {b['tag']} not in the rendered manifests"
    return manifests


def main() -> int:
    # A TERM (CI's end, `kill`) unwinds like Ctrl-C, so the finally below stops the control plane.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tools = {n: os.environ[f"K8S_TOOL_{n.upper().replace('-', '_')}"] for n in (
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm",
        "skaffold",
    )}  # fmt: skip
    cluster = Cluster(tools=tools, kwok_stages=Path(os.environ["K8S_KWOK_STAGES"]))
    checks = Checks()
    keep = os.environ.get("K8S_TEST_KEEP") == "1"
    h: Harness | None = None
    try:
        if not checks.run(
            "control plane: etcd, kube-apiserver, controller-manager, scheduler, kwok up", cluster.start
        ):
            return _summary(checks)
        h = Harness(cluster, tools["helm"], Path(os.environ["K8S_PROMETHEUS_CRDS"]), tools["skaffold"])
        if not checks.run("three kwok nodes Ready", h.control_plane):
            return _summary(checks)
        checks.run("CRDs: ServiceMonitor, PrometheusRule (controller-gen), KafkaTopic, Certificate", h.crds)
        checks.run(
            "helm install (default values) into a restricted namespace",
            lambda: h.install(
                "zaptrix", "zaptrix", [], {"PodDisruptionBudget": 6, "NetworkPolicy": 6, "Certificate": 6}
            ),
        )
        checks.run(
            "helm uninstall (default values) leaves nothing behind", lambda: h.uninstall("zaptrix", "zaptrix")
        )
        tracing = ["--set", "tracing.inCluster.enabled=true"]
        if checks.run(
            "helm install with the in-cluster Jaeger and OpenTelemetry Collector (tracing.inCluster)",
            lambda: h.install("zaptrix", "zaptrix-tracing", tracing, {"Deployment": 8}),
        ):
            checks.run(
                "helm uninstall (in-cluster tracing) leaves nothing behind",
                lambda: h.uninstall("zaptrix", "zaptrix-tracing"),
            )
        prod = ["-f", str(PROD_VALUES)]
        if checks.run(
            "helm install (ci/production-values.yaml)",
            lambda: h.install(
                "zaptrix", "zaptrix-prod", prod,
                {"HorizontalPodAutoscaler": 4, "PodDisruptionBudget": 6, "NetworkPolicy": 6,
                 "ServiceMonitor": 6, "PrometheusRule": 1, "KafkaTopic": 10, "Ingress": 1},  # 3 flows x 3 + audit
            ),
        ):  # fmt: skip
            checks.run(
                "helm upgrade (image tag, log level): rolling update",
                lambda: h.upgrade("zaptrix", "zaptrix-prod", prod),
            )
            checks.run("helm rollback to revision 1", lambda: h.rollback("zaptrix", "zaptrix-prod"))
        checks.run(
            "helm uninstall (production) leaves nothing behind but the kept KafkaTopics",
            lambda: h.uninstall("zaptrix", "zaptrix-prod", kept={"KafkaTopic"}),
        )
        checks.run(
            "values breaking Pod Security restricted are refused by admission", lambda: h.refused("zaptrix")
        )
        checks.run(
            "skaffold render (dev, production) applied server-side (dry run)",
            lambda: h.skaffold_render("zaptrix"),
        )
    finally:
        cluster.stop(keep=keep)
        if h is not None:
            shutil.rmtree(h.work, ignore_errors=True)
        if keep:
            print(f"kept {cluster.root}")
    return _summary(checks)


def _summary(checks: Checks) -> int:
    print(f"{checks.passed} passed, {len(checks.failed)} failed")
    if checks.failed:
        print("failed: " + "; ".join(checks.failed))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
