"""Waypoint listeners (istio-facts §1.3-§1.5): `connect_terminate` (HBONE in), `main_internal`
(one chain per bound service VIP:port, `direct-*` chains for bound pods), `connect_originate`
(HBONE out). Pure: scope + routes -> listener dicts."""
from __future__ import annotations

from typing import Any, Callable

from .. import labels as L
from ..mesh.view import ServiceInfo
from .build_peer_source import FORWARDED, PEER_FORWARDED
from .protos import typed
from .memo import MISSING, Memo
from .scope import WaypointScope, cluster_name, detect_protocol, port_kinds
from .proxy import Proxy

Body = dict[str, Any]
ADS = {"ads": {}, "resource_api_version": "V3"}
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ORIGINAL_DST_LOCAL = "envoy.filters.listener.original_dst.local_ip"
ORIGINAL_DST_REMOTE = "envoy.filters.listener.original_dst.remote_ip"
# HBONE flow control. HTTP/2 windows as ztunnel's (4 MiB per stream and per connection, its
# `window_size`/`connection_window_size`) instead of Envoy's 256 MiB, so a slow reader holds back
# its own tunnel instead of filling memory; and Envoy's own buffering per connection bounded at
# 32 KiB (Istio's `per_connection_buffer_limit_bytes`; Envoy's default is 1 MiB).
HBONE_WINDOWS = {"initial_stream_window_size": 4 * 2**20, "initial_connection_window_size": 4 * 2**20}
BUFFER_LIMIT = 32 * 1024


def build_tls_context(kind: str, trust_domain: str, extra: Body | None = None, cert: str = "default") -> Body:
    """Downstream/Upstream TLS for HBONE: TLS 1.3 only, ALPN h2, SDS `cert` (`default`) + `ROOTCA`."""
    common = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [{"name": cert, "sds_config": ADS}],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": f"spiffe://{trust_domain}/"}}]},
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": ADS},
        },
    }
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": typed(f"envoy.extensions.transport_sockets.tls.v3.{kind}", common_tls_context=common,
                                  **(extra or {}))}


def _state(key: str, fmt: str, string_object: bool = False) -> Body:
    entry = {"object_key": key, "format_string": {"text_format_source": {"inline_string": fmt}},
             "shared_with_upstream": "ONCE"}
    if string_object:
        entry["factory_key"] = "envoy.string"
    return entry


def build_connect_terminate(proxy: Proxy) -> Body:
    connect_authority = {
        "name": "connect_authority",
        "typed_config": typed("envoy.extensions.filters.http.set_filter_state.v3.Config", on_request_headers=[
            _state(ORIGINAL_DST_LOCAL, "%REQ(:AUTHORITY)%"),
            _state("io.istio.connect_authority", "%REQ(:AUTHORITY)%", True),
            _state(ORIGINAL_DST_REMOTE, "%DOWNSTREAM_REMOTE_ADDRESS%"),
            _state("io.istio.peer_principal", "%DOWNSTREAM_PEER_URI_SAN%", True),
            # The caller's pod as its node proxy wrote it on the CONNECT (`build_peer_source`).
            _state(PEER_FORWARDED, f"%REQ({FORWARDED})%", True),
            _state("io.istio.local_principal", "%DOWNSTREAM_LOCAL_URI_SAN%", True),
        ])}
    hcm = typed(HCM, stat_prefix="connect_terminate", codec_type="HTTP2", route_config={
        "name": "default",
        "virtual_hosts": [{"name": "default", "domains": ["*"], "routes": [{
            "match": {"connect_matcher": {}},
            "route": {"cluster": "main_internal",
                      "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}]}]},
        upgrade_configs=[{"upgrade_type": "CONNECT"}],
        http2_protocol_options={"allow_connect": True, "max_concurrent_streams": 100, **HBONE_WINDOWS,
                                "connection_keepalive": {"interval": "10s", "timeout": "20s"}},
        stream_idle_timeout="0s", use_remote_address=False, forward_client_cert_details="APPEND_FORWARD",
        set_current_client_cert_details={"subject": True, "uri": True, "dns": True},
        http_filters=[connect_authority, {"name": "envoy.filters.http.router",
                                          "typed_config": typed("envoy.extensions.filters.http.router.v3.Router")}])
    return {
        "name": "connect_terminate",
        "address": {"socket_address": {"address": proxy.ip, "port_value": L.HBONE_PORT}},
        "connection_balance_config": {"exact_balance": {}},
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "filter_chains": [{
            "name": "default",
            "transport_socket": build_tls_context("DownstreamTlsContext", proxy.trust_domain,
                                                  {"require_client_certificate": True}),
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
        }],
    }


def _original_dst() -> Body:
    return {"name": "envoy.filters.listener.original_dst",
            "typed_config": typed("envoy.extensions.filters.listener.original_dst.v3.OriginalDst")}


def build_connect_originate() -> Body:
    return {
        "name": "connect_originate",
        "internal_listener": {},
        "use_original_dst": False,
        "listener_filters": [_original_dst()],
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": typed("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                  stat_prefix="connect_originate", cluster="connect_originate",
                                  tunneling_config={"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"}),
        }]}],
    }


def build_http_filters(late: list[Body] | None = None) -> list[Body]:
    """The waypoint HTTP chain (stock-Envoy subset of Istio's order): fault, cors, `late` (Wasm
    plugins of the STATS and UNSPECIFIED phases), router."""
    return [
        {"name": "envoy.filters.http.fault", "typed_config": typed("envoy.extensions.filters.http.fault.v3.HTTPFault")},
        {"name": "envoy.filters.http.cors", "typed_config": typed("envoy.extensions.filters.http.cors.v3.Cors")},
        *(late or []),
        {"name": "envoy.filters.http.router", "typed_config": typed("envoy.extensions.filters.http.router.v3.Router")},
    ]


def build_rds(route_config_name: str) -> Body:
    """Routes over ADS: a route change then updates only this RouteConfiguration, never the listener
    (an in-place listener update drains the connections of the chains it replaces). No initial
    fetch timeout, as Istio's: a listener waits for its routes rather than serve without them."""
    return {"route_config_name": route_config_name, "config_source": {**ADS, "initial_fetch_timeout": "0s"}}


def build_hcm(stat_prefix: str, routes: Body | str, http2: bool = False, authz: list[Body] | None = None,
              access_log: list[Body] | None = None, tracing: Body | None = None, late: list[Body] | None = None
              ) -> Body:
    """`routes`: an inline route config, or the name of the RouteConfiguration served over RDS;
    `authz`: the filters before fault, `late`: those between cors and the router."""
    config = typed(HCM, stat_prefix=stat_prefix, codec_type="AUTO", use_remote_address=False,
                   upgrade_configs=[{"upgrade_type": "websocket"}], stream_idle_timeout="0s", normalize_path=True,
                   server_name="istio-envoy",
                   request_id_extension={"typed_config": typed("envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig")},
                   http_filters=[*(authz or []), *build_http_filters(late)])
    if isinstance(routes, str):
        config["rds"] = build_rds(routes)
    else:
        config["route_config"] = routes
    if http2:
        config["http2_protocol_options"] = {}
    if access_log:
        config["access_log"] = access_log
    if tracing:
        config["tracing"] = tracing
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def _tcp_proxy(cluster: str) -> Body:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": typed("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", stat_prefix=cluster,
                                  cluster=cluster)}


def _keep_destination() -> Body:
    """Copy the restored destination into filter state for one more internal hop (encap)."""
    return {"name": "connect_authority",
            "typed_config": typed("envoy.extensions.filters.network.set_filter_state.v3.Config", on_new_connection=[
                _state(ORIGINAL_DST_LOCAL, "%DOWNSTREAM_LOCAL_ADDRESS%")])}


def _chain_action(name: str) -> Body:
    return {"action": {"name": name, "typed_config": typed("google.protobuf.StringValue", value=name)}}


def _app_protocol_matcher(http_chain: str, tcp_chain: str) -> Body:
    return {"matcher_tree": {
        "input": {"name": "application-protocol", "typed_config": typed(
            "envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput")},
        "exact_match_map": {"map": {"'h2c'": _chain_action(http_chain), "'http/1.1'": _chain_action(http_chain)}}},
        "on_no_match": _chain_action(tcp_chain)}


def _no_authz(svc: ServiceInfo | None, network: bool) -> list[Body]:
    return []


def _no_logs(svc: ServiceInfo | None) -> list[Body]:
    return []


def _no_tracing(svc: ServiceInfo | None) -> Body | None:
    return None


def find_route_names(scope: WaypointScope) -> list[tuple[ServiceInfo, int, str]]:
    """(service, port, RouteConfiguration name) of every HTTP chain: the name is the chain's (Istio's)."""
    return [(svc, port.port, cluster_name(port.port, "http", svc.hostname))
            for svc in scope.services for port in svc.ports if "http" in port_kinds(port)]


def build_service_chains(svc: ServiceInfo, authz_http: list[Body], authz_tcp: list[Body], logs: list[Body],
                         tracing: Body | None, late: list[Body] | None = None) -> tuple[list[Body], Body | None]:
    """One bound service's filter chains in `main_internal` and its entry in the destination
    matcher (VIP -> port -> chain), or None when no port gets a chain."""
    chains: list[Body] = []
    port_map: Body = {}
    for port in svc.ports:
        kinds = port_kinds(port)
        names = {k: cluster_name(port.port, k, svc.hostname) for k in kinds}
        if "http" in names:
            chains.append({"name": names["http"], "filters": [build_hcm(
                f"inbound_0.0.0.0_{port.port};", names["http"], detect_protocol(port) == "http2",
                authz_http, logs, tracing, late)]})
        if "tcp" in names:
            chains.append({"name": names["tcp"], "filters": [*authz_tcp, _tcp_proxy(names["tcp"])]})
        if len(names) == 2:
            port_map[str(port.port)] = {"matcher": _app_protocol_matcher(names["http"], names["tcp"])}
        elif names:
            port_map[str(port.port)] = _chain_action(next(iter(names.values())))
    if not port_map:
        return chains, None
    return chains, {"ranges": [{"address_prefix": ip, "prefix_len": 128 if ":" in ip else 32} for ip in svc.addresses],
                    "on_match": {"matcher": {"matcher_tree": {
                        "input": {"name": "port", "typed_config": typed(
                            "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput")},
                        "exact_match_map": {"map": port_map}}}}}


def build_main_internal(scope: WaypointScope,
                        authz_for: Callable[[ServiceInfo | None, bool], list[Body]] = _no_authz,
                        logs_for: Callable[[ServiceInfo | None], list[Body]] = _no_logs,
                        tracing_for: Callable[[ServiceInfo | None], Body | None] = _no_tracing,
                        memo: Memo | None = None, effects: Callable[[], int] = lambda: 0,
                        late_for: Callable[[ServiceInfo | None], list[Body]] = _no_logs) -> Body:
    """Each HTTP chain takes its routes over RDS, from the RouteConfiguration named as the chain
    (`find_route_names`); `authz_for(service, network)` gives a chain's RBAC filters (HTTP or
    network), `late_for(service)` its HTTP filters between cors and the router (Wasm plugins); the
    callbacks get `None` for the chains of traffic addressed to a bound pod, which only waypoint-wide
    config applies to (their one fixed route stays inline, as Istio's `encap`).
    `memo`: a service's chains are rebuilt only when the service or its filters changed.
    `effects()`: how many notes and clusters the callbacks have added to the build so far. A chain
    whose callbacks added none reads none of the keys of `meshway.xds.dirty` (policies, telemetry,
    services: every change to them is an unknown change), so a build told what changed reuses it
    unchecked; one whose callbacks did (a tracing collector: its endpoints are pods) is always checked."""
    memo = memo if memo is not None else Memo()
    units = []
    for svc in scope.services:
        key = ("chains", svc.kind, svc.namespace, svc.name)
        unit = memo.reuse(key)
        if unit is MISSING:
            before = effects()
            inputs = (svc, authz_for(svc, False), authz_for(svc, True), logs_for(svc), tracing_for(svc), late_for(svc))
            unit = memo.get(key, inputs, lambda: build_service_chains(*inputs),
                            reads=(lambda: ()) if effects() == before else None)
        units.append(unit)
    # Traffic addressed to a bound pod: the waypoint-wide policies and telemetry (`None`: no service).
    direct = [
        {"name": "direct-tcp", "filters": [_keep_destination(), *authz_for(None, True), _tcp_proxy("encap")]},
        {"name": "direct-http", "filters": [_keep_destination(), build_hcm("inbound_0.0.0.0_0;", {
            "name": "encap", "validate_clusters": False, "virtual_hosts": [{
                "name": "inbound|http|0", "domains": ["*"],
                "routes": [{"name": "default", "match": {"prefix": "/"},
                            "route": {"cluster": "encap", "timeout": "0s"}}]}]},
            False, authz_for(None, False), logs_for(None), tracing_for(None), late_for(None))]},
    ]
    pod_ips = tuple(p.ip for p in scope.workloads if p.ip)
    # The same listener object when every part is the same (the protobuf conversion then skips it).
    inputs = (tuple(units), direct, pod_ips)
    return memo.get(("main_internal",), inputs, lambda: _assemble_main_internal(*inputs))


def _assemble_main_internal(units: tuple[tuple[list[Body], Body | None], ...], direct: list[Body],
                            pod_ips: tuple[str, ...]) -> Body:
    chains = [chain for svc_chains, _ in units for chain in svc_chains] + direct
    ranges = [entry for _, entry in units if entry is not None]
    if pod_ips:
        ranges.append({"ranges": [{"address_prefix": ip, "prefix_len": 32} for ip in pod_ips],
                       "on_match": {"matcher": _app_protocol_matcher("direct-http", "direct-tcp")}})
    listener = {
        "name": "main_internal",
        "internal_listener": {},
        "traffic_direction": "INBOUND",
        "listener_filters": [_original_dst(), {
            "name": "envoy.filters.listener.http_inspector",
            "typed_config": typed("envoy.extensions.filters.listener.http_inspector.v3.HttpInspector")}],
        "filter_chains": chains,
    }
    if not ranges:  # nothing bound yet: a matcher that matches nothing (chains are still unique by name)
        ranges.append({"ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 32}],
                       "on_match": _chain_action("direct-tcp")})
    if ranges:
        listener["filter_chain_matcher"] = {"matcher_tree": {
            "input": {"name": "ip", "typed_config": typed(
                "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput")},
            "custom_match": {"name": "ip", "typed_config": typed("xds.type.matcher.v3.IPMatcher",
                                                                 range_matchers=ranges)}}}
    return listener
