"""The control plane's own identity on its xDS port (istiod's 15012), and reading a peer's.

istiod serves xDS over TLS with a certificate from its own CA whose URI SAN is
`spiffe://<trust-domain>/ns/istio-system/sa/istiod` and whose DNS SANs are the names proxies dial
(`istiod.istio-system.svc`, its FQDN, `istiod`); meshway issues the same from `CertificateAuthority`
(plus any IP address the control plane is dialled at, e.g. 127.0.0.1), cached and renewed at half
life exactly like a workload certificate.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cryptography import x509

from ..xds.istiod import ISTIOD_DNS_NAMES, ISTIOD_NAMESPACE, ISTIOD_SERVICE_ACCOUNT
from .authority import CertificateAuthority
from .certs import WorkloadCert, cert_from_pem, find_uri_sans


def issue_control_plane_cert(ca: CertificateAuthority, ip_addresses: Iterable[str] = ()) -> WorkloadCert:
    """istiod's serving certificate: its SPIFFE ID, its DNS names and `ip_addresses` (deduplicated,
    in order); the CA's cached one while it is younger than half its life."""
    ips = tuple(dict.fromkeys(str(ipaddress.ip_address(ip)) for ip in ip_addresses))
    return ca.issue_serving(ISTIOD_NAMESPACE, ISTIOD_SERVICE_ACCOUNT, ISTIOD_DNS_NAMES, ips)


def find_peer_spiffe_ids(cert_pem: bytes | str | None) -> tuple[str, ...]:
    """The `spiffe://` URI SANs of a peer's certificate (PEM, as grpc's auth context gives it):
    none for no certificate, one that cannot be read, or one with no SPIFFE URI."""
    if not cert_pem:
        return ()
    try:
        cert = cert_from_pem(cert_pem)
    except ValueError:
        return ()
    try:
        uris = find_uri_sans(cert)
    except (ValueError, x509.DuplicateExtension):  # a SAN extension cryptography cannot parse
        return ()
    return tuple(u for u in uris if u.startswith("spiffe://"))
