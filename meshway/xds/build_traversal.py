"""Guaranteed waypoint traversal on node proxies (pure; the decisions are `meshway.mesh.traversal`).

- outbound (source side), a required service its waypoint does not serve: the service's chain
  sends to a cluster without endpoints (the connection is closed at once, response flag `UH`), and
  its connection log carries the `reason` (e.g. `waypoint traversal required: waypoint ns/name is
  not ready (WaypointIsNotReady)`). A network RBAC would not do: it decides on the first bytes, and
  tcp_proxy closes the connection before any arrive.

The destination side's refusals are RBAC DENYs named as an AuthorizationPolicy rule,
`ns[NS]-policy[waypoint-traversal-required]-rule[I]`, so the connection log's `error` says which
rule refused (`rbac_access_denied_matched_policy[...]`) and `explain --request` evaluates them as it
evaluates any other node proxy policy:

- inbound HBONE (destination side), a guarded pod: an HTTP RBAC denying a CONNECT to a guarded port
  (the `:authority`'s port) unless the mTLS peer is one of the admitted waypoints. It is in force
  for every new tunnel at once: the filter (`GUARD_FILTER`, in every pod's HBONE chain) takes its
  rules from the pod's inbound route (RDS, `typed_per_filter_config`), which every HTTP/2 connection
  of the pod's chains reads, old ones included. Its rules are also the filter's own config, so that
  a change replaces the chain and Envoy drains the tunnels opened before (closed at the end of the
  node proxy's drain time). Without the route, a client node proxy's pooled HBONE connection, opened
  on the chain being drained, would carry new tunnels past the guard until the drain ends;
- inbound plaintext: a network RBAC denying every connection to a guarded port.
"""
from __future__ import annotations

from typing import Any

from ..mesh.traversal import POLICY, Guard
from .protos import typed

Body = dict[str, Any]
STAT_PREFIX = "waypoint_traversal."
REFUSED_CLUSTER = "waypoint_traversal_refused"  # no endpoints: what a refused chain's tcp_proxy names


def _name(namespace: str, rule: int = 0) -> str:
    return f"ns[{namespace}]-policy[{POLICY}]-rule[{rule}]"


def _rbac(network: bool, policies: Body) -> Body:
    kind = "network" if network else "http"
    config: Body = {"rules": {"action": "DENY", "policies": policies}}
    if network:
        config["stat_prefix"] = STAT_PREFIX
    return {"name": f"envoy.filters.{kind}.rbac", "typed_config": typed(f"envoy.extensions.filters.{kind}.rbac.v3.RBAC",
                                                                         **config)}


def build_refused_cluster() -> Body:
    return {"name": REFUSED_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": REFUSED_CLUSTER, "endpoints": []}}


GUARD_FILTER = "meshway.waypoint_traversal"
RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"


def _groups(guards: tuple[Guard, ...]) -> list[tuple[tuple[tuple[str, str], ...], list[int]]]:
    """Guarded ports grouped by the identities admitted to them, in a stable order."""
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for g in guards:
        groups.setdefault(g.identities, []).append(g.port)
    return sorted(groups.items(), key=lambda kv: kv[1])


def build_inbound_rules(guards: tuple[Guard, ...], namespace: str, trust_domain: str) -> Body | None:
    """The RBAC rules of a pod's HBONE guard, None when no port is guarded."""
    if not guards:
        return None
    policies = {}
    for i, (identities, ports) in enumerate(_groups(guards)):
        ids = [{"authenticated": {"principal_name": {"exact": f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}"}}}
               for ns, sa in identities]
        principals = [{"not_id": {"or_ids": {"ids": ids}}}] if ids else [{"any": True}]
        policies[_name(namespace, i)] = {"permissions": [
            {"header": {"name": ":authority", "string_match": {"suffix": f":{port}"}}} for port in ports],
            "principals": principals}
    return {"action": "DENY", "policies": policies}


def build_inbound_guard(guards: tuple[Guard, ...], namespace: str, trust_domain: str) -> Body:
    """The guard filter of a pod's HBONE chain (there whether or not a port is guarded)."""
    rules = build_inbound_rules(guards, namespace, trust_domain)
    return {"name": GUARD_FILTER, "typed_config": typed(RBAC, **({"rules": rules} if rules else {}))}


def build_inbound_guard_route(guards: tuple[Guard, ...], namespace: str, trust_domain: str) -> Body:
    """The pod's inbound route's `typed_per_filter_config`: the rules, or the guard disabled."""
    rules = build_inbound_rules(guards, namespace, trust_domain)
    per_route = typed("envoy.extensions.filters.http.rbac.v3.RBACPerRoute", **({"rbac": {"rules": rules}}
                                                                               if rules else {}))
    return {GUARD_FILTER: per_route}


def build_plaintext_guard(guards: tuple[Guard, ...], namespace: str) -> list[Body]:
    """[the network RBAC of a pod's plaintext chain]: no plaintext to a guarded port."""
    if not guards:
        return []
    ports = [{"destination_port": g.port} for g in guards]
    return [_rbac(True, {_name(namespace): {"permissions": ports, "principals": [{"any": True}]}})]
