"""Waypoint clusters (istio-facts §1.6): `main_internal`, `encap`, `connect_originate`, and one EDS
cluster per bound service port (and DestinationRule subset) named `inbound-vip|PORT|KIND[/SUBSET]|FQDN`.
DestinationRule traffic policy becomes load balancing, circuit breakers and outlier detection."""
from __future__ import annotations

from typing import Any

from ..model.durations import parse_duration
from ..model.istio import ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, OutlierDetection, \
    TrafficPolicy
from .build_listeners import ADS, BUFFER_LIMIT, HBONE_WINDOWS, build_tls_context
from .protos import typed
from .proxy import Proxy
from .stat_tags import build_stat_name

Body = dict[str, Any]
MAX = 4294967295
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LB = {"ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST", "LEAST_CONN": "LEAST_REQUEST",
      "RANDOM": "RANDOM", "UNSPECIFIED": "LEAST_REQUEST"}


def _seconds(text: str) -> str:
    return f"{parse_duration(text):.9g}s"


def _internal_upstream(passthrough: bool) -> Body:
    config = typed("envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                   transport_socket={"name": "envoy.transport_sockets.raw_buffer", "typed_config": typed(
                       "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")})
    if passthrough:
        config["passthrough_metadata"] = [{"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"},
                                          {"kind": {"host": {}}, "name": "istio"}]
    return {"name": "envoy.transport_sockets.internal_upstream", "typed_config": config}


def _default_breakers() -> Body:
    return {"thresholds": [{"max_connections": MAX, "max_pending_requests": MAX, "max_requests": MAX,
                            "max_retries": MAX, "track_remaining": True}]}


def _static_internal(name: str, listener: str) -> Body:
    """Cluster to an internal listener, speaking whatever protocol the downstream spoke."""
    options = {"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}
    return {
        "name": name, "type": "STATIC", "alt_stat_name": f"{name};", "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "envoy_internal_address": {"server_listener_name": listener}}}}]}]},
        "transport_socket": _internal_upstream(False),
        "circuit_breakers": _default_breakers(),
        "typed_extension_protocol_options": {HTTP_OPTIONS: typed(
            HTTP_OPTIONS, common_http_protocol_options={"idle_timeout": "300s"}, **options)},
    }


def build_connect_originate(proxy: Proxy) -> Body:
    return {
        "name": "connect_originate", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s", "cleanup_interval": "60s",
        "original_dst_lb_config": {"upstream_port_override": 15008},
        "circuit_breakers": _default_breakers(), "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "typed_extension_protocol_options": {HTTP_OPTIONS: typed(
            HTTP_OPTIONS, common_http_protocol_options={"idle_timeout": "3600s"},
            explicit_http_config={"http2_protocol_options": {"allow_connect": True, **HBONE_WINDOWS}})},
        "transport_socket": build_tls_context("UpstreamTlsContext", proxy.trust_domain),
    }


def build_static_clusters(proxy: Proxy) -> list[Body]:
    return [_static_internal("main_internal", "main_internal"),
            _static_internal("encap", "connect_originate"),
            build_connect_originate(proxy)]


def merge_policy(dr: DestinationRule | None, port: int, subset: str | None) -> TrafficPolicy | None:
    """DR trafficPolicy, with the port's portLevelSettings and then the subset's policy layered on."""
    if dr is None:
        return None
    layers = [dr.spec.trafficPolicy]
    for tp in (dr.spec.trafficPolicy.portLevelSettings or []) if dr.spec.trafficPolicy else []:
        if tp.port and tp.port.number == port:
            layers.append(tp)
    for s in dr.spec.subsets or []:
        if s.name == subset and s.trafficPolicy:
            layers.append(s.trafficPolicy)
            for tp in s.trafficPolicy.portLevelSettings or []:
                if tp.port and tp.port.number == port:
                    layers.append(tp)
    merged: Body = {}
    for layer in layers:
        if layer is not None:
            merged.update({k: v for k, v in layer.model_dump(exclude_none=True).items()
                           if k not in ("portLevelSettings", "port")})
    return TrafficPolicy.model_validate(merged, strict=False) if merged else None


def apply_policy(cluster: Body, policy: TrafficPolicy | None) -> list[str]:
    """DR traffic policy onto a cluster dict. Returns notes about parts not applied."""
    notes: list[str] = []
    if policy is None:
        return notes
    if policy.loadBalancer:
        _apply_load_balancer(cluster, policy.loadBalancer, notes)
    if policy.connectionPool:
        _apply_connection_pool(cluster, policy.connectionPool)
    if policy.outlierDetection:
        _apply_outlier_detection(cluster, policy.outlierDetection)
    if policy.tls and policy.tls.mode in ("SIMPLE", "MUTUAL"):
        notes.append(f"tls.mode {policy.tls.mode} origination is not supported yet; traffic stays in HBONE")
    return notes


def _apply_load_balancer(cluster: Body, lb: LoadBalancerSettings, notes: list[str]) -> None:
    if lb.consistentHash:
        ch = lb.consistentHash
        if ch.maglev is not None:
            cluster["lb_policy"] = "MAGLEV"
            if ch.maglev.get("tableSize"):
                cluster["maglev_lb_config"] = {"table_size": int(ch.maglev["tableSize"])}
        else:
            cluster["lb_policy"] = "RING_HASH"
            size = (ch.ringHash or {}).get("minimumRingSize") or ch.minimumRingSize
            if size:
                cluster["ring_hash_lb_config"] = {"minimum_ring_size": int(size)}
    elif lb.simple in LB:
        cluster["lb_policy"] = LB[lb.simple]
    elif lb.simple == "PASSTHROUGH":
        notes.append("loadBalancer.simple PASSTHROUGH is not supported on waypoints; using LEAST_REQUEST")
    warmup = (lb.warmup or {}).get("duration") or lb.warmupDurationSecs
    key = {"ROUND_ROBIN": "round_robin_lb_config", "LEAST_REQUEST": "least_request_lb_config"}.get(
        cluster.get("lb_policy", ""))
    if warmup and key:  # slow start: new endpoints get traffic gradually (Istio's warmup)
        slow: Body = {"slow_start_window": _seconds(str(warmup))}
        if (lb.warmup or {}).get("aggression") is not None:
            slow["aggression"] = {"default_value": float(lb.warmup["aggression"]), "runtime_key": "meshway.warmup"}
        if (lb.warmup or {}).get("minimumPercent") is not None:
            slow["min_weight_percent"] = {"value": float(lb.warmup["minimumPercent"])}
        cluster[key] = {"slow_start_config": slow}


def _apply_connection_pool(cluster: Body, pool: ConnectionPoolSettings) -> None:
    thresholds = cluster["circuit_breakers"]["thresholds"][0]
    common: Body = {}
    if pool.tcp:
        tcp = pool.tcp
        if tcp.maxConnections is not None:
            thresholds["max_connections"] = tcp.maxConnections
        if tcp.connectTimeout:
            cluster["connect_timeout"] = _seconds(tcp.connectTimeout)
        if tcp.tcpKeepalive is not None:
            ka = tcp.tcpKeepalive
            keepalive: Body = {}
            if ka.get("probes"):
                keepalive["keepalive_probes"] = int(ka["probes"])
            for field, key in (("time", "keepalive_time"), ("interval", "keepalive_interval")):
                if ka.get(field):
                    keepalive[key] = max(1, round(parse_duration(str(ka[field]))))
            cluster["upstream_connection_options"] = {"tcp_keepalive": keepalive}
        if tcp.maxConnectionDuration:
            common["max_connection_duration"] = _seconds(tcp.maxConnectionDuration)
    http = pool.http
    if http:
        for field, key in (("http1MaxPendingRequests", "max_pending_requests"), ("http2MaxRequests", "max_requests"),
                           ("maxRetries", "max_retries")):
            if getattr(http, field) is not None:
                thresholds[key] = getattr(http, field)
        if http.idleTimeout:
            common["idle_timeout"] = _seconds(http.idleTimeout)
        if http.maxRequestsPerConnection:
            common["max_requests_per_connection"] = http.maxRequestsPerConnection
    upgrade = bool(http and http.h2UpgradePolicy == "UPGRADE")
    client_protocol = bool(http and http.useClientProtocol)
    streams = http.maxConcurrentStreams if http else None
    options = cluster.setdefault("typed_extension_protocol_options", {})
    if not (common or upgrade or client_protocol or streams and HTTP_OPTIONS in options):
        return  # (max concurrent streams limit HTTP/2 upstreams only)
    proto = options.get(HTTP_OPTIONS) or typed(HTTP_OPTIONS, explicit_http_config={"http_protocol_options": {}})
    if common:
        proto.setdefault("common_http_protocol_options", {}).update(common)
    if client_protocol:  # Istio: useClientProtocol wins over h2UpgradePolicy
        proto.pop("explicit_http_config", None)
        proto["use_downstream_protocol_config"] = {"http_protocol_options": {}, "http2_protocol_options": {}}
    elif upgrade:
        proto.pop("use_downstream_protocol_config", None)
        proto["explicit_http_config"] = {"http2_protocol_options": {}}
    h2 = (proto.get("explicit_http_config") or proto.get("use_downstream_protocol_config") or {}).get(
        "http2_protocol_options")
    if streams and h2 is not None:
        h2["max_concurrent_streams"] = streams
    options[HTTP_OPTIONS] = proto


def _apply_outlier_detection(cluster: Body, od: OutlierDetection) -> None:
    out: Body = {"enforcing_consecutive_5xx": 0, "enforcing_consecutive_gateway_failure": 0,
                 "enforcing_success_rate": 0}
    five = od.consecutive5xxErrors if od.consecutive5xxErrors is not None else od.consecutiveErrors
    if five:
        out.update(consecutive_5xx=five, enforcing_consecutive_5xx=100)
    if od.consecutiveGatewayErrors:
        out.update(consecutive_gateway_failure=od.consecutiveGatewayErrors,
                   enforcing_consecutive_gateway_failure=100)
    if od.interval:
        out["interval"] = _seconds(od.interval)
    if od.baseEjectionTime:
        out["base_ejection_time"] = _seconds(od.baseEjectionTime)
    if od.maxEjectionPercent is not None:
        out["max_ejection_percent"] = od.maxEjectionPercent
    if od.minHealthPercent is not None:
        cluster.setdefault("common_lb_config", {})["healthy_panic_threshold"] = {"value": od.minHealthPercent}
    cluster["outlier_detection"] = out


def build_hash_policy(policy: TrafficPolicy | None) -> list[Body] | None:
    """The route `hash_policy` a DestinationRule's consistentHash needs (Istio's
    consistentHashToHashPolicy): without it a ring-hash cluster hashes nothing and picks at random."""
    ch = policy.loadBalancer.consistentHash if policy and policy.loadBalancer else None
    if ch is None:
        return None
    if ch.httpHeaderName:
        return [{"header": {"header_name": ch.httpHeaderName}}]
    if ch.httpCookie:
        cookie: Body = {"name": ch.httpCookie.get("name", "")}
        if ch.httpCookie.get("path"):
            cookie["path"] = ch.httpCookie["path"]
        if ch.httpCookie.get("ttl"):
            cookie["ttl"] = _seconds(ch.httpCookie["ttl"])
        return [{"cookie": cookie}]
    if ch.useSourceIp:
        return [{"connection_properties": {"source_ip": True}}]
    if ch.httpQueryParameterName:
        return [{"query_parameter": {"name": ch.httpQueryParameterName}}]
    return None


def build_service_stat_name(name: str, svc_host: str, svc_name: str, svc_ns: str, subset: str | None,
                            dr: DestinationRule | None) -> str:
    """The cluster's stats carry Istio's destination labels (`stat_tags`); the version is the
    `version` label the DestinationRule subset selects, if it selects one."""
    labels = next((s.labels or {} for s in (dr.spec.subsets or []) if s.name == subset), {}) if dr else {}
    return build_stat_name(name, {
        "reporter": "waypoint", "request_protocol": name.split("|")[2].split("/")[0],
        "destination_service": svc_host, "destination_service_name": svc_name,
        "destination_service_namespace": svc_ns, "destination_version": labels.get("version", "")})


def build_service_cluster(name: str, svc_host: str, svc_name: str, svc_ns: str, protocol: str,
                          subset: str | None, dr: DestinationRule | None, port: int) -> tuple[Body, list[str]]:
    cluster: Body = {
        "name": name, "type": "EDS", "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
        "alt_stat_name": build_service_stat_name(name, svc_host, svc_name, svc_ns, subset, dr),
        "track_cluster_stats": {"request_response_sizes": True},
        "eds_cluster_config": {"service_name": name, "eds_config": {**ADS, "initial_fetch_timeout": "0s"}},
        "circuit_breakers": _default_breakers(),
        "transport_socket": _internal_upstream(True),
        "metadata": {"filter_metadata": {"istio": {
            "services": [{"host": svc_host, "name": svc_name, "namespace": svc_ns}],
            **({"config": f"/apis/networking.istio.io/v1/namespaces/{dr.namespace}/destination-rule/{dr.name}"}
               if dr else {}),
            **({"subset": subset} if subset else {})}}},
    }
    if protocol == "http2":
        cluster["typed_extension_protocol_options"] = {HTTP_OPTIONS: typed(
            HTTP_OPTIONS, explicit_http_config={"http2_protocol_options": {}})}
    elif protocol == "auto":
        cluster["typed_extension_protocol_options"] = {HTTP_OPTIONS: typed(
            HTTP_OPTIONS, use_downstream_protocol_config={"http_protocol_options": {}, "http2_protocol_options": {}})}
    notes = apply_policy(cluster, merge_policy(dr, port, subset))
    if protocol == "tcp":  # HTTP connection-pool settings do not apply to TCP clusters
        cluster.pop("typed_extension_protocol_options", None)
    return cluster, notes
