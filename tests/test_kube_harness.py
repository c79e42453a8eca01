"""The local Kubernetes control-plane harness (meshway/kube/harness.py).

The planning functions (certificates, command lines, kubeconfig) are tested as tables without any
binary. `test_real_control_plane` starts the real etcd, kube-apiserver, kube-controller-manager and
kube-scheduler that scripts/build-kubernetes builds (scripts/test builds them first); without them
it fails under MESHWAY_REQUIRE_E2E=1 and is skipped, with the reason, otherwise (tests/kube_support.py).
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshway.ca.certs import cert_from_pem, key_from_pem
from meshway.kube.harness import (Harness, HarnessConfig, Ports, build_kubeconfig, build_pki, find_missing_binaries,
                                  find_service_ip, plan_apiserver_args, plan_certificates,
                                  plan_controller_manager_args, plan_etcd_args, plan_layout, plan_node_certificates,
                                  plan_scheduler_args)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
PORTS = Ports(etcd_client=32379, etcd_peer=32380, apiserver=36443, controller_manager=40257, scheduler=40259)
CONFIG = HarnessConfig(state=Path("/s"), bin_dir=Path("/b"), ports=PORTS)
LAYOUT = plan_layout(CONFIG.state)


def flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv[1:])


@pytest.mark.parametrize("cidr,expected", [
    ("10.96.0.0/16", "10.96.0.1"),
    ("10.0.0.0/24", "10.0.0.1"),
    ("fd00:10:96::/112", "fd00:10:96::1"),
])
def test_service_ip_is_first_host(cidr, expected):
    assert find_service_ip(cidr) == expected


@pytest.mark.parametrize("cidr", ["10.96.0.1/16", "10.96.0.0/31", "not-a-cidr"])
def test_service_ip_rejects(cidr):
    with pytest.raises(ValueError):
        find_service_ip(cidr)


@pytest.mark.parametrize("name,cn,groups,server", [
    ("apiserver", "kube-apiserver", (), True),
    ("admin", "meshway-admin", ("system:masters",), False),
    ("controller-manager", "system:kube-controller-manager", (), False),
    ("scheduler", "system:kube-scheduler", (), False),
])
def test_certificate_plan(name, cn, groups, server):
    req = {r.name: r for r in plan_certificates(CONFIG)}[name]
    assert (req.common_name, req.organizations, req.server) == (cn, groups, server)


def test_apiserver_certificate_names_the_kubernetes_service():
    req = {r.name: r for r in plan_certificates(CONFIG)}["apiserver"]
    assert {"kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local", "localhost"} <= set(req.dns_names)
    assert set(req.ip_addresses) == {"127.0.0.1", "10.96.0.1"}


@pytest.mark.parametrize("planner,binary,expected", [
    (plan_etcd_args, "etcd", {
        "listen-client-urls": "http://127.0.0.1:32379", "advertise-client-urls": "http://127.0.0.1:32379",
        "listen-peer-urls": "http://127.0.0.1:32380", "initial-cluster": "meshway=http://127.0.0.1:32380",
        "data-dir": "/s/etcd"}),
    (plan_apiserver_args, "kube-apiserver", {
        "etcd-servers": "http://127.0.0.1:32379", "bind-address": "127.0.0.1", "advertise-address": "127.0.0.1",
        "secure-port": "36443", "service-cluster-ip-range": "10.96.0.0/16", "authorization-mode": "Node,RBAC",
        "client-ca-file": "/s/pki/ca.crt", "tls-cert-file": "/s/pki/apiserver.crt",
        "service-account-key-file": "/s/pki/sa.pub", "service-account-signing-key-file": "/s/pki/sa.key",
        "service-account-issuer": "https://kubernetes.default.svc.cluster.local"}),
    (plan_controller_manager_args, "kube-controller-manager", {
        "kubeconfig": "/s/controller-manager.kubeconfig", "bind-address": "127.0.0.1", "secure-port": "40257",
        "service-account-private-key-file": "/s/pki/sa.key", "root-ca-file": "/s/pki/ca.crt",
        "use-service-account-credentials": "true", "leader-elect": "false", "controllers": "*,-nodeipam"}),
    (plan_scheduler_args, "kube-scheduler", {
        "kubeconfig": "/s/scheduler.kubeconfig", "authentication-kubeconfig": "/s/scheduler.kubeconfig",
        "bind-address": "127.0.0.1", "secure-port": "40259", "leader-elect": "false"}),
])
def test_command_lines(planner, binary, expected):
    argv = planner(CONFIG, LAYOUT)
    assert argv[0] == f"/b/{binary}"
    got = flags(argv)
    assert {k: got.get(k) for k in expected} == expected


@pytest.mark.parametrize("advertise,reconciler", [
    ("127.0.0.1", "none"),      # kube-apiserver refuses a loopback endpoint for the kubernetes Service
    ("10.244.0.1", None),       # a routable address: the default lease reconciler
])
def test_apiserver_endpoint_reconciler(advertise, reconciler):
    config = HarnessConfig(state=Path("/s"), bin_dir=Path("/b"), ports=PORTS, advertise_address=advertise)
    got = flags(plan_apiserver_args(config, LAYOUT))
    assert (got["advertise-address"], got.get("endpoint-reconciler-type")) == (advertise, reconciler)
    assert got["bind-address"] == "127.0.0.1"


@pytest.mark.parametrize("planner", [plan_etcd_args, plan_apiserver_args, plan_controller_manager_args,
                                     plan_scheduler_args])
def test_everything_listens_on_loopback_only(planner):
    for value in flags(planner(CONFIG, LAYOUT)).values():
        assert "0.0.0.0" not in value and "localhost" not in value
    for key, value in flags(planner(CONFIG, LAYOUT)).items():
        if key.endswith("address") or key.endswith("urls"):
            assert "127.0.0.1" in value, (key, value)


def test_apiserver_reaches_kubelets_with_its_own_certificate():
    """`kubectl logs` goes through the API server to the node's kubelet API: it presents its kubelet
    client certificate, checks the kubelet's serving certificate against the cluster CA, and dials
    the node's InternalIP (a node name resolves nowhere)."""
    got = flags(plan_apiserver_args(CONFIG, LAYOUT))
    assert got["kubelet-client-certificate"] == "/s/pki/apiserver-kubelet-client.crt"
    assert got["kubelet-client-key"] == "/s/pki/apiserver-kubelet-client.key"
    assert got["kubelet-certificate-authority"] == "/s/pki/ca.crt"
    assert got["kubelet-preferred-address-types"].split(",")[0] == "InternalIP"
    req = {r.name: r for r in plan_certificates(CONFIG)}["apiserver-kubelet-client"]
    assert (req.common_name, req.organizations, req.server) == \
        ("kube-apiserver-kubelet-client", ("system:masters",), False)


def test_node_certificates():
    client, serving = plan_node_certificates("node-1", "127.0.0.1")
    assert (client.common_name, client.organizations, client.server) == ("system:node:node-1", ("system:nodes",), False)
    assert (serving.common_name, serving.dns_names, serving.ip_addresses, serving.server) == \
        ("system:node:node-1", ("node-1",), ("127.0.0.1",), True)


def test_prepare_adds_certificates_planned_since_the_pki_was_made(tmp_path):
    first = Harness(HarnessConfig(state=tmp_path, bin_dir=Path("/b"), ports=PORTS))
    first.prepare()
    for suffix in ("crt", "key"):
        (tmp_path / "pki" / f"apiserver-kubelet-client.{suffix}").unlink()
    Harness(HarnessConfig(state=tmp_path, bin_dir=Path("/b"), ports=PORTS)).prepare()
    cert = cert_from_pem((tmp_path / "pki" / "apiserver-kubelet-client.crt").read_text())
    cert.verify_directly_issued_by(cert_from_pem((tmp_path / "pki" / "ca.crt").read_text()))


def test_node_credentials_chain_to_the_cluster_ca(tmp_path):
    import yaml
    h = Harness(HarnessConfig(state=tmp_path, bin_dir=Path("/b"), ports=PORTS))
    h.prepare()
    creds = h.issue_node_credentials("node-1", "127.0.0.1")
    ca = cert_from_pem(creds.client_ca.read_text())
    serving = cert_from_pem(creds.serving_cert.read_text())
    serving.verify_directly_issued_by(ca)
    san = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    doc = yaml.safe_load(creds.kubeconfig.read_text())
    client = cert_from_pem(base64.b64decode(doc["users"][0]["user"]["client-certificate-data"]))
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:node-1"
    assert oct(creds.kubeconfig.stat().st_mode & 0o777) == "0o600"


def test_kubeconfig_embeds_credentials_and_selects_its_context():
    doc = build_kubeconfig("https://127.0.0.1:36443", "CA", "CERT", "KEY", "meshway-admin")
    (cluster,), (user,), (ctx,) = doc["clusters"], doc["users"], doc["contexts"]
    assert cluster["cluster"]["server"] == "https://127.0.0.1:36443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == b"CA"
    assert base64.b64decode(user["user"]["client-certificate-data"]) == b"CERT"
    assert base64.b64decode(user["user"]["client-key-data"]) == b"KEY"
    assert doc["current-context"] == ctx["name"]
    assert ctx["context"] == {"cluster": cluster["name"], "user": user["name"]}


def test_pki_certificates_chain_to_the_ca():
    files = build_pki(CONFIG, NOW)
    ca = cert_from_pem(files["ca.crt"])
    for req in plan_certificates(CONFIG):
        cert = cert_from_pem(files[f"{req.name}.crt"])
        cert.verify_directly_issued_by(ca)
        assert cert.public_key().public_numbers() == key_from_pem(files[f"{req.name}.key"]).public_key().public_numbers()
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == req.common_name
        assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == list(req.organizations)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH if req.server else ExtendedKeyUsageOID.CLIENT_AUTH]
        assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc
    san = cert_from_pem(files["apiserver.crt"]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.96.0.1") in san.get_values_for_type(x509.IPAddress)


def test_pki_service_account_key_pair():
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    files = build_pki(CONFIG, NOW)
    pub = load_pem_public_key(files["sa.pub"].encode())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.public_numbers() == key_from_pem(files["sa.key"]).public_key().public_numbers()


def test_missing_binaries_are_named(tmp_path):
    (tmp_path / "etcd").write_text("")
    (tmp_path / "etcd").chmod(0o755)
    assert find_missing_binaries(tmp_path) == ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]


def test_prepare_keeps_an_existing_pki_and_rewrites_kubeconfigs(tmp_path):
    import yaml
    first = Harness(HarnessConfig(state=tmp_path, bin_dir=Path("/b"), ports=PORTS))
    first.prepare()
    ca = (tmp_path / "pki" / "ca.crt").read_text()
    moved = Ports(etcd_client=1, etcd_peer=2, apiserver=3, controller_manager=4, scheduler=5)
    again = Harness(HarnessConfig(state=tmp_path, bin_dir=Path("/b"), ports=moved))
    again.prepare()
    assert (tmp_path / "pki" / "ca.crt").read_text() == ca
    doc = yaml.safe_load(again.kubeconfig.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:3"
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]).decode() == ca
    assert oct((tmp_path / "pki" / "sa.key").stat().st_mode & 0o777) == "0o600"


from kube_support import kubectl, require_binaries  # noqa: E402


# -- the real binaries ----------------------------------------------------------------------------
def wait_for(what: str, check, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_real_control_plane():
    """Start etcd + kube-apiserver + controller-manager + scheduler, use them through kubectl, stop.

    Skipped when the binaries are not built (not required by MESHWAY_REQUIRE_E2E this session)."""
    bin_dir = require_binaries()
    h = Harness.create(bin_dir)
    state = h.config.state
    with h:
        kc = h.kubeconfig
        version = json.loads(kubectl(bin_dir, kc, "get", "--raw", "/version"))
        assert version["gitVersion"].startswith("v1.37.") and version["major"] == "1"
        assert kubectl(bin_dir, kc, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == "meshway-admin"
        # The kubernetes Service gets the first address of the service CIDR.
        assert kubectl(bin_dir, kc, "get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}") == "10.96.0.1"
        # The controller-manager works: a new namespace gets its default ServiceAccount, a Deployment its Pod.
        kubectl(bin_dir, kc, "create", "namespace", "harness")
        wait_for("the default ServiceAccount", lambda: kubectl(
            bin_dir, kc, "get", "sa", "-n", "harness", "-o", "name").strip() == "serviceaccount/default")
        kubectl(bin_dir, kc, "create", "deployment", "web", "-n", "harness", "--image=example.invalid/web")
        pod = wait_for("the Deployment's pod", lambda: kubectl(
            bin_dir, kc, "get", "pods", "-n", "harness", "-o", "name").strip())
        # The scheduler works: with no nodes it marks the pod unschedulable.
        wait_for("the scheduler's verdict", lambda: "Unschedulable" in kubectl(
            bin_dir, kc, "get", pod, "-n", "harness", "-o", "jsonpath={.status.conditions[*].reason}"))
    assert not state.exists()
    for port in (h.config.ports.apiserver, h.config.ports.etcd_client, h.config.ports.controller_manager,
                 h.config.ports.scheduler):
        assert port_is_closed(port)


def test_real_control_plane_restarts_on_its_state(tmp_path):
    """Stop and start again on the same state folder: the objects and the CA survive.

    Skipped when the binaries are not built (not required by MESHWAY_REQUIRE_E2E this session)."""
    bin_dir = require_binaries()
    first = Harness.create(bin_dir, state=tmp_path / "state")
    with first:
        kubectl(bin_dir, first.kubeconfig, "create", "namespace", "kept")
    ca = (tmp_path / "state" / "pki" / "ca.crt").read_text()
    with Harness(first.config) as again:
        assert kubectl(bin_dir, again.kubeconfig, "get", "namespace", "kept", "-o", "name").strip() == "namespace/kept"
    assert (tmp_path / "state" / "pki" / "ca.crt").read_text() == ca
