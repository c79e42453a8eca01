"""A local Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, from the binaries scripts/build-kubernetes builds.

Two rings. The plan is pure: `plan_layout`, `plan_certificates`, `plan_*_args` and `build_kubeconfig`
turn a `HarnessConfig` (ports, paths, service CIDR) into file names, certificate requests, command
lines and kubeconfig documents, and are table-tested without any binary. `build_pki` only adds key
generation. `Harness` is the thin shell: it writes the files, starts the four processes in order,
waits for each to report healthy, and `stop()` ends them (newest first) and removes its state
folder when it made it.

Security shape (what kubeadm does, reduced to one host): one cluster CA signs the apiserver's serving
certificate and client certificates for an admin user (group system:masters), the controller-manager
(system:kube-controller-manager) and the scheduler (system:kube-scheduler); an EC key signs
service-account tokens; authorization is Node,RBAC. etcd speaks plain HTTP on 127.0.0.1 only, as in
controller-runtime's envtest. Everything listens on 127.0.0.1.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshway.ca.certs import build_key, cert_from_pem, cert_to_pem, key_from_pem, key_to_pem

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
SA_ISSUER = f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}"
ADMIN_USER = "meshway-admin"
HOST = "127.0.0.1"
CERT_LIFETIME = timedelta(days=365)


# -- plan: values ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ports:
    etcd_client: int = 2379
    etcd_peer: int = 2380
    apiserver: int = 6443
    controller_manager: int = 10257
    scheduler: int = 10259


@dataclass(frozen=True)
class HarnessConfig:
    state: Path                      # everything the harness writes lives here
    bin_dir: Path                    # etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    ports: Ports = field(default_factory=Ports)
    service_cidr: str = SERVICE_CIDR
    # The `kubernetes` Service's endpoint. kube-apiserver refuses a loopback address for its endpoint
    # reconciler, so on loopback the Service gets no endpoints (pods would need a routable address
    # such as the host bridge IP anyway: that is for the node agent to set).
    advertise_address: str = HOST
    # Resources (plural names) the API server serves without its watch cache, straight from etcd:
    # a watch from a resourceVersion etcd compacted away then gets 410 Gone at once, as it does
    # for any resource once the cache's window has moved on (tests force that case this way).
    uncached: tuple[str, ...] = ()
    # How long a node may go without renewing its Lease before it is NotReady (the controller-manager's
    # --node-monitor-grace-period, default 50 s), and how long pods tolerate a NotReady or unreachable
    # node before they are evicted (the API server's DefaultTolerationSeconds, default 300 s): tests
    # shorten both.
    node_monitor_grace_seconds: int | None = None
    eviction_toleration_seconds: int | None = None


@dataclass(frozen=True)
class Layout:
    pki: Path
    etcd_data: Path
    logs: Path
    admin_kubeconfig: Path
    controller_manager_kubeconfig: Path
    scheduler_kubeconfig: Path

    def cert(self, name: str) -> Path:
        return self.pki / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.pki / f"{name}.key"


@dataclass(frozen=True)
class CertRequest:
    """One certificate signed by the cluster CA: a TLS server (with SANs) or a client (CN = user, O = groups)."""

    name: str
    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False


def plan_layout(state: Path) -> Layout:
    return Layout(pki=state / "pki", etcd_data=state / "etcd", logs=state / "logs",
                  admin_kubeconfig=state / "admin.kubeconfig",
                  controller_manager_kubeconfig=state / "controller-manager.kubeconfig",
                  scheduler_kubeconfig=state / "scheduler.kubeconfig")


def find_service_ip(service_cidr: str) -> str:
    """The `kubernetes` Service's cluster IP: the first host address of the service range."""
    net = ipaddress.ip_network(service_cidr, strict=True)
    if net.num_addresses < 4:
        raise ValueError(f"service CIDR {service_cidr} is too small")
    return str(net.network_address + 1)


def plan_certificates(config: HarnessConfig) -> tuple[CertRequest, ...]:
    svc = "kubernetes.default.svc"
    return (
        CertRequest("apiserver", "kube-apiserver", server=True,
                    dns_names=("kubernetes", "kubernetes.default", svc, f"{svc}.{CLUSTER_DOMAIN}", "localhost"),
                    ip_addresses=(HOST, find_service_ip(config.service_cidr))),
        CertRequest("admin", ADMIN_USER, organizations=("system:masters",)),
        CertRequest("controller-manager", "system:kube-controller-manager"),
        CertRequest("scheduler", "system:kube-scheduler"),
        # what kube-apiserver presents to a kubelet (logs): kubeadm's `apiserver-kubelet-client`
        CertRequest("apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",)),
    )


def plan_node_certificates(node: str, ip: str) -> tuple[CertRequest, ...]:
    """A node's client certificate (as the kubelet's, `system:node:<node>` in `system:nodes`) and its
    kubelet API's serving certificate (the same subject, as the kubelet-serving signer wants it)."""
    user = f"system:node:{node}"
    return (CertRequest(f"node-{node}", user, organizations=("system:nodes",)),
            CertRequest(f"kubelet-{node}", user, organizations=("system:nodes",), dns_names=(node,),
                        ip_addresses=(ip,), server=True))


def plan_etcd_args(config: HarnessConfig, layout: Layout) -> list[str]:
    client = f"http://{HOST}:{config.ports.etcd_client}"
    peer = f"http://{HOST}:{config.ports.etcd_peer}"
    return [str(config.bin_dir / "etcd"), "--name=meshway", f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=meshway={peer}", "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # a throwaway test cluster: no fsync storms on a shared disk
            "--log-level=warn"]


def plan_apiserver_args(config: HarnessConfig, layout: Layout) -> list[str]:
    p = config.ports
    loopback = ipaddress.ip_address(config.advertise_address).is_loopback
    return [str(config.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{HOST}:{p.etcd_client}",
            f"--bind-address={HOST}", f"--advertise-address={config.advertise_address}",
            *(["--endpoint-reconciler-type=none"] if loopback else []),
            f"--secure-port={p.apiserver}",
            f"--tls-cert-file={layout.cert('apiserver')}", f"--tls-private-key-file={layout.key('apiserver')}",
            f"--client-ca-file={layout.cert('ca')}",
            # the kubelet API (containerLogs): the apiserver's client certificate, the kubelets' serving
            # certificates checked against the cluster CA, and their InternalIP dialled (a node name
            # such as node-1 resolves nowhere)
            f"--kubelet-client-certificate={layout.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={layout.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={layout.cert('ca')}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={layout.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={layout.key('sa')}",
            f"--service-cluster-ip-range={config.service_cidr}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false",
            *([f"--watch-cache-sizes={','.join(f'{r}#0' for r in config.uncached)}"] if config.uncached else []),
            *([f"--default-not-ready-toleration-seconds={config.eviction_toleration_seconds}",
               f"--default-unreachable-toleration-seconds={config.eviction_toleration_seconds}"]
              if config.eviction_toleration_seconds is not None else [])]


def _component_args(kubeconfig: Path, port: int) -> list[str]:
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
            f"--bind-address={HOST}", f"--secure-port={port}"]


def plan_controller_manager_args(config: HarnessConfig, layout: Layout) -> list[str]:
    return [str(config.bin_dir / "kube-controller-manager"),
            *_component_args(layout.controller_manager_kubeconfig, config.ports.controller_manager),
            f"--service-account-private-key-file={layout.key('sa')}",
            f"--root-ca-file={layout.cert('ca')}",
            f"--cluster-signing-cert-file={layout.cert('ca')}", f"--cluster-signing-key-file={layout.key('ca')}",
            f"--service-cluster-ip-range={config.service_cidr}",
            "--use-service-account-credentials=true",
            "--controllers=*,-nodeipam",  # pod addresses are meshway's IPAM, not the controller-manager's
            *([f"--node-monitor-grace-period={config.node_monitor_grace_seconds}s", "--node-monitor-period=1s"]
              if config.node_monitor_grace_seconds is not None else [])]


def plan_scheduler_args(config: HarnessConfig, layout: Layout) -> list[str]:
    return [str(config.bin_dir / "kube-scheduler"),
            *_component_args(layout.scheduler_kubeconfig, config.ports.scheduler)]


def build_kubeconfig(server: str, ca_pem: str, cert_pem: str, key_pem: str, user: str,
                     cluster: str = "meshway") -> dict:
    """A kubeconfig document (as a dict; YAML and JSON both read it) with everything embedded."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode("ascii")).decode("ascii")
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
    }


def find_server_url(config: HarnessConfig) -> str:
    return f"https://{HOST}:{config.ports.apiserver}"


@dataclass(frozen=True)
class NodeCredentials:
    kubeconfig: Path  # system:node:<node>
    serving_cert: Path  # the kubelet API's (`meshway node --tls-cert-file`)
    serving_key: Path
    client_ca: Path  # the cluster CA: who may call the kubelet API (`--client-ca-file`)


# -- PKI: the plan plus key generation --------------------------------------------------------------
def build_ca(now: datetime, key: ec.EllipticCurvePrivateKey | None = None
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or build_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshway-kubernetes-ca")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + CERT_LIFETIME * 10)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def build_signed_cert(req: CertRequest, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                      now: datetime, key: ec.EllipticCurvePrivateKey | None = None
                      ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or build_key()
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in req.organizations]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, req.common_name))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if req.server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(x509.Name(subject)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + CERT_LIFETIME)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    sans = [x509.DNSName(d) for d in req.dns_names] + [x509.IPAddress(ipaddress.ip_address(a))
                                                      for a in req.ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def build_pki(config: HarnessConfig, now: datetime) -> dict[str, str]:
    """Every PKI file as {file name under pki/: PEM text}: ca, the planned certificates, sa.key/sa.pub."""
    ca_cert, ca_key = build_ca(now)
    files = {"ca.crt": cert_to_pem(ca_cert), "ca.key": key_to_pem(ca_key)}
    for req in plan_certificates(config):
        cert, key = build_signed_cert(req, ca_cert, ca_key, now)
        files[f"{req.name}.crt"], files[f"{req.name}.key"] = cert_to_pem(cert), key_to_pem(key)
    sa = build_key()
    files["sa.key"] = key_to_pem(sa)
    files["sa.pub"] = sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    return files


# -- the shell --------------------------------------------------------------------------------------
class HarnessError(RuntimeError):
    pass


def find_free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # exited in the meantime
        pass


class Harness:
    """Start with `with Harness.create(bin_dir) as h:`; `h.kubeconfig` is the admin kubeconfig."""

    def __init__(self, config: HarnessConfig, owns_state: bool = False):
        self.config = config
        self.layout = plan_layout(config.state)
        self.owns_state = owns_state
        self.procs: list[tuple[str, subprocess.Popen]] = []

    @classmethod
    def create(cls, bin_dir: Path, state: Path | None = None, uncached: tuple[str, ...] = (),
               node_monitor_grace_seconds: int | None = None,
               eviction_toleration_seconds: int | None = None) -> "Harness":
        """A harness on free loopback ports; with no `state`, a temporary folder removed by `stop()`."""
        owns = state is None
        state = Path(tempfile.mkdtemp(prefix="meshway-kube-")) if owns else state
        ports = Ports(*find_free_ports(5))
        return cls(HarnessConfig(state=state, bin_dir=bin_dir, ports=ports, uncached=uncached,
                                 node_monitor_grace_seconds=node_monitor_grace_seconds,
                                 eviction_toleration_seconds=eviction_toleration_seconds), owns_state=owns)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.admin_kubeconfig

    def __enter__(self) -> "Harness":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        missing = find_missing_binaries(self.config.bin_dir)
        if missing:
            raise HarnessError(f"missing in {self.config.bin_dir}: {', '.join(missing)} (run scripts/build-kubernetes)")
        try:
            self.prepare()
            c, lay, p = self.config, self.layout, self.config.ports
            self._launch("etcd", plan_etcd_args(c, lay))
            self._wait("etcd", f"http://{HOST}:{p.etcd_client}/health", timeout)
            self._launch("kube-apiserver", plan_apiserver_args(c, lay))
            self._wait("kube-apiserver", f"{find_server_url(c)}/readyz", timeout, client="admin")
            self._launch("kube-controller-manager", plan_controller_manager_args(c, lay))
            self._wait("kube-controller-manager", f"https://{HOST}:{p.controller_manager}/healthz", timeout)
            self._launch("kube-scheduler", plan_scheduler_args(c, lay))
            self._wait("kube-scheduler", f"https://{HOST}:{p.scheduler}/healthz", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM each process (newest first), SIGKILL after `grace` seconds; remove an owned state folder."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()
        if self.owns_state:
            shutil.rmtree(self.config.state, ignore_errors=True)

    def restart_apiserver(self, timeout: float = 120.0, down: float = 0.0) -> None:
        """Stop kube-apiserver (SIGTERM), keep it down `down` seconds, start it again on the same
        etcd: what clients see in a control-plane upgrade or crash."""
        c, lay = self.config, self.layout
        for i, (name, proc) in enumerate(self.procs):
            if name == "kube-apiserver":
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
                del self.procs[i]
                break
        time.sleep(down)
        self._launch("kube-apiserver", plan_apiserver_args(c, lay))
        self._wait("kube-apiserver", f"{find_server_url(c)}/readyz", timeout, client="admin")

    def prepare(self) -> None:
        """Write the PKI (kept when the state folder already has one, so a restarted control plane keeps
        its CA and service-account key, and the tokens it issued stay valid) and the kubeconfigs."""
        lay = self.layout
        for d in (lay.pki, lay.logs):
            d.mkdir(parents=True, exist_ok=True)
        if (lay.pki / "ca.crt").exists():
            pki = {f.name: f.read_text() for f in lay.pki.iterdir() if f.is_file()}
            new = self._issue_missing(pki)  # planned since the PKI was made (apiserver-kubelet-client)
        else:
            pki = new = build_pki(self.config, datetime.now(timezone.utc))
        for name, text in new.items():
            self._write_pki(name, text)
        server = find_server_url(self.config)
        for path, who, user in ((lay.admin_kubeconfig, "admin", ADMIN_USER),
                                (lay.controller_manager_kubeconfig, "controller-manager", "system:kube-controller-manager"),
                                (lay.scheduler_kubeconfig, "scheduler", "system:kube-scheduler")):
            doc = build_kubeconfig(server, pki["ca.crt"], pki[f"{who}.crt"], pki[f"{who}.key"], user)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            path.chmod(0o600)

    def _write_pki(self, name: str, text: str) -> None:
        path = self.layout.pki / name
        path.write_text(text)
        path.chmod(0o600 if name.endswith(".key") else 0o644)

    def _issue_missing(self, pki: dict[str, str]) -> dict[str, str]:
        """Certificates of the plan an existing PKI lacks, signed by its CA (added to `pki`)."""
        ca_cert, ca_key = cert_from_pem(pki["ca.crt"]), key_from_pem(pki["ca.key"])
        now = datetime.now(timezone.utc)
        new = {}
        for req in plan_certificates(self.config):
            if f"{req.name}.crt" not in pki:
                cert, key = build_signed_cert(req, ca_cert, ca_key, now)
                new[f"{req.name}.crt"], new[f"{req.name}.key"] = cert_to_pem(cert), key_to_pem(key)
        pki.update(new)
        return new

    def issue_node_credentials(self, node: str, ip: str) -> NodeCredentials:
        """What `kubeadm join` gives a kubelet, from the cluster CA: a kubeconfig for `system:node:<node>`
        (group system:nodes: the Node authorizer and NodeRestriction scope it to its own Node, Lease
        and pods) and a serving certificate for its kubelet API (SANs: the node name and `ip`)."""
        lay = self.layout
        ca_pem = lay.cert("ca").read_text()
        ca_cert, ca_key = cert_from_pem(ca_pem), key_from_pem(lay.key("ca").read_text())
        user = f"system:node:{node}"
        now = datetime.now(timezone.utc)
        files = {}
        for req in plan_node_certificates(node, ip):
            cert, key = build_signed_cert(req, ca_cert, ca_key, now)
            files[req.name] = cert_to_pem(cert), key_to_pem(key)
            self._write_pki(f"{req.name}.crt", files[req.name][0])
            self._write_pki(f"{req.name}.key", files[req.name][1])
        client_cert, client_key = files[f"node-{node}"]
        kubeconfig = self.config.state / f"node-{node}.kubeconfig"
        doc = build_kubeconfig(find_server_url(self.config), ca_pem, client_cert, client_key, user)
        kubeconfig.write_text(yaml.safe_dump(doc, sort_keys=False))
        kubeconfig.chmod(0o600)
        return NodeCredentials(kubeconfig, lay.cert(f"kubelet-{node}"), lay.key(f"kubelet-{node}"), lay.cert("ca"))

    def _launch(self, name: str, argv: list[str]) -> None:
        log = open(self.layout.logs / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()
        self.procs.append((name, proc))

    def _ssl_context(self, client: str | None) -> ssl.SSLContext:
        lay = self.layout
        ctx = ssl.create_default_context(cafile=str(lay.cert("ca")))
        if client is None:  # the controller-manager's and scheduler's self-signed serving certificates
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        else:
            ctx.load_cert_chain(str(lay.cert(client)), str(lay.key(client)))
        return ctx

    def _wait(self, name: str, url: str, timeout: float, client: str | None = None) -> None:
        proc = self.procs[-1][1]
        ctx = self._ssl_context(client) if url.startswith("https") else None
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode}: {self._log_tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise HarnessError(f"{name} not healthy at {url} after {timeout:.0f}s ({last}): {self._log_tail(name)}")

    def _log_tail(self, name: str, lines: int = 15) -> str:
        """The end of a process's log, for the error (an owned state folder, logs included, is removed on stop)."""
        try:
            text = (self.layout.logs / f"{name}.log").read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n" + "\n".join(text.splitlines()[-lines:])
