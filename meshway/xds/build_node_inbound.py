"""The inbound half of a node proxy (ztunnel's :15008): terminate HBONE (mTLS, CONNECT) and deliver
the tunnel's bytes to the `:authority` address (the destination pod IP:port). Pure."""
from __future__ import annotations

from typing import Any

from .. import labels as L
from .build_listeners import BUFFER_LIMIT, HBONE_WINDOWS, HCM, build_tls_context
from .protos import typed

Body = dict[str, Any]
INBOUND_CLUSTER = "inbound_original_dst"


def build_node_inbound_listener(listen_ip: str, trust_domain: str = L.CLUSTER_DOMAIN,
                                name: str = "hbone_inbound") -> Body:
    deliver = {"name": "deliver_to_authority",
               "typed_config": typed("envoy.extensions.filters.http.set_filter_state.v3.Config", on_request_headers=[{
                   "object_key": "envoy.network.transport_socket.original_dst_address",
                   "format_string": {"text_format_source": {"inline_string": "%REQ(:AUTHORITY)%"}},
                   "shared_with_upstream": "ONCE"}])}
    hcm = typed(HCM, stat_prefix=name, codec_type="HTTP2", route_config={
        "name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [{
            "match": {"connect_matcher": {}},
            "route": {"cluster": INBOUND_CLUSTER, "upgrade_configs": [{"upgrade_type": "CONNECT",
                                                                       "connect_config": {}}]}}]}]},
        upgrade_configs=[{"upgrade_type": "CONNECT"}],
        http2_protocol_options={"allow_connect": True, "max_concurrent_streams": 200, **HBONE_WINDOWS},
        stream_idle_timeout="0s",
        http_filters=[deliver, {"name": "envoy.filters.http.router",
                                "typed_config": typed("envoy.extensions.filters.http.router.v3.Router")}])
    return {"name": name, "address": {"socket_address": {"address": listen_ip, "port_value": L.HBONE_PORT}},
            "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
            "filter_chains": [{
                "transport_socket": build_tls_context("DownstreamTlsContext", trust_domain,
                                                      {"require_client_certificate": True}),
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}


def build_node_inbound_cluster() -> Body:
    return {"name": INBOUND_CLUSTER, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "10s", "cleanup_interval": "60s"}
