"""Who may claim which node id on the xDS TCP port (istiod's 15012): the identity of the client's
verified certificate against the node id its stream claims. Pure: a plain decision record.

Over the Unix socket a proxy proves its node id with a token (`meshway.ca.tokens`); over TCP it
proves it with its mTLS certificate (the handshake already checked that it chains to the mesh root),
as istiod does in `pilot/pkg/xds/authentication.go` (`checkConnectionIdentity`):

- **Waypoint** (`waypoint~IP~POD.NS~NS.svc.cluster.local`): the node id carries the pod's namespace,
  not its service account. istiod takes the service account from the node metadata
  (`SERVICE_ACCOUNT`, the proxy's own word) and requires the certificate to name both. meshway takes
  it from its own view of the pod instead (the waypoint replica it translates for that node id),
  because a waypoint's snapshot carries that service account's private key over SDS: the certificate
  must be exactly `spiffe://<trust domain>/ns/NS/sa/<the pod's service account>`, so another service
  account of the same namespace gets nothing, and a node id the control plane does not know is
  refused.
- **Node proxy** (`ztunnel~IP~ztunnel-NODE.istio-system~istio-system.svc.cluster.local`): Istio
  runs ztunnel as service account `ztunnel` in `istio-system`, and istiod trusts exactly that
  identity to act for the pods of a node (`CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel`). meshway
  does the same: the certificate must be `spiffe://<trust domain>/ns/istio-system/sa/ztunnel`. A
  certificate names no node, so that identity may claim any node's id; Istio binds a ztunnel to its
  node through its Kubernetes token (the pod's `spec.nodeName`), which a certificate-only port does
  not see. Node proxies are the mesh's most trusted role either way: each holds its pods' keys.
- Any other node id (another kind, or not of the form `build_node_id` makes) is refused.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import labels as L
from .proxy import parse_node_id

NODE_PROXY_KIND = "ztunnel"
WAYPOINT_KIND = "waypoint"
# istiod's CA_TRUSTED_NODE_ACCOUNTS default: the identity node proxies run as
NODE_PROXY_NAMESPACE, NODE_PROXY_SERVICE_ACCOUNT = L.ROOT_NAMESPACE, "ztunnel"

ServiceAccountOf = Callable[[str], str | None]  # waypoint node id -> its pod's service account (None: unknown)


@dataclass(frozen=True)
class PeerDecision:
    allowed: bool
    expected: str | None  # the SPIFFE ID the node id requires, when there is one
    presented: tuple[str, ...]  # the SPIFFE IDs of the client certificate
    reason: str  # why it was refused (for the log and the PERMISSION_DENIED message); "" when allowed


def decide_peer(node_id: str, presented: Sequence[str], service_account_of: ServiceAccountOf,
                trust_domain: str = L.CLUSTER_DOMAIN) -> PeerDecision:
    presented = tuple(presented)
    expected, problem = find_expected_identity(node_id, service_account_of, trust_domain)
    if expected is None:
        return PeerDecision(False, None, presented, problem)
    if not presented:
        return PeerDecision(False, expected, presented,
                            f"the client certificate carries no SPIFFE ID; node id {_quote(node_id)} needs {expected}")
    if len(presented) > 1:  # an X.509-SVID has exactly one URI SAN; meshway's CA issues no other kind
        return PeerDecision(False, expected, presented,
                            f"the client certificate carries {len(presented)} SPIFFE IDs; an SVID has exactly one")
    if expected not in presented:
        return PeerDecision(False, expected, presented,
                            f"the client certificate's identity {', '.join(presented)} may not claim node id "
                            f"{_quote(node_id)}: it needs {expected}")
    return PeerDecision(True, expected, presented, "")


def find_expected_identity(node_id: str, service_account_of: ServiceAccountOf,
                           trust_domain: str = L.CLUSTER_DOMAIN) -> tuple[str | None, str]:
    """(the SPIFFE ID a peer claiming `node_id` must present, or None and why nobody may)."""
    parts = parse_node_id(node_id)
    if parts is None:
        return None, f"node id {_quote(node_id)} is not a meshway proxy's (KIND~IP~POD.NS~NS.svc.{L.CLUSTER_DOMAIN})"
    if parts.kind == NODE_PROXY_KIND:
        if parts.namespace != NODE_PROXY_NAMESPACE:
            return None, (f"node id {_quote(node_id)}: node proxies run in {NODE_PROXY_NAMESPACE}, "
                          f"not {parts.namespace[:63]!r}")
        return _spiffe(trust_domain, NODE_PROXY_NAMESPACE, NODE_PROXY_SERVICE_ACCOUNT), ""
    if parts.kind == WAYPOINT_KIND:
        service_account = service_account_of(node_id)
        if not service_account:
            return None, f"node id {_quote(node_id)}: the control plane knows no waypoint pod with this id"
        return _spiffe(trust_domain, parts.namespace, service_account), ""
    return None, f"node id {_quote(node_id)}: proxies of kind {parts.kind[:40]!r} are not served over TCP"


def _quote(node_id: str) -> str:
    """The claimed node id as the caller sent it, quoted and cut (it goes into a log line and a status)."""
    return repr(node_id[:200])


def _spiffe(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
