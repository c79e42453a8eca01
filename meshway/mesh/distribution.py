"""The seed blog's config-distribution table: how many configurations sidecars would receive
versus waypoints, from the store's contents or a generated topology (both go through MeshView).

A "configuration" is one service's config in one proxy. A namespace-scoped sidecar (with a Sidecar
resource limiting it to its namespace) holds its namespace's services; a mesh-wide one holds every
service; a waypoint replica holds the services bound to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import labels as L
from .selection import ACCEPTED, NOT_READY, decide_service, detect_waypoint_owned
from .view import MeshView

Body = dict[str, Any]


@dataclass(frozen=True)
class NamespaceRow:
    namespace: str
    services: int
    sidecars: int
    bound_services: int
    waypoint_replicas: int

    def sidecar_scoped(self) -> int:
        return self.services * self.sidecars


@dataclass(frozen=True)
class Distribution:
    rows: tuple[NamespaceRow, ...]
    total_services: int

    @property
    def sidecar_namespace_scoped(self) -> int:
        return sum(r.sidecar_scoped() for r in self.rows)

    @property
    def sidecar_mesh_wide(self) -> int:
        return sum(self.total_services * r.sidecars for r in self.rows)

    @property
    def waypoint(self) -> int:
        return sum(r.bound_services * r.waypoint_replicas for r in self.rows)

    @property
    def ratio(self) -> float:
        return self.waypoint / self.sidecar_namespace_scoped if self.sidecar_namespace_scoped else 0.0

    def to_json(self) -> Body:
        return {
            "namespaces": [{"namespace": r.namespace, "services": r.services, "sidecars": r.sidecars,
                            "waypoint_bound_services": r.bound_services, "waypoint_replicas": r.waypoint_replicas,
                            "sidecar_configurations": r.sidecar_scoped(),
                            "waypoint_configurations": r.bound_services * r.waypoint_replicas}
                           for r in self.rows],
            "sidecar_namespace_scoped": {"configurations": self.sidecar_namespace_scoped},
            "sidecar_mesh_wide": {"configurations": self.sidecar_mesh_wide},
            "waypoint": {"configurations": self.waypoint},
            "ratio": round(self.ratio, 6),
        }


def build_distribution(view: MeshView, replicas: dict[tuple[str, str], int]) -> Distribution:
    """`replicas[(ns, waypoint service name)]` = waypoint replica count (its Deployment's spec.replicas)."""
    services = [s for s in view.services.values() if not detect_waypoint_owned(s.labels)]
    rows = []
    for ns in sorted({s.namespace for s in services} | {p.namespace for p in view.pods.values()}):
        ns_services = [s for s in services if s.namespace == ns]
        sidecars = sum(1 for p in view.pods.values() if p.namespace == ns and not detect_waypoint_owned(p.labels))
        bound, wp_replicas = 0, 0
        used: set[str] = set()
        for svc in ns_services:
            decision = decide_service(view, svc)
            if decision.reason in (ACCEPTED, NOT_READY) and decision.waypoint:
                bound += 1
                used.add(decision.waypoint)
        for key in used:
            wp_ns, wp_name = key.split("/", 1)
            wp = view.waypoints[(wp_ns, wp_name)]
            wp_replicas = max(wp_replicas, replicas.get((wp_ns, wp.service_name), 1))
        rows.append(NamespaceRow(ns, len(ns_services), sidecars, bound, wp_replicas))
    return Distribution(tuple(r for r in rows if r.services or r.sidecars), len(services))


def generate_topology(namespaces: int, deployments: int, pods: int, replicas: int) -> tuple[dict[str, list[Body]],
                                                                                           dict[tuple[str, str], int]]:
    """A store-shaped snapshot: per namespace a waypoint (enrolled namespace) and D services with P pods each."""
    snap: dict[str, list[Body]] = {"Namespace": [], "Service": [], "Pod": [], "Gateway": [], "GatewayClass": []}
    ip = 0
    for n in range(1, namespaces + 1):
        ns = f"ns-{n}"
        snap["Namespace"].append({"metadata": {"name": ns, "labels": {L.USE_WAYPOINT: "waypoint"}}})
        snap["Gateway"].append({"kind": "Gateway", "metadata": {"name": "waypoint", "namespace": ns},
                                "spec": {"gatewayClassName": L.WAYPOINT_CLASS,
                                         "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
        for d in range(1, deployments + 1):
            ip += 1
            snap["Service"].append({"kind": "Service", "metadata": {"name": f"svc-{d}", "namespace": ns},
                                    "spec": {"clusterIP": f"10.96.{ip // 250}.{ip % 250 + 2}",
                                             "ports": [{"name": "http", "port": 80}], "selector": {"app": f"svc-{d}"}}})
            for p in range(1, pods + 1):
                pod_ip = f"10.{244 + (len(snap['Pod']) // 62500)}.{(len(snap['Pod']) // 250) % 250 + 1}." \
                         f"{len(snap['Pod']) % 250 + 2}"
                snap["Pod"].append({"metadata": {"name": f"svc-{d}-{p}", "namespace": ns, "labels": {"app": f"svc-{d}"}},
                                    "spec": {}, "status": {"podIP": pod_ip, "conditions": [
                                        {"type": "Ready", "status": "True"}]}})
    return snap, {(f"ns-{n}", "waypoint"): replicas for n in range(1, namespaces + 1)}


def write_distribution_table(dist: Distribution) -> list[list[str]]:
    rows = [["CONFIG DISTRIBUTION"] + [r.namespace for r in dist.rows] + ["TOTAL"]]
    rows.append(["Sidecars"] + [f"{r.services} configurations * {r.sidecars} sidecars" for r in dist.rows]
                + [str(dist.sidecar_namespace_scoped)])
    rows.append(["Sidecars (mesh-wide)"] + [f"{dist.total_services} configurations * {r.sidecars} sidecars"
                                            for r in dist.rows] + [str(dist.sidecar_mesh_wide)])
    rows.append(["Waypoints"] + [f"{r.bound_services} configurations * {r.waypoint_replicas} waypoints"
                                 for r in dist.rows] + [str(dist.waypoint)])
    rows.append(["Waypoints / Sidecars"] + [_pct(r.bound_services * r.waypoint_replicas, r.sidecar_scoped())
                                            for r in dist.rows] + [_pct(dist.waypoint, dist.sidecar_namespace_scoped)])
    return rows


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"
