"""X.509 for the mesh: a self-signed root and SPIFFE workload certificates (istio-facts §2).

Pure apart from key generation and serial numbers: the time is always an argument, and a key may
be passed in. A workload certificate has an empty subject, so its critical URI SAN
`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` is its only identity.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_TRUST_DOMAIN = "cluster.local"
ROOT_COMMON_NAME = "meshway root CA"
ROOT_LIFETIME = timedelta(days=3650)
WORKLOAD_LIFETIME = timedelta(hours=24)

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey  # what a CSR may carry


@dataclass(frozen=True)
class WorkloadCert:
    """One issued identity, as PEM text ready for SDS."""

    spiffe_id: str
    cert_pem: str
    key_pem: str
    not_after: datetime


def spiffe_id(namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    for what, value in (("namespace", namespace), ("service account", service_account),
                        ("trust domain", trust_domain)):
        if not value or "/" in value or any(c.isspace() for c in value):
            raise ValueError(f"invalid {what} for a SPIFFE ID: {value!r}")
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def build_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build_root(now: datetime, trust_domain: str = DEFAULT_TRUST_DOMAIN,
               key: PrivateKey | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed EC P-256 root CA valid for ten years from `now`."""
    key = key or build_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, ROOT_COMMON_NAME)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


NODE_PREFIX = "node:"  # the subject OU of a node proxy's certificate: the node it is bound to


def build_workload_cert(root_cert: x509.Certificate, root_key: PrivateKey, spiffe_id: str, now: datetime,
                        lifetime: timedelta = WORKLOAD_LIFETIME, key: PrivateKey | None = None,
                        dns_names: Sequence[str] = (),
                        ip_addresses: Sequence[str] = (), node: str | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """An EC P-256 leaf for `spiffe_id`, signed by the root, usable as TLS server and client; a serving
    certificate (the control plane's) also names its DNS names and IP addresses."""
    key = key or build_key()
    return sign_workload_key(root_cert, root_key, key.public_key(), spiffe_id, now, lifetime, dns_names,
                             ip_addresses, node), key


def sign_workload_key(root_cert: x509.Certificate, root_key: PrivateKey, public_key: PublicKey, spiffe_id: str,
                      now: datetime, lifetime: timedelta = WORKLOAD_LIFETIME, dns_names: Sequence[str] = (),
                      ip_addresses: Sequence[str] = (), node: str | None = None) -> x509.Certificate:
    """The leaf for a public key the CA never sees the private half of (a CSR's: Istio's CA API). A
    node proxy's leaf names its node in the subject (`OU=node:<node>`), which the xDS port checks
    against the node id it claims (`find_cert_node`); the SPIFFE ID stays the one URI SAN."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, NODE_PREFIX + node)] if node else [])
    sans = [x509.UniformResourceIdentifier(spiffe_id), *(x509.DNSName(name) for name in dns_names),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses)]
    root_ski = root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False)
        .sign(root_key, hashes.SHA256())
    )


def detect_needs_renewal(cert: x509.Certificate, now: datetime) -> bool:
    """True once more than half of the certificate's lifetime has passed (Istio renews at 50%)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now > start + (end - start) / 2


def detect_key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key().public_numbers() == key.public_key().public_numbers()


def find_uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


# -- PEM ---------------------------------------------------------------------------------------
def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_to_pem(key: PrivateKey) -> str:
    """PKCS#8, unencrypted (what Envoy's `private_key.inline_bytes` expects)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def cert_from_pem(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode("ascii") if isinstance(pem, str) else pem)


def key_from_pem(pem: str | bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii") if isinstance(pem, str) else pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"expected an EC private key, got {type(key).__name__}")
    return key


def build_workload(root_cert: x509.Certificate, root_key: PrivateKey, spiffe_id: str, now: datetime,
                   lifetime: timedelta = WORKLOAD_LIFETIME, dns_names: Sequence[str] = (),
                   ip_addresses: Sequence[str] = (), node: str | None = None) -> tuple[WorkloadCert, x509.Certificate]:
    """`build_workload_cert` rendered as a `WorkloadCert`; the parsed certificate comes along."""
    cert, key = build_workload_cert(root_cert, root_key, spiffe_id, now, lifetime, dns_names=dns_names,
                                    ip_addresses=ip_addresses, node=node)
    return WorkloadCert(spiffe_id, cert_to_pem(cert), key_to_pem(key), cert.not_valid_after_utc), cert


def _key_usage(*, digital_signature: bool = False, key_agreement: bool = False, key_cert_sign: bool = False,
               crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=key_agreement, key_cert_sign=key_cert_sign,
                         crl_sign=crl_sign, encipher_only=False, decipher_only=False)


def find_cert_node(cert_pem: str | bytes) -> str | None:
    """The node a node proxy's certificate is bound to (its subject's `OU=node:<node>`), or None."""
    try:
        cert = cert_from_pem(cert_pem if isinstance(cert_pem, bytes) else cert_pem.encode("ascii"))
    except ValueError:
        return None
    for attribute in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = str(attribute.value)
        if value.startswith(NODE_PREFIX):
            return value[len(NODE_PREFIX):]
    return None
