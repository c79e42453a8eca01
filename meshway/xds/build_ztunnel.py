"""A node proxy (ztunnel) as one Envoy in the node's network namespace (istio-facts §2). Pure.

Capture (iptables in the node namespace, `meshway.runtime.capture`) sends a mesh pod's outbound TCP
to :15001, HBONE for local mesh pods to :15008, and plaintext for them to :15006.

- `ztunnel_outbound` (:15001): chosen by source pod IP (its identity: the client certificate used),
  then destination. A service VIP whose waypoint is ready -> HBONE to the waypoint with
  `:authority` = VIP:port; any other service VIP -> HBONE to one of its pods' :15008 with
  `:authority` = podIP:targetPort; a mesh pod IP -> its workload waypoint if it has one, else HBONE
  to the pod; anything else -> passthrough.
- `ztunnel_inbound` (:15008): TLS with the destination pod's own identity, L4 authorization (RBAC on
  the mTLS peer), then the tunnel's bytes to the `:authority` address.
- `ztunnel_inbound_plaintext` (:15006): plaintext from clients outside the mesh, refused where the
  pod's PeerAuthentication is STRICT (`build_peer_authn`), then the same L4 policy (a policy naming
  principals or namespaces cannot match them), delivered as is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from .. import labels as L
from ..mesh.enrollment import detect_ambient
from ..mesh.peer_authentication import MtlsDecision, decide_peer_authentication
from ..mesh.selection import ACCEPTED, decide_service, decide_workload
from ..mesh.traversal import Guard, Traversal, decide_traversal, find_traversal_guards
from ..mesh.view import MeshView, PodInfo, ServiceInfo
from . import protos as P
from .build_authz import ZTUNNEL, ZTUNNEL_TCP, build_rbac_filters, find_workload_policies
from .build_connection_logs import build_inbound_logs, build_outbound_log, build_plaintext_log
from .build_clusters import HTTP_OPTIONS, _default_breakers, _internal_upstream
from .build_listeners import BUFFER_LIMIT, HBONE_WINDOWS, HCM, _chain_action, _original_dst, build_rds, \
    build_tls_context
from .build_node_inbound import INBOUND_CLUSTER
from .build_peer_authn import build_peer_authn_filter
from .build_peer_source import build_connection_log, build_connection_log_options, build_forwarded_headers, \
    build_source_address_state, build_tunnel_log, build_tunnel_log_options
from .build_traversal import REFUSED_CLUSTER, build_inbound_guard, build_inbound_guard_route, build_plaintext_guard, \
    build_refused_cluster
from .protos import typed
from .memo import Memo
from .scope import find_service_pods, resolve_target_port
from .stat_tags import build_principal, build_stat_name, build_workload_tags

Body = dict[str, Any]
OUTBOUND_PORT, INBOUND_PORT, PLAINTEXT_PORT = 15001, 15008, 15006
PASSTHROUGH = "passthrough"
# A connection to a waypoint replica that just died is refused before the control plane has taken
# the replica out: tcp_proxy tries again, on the next replica (round robin), before giving up.
WAYPOINT_CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class NodeProxy:
    node_id: str
    node: str  # node-1
    trust_domain: str = L.CLUSTER_DOMAIN


def identity_of(pod: PodInfo, trust_domain: str = L.CLUSTER_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{pod.namespace}/sa/{pod.service_account}"


def _h(identity: str) -> str:
    return hashlib.sha1(identity.encode()).hexdigest()[:8]


def find_local_pods(view: MeshView, node: str) -> list[PodInfo]:
    pods = [p for p in view.pods.values() if p.node == node and p.ip and detect_ambient(view, p)]
    return sorted(pods, key=lambda p: (p.namespace, p.name))


def find_mesh_pods(view: MeshView) -> dict[str, PodInfo]:
    return {p.ip: p for p in view.pods.values() if p.ip and detect_ambient(view, p)}


def _tcp(cluster: str, stat: str, tunnel: bool = False, logs: tuple[Body, ...] = (), attempts: int = 1,
         log_options: Body | None = None) -> Body:
    config = typed("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", stat_prefix=stat, cluster=cluster)
    if attempts > 1:
        config["max_connect_attempts"] = attempts
    if tunnel:
        config["tunneling_config"] = {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%",
                                      "headers_to_add": build_forwarded_headers()}
    if logs:
        config["access_log"] = list(logs)
    if log_options:
        config["access_log_options"] = log_options
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def _inbound_cluster(pod: PodInfo, identity: str, plaintext: bool) -> Body:
    """Original-destination cluster of one local pod, one upstream connection per tunnel or plaintext
    connection. The plaintext one's stats are the pod's plaintext inbound connections
    (reporter=destination); the tunnels' series, which name their source, come from the HBONE chain's
    tunnel log instead (`build_peer_source.build_tunnel_log`), so its stats carry no labels."""
    name = f"{'plaintext' if plaintext else 'inbound'}|{pod.namespace}/{pod.name}"
    tags = {"reporter": "destination", "request_protocol": "tcp", "connection_security_policy": "none",
            **build_workload_tags(pod, identity)} if plaintext else None
    return {"name": name, "alt_stat_name": build_stat_name(name, tags), "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s", "cleanup_interval": "60s"}


def _h2_tls_cluster(name: str, identity: str, trust_domain: str, **fields: Any) -> Body:
    return {"name": name, "connect_timeout": "10s", "circuit_breakers": _default_breakers(),
            "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
            "typed_extension_protocol_options": {HTTP_OPTIONS: typed(
                HTTP_OPTIONS, common_http_protocol_options={"idle_timeout": "3600s"},
                explicit_http_config={"http2_protocol_options": {"allow_connect": True, **HBONE_WINDOWS}})},
            "transport_socket": build_tls_context("UpstreamTlsContext", trust_domain, cert=identity), **fields}


class _Outbound:
    """Chains and clusters of one source identity."""

    def __init__(self, view: MeshView, identity: str, trust_domain: str, memo: Memo):
        self.view, self.identity, self.td, self.h, self.memo = view, identity, trust_domain, _h(identity), memo
        self.chains: dict[str, Body] = {}
        self.clusters: dict[str, Body] = {}
        self.listeners: dict[str, Body] = {}
        self.mesh_pods = find_mesh_pods(view)
        # Always present, used or not: removing an internal listener would cut the connections
        # going through it when a destination moves between the direct path and a waypoint.
        _ = self.originate

    @property
    def hbone(self) -> str:
        name = f"hbone|{self.h}"
        if name not in self.clusters:
            self.clusters[name] = _h2_tls_cluster(name, self.identity, self.td, type="ORIGINAL_DST",
                                                  lb_policy="CLUSTER_PROVIDED", cleanup_interval="60s",
                                                  original_dst_lb_config={"upstream_port_override": INBOUND_PORT})
        return name

    @property
    def originate(self) -> str:
        """Internal listener that re-reads the chosen endpoint from metadata and tunnels to it."""
        name = f"connect_originate|{self.h}"
        if name not in self.listeners:
            self.listeners[name] = {"name": name, "internal_listener": {}, "listener_filters": [_original_dst()],
                                    "filter_chains": [{"filters": [_tcp(self.hbone, name, tunnel=True)]}]}
        return name

    def waypoint_cluster(self, wp_key: str) -> str | None:
        ns, name = wp_key.split("/", 1)
        wp = self.view.waypoints.get((ns, name))
        if wp is None:
            return None
        # A bound waypoint is never skipped: its ready replicas, else whichever replicas exist (a
        # restarting one accepts again as soon as it is up), else none, and connections fail.
        replicas = [self.view.pods[key] for key in self.view.pods_by_label.get((ns, L.GATEWAY_NAME, name), ())]
        replicas = [p for p in replicas if p.ip]
        pods = [p for p in replicas if p.ready] or replicas
        cluster = self.waypoint_cluster_name(wp_key)
        endpoints = [{"endpoint": {"address": {"socket_address": {"address": p.ip, "port_value": INBOUND_PORT}}}}
                     for p in sorted(pods, key=lambda p: p.name)]
        self.clusters[cluster] = _h2_tls_cluster(cluster, self.identity, self.td, type="STATIC", load_assignment={
            "cluster_name": cluster, "endpoints": [{"lb_endpoints": endpoints}] if endpoints else []})
        return cluster

    def waypoint_cluster_name(self, wp_key: str) -> str:
        """The cluster of a waypoint, as `destination_matcher` registers it for every waypoint."""
        return f"waypoint|{self.h}|{wp_key}"

    def unit(self, key: tuple, inputs: tuple, build: Callable[[], Any]) -> Any:
        """`build()` memoized with the clusters and chains it adds (see meshway.xds.memo)."""
        def run() -> tuple[Any, dict[str, Body], dict[str, Body]]:
            saved = self.clusters, self.chains
            self.clusters, self.chains = {}, {}
            try:
                return build(), self.clusters, self.chains
            finally:
                self.clusters, self.chains = saved
        value, clusters, chains = self.memo.get((self.identity, *key), inputs, run)
        self.clusters.update(clusters)
        self.chains.update(chains)
        return value

    def chain(self, name: str, filters: list[Body]) -> str:
        self.chains.setdefault(name, {"name": name, "filters": filters})
        return name

    def tcp_chain(self, name: str, cluster: str, log: Body, tags: dict[str, str], tunnel: bool = True,
                  attempts: int = 1, internal: bool = False) -> str:
        """A tcp_proxy chain whose connections are logged to the control plane with Istio's labels
        (reporter=source, `build_peer_source.build_connection_log`: the calling pod is the connection's
        source address); `internal`: its cluster may tunnel through `connect_originate`, which is told
        the pod's address."""
        metrics_log = build_connection_log({"reporter": "source", "request_protocol": "tcp",
                                            "source_principal": build_principal(self.identity), **tags})
        return self.chain(name, [*([build_source_address_state()] if internal else []),
                                 _tcp(cluster, build_stat_name(name), tunnel=tunnel, logs=(log, metrics_log),
                                      attempts=attempts, log_options=build_connection_log_options())])

    def service_chain(self, svc: ServiceInfo, port: int) -> str:
        # The direct cluster exists whether or not a waypoint is in use: removing a cluster would cut
        # the connections still using it when the service moves to its waypoint.
        direct = self.direct_cluster(svc, port)
        decision = decide_service(self.view, svc)
        tags = {"destination_service": svc.hostname, "destination_service_name": svc.name,
                "destination_service_namespace": svc.namespace}
        traversal = decide_traversal(self.view, svc, decision)
        if traversal.enforced and traversal.refused:
            return self.refused_chain(svc, port, traversal, tags)
        if decision.reason == ACCEPTED and decision.waypoint:
            cluster = self.waypoint_cluster_name(decision.waypoint)
            if cluster:
                log = build_outbound_log(self.identity, svc.hostname, decision.waypoint)
                return self.tcp_chain(f"{self.h}|svc|{svc.namespace}/{svc.name}|{port}|waypoint", cluster, log,
                                      {**tags, "connection_security_policy": "mutual_tls"},
                                      attempts=WAYPOINT_CONNECT_ATTEMPTS)
        log = build_outbound_log(self.identity, svc.hostname)
        return self.tcp_chain(f"{self.h}|svc|{svc.namespace}/{svc.name}|{port}", direct, log, tags, tunnel=False,
                              internal=True)

    def refused_chain(self, svc: ServiceInfo, port: int, traversal: Traversal, tags: dict[str, str]) -> str:
        """Guaranteed traversal: the waypoint does not serve this required service, so no connection
        to it goes anywhere (instead of direct): a cluster without endpoints, and the log says why."""
        self.clusters[REFUSED_CLUSTER] = build_refused_cluster()
        reason = f"waypoint traversal required: {traversal.why} ({traversal.refused})"
        log = build_outbound_log(self.identity, svc.hostname, traversal.waypoint, reason=reason)
        return self.tcp_chain(f"{self.h}|svc|{svc.namespace}/{svc.name}|{port}|refused", REFUSED_CLUSTER, log,
                              tags, tunnel=False)

    def direct_cluster(self, svc: ServiceInfo, port: int) -> str:
        """The service's pods: HBONE to mesh pods (through `connect_originate`), plain TCP to others."""
        spec = next(p for p in svc.ports if p.port == port)
        endpoints = []
        for pod in find_service_pods(self.view, svc):
            target = resolve_target_port(spec, pod)
            if target is None:
                continue
            address = f"{pod.ip}:{target}"
            if pod.ip in self.mesh_pods:
                endpoints.append({"endpoint": {"address": {"envoy_internal_address": {
                    "server_listener_name": self.originate, "endpoint_id": address}}},
                    "metadata": {"filter_metadata": {"envoy.filters.listener.original_dst": {"local": address}}}})
            else:
                endpoints.append({"endpoint": {"address": {"socket_address": {"address": pod.ip,
                                                                              "port_value": target}}}})
        cluster = f"svc|{self.h}|{svc.hostname}|{port}"
        self.clusters[cluster] = {
            "name": cluster, "type": "STATIC", "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
            "circuit_breakers": _default_breakers(), "transport_socket": _internal_upstream(True),
            "alt_stat_name": build_stat_name(cluster),
            "load_assignment": {"cluster_name": cluster,
                                "endpoints": [{"lb_endpoints": endpoints}] if endpoints else []}}
        return cluster

    def pod_chain(self, pod: PodInfo) -> str:
        decision = decide_workload(self.view, pod)
        if decision.reason == ACCEPTED and decision.waypoint:
            cluster = self.waypoint_cluster_name(decision.waypoint)
            if cluster:
                log = build_outbound_log(self.identity, waypoint=decision.waypoint)
                return self.tcp_chain(f"{self.h}|pod|{pod.ip}|waypoint", cluster, log, {
                    **build_workload_tags(pod, identity_of(pod, self.td)), "connection_security_policy": "mutual_tls"},
                    attempts=WAYPOINT_CONNECT_ATTEMPTS)
        return self.tcp_chain(f"{self.h}|pod", self.hbone, build_outbound_log(self.identity),
                              {"connection_security_policy": "mutual_tls"})

    def service_range(self, svc: ServiceInfo) -> Body:
        ports = {str(p.port): _chain_action(self.service_chain(svc, p.port)) for p in svc.ports if p.protocol == "TCP"}
        return {"ranges": [{"address_prefix": ip, "prefix_len": 32} for ip in svc.addresses],
                "on_match": {"matcher": {"matcher_tree": {
                    "input": {"name": "port", "typed_config": typed(
                        "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput")},
                    "exact_match_map": {"map": ports}}, "on_no_match": _chain_action(PASSTHROUGH)}}}

    def destination_matcher(self) -> Body:
        for ns, name in sorted(self.view.waypoints):  # kept while the waypoint runs, used or not
            self.waypoint_cluster(f"{ns}/{name}")
        ranges = []
        for svc in sorted(self.view.services.values(), key=lambda s: (s.namespace, s.name)):
            if not svc.addresses or not svc.ports:
                continue
            # What a service's chains and direct clusters read: the service, the waypoint decision,
            # its ready pods and which of them are in the mesh.
            pods = tuple(find_service_pods(self.view, svc))
            decision = decide_service(self.view, svc)
            inputs = (svc, decision, decide_traversal(self.view, svc, decision), pods,
                      tuple(p.ip in self.mesh_pods for p in pods))
            ranges.append(self.unit(("svc", svc.kind, svc.namespace, svc.name), inputs,
                                    lambda: self.service_range(svc)))
        for ip, pod in sorted(self.mesh_pods.items()):
            chain = self.unit(("pod", pod.namespace, pod.name), (pod, decide_workload(self.view, pod)),
                              lambda: self.pod_chain(pod))
            ranges.append({"ranges": [{"address_prefix": ip, "prefix_len": 32}], "on_match": _chain_action(chain)})
        return {"matcher_tree": {
            "input": {"name": "destination-ip", "typed_config": typed(
                "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput")},
            "custom_match": {"name": "ip", "typed_config": typed("xds.type.matcher.v3.IPMatcher",
                                                                 range_matchers=ranges)}},
            "on_no_match": _chain_action(PASSTHROUGH)} if ranges else {"on_no_match": _chain_action(PASSTHROUGH)}


def build_inbound_route(pod: PodInfo, identity: str, per_filter: Body) -> Body:
    """The pod's inbound route (over RDS): CONNECT to its inbound cluster, with the traversal guard's
    per-route rules (`build_traversal`: a route change reaches the tunnels of every connection)."""
    return {"name": f"inbound|{pod.namespace}/{pod.name}", "virtual_hosts": [{
        "name": "inbound", "domains": ["*"], "routes": [{
            "match": {"connect_matcher": {}},
            "route": {"cluster": _inbound_cluster(pod, identity, False)["name"], "upgrade_configs": [
                {"upgrade_type": "CONNECT", "connect_config": {}}]},
            "typed_per_filter_config": per_filter}]}]}


def build_inbound_chain(pod: PodInfo, identity: str, trust_domain: str, authz: list[Body]) -> Body:
    deliver = {"name": "deliver_to_authority",
               "typed_config": typed("envoy.extensions.filters.http.set_filter_state.v3.Config", on_request_headers=[{
                   "object_key": "envoy.network.transport_socket.original_dst_address",
                   "format_string": {"text_format_source": {"inline_string": "%REQ(:AUTHORITY)%"}},
                   "shared_with_upstream": "ONCE"}])}
    hcm = typed(HCM, stat_prefix=f"inbound_hbone_{pod.ip}", codec_type="HTTP2",
                rds=build_rds(f"inbound|{pod.namespace}/{pod.name}"),
                upgrade_configs=[{"upgrade_type": "CONNECT"}], stream_idle_timeout="0s",
                access_log=[*build_inbound_logs(pod, identity), build_tunnel_log(pod, identity)],
                access_log_options=build_tunnel_log_options(),
                http2_protocol_options={"allow_connect": True, "max_concurrent_streams": 200, **HBONE_WINDOWS},
                http_filters=[*authz, deliver, {"name": "envoy.filters.http.router", "typed_config": typed(
                    "envoy.extensions.filters.http.router.v3.Router")}])
    return {"name": f"inbound|{pod.namespace}/{pod.name}",
            "filter_chain_match": {"prefix_ranges": [{"address_prefix": pod.ip, "prefix_len": 32}]},
            "transport_socket": build_tls_context("DownstreamTlsContext", trust_domain,
                                                  {"require_client_certificate": True}, cert=identity),
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}


def build_pod_inbound(pod: PodInfo, trust_domain: str, applied: tuple, mtls: MtlsDecision = MtlsDecision(),
                      guards: tuple[Guard, ...] = ()) -> tuple[Body, Body, dict[str, Body], Body]:
    """A local pod's inbound chains (HBONE, plaintext) and their two clusters, with its guaranteed
    traversal guards (first: they name the refusal), its L4 policies and (plaintext only) its
    PeerAuthentication; and its inbound route."""
    identity = identity_of(pod, trust_domain)
    clusters = {c["name"]: c for c in (_inbound_cluster(pod, identity, plaintext) for plaintext in (False, True))}
    inbound = build_inbound_chain(pod, identity, trust_domain, [
        build_inbound_guard(guards, pod.namespace, trust_domain), *build_rbac_filters(list(applied), ZTUNNEL)])
    route = build_inbound_route(pod, identity, build_inbound_guard_route(guards, pod.namespace, trust_domain))
    plain = {"name": f"plaintext|{pod.namespace}/{pod.name}",
             "filter_chain_match": {"prefix_ranges": [{"address_prefix": pod.ip, "prefix_len": 32}]},
             "filters": [*build_plaintext_guard(guards, pod.namespace), *build_peer_authn_filter(mtls),
                         *build_rbac_filters(list(applied), ZTUNNEL_TCP, network=True),
                         _tcp(f"plaintext|{pod.namespace}/{pod.name}", f"plaintext_{pod.ip}",
                              logs=(build_plaintext_log(pod),))]}
    return inbound, plain, clusters, route


def build_ztunnel_config(view: MeshView, proxy: NodeProxy, memo: Memo | None = None
                         ) -> tuple[dict[str, dict[str, Body]], set[str]]:
    """(resources by type URL, the SPIFFE identities whose certificates it needs as SDS secrets).
    `memo`: the node proxy's memo; a service's chains and clusters (per source identity) and a
    pod's chain are rebuilt only when what they read changed."""
    memo = memo if memo is not None else Memo()
    memo.begin()
    td = proxy.trust_domain
    local = find_local_pods(view, proxy.node)
    policies = list(view.index.of("AuthorizationPolicy"))
    peer_authns = list(view.index.of("PeerAuthentication"))
    identities = {identity_of(p, td) for p in local}
    outbound = {i: _Outbound(view, i, td, memo) for i in sorted(identities)}
    listeners: dict[str, Body] = {}
    clusters: dict[str, Body] = {
        PASSTHROUGH: {"name": PASSTHROUGH, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                      "connect_timeout": "10s", "cleanup_interval": "60s"},
        INBOUND_CLUSTER: {"name": INBOUND_CLUSTER, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                          "connect_timeout": "10s", "cleanup_interval": "60s"},
    }
    source_ranges = []
    for identity, out in outbound.items():
        matcher = out.destination_matcher()
        ips = [p.ip for p in local if identity_of(p, td) == identity]
        source_ranges.append({"ranges": [{"address_prefix": ip, "prefix_len": 32} for ip in ips],
                              "on_match": {"matcher": matcher}})
    chains = {PASSTHROUGH: {"name": PASSTHROUGH, "filters": [_tcp(PASSTHROUGH, PASSTHROUGH)]}}
    for out in outbound.values():
        chains.update(out.chains)
        clusters.update(out.clusters)
        listeners.update(out.listeners)
    outbound_listener: Body = {
        "name": "ztunnel_outbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": OUTBOUND_PORT}},
        "listener_filters": [_original_dst()], "filter_chains": list(chains.values()),
        "filter_chain_matcher": {"matcher_tree": {
            "input": {"name": "source-ip", "typed_config": typed(
                "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput")},
            "custom_match": {"name": "ip", "typed_config": typed("xds.type.matcher.v3.IPMatcher",
                                                                 range_matchers=source_ranges)}},
            "on_no_match": _chain_action(PASSTHROUGH)} if source_ranges else {
            "on_no_match": _chain_action(PASSTHROUGH)}}
    listeners["ztunnel_outbound"] = outbound_listener
    inbound_chains, plain_chains, routes = [], [], {}
    all_guards = find_traversal_guards(view)
    for pod in local:
        applied = tuple(find_workload_policies(policies, pod.namespace, dict(pod.labels)))
        mtls = decide_peer_authentication(peer_authns, pod.namespace, pod.labels)
        guards = all_guards.get((pod.namespace, pod.name), ())
        inbound, plain, pod_clusters, route = memo.get(("inbound", pod.namespace, pod.name), (pod, applied, mtls, td, guards),
                                                lambda: build_pod_inbound(pod, td, applied, mtls, guards))
        clusters.update(pod_clusters)
        routes[route["name"]] = route
        inbound_chains.append(inbound)
        plain_chains.append(plain)
    memo.sweep()
    for name, port, chains_ in (("ztunnel_inbound", INBOUND_PORT, inbound_chains),
                                ("ztunnel_inbound_plaintext", PLAINTEXT_PORT, plain_chains)):
        if chains_:
            listeners[name] = {"name": name, "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
                               "listener_filters": [_original_dst()], "filter_chains": chains_}
    if "ztunnel_inbound" in listeners:  # HBONE from peers
        listeners["ztunnel_inbound"]["per_connection_buffer_limit_bytes"] = BUFFER_LIMIT
    return {P.CLUSTER: clusters, P.ENDPOINT: {}, P.LISTENER: listeners, P.ROUTE: routes, P.SECRET: {}}, identities



def find_service_backends(view: MeshView) -> tuple:
    """(VIP, port, ((pod IP, target port), ...)) of every Service with ready pods, for kube-proxy's DNAT."""
    out = []
    for svc in sorted(view.services.values(), key=lambda s: (s.namespace, s.name)):
        if svc.kind != "Service" or not svc.addresses:
            continue
        for port in svc.ports:
            if port.protocol != "TCP":
                continue
            pods = tuple((p.ip, t) for p in find_service_pods(view, svc)
                         if (t := resolve_target_port(port, p)) is not None)
            if pods:
                out.append((svc.addresses[0], port.port, pods))
    return tuple(out)
