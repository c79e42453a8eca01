"""Which waypoint serves a destination, and why: a pure function of a MeshView returning a
decision record (istio-facts §3; Istio's waypoints.go fetchWaypointForTarget/Service/Workload).

Order of checks: opt-out and labels, the named waypoint's existence, its traffic type, its
allowedRoutes, ServiceEntry visibility, and last its readiness, so that a configuration error
is reported as such even before the waypoint runs. Readiness gates binding only the first time: a
waypoint that has been ready keeps its destinations when its replicas are lost (Istio binds by the
Gateway's addresses, which are never removed), so traffic never bypasses it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import labels as L
from ..model.meta import LabelSelector
from ..model.selectors import selector_matches
from .view import MeshView, PodInfo, ServiceInfo, WaypointInfo

ACCEPTED = "WaypointAccepted"
NOT_READY = "WaypointIsNotReady"
DENIED = "AttachmentDenied"
UNSUPPORTED = "UnsupportedTrafficType"
CROSS_NS = "CrossNamespaceWaypointForbidden"
NOT_FOUND = "WaypointNotFound"
OPTED_OUT = "OptedOut"
NO_WAYPOINT = "NoWaypoint"
REASONS = (ACCEPTED, NOT_READY, DENIED, UNSUPPORTED, CROSS_NS, NOT_FOUND, OPTED_OUT, NO_WAYPOINT)


@dataclass(frozen=True)
class Destination:
    kind: str
    namespace: str
    name: str
    address: str | None


@dataclass(frozen=True)
class Decision:
    destination: Destination
    addressed_as: str  # service | workload
    waypoint: str | None  # ns/name, set when selected (ready or not); None when refused or absent
    ready: bool
    reason: str
    rules: tuple[str, ...]
    explanation: str
    requested: str | None = field(default=None, compare=False)  # the ns/name a label asked for

    def to_json(self) -> dict[str, Any]:
        return {
            "destination": {"kind": self.destination.kind, "namespace": self.destination.namespace,
                            "name": self.destination.name, "address": self.destination.address},
            "addressed_as": self.addressed_as,
            "waypoint": self.waypoint,
            "ready": self.ready,
            "reason": self.reason,
            "rules": list(self.rules),
            "explanation": self.explanation,
        }


def detect_waypoint_owned(labels: Mapping[str, str]) -> bool:
    """A waypoint's own Service/Deployment/pods: they never use a waypoint themselves."""
    return labels.get(L.MANAGED) == L.MANAGED_VALUE or labels.get(L.GATEWAY_CLASS_NAME) == L.WAYPOINT_CLASS


def detect_allows_namespace(wp: WaypointInfo, namespace: str, ns_labels: Mapping[str, str]) -> bool:
    if wp.allowed_from == "All":
        return True
    if wp.allowed_from == "Selector":
        selector = LabelSelector.model_validate(wp.allowed_selector or {}, strict=False)
        return selector_matches(selector, dict(ns_labels))
    return wp.namespace == namespace


def _noun(kind: str) -> str:
    return {"Service": "service", "ServiceEntry": "serviceentry", "Pod": "pod"}[kind]


class _Trace:
    def __init__(self, dest: Destination, addressed_as: str):
        self.dest, self.addressed_as, self.rules = dest, addressed_as, []

    def add(self, rule: str) -> None:
        self.rules.append(rule)

    def done(self, reason: str, explanation: str, waypoint: str | None = None, ready: bool = False,
             requested: str | None = None) -> Decision:
        return Decision(self.dest, self.addressed_as, waypoint, ready, reason, tuple(self.rules), explanation,
                        requested)


def _decide(view: MeshView, dest: Destination, labels: Mapping[str, str], addressed_as: str,
            namespace_private: bool = False) -> Decision:
    t = _Trace(dest, addressed_as)
    what = f"{_noun(dest.kind)} {dest.namespace}/{dest.name}"
    if detect_waypoint_owned(labels):
        t.add(f"{what} belongs to a waypoint ({L.MANAGED}={L.MANAGED_VALUE} or {L.GATEWAY_CLASS_NAME}="
              f"{L.WAYPOINT_CLASS}): a waypoint's own resources never use a waypoint")
        return t.done(NO_WAYPOINT, f"{what} is part of a waypoint, so traffic to it never goes through a waypoint.")
    ns_labels = view.namespace_labels(dest.namespace)
    own = labels.get(L.USE_WAYPOINT)
    if own is not None:
        source, src_labels = f"{what} has label {L.USE_WAYPOINT}={own}", labels
        if L.USE_WAYPOINT in ns_labels:
            source += (f"; its own label takes precedence over namespace {dest.namespace}'s "
                       f"{L.USE_WAYPOINT}={ns_labels[L.USE_WAYPOINT]}")
    elif L.USE_WAYPOINT in ns_labels:
        own = ns_labels[L.USE_WAYPOINT]
        source, src_labels = f"namespace {dest.namespace} has label {L.USE_WAYPOINT}={own}", ns_labels
    else:
        t.add(f"no {L.USE_WAYPOINT} label on {what} or on namespace {dest.namespace}")
        return t.done(NO_WAYPOINT, f"Neither {what} nor its namespace is enrolled in a waypoint, so traffic "
                                   "goes directly to the destination.")
    from_namespace = src_labels is ns_labels and labels.get(L.USE_WAYPOINT) is None
    t.add(source)
    if own == L.NONE:
        t.add(f"{L.USE_WAYPOINT}=none opts out; no other label is consulted")
        return t.done(OPTED_OUT, f"{what} is opted out of waypoints ({L.USE_WAYPOINT}=none), so traffic goes "
                                 "directly to the destination.")
    wp_ns = src_labels.get(L.USE_WAYPOINT_NAMESPACE) or dest.namespace
    if L.USE_WAYPOINT_NAMESPACE in src_labels:
        t.add(f"{L.USE_WAYPOINT_NAMESPACE}={wp_ns} on the same object points to namespace {wp_ns}")
    requested = f"{wp_ns}/{own}"
    wp = view.waypoints.get((wp_ns, own))
    if wp is None:
        other = view.gateways.get((wp_ns, own))
        if other is not None:
            t.add(f"Gateway {requested} exists but its gatewayClassName is {other.class_name!r}, not a waypoint class")
        else:
            t.add(f"no waypoint Gateway {requested} (gatewayClassName {L.WAYPOINT_CLASS}) exists")
        t.add("there is no fallback to another label when the named waypoint is missing")
        return t.done(NOT_FOUND, f"{what} asks for waypoint {requested}, which does not exist, so traffic goes "
                                 "directly to the destination.", requested=requested)
    t.add(f"waypoint {requested} handles traffic type {wp.traffic_type!r} ({wp.traffic_type_source})")
    wanted = ("service", "all") if addressed_as == "service" else ("workload", "all")
    if wp.traffic_type not in wanted:
        if addressed_as == "workload" and from_namespace:
            t.add(f"a namespace waypoint that does not handle workload traffic is ignored for pods")
            return t.done(NO_WAYPOINT, f"Namespace {dest.namespace}'s waypoint {requested} only handles "
                                       f"{wp.traffic_type!r} traffic, so traffic addressed to the pod goes directly.",
                          requested=requested)
        t.add(f"{addressed_as}-addressed traffic needs a waypoint for {' or '.join(repr(w) for w in wanted)}")
        return t.done(UNSUPPORTED, f"Waypoint {requested} does not handle {addressed_as} traffic "
                                   f"({L.WAYPOINT_FOR}={wp.traffic_type}), so {what} gets no waypoint.",
                      requested=requested)
    if not detect_allows_namespace(wp, dest.namespace, view.namespace_labels(dest.namespace)):
        rule = f"waypoint {requested} allowedRoutes.namespaces.from={wp.allowed_from}"
        if wp.allowed_from == "Selector":
            rule += f" with selector {wp.allowed_selector} does not match namespace {dest.namespace}'s labels"
        else:
            rule += f" does not admit namespace {dest.namespace}"
        t.add(rule)
        return t.done(DENIED, f"Waypoint {requested} does not allow attachment from namespace {dest.namespace} "
                              "(allowedRoutes), so traffic goes directly to the destination.", requested=requested)
    if wp.namespace != dest.namespace:
        t.add(f"waypoint {requested} admits namespace {dest.namespace} (allowedRoutes from={wp.allowed_from})")
    if namespace_private and wp.namespace != dest.namespace:
        t.add(f"{what} is exported only to its own namespace (exportTo: ['.']) and may not use a waypoint in "
              "another namespace")
        return t.done(CROSS_NS, f"{what} has NAMESPACE visibility, so it cannot bind to waypoint {requested} in "
                                "another namespace.", requested=requested)
    if not wp.valid:
        t.add(f"waypoint {requested} has no listener on port 15008 with protocol HBONE, so it is not programmed")
        return t.done(NOT_READY, f"Traffic to {what} is meant for waypoint {requested}, but the waypoint is not "
                                 "programmed (it needs a listener on port 15008 with protocol HBONE), so traffic "
                                 "goes directly to the destination.", waypoint=requested, requested=requested)
    if not wp.bound:
        t.add(f"waypoint {requested} has never been ready (no ready replica yet; Gateway has no addresses)")
        return t.done(NOT_READY, f"Traffic to {what} is meant for waypoint {requested}, but the waypoint is not "
                                 "ready, so until it is traffic goes directly to the destination.",
                      waypoint=requested, requested=requested)
    if not wp.ready:
        t.add(f"waypoint {requested} has addresses (it was ready before) but no ready replica now: the binding "
              "stays, so requests wait or fail at the waypoint and never bypass its policies")
        return t.done(ACCEPTED, f"Traffic addressed to {what} goes through waypoint {requested}, which has no ready "
                                "replica right now: requests fail until one is ready (they never bypass it).",
                      waypoint=requested, ready=False, requested=requested)
    t.add(f"waypoint {requested} is ready")
    return t.done(ACCEPTED, f"Traffic addressed to {what} goes through waypoint {requested}.",
                  waypoint=requested, ready=True, requested=requested)


def decide_service(view: MeshView, svc: ServiceInfo, address: str | None = None) -> Decision:
    dest = Destination(svc.kind, svc.namespace, svc.name, address or (svc.addresses[0] if svc.addresses else None))
    decision = _decide(view, dest, svc.labels, "service", svc.namespace_private)
    return decision


def decide_workload(view: MeshView, pod: PodInfo, address: str | None = None) -> Decision:
    dest = Destination("Pod", pod.namespace, pod.name, address or pod.ip)
    return _decide(view, dest, pod.labels, "workload")
