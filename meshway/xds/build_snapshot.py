"""One waypoint proxy's complete xDS: listeners, routes, clusters, endpoints, secrets and extension
configs (ECDS: its WasmPlugins), built from a MeshView for exactly the services and workloads bound
to that waypoint. Pure."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import labels as L
from ..mesh.enrollment import detect_ambient
from ..mesh.meshconfig import find_mesh_config
from ..mesh.index import resolve_host
from ..mesh.view import MeshView, PodInfo, ServiceInfo, WaypointInfo
from ..model.istio import DestinationRule, VirtualService
from . import protos as P
from .build_authz import WAYPOINT, build_rbac_filters, find_policy_targets, find_waypoint_policies
from .build_clusters import build_hash_policy, build_service_cluster, build_static_clusters, merge_policy
from .build_extauthz import build_custom_filters, build_ext_authz_setup
from .build_jwt import build_jwks_setup, build_jwt_filter, find_jwt_rules, find_request_authn_targets, \
    find_waypoint_request_authns
from .build_listeners import build_connect_originate, build_connect_terminate, build_main_internal, find_route_names
from .build_routes import Problems, RouteTarget, build_route_config
from .build_request_log import build_request_log
from .build_telemetry import build_access_logs, find_access_logging
from .build_wasm import WasmModule, build_extension_configs, build_wasm_filters, find_named_plugins, \
    find_waypoint_wasm_plugins
from .envoyfilter import apply_envoy_filters, find_envoy_filters
from .build_tracing import build_tracing, find_tracing
from .httproute import convert_http_route, detect_parent
from .dirty import host_keys, pods_key, route_parent_key
from .memo import MISSING, Lookups, Memo
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
    found = [vs for vs in view.index.virtual_services.find(_hosts(svc))
             if vs.namespace in (svc.namespace, wp.namespace)]
    found.sort(key=lambda v: (v.metadata.creationTimestamp or "", v.namespace, v.name))
    return found


def find_routes_for(view: MeshView, svc: ServiceInfo, wp: WaypointInfo, port: int,
                    memo: Memo | None = None) -> list[VirtualService]:
    """VirtualServices for the service, else its attached HTTPRoutes converted (do not mix the two;
    a route is converted again only when it changed, given a memo)."""
    vss = find_virtual_services(view, svc, wp)
    if vss:
        return vss
    memo = memo if memo is not None else Memo()
    converted = []
    for route in view.index.http_routes.get((svc.namespace, svc.name), ()):
        ports = detect_parent(route, svc.namespace, svc.name)
        if ports and (None in ports or port in ports):
            only = None if None in ports else port
            converted.append(memo.get(("http-route", route.namespace, route.name, svc.hostname, only),
                                      (route,), lambda: convert_http_route(route, svc.hostname, only)))
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


def _endpoints(name: str, svc: ServiceInfo, pods: tuple[PodInfo, ...], port_number: int,
               subset_labels: dict | None, dial: Callable[[str], str] = _same,
               outside: frozenset[str] = frozenset()) -> Body:
    """A cluster's endpoints: HBONE (through `connect_originate`) to a pod in the mesh, plain TCP to
    a pod outside it (`outside`: their IPs; it has no node proxy to end a tunnel), as Istio's
    waypoint sends to an endpoint without tunnel support."""
    port = next(p for p in svc.ports if p.port == port_number)
    lb = []
    for pod in pods:
        if subset_labels and any(pod.labels.get(k) != v for k, v in subset_labels.items()):
            continue
        target = resolve_target_port(port, pod)
        if target is None:
            continue
        workload = {"istio": {"workload": f"{pod.name};{pod.namespace}"}}
        if pod.ip in outside:
            lb.append({"endpoint": {"address": {"socket_address": {"address": dial(pod.ip), "port_value": target}}},
                       "health_status": "HEALTHY", "metadata": {"filter_metadata": workload},
                       "load_balancing_weight": 1})
            continue
        address = f"{dial(pod.ip)}:{target}"
        lb.append({"endpoint": {"address": {"envoy_internal_address": {
                       "server_listener_name": "connect_originate", "endpoint_id": address}}},
                   "health_status": "HEALTHY",
                   "metadata": {"filter_metadata": {"envoy.filters.listener.original_dst": {"local": address},
                                                    **workload}},
                   "load_balancing_weight": 1})
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}] if lb else []}


@dataclass(frozen=True)
class ServiceClusters:
    """One bound service's clusters (a port x kind x subset each), their endpoints, the route hash
    policies its DestinationRule asks for, and the notes about that rule."""

    clusters: dict[str, Body]
    endpoints: dict[str, Body]
    hashing: dict[str, list[Body]]
    problems: tuple[tuple[str, str], ...]


def build_service_clusters(svc: ServiceInfo, dr: DestinationRule | None, pods: tuple[PodInfo, ...],
                           dial: Callable[[str], str], outside: frozenset[str] = frozenset()) -> ServiceClusters:
    clusters: dict[str, Body] = {}
    endpoints: dict[str, Body] = {}
    hashing: dict[str, list[Body]] = {}
    problems = []
    subsets = {s.name: dict(s.labels or {}) for s in (dr.spec.subsets or [])} if dr else {}
    for port in svc.ports:
        for kind in port_kinds(port):
            for subset in [None, *subsets]:
                name = cluster_name(port.port, kind + (f"/{subset}" if subset else ""), svc.hostname)
                cluster, notes = build_service_cluster(name, svc.hostname, svc.name, svc.namespace,
                                                       detect_protocol(port), subset, dr, port.port)
                problems += [(f"DestinationRule {dr.namespace}/{dr.name}", note) for note in notes]
                clusters[name] = cluster
                hash_policy = build_hash_policy(merge_policy(dr, port.port, subset))
                if hash_policy:
                    hashing[name] = hash_policy
                endpoints[name] = _endpoints(name, svc, pods, port.port, subsets.get(subset) if subset else None,
                                             dial, outside)
    return ServiceClusters(clusters, endpoints, hashing, tuple(problems))


def build_waypoint_config(view: MeshView, proxy: Proxy, secrets: dict[str, Body] | None = None,
                          scope: WaypointScope | None = None, dial: Callable[[str], str] = _same,
                          skip_envoy_filters: frozenset[str] = frozenset(), memo: Memo | None = None,
                          changed: frozenset | None = None,
                          wasm_modules: Mapping[tuple[str, str], WasmModule] | None = None) -> WaypointConfig:
    """`dial(pod_ip)` is the address the waypoint connects to for a pod (the placement's business:
    the pod IP itself in the cluster, a loopback alias when everything runs on the host).
    `skip_envoy_filters`: EnvoyFilters ("<ns>/<name>") to leave out (ones Envoy rejected).
    `memo`: this proxy's memo (`meshway.xds.memo`): only the units a change touched are rebuilt;
    without one, everything is built from scratch (the same result). `changed`: the keys
    (`meshway.xds.dirty`) changed since the memo's last complete build, if known: units that read
    none of them are reused without being checked. `wasm_modules`: (namespace, name) of a WasmPlugin
    -> its module as the control plane fetched it (`meshway.runtime.wasm_modules`); a plugin missing
    from it is treated as a module that cannot be had."""
    memo = memo if memo is not None else Memo()
    memo.begin(changed)
    build = _WaypointBuild(view, proxy, scope or find_scope(view, proxy.namespace, proxy.waypoint), dial, memo,
                           wasm_modules or {})
    build.add_service_clusters()
    build.add_policies()
    listeners = {li["name"]: li for li in (
        build_connect_terminate(proxy),
        build_main_internal(build.scope, build.authz_for, build.logs_for, build.tracing_for, memo,
                            lambda: build.effects, build.late_for),
        build_connect_originate())}
    names = memo.get(("route-names",), (build.scope.services,), lambda: find_route_names(build.scope))
    routes = {name: build.route_for(svc, port) for svc, port, name in names}
    memo.sweep()
    resources = {P.CLUSTER: build.clusters, P.ENDPOINT: build.endpoints, P.LISTENER: listeners, P.ROUTE: routes,
                 P.SECRET: dict(secrets or {})}
    return build.with_envoy_filters(resources, skip_envoy_filters)


class _WaypointBuild:
    """The steps of one waypoint's build, in order: clusters per bound service, policies, then
    (driven by build_waypoint_config) listeners and routes, and last the EnvoyFilter patches."""

    def __init__(self, view: MeshView, proxy: Proxy, scope: WaypointScope, dial: Callable[[str], str],
                 memo: Memo, wasm_modules: Mapping[tuple[str, str], WasmModule]) -> None:
        self.view, self.proxy, self.scope, self.wp = view, proxy, scope, scope.waypoint
        self.dial, self.memo, self.wasm_modules = dial, memo, wasm_modules
        self.wasm: dict[tuple, dict[str, list[Body]]] = {}  # chain -> phase -> filters (`wasm_for`)
        self.problems = Problems()
        self.clusters: dict[str, Body] = {c["name"]: c for c in build_static_clusters(proxy)}
        self.endpoints: dict[str, Body] = {}
        self.hashing: dict[str, list[Body]] = {}  # cluster -> the route hash_policy its DR's consistentHash needs
        self.by_host = memo.get(("by-host",), (scope.services,),
                                lambda: {h: s for s in scope.services for h in _hosts(s)})
        self.effects = 0  # notes and clusters the listener's callbacks (logs_for, tracing_for) added

    def add_service_clusters(self) -> None:
        for svc in self.scope.services:
            key = ("clusters", svc.kind, svc.namespace, svc.name)
            unit = self.memo.reuse(key)
            if unit is MISSING:
                dr = find_destination_rule(self.view, svc, self.wp)
                pods = tuple(find_service_pods(self.view, svc))
                outside = frozenset(p.ip for p in pods if not detect_ambient(self.view, p))
                inputs = (svc, dr, pods, self.dial, outside)
                unit = self.memo.get(key, inputs, lambda: build_service_clusters(*inputs), reads=lambda: [
                    *host_keys("DestinationRule", _hosts(svc)), pods_key(svc.namespace)])
            self.clusters.update(unit.clusters)
            self.endpoints.update(unit.endpoints)
            self.hashing.update(unit.hashing)
            for where, message in unit.problems:
                self.problems.add(where, message)

    def resolve(self, svc: ServiceInfo, port: int, host: str, dest_port: int | None, subset: str | None) -> str | None:
        """The cluster a route of `svc:port` to (host, port, subset) goes to; None if not served here."""
        target = self.by_host.get(resolve_host(host, svc.namespace))
        if target is None:
            return None
        ports = [p.port for p in target.ports]
        chosen = dest_port or (port if target is svc else (ports[0] if len(ports) == 1 else None))
        if chosen not in ports:
            return None
        name = cluster_name(chosen, "http" + (f"/{subset}" if subset else ""), target.hostname)
        return name if name in self.clusters else None

    def route_for(self, svc: ServiceInfo, port: int) -> Body:
        """The RouteConfiguration of `svc:port`, rebuilt only when the service, its routes, or an
        answer the build got about other clusters (the lookups it recorded) changed."""
        key = ("route", svc.kind, svc.namespace, svc.name, port)
        found = self.memo.reuse(key)
        if found is MISSING:
            found = self._build_route(key, svc, port)
        config, problems = found
        for where, message in problems:
            self.problems.add(where, message)
        return config

    def _build_route(self, key: tuple, svc: ServiceInfo, port: int) -> tuple[Body, tuple]:
        routes = tuple(find_routes_for(self.view, svc, self.wp, port, self.memo))
        name = cluster_name(port, "http", svc.hostname)

        def build(resolve: Callable, hash_policy: Callable) -> tuple[Body, tuple]:
            problems = Problems()
            config = build_route_config(name, RouteTarget(svc.hostname, svc.namespace, port, resolve, hash_policy),
                                        list(routes), problems)
            return config, tuple(problems.items)

        def reads(resolve: Lookups, hash_policy: Lookups) -> list:
            """Its own routes and the DestinationRules of the services its routes resolved to (their
            subsets decide which clusters exist, their consistent hashing the hash policies)."""
            hosts = {resolve_host(args[0], svc.namespace) for args in resolve.seen}
            hosts |= {cluster.rsplit("|", 1)[-1] for (cluster,) in hash_policy.seen}
            targets = [self.by_host[h] for h in hosts if h in self.by_host]
            return [*host_keys("VirtualService", _hosts(svc)), route_parent_key(svc.namespace, svc.name),
                    *host_keys("DestinationRule", [h for t in (svc, *targets) for h in _hosts(t)])]

        lookups = (lambda *a: self.resolve(svc, port, *a), self.hashing.get)
        return self.memo.get(key, (svc, routes), build, lookups, reads)

    def add_policies(self) -> None:
        """AuthorizationPolicies (and the ext_authz providers CUSTOM ones call), Telemetry, MeshConfig."""
        wp = self.wp
        policies = list(self.view.index.of("AuthorizationPolicy"))
        wide = find_waypoint_policies(policies, wp.namespace, wp.name)  # direct chains, and untargeted services
        targets = find_policy_targets(policies)
        self.applied = {(s.kind, s.namespace, s.name): find_waypoint_policies(
            policies, wp.namespace, wp.name, s.namespace, s.name, s.kind) if (s.kind, s.namespace, s.name) in targets
            else wide for s in self.scope.services}
        self.applied[None] = wide
        distinct = {id(chain): chain for chain in self.applied.values()}  # most services share the wide list
        self.ext_authz = build_ext_authz_setup(self.view, distinct.values(), self.dial)
        self.clusters.update(self.ext_authz.clusters)
        self.endpoints.update(self.ext_authz.endpoints)
        for where, message in self.ext_authz.problems:
            self.problems.add(where, message)
        self.telemetries = list(self.view.index.of("Telemetry"))
        self.mesh = find_mesh_config(self.view)
        self.add_request_authns()

    def add_request_authns(self) -> None:
        """RequestAuthentications per chain (as AuthorizationPolicies: a service no policy targets
        gets the waypoint-wide ones) and the clusters their jwksUris are fetched through."""
        wp = self.wp
        authns = list(self.view.index.of("RequestAuthentication"))
        wide = find_waypoint_request_authns(authns, wp.namespace, wp.name)
        targets = find_request_authn_targets(authns)
        self.authns = {(s.kind, s.namespace, s.name): find_waypoint_request_authns(
            authns, wp.namespace, wp.name, s.namespace, s.name, s.kind) if (s.kind, s.namespace, s.name) in targets
            else wide for s in self.scope.services}
        self.authns[None] = wide
        self.jwks = build_jwks_setup(self.view, [wide, *(self.authns[t] for t in targets if t in self.authns)],
                                     self.dial)
        self.clusters.update(self.jwks.clusters)
        self.endpoints.update(self.jwks.endpoints)
        for where, message in self.jwks.problems:
            self.problems.add(where, message)

    def authz_for(self, svc: ServiceInfo | None, network: bool) -> list[Body]:
        """`svc` None: the chains of traffic addressed to a bound pod (waypoint-wide config only)."""
        key = (svc.kind, svc.namespace, svc.name) if svc else None
        chain = self.applied[key]
        if network:
            return [*build_custom_filters(chain, self.ext_authz, True), *build_rbac_filters(chain, WAYPOINT, True)]
        jwt = build_jwt_filter(find_jwt_rules(self.authns[key]), self.jwks)
        wasm = self.wasm_for(svc)
        return [*build_custom_filters(chain, self.ext_authz, False), *wasm["AUTHN"], *([jwt] if jwt else []),
                *wasm["AUTHZ"], *build_rbac_filters(chain, WAYPOINT, False)]

    def wasm_for(self, svc: ServiceInfo | None) -> dict[str, list[Body]]:
        """A chain's WasmPlugin filters by phase (`build_wasm`, once per chain and build: both the
        early and the late filters come from here); module problems are reported."""
        ns, name, kind = (svc.namespace, svc.name, svc.kind) if svc else (None, None, "Service")
        if (kind, ns, name) not in self.wasm:
            plugins = find_waypoint_wasm_plugins(self.view.index.of("WasmPlugin"), self.wp.namespace, self.wp.name,
                                                 ns, name, kind)
            phases, problems = build_wasm_filters(plugins, self.wasm_modules)
            for where, message in problems:
                self.problems.add(where, message)
            self.effects += len(problems)
            self.wasm[(kind, ns, name)] = phases
        return self.wasm[(kind, ns, name)]

    def late_for(self, svc: ServiceInfo | None) -> list[Body]:
        phases = self.wasm_for(svc)
        return [*phases["STATS"], *phases["UNSPECIFIED_PHASE"]]

    def logs_for(self, svc: ServiceInfo | None) -> list[Body]:
        notes: list[str] = []
        ns, name = (svc.namespace, svc.name) if svc else ("", "")
        logs = build_access_logs(find_access_logging(self.telemetries, self.wp.namespace, self.wp.name, ns, name),
                                 notes)
        for note in notes:
            self.problems.add(f"Telemetry for {ns or self.wp.namespace}/{name or self.wp.name}", note)
        self.effects += len(notes)
        return [*logs, build_request_log(svc)]  # the request metrics: always, whatever Telemetry says

    def tracing_for(self, svc: ServiceInfo | None) -> Body | None:
        notes: list[str] = []
        ns, name = (svc.namespace, svc.name) if svc else ("", "")
        mesh, wp = self.mesh, self.wp
        decision = find_tracing(self.telemetries, mesh.defaultProviders and mesh.defaultProviders.tracing,
                                wp.namespace, wp.name, ns, name)
        tracing, collector = build_tracing(decision, mesh, self.view, self.proxy, self.dial, notes)
        if collector:
            self.clusters[collector.cluster["name"]] = collector.cluster
            if collector.endpoints is not None:
                self.endpoints[collector.cluster["name"]] = collector.endpoints
        for note in notes:
            self.problems.add(f"Telemetry for {ns or wp.namespace}/{name or wp.name}", note)
        self.effects += len(notes) + bool(collector)
        return tracing

    def with_envoy_filters(self, resources: dict[str, dict[str, Body]], skip: frozenset[str]) -> WaypointConfig:
        models = list(self.view.index.of("EnvoyFilter"))
        envoy_filters = [f for f in find_envoy_filters(models, self.wp.namespace, self.wp.name, self.scope.services)
                         if f.key not in skip]
        resources, notes = apply_envoy_filters(resources, envoy_filters)
        for where, message in notes:
            self.problems.add(where, message)
        plugins = find_named_plugins(self.view.index.of("WasmPlugin"), resources[P.LISTENER].values())
        if plugins:  # the ECDS resources the chains name, each once
            resources = {**resources, P.EXTENSION_CONFIG: build_extension_configs(plugins, self.wasm_modules)}
        return WaypointConfig(resources, tuple(dict.fromkeys(self.problems.items)),
                              tuple(f.key for f in envoy_filters))
