"""The xDS port over TCP + mutual TLS (istiod's 15012), for proxies that are not the control
plane's children: pods anywhere, which prove who they are with their SPIFFE workload certificate.

- The server presents istiod's certificate (`meshway.ca.serving`), issued by the mesh CA and renewed
  at half life: grpc asks for the current one at every new handshake
  (`grpc.dynamic_ssl_server_credentials`), so a renewed certificate is served without a restart.
- The client must present a certificate that chains to the mesh root (`require_client_auth`): one
  from another CA, or none, fails the TLS handshake before any request is read.
- Its SPIFFE ID must then be the one the node id it claims requires (`meshway.xds.peer`), else the
  stream ends with PERMISSION_DENIED before anything is sent.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from ..ca import CertificateAuthority, WorkloadCert
from ..ca.serving import find_peer_spiffe_ids, issue_control_plane_cert
from .istiod import XDS_TLS_PORT
from .peer import PeerDecision, ServiceAccountOf, decide_peer

PEER_CERT_PROPERTY = "x509_pem_cert"  # grpc's auth context: the verified client certificate, PEM


@dataclass(frozen=True)
class MtlsListener:
    address: str  # HOST:PORT (port 0: any free port; the bound one is `XdsServer.tcp_address`)
    root_pem: str  # the mesh root: clients must chain to it
    certificate: Callable[[], WorkloadCert]  # the current serving certificate
    service_account_of: ServiceAccountOf  # waypoint node id -> its pod's service account
    trust_domain: str


def build_mtls_listener(address: str, ca: CertificateAuthority, service_account_of: ServiceAccountOf,
                        ip_addresses: Iterable[str] = ()) -> MtlsListener:
    """The listener on `address` with istiod's certificate from `ca`, naming `ip_addresses` and the
    listen address itself when it is a specific IP (not 0.0.0.0 or ::)."""
    host, _ = parse_address(address)
    ips = [*([host] if detect_specific_ip(host) else []), *ip_addresses]
    for ip in ips:
        ipaddress.ip_address(ip)  # a bad one fails here, at start, not at the first handshake
    return MtlsListener(address, ca.root_pem(), lambda: issue_control_plane_cert(ca, ips), service_account_of,
                        ca.trust_domain)


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (every address) -> (host, port); ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 0.0.0.0:{XDS_TLS_PORT})")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def detect_specific_ip(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a name


def build_server_credentials(listener: MtlsListener) -> grpc.ServerCredentials:
    served: list[str] = []

    def configuration(cert: WorkloadCert) -> grpc.ServerCertificateConfiguration:
        served[:] = [cert.cert_pem]
        return grpc.ssl_server_certificate_configuration(
            [(cert.key_pem.encode("ascii"), cert.cert_pem.encode("ascii"))], listener.root_pem.encode("ascii"))

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each handshake: a new configuration only once the CA renewed it."""
        cert = listener.certificate()
        return configuration(cert) if cert.cert_pem != served[0] else None

    return grpc.dynamic_ssl_server_credentials(configuration(listener.certificate()), fetch,
                                               require_client_authentication=True)


def decide_stream_peer(node_id: str, context: grpc.aio.ServicerContext, listener: MtlsListener) -> PeerDecision:
    """The decision for a stream on the TCP port, from the certificate grpc verified."""
    pem = next(iter(context.auth_context().get(PEER_CERT_PROPERTY) or []), None)
    return decide_peer(node_id, find_peer_spiffe_ids(pem), listener.service_account_of, listener.trust_domain)
