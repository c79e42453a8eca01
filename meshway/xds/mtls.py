"""The xDS port over TCP + TLS (istiod's 15012), for proxies that are not the control plane's
children: pods anywhere, which prove who they are with their SPIFFE workload certificate; and, on
the same port, Istio's CA API for callers that have no certificate yet (`meshway.xds.ca_service`).

- The server presents istiod's certificate (`meshway.ca.serving`), issued by the mesh CA and renewed
  at half life: the TLS front (`meshway.xds.tls_front`) asks for the current one at every handshake,
  so a renewed certificate is served without a restart.
- A client certificate is optional, as on istiod's port (`VerifyClientCertIfGiven`): one that does
  not chain to the mesh root fails the TLS handshake before any request is read; none at all is
  allowed through the handshake, because the CA API is how a pod gets its first certificate.
- An ADS stream needs one: its SPIFFE ID must be the one the node id it claims requires
  (`meshway.xds.peer`), else the stream ends with PERMISSION_DENIED before anything is sent; a
  stream with no client certificate is refused the same way.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ..ca import CertificateAuthority, WorkloadCert
from ..ca.certs import find_cert_node
from ..ca.serving import find_peer_spiffe_ids, issue_control_plane_cert
from .istiod import XDS_TLS_PORT
from .peer import NODE_PROXY_KIND, PeerDecision, ServiceAccountOf, decide_peer, find_expected_identity
from .proxy import parse_node_id


@dataclass(frozen=True)
class MtlsListener:
    address: str  # HOST:PORT (port 0: any free port; the bound one is `XdsServer.tcp_address`)
    root_pem: str  # the mesh root: clients must chain to it
    certificate: Callable[[], WorkloadCert]  # the current serving certificate
    service_account_of: ServiceAccountOf  # waypoint node id -> its pod's service account
    trust_domain: str
    handlers: tuple = ()  # more gRPC services on this port (grpc.GenericRpcHandler): the CA API
    review_token: Callable[[str], dict | None] | None = None  # debug callers' tokens (TokenReview); None: certs only
    instance: str = "meshway"  # this control plane's name in debug answers (istiod's pod name)


def build_mtls_listener(address: str, ca: CertificateAuthority, service_account_of: ServiceAccountOf,
                        ip_addresses: Iterable[str] = (), handlers: tuple = (),
                        review_token: Callable[[str], dict | None] | None = None, instance: str = "meshway") -> MtlsListener:
    """The listener on `address` with istiod's certificate from `ca`, naming `ip_addresses` and the
    listen address itself when it is a specific IP (not 0.0.0.0 or ::)."""
    host, _ = parse_address(address)
    ips = [*([host] if detect_specific_ip(host) else []), *ip_addresses]
    for ip in ips:
        ipaddress.ip_address(ip)  # a bad one fails here, at start, not at the first handshake
    return MtlsListener(address, ca.root_pem(), lambda: issue_control_plane_cert(ca, ips), service_account_of,
                        ca.trust_domain, tuple(handlers), review_token, instance)


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


def decide_stream_peer(node_id: str, cert_pem: str | bytes | None, listener: MtlsListener) -> PeerDecision:
    """The decision for an ADS stream on the TCP port, from the client certificate the TLS front
    verified (None: the client presented none)."""
    if not cert_pem:
        expected = find_expected_identity(node_id, listener.service_account_of, listener.trust_domain)[0]
        needs = f": node id {node_id[:200]!r} needs {expected}" if expected else ""
        return PeerDecision(False, expected, (), f"no client certificate{needs} (ADS on this port takes mTLS only; "
                                                 "the CA API does not need one)")
    decision = decide_peer(node_id, find_peer_spiffe_ids(cert_pem), listener.service_account_of, listener.trust_domain)
    return decide_node_binding(node_id, cert_pem, decision)


def decide_node_binding(node_id: str, cert_pem: str | bytes, decision: PeerDecision) -> PeerDecision:
    """A node proxy over TCP may claim only the node its certificate is bound to (the CA binds a
    node proxy's certificate to the node of the pod whose token it was given: `meshway.ca.csr`), so
    a node proxy cannot be served another node's pod identities."""
    parts = parse_node_id(node_id)
    if not decision.allowed or parts is None or parts.kind != NODE_PROXY_KIND:
        return decision
    wanted, bound = parts.pod.removeprefix(f"{NODE_PROXY_KIND}-"), find_cert_node(cert_pem)
    if bound == wanted:
        return decision
    return replace(decision, allowed=False, reason=(
        f"node id {node_id[:200]!r} is node {wanted[:63]!r}'s node proxy, but the certificate is bound to "
        + (f"node {bound[:63]!r}" if bound else "no node") + ": a node proxy may claim only its own node"))
