"""One waypoint proxy's complete xDS: listeners, routes, clusters, endpoints and secrets, built from a
MeshView for exactly the services and workloads bound to that waypoint. Pure."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .. import labels as L
from ..mesh.meshconfig import find_mesh_config
from ..mesh.index import resolve_host
from ..mesh.view import MeshView, ServiceInfo, WaypointInfo
from ..model.istio import DestinationRule, VirtualService
from . import protos as P
from .build_authz import WAYPOINT, build_rbac_filters, find_waypoint_policies
from .build_clusters import build_hash_policy, build_service_cluster, build_static_clusters, merge_policy
from .build_extauthz import build_custom_filters, build_ext_authz_setup
from .build_listeners import build_connect_originate, build_connect_terminate, build_main_internal, find_route_names
from .build_routes import Problems, RouteTarget, build_route_config
from .build_telemetry import build_access_logs, find_access_logging
from .envoyfilter import apply_envoy_filters, find_envoy_filters
from .build_tracing import build_tracing, find_tracing
from .httproute import convert_http_route, detect_parent
from .proxy import Proxy
from .scope import WaypointScope, cluster_name, detect_protocol, find_scope, find_service_pods, port_kinds, \
    resolve_target_port

Body = dict[str, Any]


@dataclass(frozen=True)
class WaypointConfig:
    """Builder output as dicts (type URL -> name -> dict), plus problems found on the way."""

    resources: dict[str, dict[str, Body]]
    problems: tuple[tuple[str, str], ...] = field(default=())
    envoy_filters: tuple[str, ...] = field(default=())  # "<ns>/<name>" of the EnvoyFilters applied

    def messages(self) -> dict[str, dict[str, Any]]:
        return {t: {n: P.to_message(t, d) for n, d in items.items()} for t, items in self.resources.items()}


def _hosts(svc: ServiceInfo) -> tuple[str, ...]:
    return svc.hosts if svc.kind == "ServiceEntry" else (svc.hostname,)


def find_virtual_services(view: MeshView, svc: ServiceInfo, wp: WaypointInfo) -> list[VirtualService]:
    """Mesh VirtualServices for the service's hosts, from its own or the waypoint's namespace."""
    found = [vs for vs in view.index.virtual_services.find(_hosts(svc)) if vs.namespace in (svc.namespace, wp.namespace)]
    found.sort(key=lambda v: (v.metadata.creationTimestamp or "", v.namespace, v.name))
    return found


def find_routes_for(view: MeshView, svc: ServiceInfo, wp: WaypointInfo, port: int) -> list[VirtualService]:
    """VirtualServices for the service, else its attached HTTPRoutes converted (do not mix the two)."""
    vss = find_virtual_services(view, svc, wp)
    if vss:
        return vss
    converted = []
    for route in view.index.http_routes.get((svc.namespace, svc.name), ()):
        ports = detect_parent(route, svc.namespace, svc.name)
        if ports and (None in ports or port in ports):
            only = None if None in ports else port
            converted.append(view.remember(("http-route", id(route), svc.hostname, only),
                                           lambda: convert_http_route(route, svc.hostname, only)))
    return converted


def find_destination_rule(view: MeshView, svc: ServiceInfo, wp: WaypointInfo) -> DestinationRule | None:
    """The one DestinationRule that applies: the service's namespace first, then the waypoint's,
    then the root namespace; the oldest within a namespace, then by name (Istio's config order)."""
    ranks = {svc.namespace: 0, wp.namespace: 1, L.ROOT_NAMESPACE: 2}
    candidates = [(ranks[dr.namespace], dr.metadata.creationTimestamp or "", dr.name, dr)
                  for dr in view.index.destination_rules.find(_hosts(svc)) if dr.namespace in ranks]
    return min(candidates, key=lambda c: c[:3])[3] if candidates else None


def _same(ip: str) -> str:
    return ip


def _endpoints(name: str, view: MeshView, svc: ServiceInfo, port_number: int, subset_labels: dict | None,
               dial: Callable[[str], str] = _same) -> Body:
    port = next(p for p in svc.ports if p.port == port_number)
    lb = []
    for pod in find_service_pods(view, svc):
        if subset_labels and any(pod.labels.get(k) != v for k, v in subset_labels.items()):
            continue
        target = resolve_target_port(port, pod)
        if target is None:
            continue
        address = f"{dial(pod.ip)}:{target}"
        lb.append({"endpoint": {"address": {"envoy_internal_address": {
                       "server_listener_name": "connect_originate", "endpoint_id": address}}},
                   "health_status": "HEALTHY",
                   "metadata": {"filter_metadata": {"envoy.filters.listener.original_dst": {"local": address},
                                                    "istio": {"workload": f"{pod.name};{pod.namespace}"}}},
                   "load_balancing_weight": 1})
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}] if lb else []}


def build_waypoint_config(view: MeshView, proxy: Proxy, secrets: dict[str, Body] | None = None,
                          scope: WaypointScope | None = None, dial: Callable[[str], str] = _same,
                          skip_envoy_filters: frozenset[str] = frozenset()) -> WaypointConfig:
    """`dial(pod_ip)` is the address the waypoint connects to for a pod (the placement's business:
    the pod IP itself in the cluster, a loopback alias when everything runs on the host).
    `skip_envoy_filters`: EnvoyFilters ("<ns>/<name>") to leave out (ones Envoy rejected)."""
    scope = scope or find_scope(view, proxy.namespace, proxy.waypoint)
    wp = scope.waypoint
    problems = Problems()
    clusters: dict[str, Body] = {c["name"]: c for c in build_static_clusters(proxy)}
    endpoints: dict[str, Body] = {}
    hashing: dict[str, list[Body]] = {}  # cluster -> the route hash_policy its DR's consistentHash needs
    by_host = {h: s for s in scope.services for h in _hosts(s)}
    rules = {(s.kind, s.namespace, s.name): find_destination_rule(view, s, wp) for s in scope.services}

    for svc in scope.services:
        dr = rules[(svc.kind, svc.namespace, svc.name)]
        subsets = {s.name: dict(s.labels or {}) for s in (dr.spec.subsets or [])} if dr else {}
        for port in svc.ports:
            for kind in port_kinds(port):
                for subset in [None, *subsets]:
                    name = cluster_name(port.port, kind + (f"/{subset}" if subset else ""), svc.hostname)
                    cluster, notes = build_service_cluster(name, svc.hostname, svc.name, svc.namespace,
                                                           detect_protocol(port), subset, dr, port.port)
                    for note in notes:
                        problems.add(f"DestinationRule {dr.namespace}/{dr.name}", note)
                    clusters[name] = cluster
                    hash_policy = build_hash_policy(merge_policy(dr, port.port, subset))
                    if hash_policy:
                        hashing[name] = hash_policy
                    endpoints[name] = _endpoints(name, view, svc, port.port,
                                                 subsets.get(subset) if subset else None, dial)

    def route_for(svc: ServiceInfo, port: int) -> Body:
        def resolve(host: str, dest_port: int | None, subset: str | None) -> str | None:
            target = by_host.get(resolve_host(host, svc.namespace))
            if target is None:
                return None
            ports = [p.port for p in target.ports]
            chosen = dest_port or (port if target is svc else (ports[0] if len(ports) == 1 else None))
            if chosen not in ports:
                return None
            kind = "http" + (f"/{subset}" if subset else "")
            name = cluster_name(chosen, kind, target.hostname)
            return name if name in clusters else None

        target = RouteTarget(svc.hostname, svc.namespace, port, resolve, hashing.get)
        name = cluster_name(port, "http", svc.hostname)
        return build_route_config(name, target, find_routes_for(view, svc, wp, port), problems)

    policies = list(view.index.of("AuthorizationPolicy"))

    applied = {(s.kind, s.namespace, s.name): find_waypoint_policies(policies, wp.namespace, wp.name, s.namespace,
                                                                     s.name, s.kind) for s in scope.services}
    applied[None] = find_waypoint_policies(policies, wp.namespace, wp.name)  # direct chains: waypoint-wide ones
    ext_authz = build_ext_authz_setup(view, applied.values(), dial)
    clusters.update(ext_authz.clusters)
    endpoints.update(ext_authz.endpoints)
    for where, message in ext_authz.problems:
        problems.add(where, message)

    def authz_for(svc: ServiceInfo | None, network: bool) -> list[Body]:
        """`svc` None: the chains of traffic addressed to a bound pod (waypoint-wide config only)."""
        chain = applied[(svc.kind, svc.namespace, svc.name) if svc else None]
        return build_custom_filters(chain, ext_authz, network) + build_rbac_filters(chain, WAYPOINT, network)

    telemetries = list(view.index.of("Telemetry"))

    def logs_for(svc: ServiceInfo | None) -> list[Body]:
        notes: list[str] = []
        ns, name = (svc.namespace, svc.name) if svc else ("", "")
        logs = build_access_logs(find_access_logging(telemetries, wp.namespace, wp.name, ns, name), notes)
        for note in notes:
            problems.add(f"Telemetry for {ns or wp.namespace}/{name or wp.name}", note)
        return logs

    mesh = find_mesh_config(view)

    def tracing_for(svc: ServiceInfo | None) -> Body | None:
        notes: list[str] = []
        ns, name = (svc.namespace, svc.name) if svc else ("", "")
        decision = find_tracing(telemetries, mesh.defaultProviders and mesh.defaultProviders.tracing, wp.namespace,
                                wp.name, ns, name)
        tracing, collector = build_tracing(decision, mesh, view, proxy, dial, notes)
        if collector:
            clusters[collector.cluster["name"]] = collector.cluster
            if collector.endpoints is not None:
                endpoints[collector.cluster["name"]] = collector.endpoints
        for note in notes:
            problems.add(f"Telemetry for {ns or wp.namespace}/{name or wp.name}", note)
        return tracing

    listeners = {li["name"]: li for li in (build_connect_terminate(proxy),
                                           build_main_internal(scope, authz_for, logs_for, tracing_for),
                                           build_connect_originate())}
    routes = {name: route_for(svc, port) for svc, port, name in find_route_names(scope)}
    resources = {P.CLUSTER: clusters, P.ENDPOINT: endpoints, P.LISTENER: listeners, P.ROUTE: routes,
                 P.SECRET: dict(secrets or {})}
    envoy_filters = [f for f in find_envoy_filters(list(view.index.of("EnvoyFilter")), wp.namespace, wp.name,
                                                   scope.services)
                     if f.key not in skip_envoy_filters]
    resources, notes = apply_envoy_filters(resources, envoy_filters)
    for where, message in notes:
        problems.add(where, message)
    return WaypointConfig(resources, tuple(dict.fromkeys(problems.items)), tuple(f.key for f in envoy_filters))
