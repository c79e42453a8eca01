"""Guaranteed waypoint traversal, meshway's own (beyond Istio). Pure.

Istio lets traffic around a destination's waypoint in four documented ways: the waypoint is missing
or not ready yet (traffic goes direct), a client addresses a pod IP (a service waypoint only sees
service-addressed traffic), a client is outside the mesh (no node proxy sends it to the waypoint),
and connections opened before the binding stay where they are. The label
`meshway.io/waypoint-traversal: required` on a Service/ServiceEntry (or its Namespace; the object's
own label wins, `optional` is Istio's behaviour and the default) closes all four:

- source side (`decide_traversal`): while the requested waypoint does not serve the service (missing,
  never ready, refusing attachment), every node proxy refuses connections to it instead of going
  direct;
- destination side (`find_traversal_guards`): the node proxy of each mesh pod behind the service
  admits HBONE to the service's target ports only from the identities of the waypoints that serve
  the pod (through any of its services, or its own workload waypoint) and refuses plaintext to them,
  so pod-IP clients and clients outside the mesh are refused;
- that change of the pod's inbound chains drains the connections opened before (node proxies close
  them at the end of their drain time); clients reconnect through the waypoint.

Only a destination that asks for a waypoint (`istio.io/use-waypoint` names one) is enforced: with no
label, or `none`, there is no waypoint to traverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .. import labels as L
from .enrollment import detect_ambient
from .selection import ACCEPTED, CROSS_NS, DENIED, NO_WAYPOINT, NOT_FOUND, OPTED_OUT, UNSUPPORTED, Decision, \
    decide_service, decide_workload, detect_waypoint_owned
from .view import MeshView, PodInfo, PortInfo, ServiceInfo

REQUIRED, OPTIONAL = "required", "optional"
MODES = (REQUIRED, OPTIONAL)
POLICY = "waypoint-traversal-required"  # the RBAC policy name node proxies log when they refuse
READS = ("Namespace", "Service", "ServiceEntry", "Pod", "Gateway", "GatewayClass", "Deployment")


@dataclass(frozen=True)
class Traversal:
    """Whether node proxies guarantee that traffic to one service goes through its waypoint."""
    mode: str  # required | optional
    source: str  # where the mode comes from, in words
    enforced: bool = False  # required, and the service asks for a waypoint
    waypoint: str | None = None  # ns/name the service asks for
    refused: str | None = None  # when enforced: the selection reason that makes node proxies refuse it
    why: str | None = None  # that reason in words
    note: str | None = None  # why a required mode is not enforced, or an invalid value ignored

    def to_json(self) -> dict:
        return {"mode": self.mode, "source": self.source, "enforced": self.enforced, "waypoint": self.waypoint,
                "refused": self.refused, "why": self.why, "note": self.note}


@dataclass(frozen=True)
class Guard:
    """One target port of a pod that only its waypoints may reach."""
    port: int
    services: tuple[str, ...]  # kind ns/name of the required services that target it
    waypoints: tuple[str, ...]  # ns/name of the waypoints admitted
    identities: tuple[tuple[str, str], ...]  # (namespace, service account) of those waypoints


def find_mode(labels: Mapping[str, str], ns_labels: Mapping[str, str], what: str,
              namespace: str) -> tuple[str, str, str | None]:
    """(mode, where it comes from, note): the object's own label, else its namespace's, else optional."""
    for value, where in ((labels.get(L.WAYPOINT_TRAVERSAL), what), (ns_labels.get(L.WAYPOINT_TRAVERSAL),
                                                                    f"namespace {namespace}")):
        if value is None:
            continue
        if value in MODES:
            return value, f"label {L.WAYPOINT_TRAVERSAL}={value} on {where}", None
        return OPTIONAL, "default: Istio's behaviour", \
            f"{where} has {L.WAYPOINT_TRAVERSAL}={value!r}, not one of {', '.join(MODES)}: ignored"
    return OPTIONAL, f"default: Istio's behaviour, no {L.WAYPOINT_TRAVERSAL} label", None


def decide_traversal(view: MeshView, svc: ServiceInfo, decision: Decision | None = None) -> Traversal:
    """The traversal mode of a service and, when enforced, whether its node proxies must refuse it
    (its waypoint does not serve it: `refused` is the selection's reason)."""
    what = f"{'service' if svc.kind == 'Service' else 'serviceentry'} {svc.namespace}/{svc.name}"
    mode, source, note = find_mode(svc.labels, view.namespace_labels(svc.namespace), what, svc.namespace)
    if mode != REQUIRED:
        return Traversal(mode, source, note=note)
    if detect_waypoint_owned(svc.labels):
        return Traversal(mode, source, note="a waypoint's own service never uses a waypoint: not enforced")
    decision = decision or decide_service(view, svc)
    if decision.reason in (NO_WAYPOINT, OPTED_OUT) or not decision.requested:
        return Traversal(mode, source, note=f"no waypoint is requested ({decision.reason}): nothing to traverse, "
                                            "not enforced")
    if decision.reason == ACCEPTED:
        return Traversal(mode, source, True, decision.requested)
    return Traversal(mode, source, True, decision.requested, decision.reason, describe_refusal(decision))


def describe_refusal(decision: Decision) -> str:
    """Why the requested waypoint does not serve a destination, in words (for logs and explain)."""
    wp = decision.requested
    return {NOT_FOUND: f"waypoint {wp} does not exist",
            DENIED: f"waypoint {wp} does not admit namespace {decision.destination.namespace} (allowedRoutes)",
            UNSUPPORTED: f"waypoint {wp} does not handle {decision.addressed_as} traffic",
            CROSS_NS: f"the destination is exported to its own namespace only and cannot use waypoint {wp}",
            }.get(decision.reason, f"waypoint {wp} is not ready" if decision.rules and "never been ready"
                  in decision.rules[-1] else f"waypoint {wp} is not programmed")


def detect_selects(svc: ServiceInfo, pod: PodInfo) -> bool:
    return svc.kind == "Service" and bool(svc.selector) and svc.namespace == pod.namespace and \
        all(pod.labels.get(k) == v for k, v in svc.selector.items())


def find_target_port(port: PortInfo, pod: PodInfo) -> int | None:
    """The pod's port a Service port sends to (a named targetPort through the pod's container ports)."""
    target = port.target_port
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    return pod.named_ports.get(target)


def _waypoint_identity(view: MeshView, key: str) -> tuple[str, str] | None:
    wp = view.waypoints.get(tuple(key.split("/", 1)))
    return (wp.namespace, wp.service_account or wp.service_name) if wp else None


def find_pod_guards(view: MeshView, pod: PodInfo, services: list[ServiceInfo]) -> tuple[Guard, ...]:
    """The guarded target ports of one pod, given the services that select it."""
    required: dict[int, list[str]] = {}
    admitted: dict[int, set[str]] = {}
    for svc in services:
        decision = decide_service(view, svc)
        traversal = decide_traversal(view, svc, decision)
        waypoint = decision.requested if decision.reason == ACCEPTED else None
        for port in svc.ports:
            target = find_target_port(port, pod)
            if target is None or port.protocol != "TCP":
                continue
            if traversal.enforced:
                required.setdefault(target, []).append(f"{svc.kind} {svc.namespace}/{svc.name}")
                if decision.waypoint and view.waypoints.get(tuple(decision.waypoint.split("/", 1))):
                    admitted.setdefault(target, set()).add(decision.waypoint)  # ready or not: it is the waypoint
            elif waypoint:
                admitted.setdefault(target, set()).add(waypoint)  # another service's waypoint, same port
    if not required:
        return ()
    own = decide_workload(view, pod)
    guards = []
    for port, names in sorted(required.items()):
        waypoints = set(admitted.get(port, ()))
        if own.reason == ACCEPTED and own.waypoint:
            waypoints.add(own.waypoint)
        identities = {i for i in (_waypoint_identity(view, w) for w in waypoints) if i}
        guards.append(Guard(port, tuple(sorted(names)), tuple(sorted(waypoints)), tuple(sorted(identities))))
    return tuple(guards)


def find_traversal_guards(view: MeshView) -> dict[tuple[str, str], tuple[Guard, ...]]:
    """(namespace, pod name) -> its guarded ports, for the mesh pods behind a required service (their
    node proxy enforces them); once per view."""
    return view.remember("traversal-guards", lambda: _find_guards(view, True), READS)


def find_outside_guards(view: MeshView) -> dict[tuple[str, str], tuple[Guard, ...]]:
    """(namespace, pod name) -> its guarded ports, for the pods outside the mesh behind a required
    service: no node proxy sees their traffic, so their node agent filters it in the pod's own
    namespace (`meshway.runtime.capture.build_guard_rules`), admitting the waypoints' pod addresses
    (`find_waypoint_addresses`); once per view."""
    return view.remember("outside-guards", lambda: _find_guards(view, False), READS)


def _find_guards(view: MeshView, in_mesh: bool) -> dict[tuple[str, str], tuple[Guard, ...]]:
    enforced = [svc for svc in view.services.values()
                if svc.kind == "Service" and svc.selector and decide_traversal(view, svc).enforced]
    out: dict[tuple[str, str], tuple[Guard, ...]] = {}
    for pod in {(p.namespace, p.name): p for svc in enforced for p in find_selected_pods(view, svc)}.values():
        if not pod.ip or detect_ambient(view, pod) != in_mesh or detect_waypoint_owned(pod.labels):
            continue
        services = [s for s in view.services.values() if detect_selects(s, pod)]
        guards = find_pod_guards(view, pod, sorted(services, key=lambda s: (s.namespace, s.name)))
        if guards:
            out[(pod.namespace, pod.name)] = guards
    return out


def find_waypoint_addresses(view: MeshView) -> dict[str, tuple[str, ...]]:
    """"ns/name" of each waypoint -> the addresses of its pods (ready or not: a pod that becomes ready
    must not wait for a filter change), from the pods the waypoint's Deployment labels."""
    def build() -> dict[str, tuple[str, ...]]:
        out: dict[str, set[str]] = {}
        for pod in view.pods.values():
            name = pod.labels.get(L.GATEWAY_NAME)
            if name and pod.ip and (pod.namespace, name) in view.waypoints:
                out.setdefault(f"{pod.namespace}/{name}", set()).add(pod.ip)
        return {k: tuple(sorted(v)) for k, v in out.items()}
    return view.remember("waypoint-addresses", build, ("Pod", "Gateway", "GatewayClass"))


def plan_outside_filters(guards: tuple[Guard, ...],
                         addresses: Mapping[str, tuple[str, ...]]) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """(port, admitted addresses) per guarded port of a pod outside the mesh: its waypoints' pods."""
    return tuple((g.port, tuple(sorted({ip for w in g.waypoints for ip in addresses.get(w, ())}))) for g in guards)


def find_selected_pods(view: MeshView, svc: ServiceInfo) -> list[PodInfo]:
    """Every pod a Service selects (ready or not, with an IP): guards are in place before a pod is ready."""
    keys = None
    for k, v in sorted((svc.selector or {}).items()):
        found = view.pods_by_label.get((svc.namespace, k, v), frozenset())
        keys = found if keys is None else keys & found
    return sorted((view.pods[k] for k in keys or ()), key=lambda p: p.name)
