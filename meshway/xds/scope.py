"""What a waypoint is responsible for: the services and workloads bound to it (and nothing else),
their ports' protocols and cluster names. Pure."""
from __future__ import annotations

from dataclasses import dataclass

from .. import labels as L
from ..mesh.selection import ACCEPTED, NOT_READY, decide_service, decide_workload
from ..mesh.view import MeshView, PodInfo, PortInfo, ServiceInfo, WaypointInfo

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
    key = waypoint.key

    def bound(decision) -> bool:
        return decision.requested == key and decision.reason in (ACCEPTED, NOT_READY)

    services = [s for s in view.services.values() if s.addresses and bound(decide_service(view, s))]
    services.sort(key=lambda s: (s.created, s.namespace, s.name))
    traffic = waypoint.traffic_type
    workloads = []
    if traffic in ("workload", "all"):
        workloads = [p for p in view.pods.values() if p.ip and bound(decide_workload(view, p))]
        workloads.sort(key=lambda p: (p.created, p.namespace, p.name))
    return WaypointScope(waypoint, tuple(services), tuple(workloads))


def find_service_pods(view: MeshView, svc: ServiceInfo) -> list[PodInfo]:
    """Ready pods behind a Service (its selector in its namespace), ordered by name."""
    if svc.kind != "Service" or not svc.selector:
        return []
    pods = [p for p in view.pods.values()
            if p.namespace == svc.namespace and p.ip and p.ready
            and all(p.labels.get(k) == v for k, v in svc.selector.items())
            and p.labels.get(L.MANAGED) != L.MANAGED_VALUE]
    return sorted(pods, key=lambda p: p.name)


def resolve_target_port(port: PortInfo, pod: PodInfo) -> int | None:
    if isinstance(port.target_port, int):
        return port.target_port
    if str(port.target_port).isdigit():
        return int(port.target_port)
    return pod.named_ports.get(str(port.target_port))
