"""Status istiod writes, as pure functions: the `istio.io/WaypointBound` condition on Services and
ServiceEntries, and Accepted/Programmed (+ listener status and addresses) on waypoint Gateways."""
from __future__ import annotations

from typing import Any, Mapping

from .. import labels as L
from .selection import ACCEPTED, CROSS_NS, DENIED, NOT_FOUND, NOT_READY, UNSUPPORTED, Decision
from .view import ServiceInfo, WaypointInfo

WAYPOINT_BOUND = "istio.io/WaypointBound"
Body = dict[str, Any]


def build_bound_condition(decision: Decision, svc: ServiceInfo, ns_labels: Mapping[str, str]) -> Body | None:
    """The WaypointBound condition, or None when nothing binds (no label, `none`, a waypoint's own service)."""
    wp = decision.requested
    if decision.reason == ACCEPTED:
        ingress = (svc.labels.get(L.INGRESS_USE_WAYPOINT) or ns_labels.get(L.INGRESS_USE_WAYPOINT)) == "true"
        tail = (". Ingress traffic will traverse the waypoint" if ingress else
                ". Ingress traffic is not using the waypoint, set the istio.io/ingress-use-waypoint label to true "
                "if desired.")
        return {"type": WAYPOINT_BOUND, "status": "True", "reason": ACCEPTED,
                "message": f"Successfully attached to waypoint {wp}{tail}"}
    messages = {
        # Istio cannot tell a missing waypoint from one that is not up yet: both are "not ready".
        NOT_READY: (NOT_READY, f'waypoint "{wp}" is not ready'),
        NOT_FOUND: (NOT_READY, f'waypoint "{wp}" is not ready'),
        DENIED: (DENIED, f'we are not permitted to attach to waypoint "{wp}" (missing allowedRoutes?)'),
        UNSUPPORTED: (UNSUPPORTED, f'attempting to bind to traffic type "service" which the waypoint "{wp}" '
                                   "does not support"),
        CROSS_NS: (CROSS_NS, f'cannot bind to waypoint "{wp}" in another namespace: cross-namespace waypoint '
                             "binding is not permitted for a ServiceEntry with NAMESPACE visibility"),
    }
    if decision.reason not in messages:
        return None
    reason, message = messages[decision.reason]
    return {"type": WAYPOINT_BOUND, "status": "False", "reason": reason, "message": message}


def merge_conditions(old: list[Body], new: list[Body], now: str, generation: int | None,
                     drop: tuple[str, ...] = ()) -> list[Body]:
    """Replace conditions of the same type, keeping lastTransitionTime when the status did not flip;
    conditions of types in `drop` that are absent from `new` are removed."""
    by_type = {c["type"]: c for c in old}
    out = [c for c in old if c["type"] not in {n["type"] for n in new} and c["type"] not in drop]
    for cond in new:
        prev = by_type.get(cond["type"])
        stamp = prev["lastTransitionTime"] if prev and prev.get("status") == cond["status"] else now
        merged = {**cond, "lastTransitionTime": stamp}
        if generation is not None:
            merged["observedGeneration"] = generation
        out.append(merged)
    return out


def _cond(type_: str, ok: bool, reason: str, message: str) -> Body:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


_ROUTE_KINDS = [{"group": "gateway.networking.k8s.io", "kind": k} for k in ("HTTPRoute", "GRPCRoute", "TCPRoute",
                                                                             "TLSRoute")]
_BAD_LISTENER = 'Expected a single listener on port 15008 with protocol "HBONE"'


def build_listener_status(listener: Body) -> Body:
    ok = listener.get("protocol") == "HBONE" and listener.get("port") == L.HBONE_PORT
    if ok:
        conds = [_cond("Accepted", True, "Accepted", "No errors found"),
                 _cond("NoConflicts", False, "NoConflicts", "No errors found") | {"type": "Conflicted"},
                 _cond("Programmed", True, "Programmed", "No errors found"),
                 _cond("ResolvedRefs", True, "ResolvedRefs", "No errors found")]
    else:
        conds = [_cond("Accepted", False, "UnsupportedProtocol", _BAD_LISTENER),
                 _cond("Programmed", False, "Invalid", _BAD_LISTENER),
                 _cond("ResolvedRefs", True, "ResolvedRefs", "No errors found")]
    return {"name": listener["name"], "attachedRoutes": 0, "supportedKinds": _ROUTE_KINDS if ok else [],
            "conditions": conds}


def build_gateway_status(wp: WaypointInfo, gateway: Body, service: Body | None) -> tuple[list[Body], Body]:
    """(Gateway conditions, the rest of status: listeners and addresses) for a waypoint Gateway."""
    host = f"{wp.hostname}"
    accepted = _cond("Accepted", True, "Accepted", "Resource accepted")
    if not wp.valid:
        accepted = _cond("Accepted", False, "ListenersNotValid", f"Invalid listeners: {_BAD_LISTENER}")
        programmed = _cond("Programmed", False, "Invalid", f"Not programmed: {_BAD_LISTENER}")
    elif service is None:
        programmed = _cond("Programmed", False, "AddressNotUsable",
                           f'Failed to assign to any requested addresses: hostname "{host}" not found')
    elif wp.ready:
        programmed = _cond("Programmed", True, "Programmed",
                           f"Resource programmed, assigned to service(s) {host}:{L.HBONE_PORT}")
    else:
        programmed = _cond("Programmed", False, "AddressNotAssigned",
                           f'Failed to assign to any requested addresses: no instances found for hostname "{host}"')
    # Programmed last: `waypoint status` shows the last condition when Programmed is not True.
    conditions = [accepted, _cond("ResolvedRefs", True, "ResolvedRefs", "All references resolved"), programmed]
    addresses = list((gateway.get("status") or {}).get("addresses") or [])
    if wp.ready and service is not None:
        spec = service.get("spec", {})
        wanted = [{"type": "IPAddress", "value": ip} for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip]
        wanted.append({"type": "Hostname", "value": host})
        addresses += [a for a in wanted if a not in addresses]  # addresses are never removed once reported
    rest = {"listeners": [build_listener_status(li) for li in gateway["spec"]["listeners"]]}
    if addresses:
        rest["addresses"] = addresses
    return conditions, rest


def build_gateway_class_conditions() -> list[Body]:
    return [_cond("Accepted", True, "Accepted", "Handled by Istio controller")]
