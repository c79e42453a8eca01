"""Real serialized xDS sizes for `analyze config-distribution`: what each waypoint is actually sent,
versus what an unscoped sidecar would hold (every service's clusters, endpoints and routes)."""
from __future__ import annotations

from dataclasses import dataclass

from ..mesh.selection import detect_waypoint_owned
from ..mesh.view import MeshView
from .build_snapshot import build_waypoint_config
from .proxy import Proxy
from .scope import WaypointScope, find_scope


@dataclass(frozen=True)
class ConfigBytes:
    waypoint: int  # summed over every waypoint replica
    sidecar_mesh_wide: int  # one full-mesh config per sidecar
    per_waypoint: dict[str, int]
    per_sidecar: int


def measure_size(view: MeshView, proxy: Proxy, scope: WaypointScope) -> int:
    config = build_waypoint_config(view, proxy, scope=scope)
    return sum(len(m.SerializeToString()) for items in config.messages().values() for m in items.values())


def measure_config_bytes(view: MeshView, replicas: dict[tuple[str, str], int]) -> ConfigBytes:
    per_waypoint: dict[str, int] = {}
    total = 0
    for (ns, name), wp in sorted(view.waypoints.items()):
        scope = find_scope(view, ns, name)
        if not scope.services and not scope.workloads:
            continue
        proxy = Proxy(f"waypoint~0.0.0.0~{name}.{ns}~{ns}.svc.cluster.local", "0.0.0.0", ns, name, name)
        size = measure_size(view, proxy, scope)
        per_waypoint[f"{ns}/{name}"] = size
        total += size * replicas.get((ns, wp.service_name), 1)
    services = tuple(s for s in view.services.values() if s.addresses and not detect_waypoint_owned(s.labels))
    sidecars = sum(1 for p in view.pods.values() if not detect_waypoint_owned(p.labels))
    per_sidecar = 0
    if services and view.waypoints:
        any_wp = next(iter(view.waypoints.values()))
        proxy = Proxy("sidecar~0.0.0.0~all.mesh~mesh.svc.cluster.local", "0.0.0.0", any_wp.namespace, "sidecar",
                      any_wp.name)
        per_sidecar = measure_size(view, proxy, WaypointScope(any_wp, services, ()))
    return ConfigBytes(total, per_sidecar * sidecars, per_waypoint, per_sidecar)
