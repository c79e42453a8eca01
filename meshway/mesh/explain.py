"""`explain TARGET`: find the destination a user names and return the selection decision for it."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .enrollment import detect_ambient
from .peer_authentication import MtlsDecision, decide_peer_authentication
from .selection import Decision, decide_service, decide_workload
from .traversal import OPTIONAL, REQUIRED, Guard, Traversal, decide_traversal, find_selected_pods, \
    find_outside_guards, find_target_port, find_traversal_guards
from .view import MeshView

TARGET_KINDS = {"service": "Service", "svc": "Service", "services": "Service",
                "serviceentry": "ServiceEntry", "se": "ServiceEntry", "serviceentries": "ServiceEntry",
                "pod": "Pod", "po": "Pod", "pods": "Pod"}


class TargetNotFound(LookupError):
    pass


def _split_address(target: str) -> tuple[str, int | None] | None:
    host, sep, port = target.rpartition(":")
    text, port_num = (host, int(port)) if sep and port.isdigit() else (target, None)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text, port_num


def find_decision(view: MeshView, target: str, namespace: str) -> Decision:
    """TARGET is `service/NAME`, `pod/NAME`, `serviceentry/NAME` or `IP[:PORT]` (a service VIP or pod IP)."""
    address = _split_address(target)
    if address is not None:
        ip, port = address
        shown = f"{ip}:{port}" if port else ip
        if ip in view.services_by_ip:
            svc = view.services_by_ip[ip]
            if port is not None and svc.ports and port not in {p.port for p in svc.ports}:
                raise TargetNotFound(f"{ip} is {svc.kind.lower()} {svc.namespace}/{svc.name}, which has no port {port} "
                                     f"(ports: {', '.join(str(p.port) for p in svc.ports)})")
            return decide_service(view, svc, shown)
        if ip in view.pods_by_ip:
            return decide_workload(view, view.pods_by_ip[ip], shown)
        raise TargetNotFound(f"no service VIP or pod IP {ip} in the mesh")
    kind_text, sep, name = target.partition("/")
    if not sep or kind_text.lower() not in TARGET_KINDS or not name:
        raise TargetNotFound(f"invalid target {target!r}: expected service/NAME, pod/NAME, serviceentry/NAME or "
                             "IP[:PORT]")
    kind = TARGET_KINDS[kind_text.lower()]
    if kind == "Pod":
        pod = view.pods.get((namespace, name))
        if pod is None:
            raise TargetNotFound(f'pods "{name}" not found in namespace {namespace}')
        return decide_workload(view, pod)
    svc = view.services.get((kind, namespace, name))
    if svc is None:
        plural = "services" if kind == "Service" else "serviceentries.networking.istio.io"
        raise TargetNotFound(f'{plural} "{name}" not found in namespace {namespace}')
    return decide_service(view, svc)


def find_peer_mtls(view: MeshView, decision: Decision) -> list[tuple[str, MtlsDecision]]:
    """(pod name, its PeerAuthentication decision) for the mesh pods behind a destination: the pod
    itself, or a Service's selected pods (their node proxies enforce it); [] when no
    PeerAuthentication applies to any of them (all PERMISSIVE by default)."""
    d = decision.destination
    if d.kind == "Pod":
        pods = [view.pods[(d.namespace, d.name)]] if (d.namespace, d.name) in view.pods else []
    else:
        svc = view.services.get((d.kind, d.namespace, d.name))
        selector = (svc.selector if svc else None) or {}
        pods = [p for p in view.pods.values() if selector and p.namespace == d.namespace
                and all(p.labels.get(k) == v for k, v in selector.items())]
    policies = list(view.index.of("PeerAuthentication"))
    out = [(p.name, decide_peer_authentication(policies, p.namespace, p.labels))
           for p in sorted(pods, key=lambda p: p.name) if detect_ambient(view, p)]
    return out if any(m.applied for _, m in out) else []


@dataclass(frozen=True)
class TraversalReport:
    """What `explain` shows of guaranteed traversal for one destination."""
    traversal: Traversal | None  # a service's mode (None for a pod)
    guards: tuple[tuple[str, Guard], ...]  # (pod, guard) of the destination's mesh pods, its target ports only
    outside: tuple[tuple[str, Guard], ...]  # the same for its pods outside the mesh (their own packet filter)
    bound: bool  # the destination asks for a waypoint

    def to_json(self) -> dict:
        out = self.traversal.to_json() if self.traversal else {
            "mode": REQUIRED if self.guards or self.outside else OPTIONAL}
        out["guards"] = [{"pod": pod, "port": g.port, "services": list(g.services), "waypoints": list(g.waypoints),
                          "identities": [f"{ns}/{sa}" for ns, sa in g.identities]} for pod, g in self.guards]
        if self.outside:
            out["outside"] = [{"pod": pod, "port": g.port, "services": list(g.services),
                               "waypoints": list(g.waypoints)} for pod, g in self.outside]
        return out


def find_traversal(view: MeshView, decision: Decision) -> TraversalReport | None:
    """The traversal mode of a service (and the guards on its pods' target ports), or the guards of
    a pod; None when there is nothing to say (optional, and no waypoint asked for)."""
    d = decision.destination
    guards, outside = find_traversal_guards(view), find_outside_guards(view)
    if d.kind == "Pod":
        pod = view.pods.get((d.namespace, d.name))
        key = (pod.namespace, pod.name) if pod else None
        found = tuple((pod.name, g) for g in guards.get(key, ())) if pod else ()
        plain = tuple((pod.name, g) for g in outside.get(key, ())) if pod else ()
        return TraversalReport(None, found, plain, bool(decision.requested)) if found or plain else None
    svc = view.services.get((d.kind, d.namespace, d.name))
    if svc is None:
        return None
    traversal = decide_traversal(view, svc, decision)
    if traversal.mode == OPTIONAL and not traversal.note and not decision.requested:
        return None
    pods = find_selected_pods(view, svc) if svc.kind == "Service" else []
    found, plain = [], []
    for pod in pods:
        targets = {t for port in svc.ports if (t := find_target_port(port, pod)) is not None}
        found += [(pod.name, g) for g in guards.get((pod.namespace, pod.name), ()) if g.port in targets]
        plain += [(pod.name, g) for g in outside.get((pod.namespace, pod.name), ()) if g.port in targets]
    return TraversalReport(traversal, tuple(found), tuple(plain), bool(decision.requested))
