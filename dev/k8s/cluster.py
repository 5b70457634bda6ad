"""A throwaway Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes whose pods become Running/Ready without containers).

Every binary is the real one (built by dev/k8s/tools.sh); the PKI, the service-account keys and the
data are created under a temporary directory and removed with it. Admission is the API server's
default chain plus PodSecurity, so a namespace labelled pod-security.kubernetes.io/enforce=restricted
refuses pods that break the restricted profile exactly as in a real cluster.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    """A CA and the certificates of one throwaway cluster (files in `root`)."""

    root: Path
    ca_key: ec.EllipticCurvePrivateKey = field(init=False)
    ca_cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zaptrix-k8s-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca = self.root / "ca.crt"
        self.ca.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        # Service-account token signing keys (RSA, as kube-apiserver expects by default).
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key = self.root / "sa.key"
        self.sa_key.write_bytes(_pem_key(sa))
        self.sa_pub = self.root / "sa.pub"
        self.sa_pub.write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def issue(
        self,
        name: str,
        cn: str,
        *,
        orgs: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
        server: bool = False,
    ) -> tuple[Path, Path]:
        """A leaf certificate signed by the CA: (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server:
            import ipaddress

            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1")]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        elif dns:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_file, key_file = self.root / f"{name}.crt", self.root / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        return cert_file, key_file


@dataclass
class Cluster:
    """Starts the control plane in `start()`; `stop()` ends every process and removes the files."""

    tools: dict[str, str]
    kwok_stages: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="zaptrix-k8s-")))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(self.root / "pki")
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self.kubeconfig = self.root / "admin.kubeconfig"

    # -- processes ---------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))

    def _write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "k8s-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki.ca)},
                }
            ],
            "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "k8s-test", "context": {"cluster": "k8s-test", "user": user}}],
            "current-context": "k8s-test",
        }
        path.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        pki = self.pki
        etcd_port, peer_port = free_port(), free_port()
        data = self.root / "etcd"
        self._spawn(
            "etcd",
            [
                self.tools["etcd"], "--name=default", f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync", "--log-level=warn",
            ],
        )  # fmt: skip
        self._wait_tcp(etcd_port, "etcd", 60)

        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            server=True,
        )
        self._spawn(
            "kube-apiserver",
            [
                self.tools["kube-apiserver"], f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.api_port}",
                f"--tls-cert-file={serving[0]}", f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={pki.ca}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # The default chain plus PodSecurity named explicitly (it is on by default since 1.25).
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,"
                "ResourceQuota,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                # Privileged pods are allowed cluster-wide: refusals come from Pod Security admission.
                "--allow-privileged=true",
                # Loopback is refused as the "kubernetes" Service endpoint: no in-cluster client needs it.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )  # fmt: skip
        admin = pki.issue("admin", "zaptrix-k8s-test-admin", orgs=("system:masters",))
        self._write_kubeconfig(self.kubeconfig, "admin", *admin)
        self._wait_ready(240)

        # Each component with its own identity (the bootstrap RBAC roles bind these user names).
        kcm = self.root / "kcm.kubeconfig"
        self._write_kubeconfig(kcm, "kcm", *pki.issue("kcm", "system:kube-controller-manager"))
        self._spawn(
            "kube-controller-manager",
            [
                self.tools["kube-controller-manager"], f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
            ],
        )  # fmt: skip
        sched = self.root / "scheduler.kubeconfig"
        self._write_kubeconfig(sched, "scheduler", *pki.issue("scheduler", "system:kube-scheduler"))
        self._spawn(
            "kube-scheduler",
            [
                self.tools["kube-scheduler"], f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            ],
        )  # fmt: skip
        # kwok updates node and pod status for every node with the annotation (it needs broad rights).
        self._spawn(
            "kwok",
            [
                self.tools["kwok"], f"--kubeconfig={self.kubeconfig}", f"--config={self.kwok_stages}",
                "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}", "--node-ip=10.244.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )  # fmt: skip

    def _wait_tcp(self, port: int, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{what} did not listen on {port}; see {self.logs}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            r = self.kubectl("get", "--raw=/readyz", check=False)
            if r.returncode == 0 and r.stdout.strip() == "ok":
                return
            time.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s; see {self.logs}/kube-apiserver.log")

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self, keep: bool = False) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [self.tools["kubectl"], *args],
            env=self.env(), capture_output=True, text=True, input=input, timeout=timeout,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def get_json(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.kubectl("get", "-o", "json", *args).stdout)
        return data

    def add_nodes(self, zones: tuple[str, ...] = ("zone-a", "zone-b", "zone-c")) -> list[str]:
        """One fake node per zone, big enough for every replica the chart asks for."""
        names = []
        for i, zone in enumerate(zones):
            name = f"kwok-node-{i}"
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "topology.kubernetes.io/zone": zone,
                        "type": "kwok",
                    },
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                },
            }
            self.kubectl("apply", "-f", "-", input=json.dumps(node))
            names.append(name)
        return names
