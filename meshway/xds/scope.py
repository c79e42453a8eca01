"""What a waypoint is responsible for: the services and workloads bound to it (and nothing else),
their ports' protocols and cluster names. Pure."""
from __future__ import annotations

from dataclasses import dataclass

from .. import labels as L
from ..mesh.selection import ACCEPTED, NOT_READY, decide_service, decide_workload
from ..mesh.view import SNAPSHOT_KINDS, MeshView, PodInfo, PortInfo, ServiceInfo, WaypointInfo

HTTP_PROTOCOLS = {"http", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c", "http1"}
TCP_PROTOCOLS = {"tcp", "tls", "https", "mongo", "mysql", "redis", "hbone", "kubernetes.io/ws", "kubernetes.io/wss"}


@dataclass(frozen=True)
class WaypointScope:
    waypoint: WaypointInfo
    services: tuple[ServiceInfo, ...]
    workloads: tuple[PodInfo, ...]


def detect_protocol(port: PortInfo) -> str:
    """`http`, `http2`, `tcp` or `auto`, as Istio reads appProtocol, then the port name prefix."""
    for value in (port.app_protocol or "", port.name.split("-", 1)[0] if port.name else ""):
        value = value.lower()
        if value in ("http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c"):
            return "http2"
        if value in HTTP_PROTOCOLS:
            return "http"
        if value in TCP_PROTOCOLS:
            return "tcp"
    return "auto"


def cluster_name(port: int, subset: str, host: str, direction: str = "inbound-vip") -> str:
    """`inbound-vip|9080|http/v1|reviews.default.svc.cluster.local` (model.BuildSubsetKey)."""
    return f"{direction}|{port}|{subset}|{host}"


def port_kinds(port: PortInfo) -> tuple[str, ...]:
    """Which of the `http` / `tcp` chains and clusters a port gets (auto-detect gets both)."""
    proto = detect_protocol(port)
    if port.protocol == "UDP":
        return ()
    return {"http": ("http",), "http2": ("http",), "tcp": ("tcp",), "auto": ("http", "tcp")}[proto]


def find_scope(view: MeshView, namespace: str, name: str) -> WaypointScope:
    """Services and workloads whose selection names this waypoint (accepted, or waiting for it to be
    ready: the waypoint must hold their configuration before it can become ready)."""
    waypoint = view.waypoints[(namespace, name)]
    services, workloads = find_bindings(view).get(waypoint.key, ((), ()))
    if waypoint.traffic_type not in ("workload", "all"):
        workloads = ()
    return WaypointScope(waypoint, services, workloads)


def find_bindings(view: MeshView) -> dict[str, tuple[tuple[ServiceInfo, ...], tuple[PodInfo, ...]]]:
    """Waypoint key -> (its services, its workloads), from one decision per service and per pod;
    computed once per view."""
    def build() -> dict[str, tuple[tuple[ServiceInfo, ...], tuple[PodInfo, ...]]]:
        services: dict[str, list[ServiceInfo]] = {}
        workloads: dict[str, list[PodInfo]] = {}
        for svc in view.services.values():
            if svc.addresses:
                decision = decide_service(view, svc)
                if decision.requested and decision.reason in (ACCEPTED, NOT_READY):
                    services.setdefault(decision.requested, []).append(svc)
        wants_workloads = {wp.key for wp in view.waypoints.values() if wp.traffic_type in ("workload", "all")}
        if wants_workloads:
            for pod in view.pods.values():
                if pod.ip:
                    decision = decide_workload(view, pod)
                    if decision.requested in wants_workloads and decision.reason in (ACCEPTED, NOT_READY):
                        workloads.setdefault(decision.requested, []).append(pod)
        keys = set(services) | set(workloads)
        return {key: (tuple(sorted(services.get(key, ()), key=lambda s: (s.created, s.namespace, s.name))),
                      tuple(sorted(workloads.get(key, ()), key=lambda p: (p.created, p.namespace, p.name))))
                for key in keys}
    return view.remember("waypoint-bindings", build, SNAPSHOT_KINDS)


def find_service_pods(view: MeshView, svc: ServiceInfo) -> list[PodInfo]:
    """Ready pods behind a Service (its selector in its namespace), ordered by name: the intersection
    of the label index's entries for each selector pair."""
    if svc.kind != "Service" or not svc.selector:
        return []
    def build() -> list[PodInfo]:
        keys = None
        for k, v in sorted(svc.selector.items()):
            found = view.pods_by_label.get((svc.namespace, k, v), frozenset())
            keys = found if keys is None else keys & found
            if not keys:
                return []
        pods = [view.pods[key] for key in keys or ()]
        return sorted((p for p in pods if p.ip and p.ready and p.labels.get(L.MANAGED) != L.MANAGED_VALUE),
                      key=lambda p: p.name)
    return list(view.remember(("service-pods", svc.kind, svc.namespace, svc.name), build, ("Pod", "Service")))


def resolve_target_port(port: PortInfo, pod: PodInfo) -> int | None:
    if isinstance(port.target_port, int):
        return port.target_port
    if str(port.target_port).isdigit():
        return int(port.target_port)
    return pod.named_ports.get(str(port.target_port))
