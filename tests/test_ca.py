"""The mesh CA with real crypto: root persistence, SPIFFE workload certificates, renewal, a real
TLS 1.3 mutual handshake, and SDS secrets that a real Envoy accepts."""
from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf import json_format

from meshway.ca import (CAStateError, CertificateAuthority, WorkloadCert, build_root, build_secrets,
                        build_workload_cert, cert_from_pem, detect_needs_renewal, spiffe_id)
from meshway.ca.authority import ROOT_CERT_FILE, ROOT_KEY_FILE
from meshway.ca.certs import key_to_pem
from meshway.ca.sds import SDS_DEFAULT, SDS_ROOT

from conftest import PROJECT_ROOT

ENVOY = PROJECT_ROOT / ".venv" / "bin" / "envoy"
REVIEWS = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)  # whole seconds: X.509 times have no fraction


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


# -- identities and the pure builders ------------------------------------------------------------
def test_spiffe_id():
    assert spiffe_id("default", "bookinfo-reviews") == REVIEWS
    assert spiffe_id("ns1", "sa1", "example.org") == "spiffe://example.org/ns/ns1/sa/sa1"


@pytest.mark.parametrize("namespace,sa", [("", "sa"), ("ns", ""), ("a/b", "sa"), ("ns", "s a")])
def test_spiffe_id_rejects_bad_parts(namespace, sa):
    with pytest.raises(ValueError):
        spiffe_id(namespace, sa)


def test_root_is_a_ten_year_ca():
    root, _ = build_root(T0)
    assert root.subject.rfc4514_string() == "CN=meshway root CA,O=cluster.local"
    assert root.issuer == root.subject
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and not usage.digital_signature
    assert root.not_valid_after_utc - root.not_valid_before_utc == timedelta(days=3650)
    root.verify_directly_issued_by(root)


def test_workload_cert_shape():
    root, root_key = build_root(T0)
    cert, key = build_workload_cert(root, root_key, REVIEWS, T0)
    cert.verify_directly_issued_by(root)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(REVIEWS)]
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_agreement and not usage.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (T0, T0 + timedelta(hours=24))


@pytest.mark.parametrize("age,expected", [
    (timedelta(0), False),
    (timedelta(hours=11, minutes=59), False),
    (timedelta(hours=12), False),
    (timedelta(hours=12, seconds=1), True),
    (timedelta(hours=30), True),
])
def test_detect_needs_renewal(age, expected):
    root, root_key = build_root(T0)
    cert, _ = build_workload_cert(root, root_key, REVIEWS, T0)
    assert detect_needs_renewal(cert, T0 + age) is expected


# -- the authority shell -------------------------------------------------------------------------
def test_root_persists_across_instances(ca_dir: Path):
    first = CertificateAuthority(ca_dir, clock=Clock(T0))
    second = CertificateAuthority(ca_dir, clock=Clock(T0 + timedelta(days=1)))
    assert first.root_pem() == second.root_pem()
    assert (ca_dir / "ca" / ROOT_CERT_FILE).read_text() == first.root_pem()
    cert_from_pem(second.root_pem()).verify_directly_issued_by(cert_from_pem(first.root_pem()))
    cert_from_pem(second.issue("default", "x").cert_pem).verify_directly_issued_by(cert_from_pem(first.root_pem()))


def test_root_key_file_is_private_and_no_temp_files_remain(ca_dir: Path):
    CertificateAuthority(ca_dir)
    key_mode = stat.S_IMODE(os.stat(ca_dir / "ca" / ROOT_KEY_FILE).st_mode)
    assert key_mode == 0o600
    assert sorted(p.name for p in (ca_dir / "ca").iterdir()) == [".lock", ROOT_CERT_FILE, ROOT_KEY_FILE]


def test_missing_or_foreign_root_key_is_an_error(ca_dir: Path):
    CertificateAuthority(ca_dir)
    key_path = ca_dir / "ca" / ROOT_KEY_FILE
    key_path.write_text(key_to_pem(build_root(T0)[1]))
    with pytest.raises(CAStateError, match="is not the key of"):
        CertificateAuthority(ca_dir)
    key_path.unlink()
    with pytest.raises(CAStateError, match="is missing"):
        CertificateAuthority(ca_dir)


def test_key_without_cert_is_a_crashed_first_start_and_is_replaced(ca_dir: Path):
    CertificateAuthority(ca_dir)
    (ca_dir / "ca" / ROOT_CERT_FILE).unlink()
    ca = CertificateAuthority(ca_dir)
    cert_from_pem(ca.issue("default", "x").cert_pem).verify_directly_issued_by(cert_from_pem(ca.root_pem()))


def test_issue_workload_cert(ca_dir: Path):
    ca = CertificateAuthority(ca_dir, clock=Clock(T0))
    issued = ca.issue("default", "bookinfo-reviews")
    cert = cert_from_pem(issued.cert_pem)
    cert.verify_directly_issued_by(cert_from_pem(ca.root_pem()))
    assert issued.spiffe_id == REVIEWS
    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(REVIEWS)]
    assert cert.subject == x509.Name([])
    assert issued.not_after == cert.not_valid_after_utc == T0 + timedelta(hours=24)


def test_issue_caches_until_half_life_then_renews(ca_dir: Path):
    clock = Clock(T0)
    ca = CertificateAuthority(ca_dir, clock=clock)
    first = ca.issue("default", "bookinfo-reviews")
    assert ca.issue("default", "bookinfo-reviews") is first
    assert ca.issue("default", "productpage") is not first
    clock.now = T0 + timedelta(hours=11)
    assert ca.issue("default", "bookinfo-reviews") is first
    clock.now = T0 + timedelta(hours=12, minutes=1)
    renewed = ca.issue("default", "bookinfo-reviews")
    assert renewed != first and renewed.cert_pem != first.cert_pem and renewed.key_pem != first.key_pem
    assert renewed.not_after == clock.now + timedelta(hours=24)
    assert ca.issue("default", "bookinfo-reviews") is renewed


def test_cert_from_another_ca_does_not_verify(ca_dir: Path, tmp_path: Path):
    ours = CertificateAuthority(ca_dir)
    theirs = CertificateAuthority(tmp_path / "other")
    # Same subject name on both roots, so this is the signature check failing, not a name mismatch.
    assert cert_from_pem(ours.root_pem()).subject == cert_from_pem(theirs.root_pem()).subject
    foreign = cert_from_pem(theirs.issue("default", "bookinfo-reviews").cert_pem)
    with pytest.raises((InvalidSignature, ValueError)):
        foreign.verify_directly_issued_by(cert_from_pem(ours.root_pem()))


# -- a real TLS 1.3 mutual handshake -------------------------------------------------------------
def _context(side: int, workload: WorkloadCert, root_pem: str, tmp_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # HBONE sends no SNI; identity is checked by URI SAN instead
    ctx.load_verify_locations(cadata=root_pem)
    name = workload.spiffe_id.rsplit("/", 1)[-1]
    cert_file, key_file = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    cert_file.write_text(workload.cert_pem)
    key_file.write_text(workload.key_pem)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[dict, dict]:
    """Handshake over a socketpair; returns what each side saw (peer cert, alpn, or the error)."""
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    server: dict = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                server.update(peer=tls.getpeercert(), alpn=tls.selected_alpn_protocol(), version=tls.version())
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            server["error"] = e

    thread = threading.Thread(target=serve)
    thread.start()
    client: dict = {}
    try:
        with client_ctx.wrap_socket(b, server_hostname=None) as tls:
            client.update(peer=tls.getpeercert(), alpn=tls.selected_alpn_protocol())
            client["data"] = tls.recv(2)  # in TLS 1.3 a rejected client cert shows up here
    except (ssl.SSLError, OSError) as e:
        client["error"] = e
    thread.join(10)
    a.close()
    return server, client


def _uri_sans(peer: dict) -> list[str]:
    return [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI"]


def test_mutual_tls13_handshake_with_issued_certs(ca_dir: Path, tmp_path: Path):
    ca = CertificateAuthority(ca_dir)
    server_ctx = _context(ssl.PROTOCOL_TLS_SERVER, ca.issue("default", "bookinfo-reviews"), ca.root_pem(), tmp_path)
    client_ctx = _context(ssl.PROTOCOL_TLS_CLIENT, ca.issue("default", "productpage"), ca.root_pem(), tmp_path)
    server, client = _handshake(server_ctx, client_ctx)
    assert "error" not in server and "error" not in client, (server, client)
    assert _uri_sans(server["peer"]) == ["spiffe://cluster.local/ns/default/sa/productpage"]
    assert _uri_sans(client["peer"]) == [REVIEWS]
    assert server["alpn"] == client["alpn"] == "h2"
    assert server["version"] == "TLSv1.3"
    assert client["data"] == b"ok"


def test_handshake_fails_for_client_cert_from_another_ca(ca_dir: Path, tmp_path: Path):
    ca = CertificateAuthority(ca_dir)
    other = CertificateAuthority(tmp_path / "other")
    server_ctx = _context(ssl.PROTOCOL_TLS_SERVER, ca.issue("default", "bookinfo-reviews"), ca.root_pem(), tmp_path)
    # The client trusts our root (so it accepts the server) but presents a certificate from another CA.
    client_ctx = _context(ssl.PROTOCOL_TLS_CLIENT, other.issue("default", "evil"), ca.root_pem(), tmp_path)
    server, client = _handshake(server_ctx, client_ctx)
    assert isinstance(server.get("error"), ssl.SSLError), server
    assert "certificate verify failed" in str(server["error"]) or "CERTIFICATE_VERIFY_FAILED" in str(server["error"])
    assert "peer" not in server
    assert "error" in client or client.get("data") == b"", client


# -- SDS secrets ---------------------------------------------------------------------------------
def test_build_secrets_names_and_round_trip(ca_dir: Path):
    ca = CertificateAuthority(ca_dir)
    workload = ca.issue("istio-system", "waypoint")
    secrets = build_secrets(workload, ca.root_pem())
    assert sorted(secrets) == [SDS_ROOT, SDS_DEFAULT] == ["ROOTCA", "default"]
    for name, secret in secrets.items():
        assert secret.name == name
        assert type(secret).FromString(secret.SerializeToString()) == secret
    default, root = secrets["default"], secrets["ROOTCA"]
    assert default.tls_certificate.certificate_chain.inline_bytes.decode() == workload.cert_pem
    assert default.tls_certificate.private_key.inline_bytes.decode() == workload.key_pem
    assert root.validation_context.trusted_ca.inline_bytes.decode() == ca.root_pem()
    assert json_format.MessageToDict(root)["validationContext"]["matchTypedSubjectAltNames"] == [
        {"sanType": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]


def _bootstrap(secrets: list[dict]) -> dict:
    """A static bootstrap: one listener whose DownstreamTlsContext names the two static secrets as
    the waypoint's connect_terminate does (istio-facts §1.3)."""
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [{"name": "default"}],
            "validation_context_sds_secret_config": {"name": "ROOTCA"},
        },
    }
    tcp_proxy = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                 "stat_prefix": "connect_terminate", "cluster": "backend"}
    backend_address = {"socket_address": {"address": "127.0.0.1", "port_value": 9}}
    return {"static_resources": {
        "secrets": secrets,
        "listeners": [{
            "name": "connect_terminate",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"name": "default",
                               "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                               "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy}]}],
        }],
        "clusters": [{"name": "backend", "type": "STATIC", "load_assignment": {
            "cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": backend_address}}]}]}}],
    }}


def _envoy_validate(bootstrap: dict, path: Path) -> subprocess.CompletedProcess:
    path.write_text(json.dumps(bootstrap, indent=1))  # JSON is YAML
    return subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                          capture_output=True, text=True, timeout=30)


def test_envoy_accepts_the_secrets(ca_dir: Path, tmp_path: Path):
    ca = CertificateAuthority(ca_dir)
    secrets = {name: json_format.MessageToDict(s)
               for name, s in build_secrets(ca.issue("istio-system", "waypoint"), ca.root_pem()).items()}
    result = _envoy_validate(_bootstrap(list(secrets.values())), tmp_path / "bootstrap.yaml")
    assert result.returncode == 0, result.stdout + result.stderr

    # Control: validate mode really loads the secrets, so a key that does not match the cert fails.
    foreign_key = CertificateAuthority(tmp_path / "other").issue("a", "b").key_pem
    secrets["default"]["tlsCertificate"]["privateKey"]["inlineBytes"] = base64.b64encode(foreign_key.encode()).decode()
    result = _envoy_validate(_bootstrap(list(secrets.values())), tmp_path / "bad-bootstrap.yaml")
    assert result.returncode != 0
    assert "KEY_VALUES_MISMATCH" in result.stdout + result.stderr
