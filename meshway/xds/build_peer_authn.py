"""PeerAuthentication on a node proxy's plaintext path (pure): the converted policy istiod sends
ztunnel (`meshway.mesh.peer_authentication`) as a network RBAC DENY on a local pod's
`ztunnel_inbound_plaintext` chain. Plaintext connections have no peer identity, so ztunnel's "not
authenticated" match is every connection of that chain; HBONE (`ztunnel_inbound`) always carries an
mTLS identity and is never refused by it.

STRICT everywhere: deny all. STRICT with PERMISSIVE ports: deny unless the destination (the pod's
own port, restored by the original_dst listener filter) is one of them. PERMISSIVE with STRICT
ports: deny those ports. The policy is named as an AuthorizationPolicy's rule
(`ns[NS]-policy[NAME]-rule[0]`), so a refused connection's log says which one refused it
(`rbac_access_denied_matched_policy[...]`)."""
from __future__ import annotations

from typing import Any

from ..mesh.peer_authentication import PERMISSIVE, STRICT, MtlsDecision
from .protos import typed

Body = dict[str, Any]
STAT_PREFIX = "peer_authentication."


def build_peer_authn_permissions(decision: MtlsDecision) -> list[Body]:
    """The ports on which a plaintext connection is refused, as RBAC permissions (OR)."""
    if decision.mode == STRICT:
        exempt = [port for port, mode in decision.ports if mode == PERMISSIVE]
        if not exempt:
            return [{"any": True}]
        return [{"and_rules": {"rules": [{"not_rule": {"destination_port": port}} for port in exempt]}}]
    return [{"destination_port": port} for port, mode in decision.ports if mode == STRICT]


def build_peer_authn_filter(decision: MtlsDecision) -> list[Body]:
    """[the network RBAC filter] for a pod's plaintext chain, [] when it accepts plaintext everywhere."""
    if decision.policy is None:
        return []
    namespace, name = decision.policy.split("/", 1)
    rules = {"action": "DENY", "policies": {f"ns[{namespace}]-policy[{name}]-rule[0]": {
        "permissions": build_peer_authn_permissions(decision), "principals": [{"any": True}]}}}
    return [{"name": "envoy.filters.network.rbac", "typed_config": typed(
        "envoy.extensions.filters.network.rbac.v3.RBAC", stat_prefix=STAT_PREFIX, rules=rules)}]
