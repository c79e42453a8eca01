"""Which pod a tunnel comes from, told to the next hop (pure): the source pod of Istio's metrics.

Istio's ztunnel opens its HBONE connections from inside the client pod's network namespace, so a
waypoint or a destination ztunnel finds the caller's workload by the connection's source address
(Istio's `workload_discovery`), and it also sends the caller's address in the CONNECT's `Forwarded`
header (RFC 7239). meshway's node proxy is one Envoy in the node's namespace: every tunnel comes
from the node, and a SPIFFE identity names a service account, not a pod. So:

- the client's node proxy writes `forwarded: for=<pod IP>` on every CONNECT it originates
  (`build_forwarded_headers`; `tunneling_config.headers_to_add`, which replaces any header of the
  same name). Envoy builds that request itself: the pod's own bytes ride inside the tunnel, so an
  application cannot set or change it. The chains that reach `connect_originate` through an
  internal listener hand the pod's address on first (`build_source_address_state`: the internal
  listener's `original_dst` filter restores it as the downstream address);
- the waypoint keeps the CONNECT's header as filter state (`PEER_FORWARDED`, set on
  `connect_terminate` next to the peer's principal, never from the requests inside the tunnel) and
  logs it with each request (`build_request_log`);
- the destination's node proxy logs each tunnel to a local pod with the header and the mTLS peer
  (`build_tunnel_log`: Envoy's gRPC access logger, when the tunnel is established, every
  `TUNNEL_FLUSH` while it lasts and when it ends), for the `reporter="destination"` TCP series;
- the client's node proxy logs each captured connection of its outbound chains the same way
  (`build_connection_log`, the chain's identity and destination as custom tags): the connection's
  source address is the pod itself (capture keeps it, and the chain was chosen by it), as Istio's
  ztunnel knows the pod whose connection it captured, for the `reporter="source"` TCP series.

The control plane trusts the address only for a pod whose identity is the tunnel's mTLS peer
(`meshway.observe.tunnels.find_source_pod`): a peer can name no pod outside its own identity.
"""
from __future__ import annotations

from typing import Any

from ..mesh.view import PodInfo
from .bootstrap import XDS_CLUSTER
from .protos import typed
from .stat_tags import build_workload_tags

Body = dict[str, Any]
FORWARDED = "forwarded"
PEER_FORWARDED = "io.meshway.peer_forwarded"  # the waypoint's filter state: the CONNECT's `forwarded`
REMOTE_IP = "envoy.filters.listener.original_dst.remote_ip"
TUNNEL_LOG_NAME = "meshway-tunnels"
CONNECTION_LOG_NAME = "meshway-connections"
TUNNEL_FLUSH = "5s"  # a long tunnel's bytes reach the control plane at least this often


def build_forwarded_headers() -> list[Body]:
    """`tunneling_config.headers_to_add` of a node proxy's CONNECT: the downstream (the pod) address."""
    return [{"header": {"key": FORWARDED, "value": "for=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def build_source_address_state() -> Body:
    """A network filter handing the pod's address to an internal listener (`connect_originate`),
    whose `original_dst` listener filter makes it that connection's downstream address."""
    return {"name": "envoy.filters.network.set_filter_state", "typed_config": typed(
        "envoy.extensions.filters.network.set_filter_state.v3.Config", on_new_connection=[{
            "object_key": REMOTE_IP,
            "format_string": {"text_format_source": {"inline_string": "%DOWNSTREAM_REMOTE_ADDRESS%"}},
            "shared_with_upstream": "ONCE"}])}


def build_tunnel_tags(pod: PodInfo, identity: str) -> dict[str, str]:
    """The destination labels of a local pod's tunnels, as its inbound cluster's stats carried them."""
    return {"reporter": "destination", "request_protocol": "tcp", "connection_security_policy": "mutual_tls",
            **{k: v for k, v in build_workload_tags(pod, identity).items() if v}}


def build_tunnel_log(pod: PodInfo, identity: str) -> Body:
    """The gRPC access logger of a local pod's HBONE chain (one entry per CONNECT stream and event)."""
    tags = [{"tag": k, "literal": {"value": v}} for k, v in build_tunnel_tags(pod, identity).items()]
    return {"name": "envoy.access_loggers.http_grpc", "typed_config": typed(
        "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
        common_config={"log_name": TUNNEL_LOG_NAME, "transport_api_version": "V3",
                       "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
                       "buffer_size_bytes": 0, "custom_tags": tags},
        additional_request_headers_to_log=[FORWARDED])}


def build_tunnel_log_options() -> Body:
    """The HBONE chain's `access_log_options`: an entry when a tunnel is established and periodically."""
    return {"flush_log_on_tunnel_successfully_established": True, "access_log_flush_interval": TUNNEL_FLUSH}


def build_connection_log(tags: dict[str, str]) -> Body:
    """The gRPC access logger of a node proxy's outbound tcp_proxy: one entry per captured connection
    and event, with the chain's source-side labels (`source_principal` its identity, the destination)."""
    return {"name": "envoy.access_loggers.tcp_grpc", "typed_config": typed(
        "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
        common_config={"log_name": CONNECTION_LOG_NAME, "transport_api_version": "V3",
                       "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}, "buffer_size_bytes": 0,
                       "custom_tags": [{"tag": k, "literal": {"value": v}} for k, v in tags.items() if v]})}


def build_connection_log_options() -> Body:
    """A tcp_proxy's `access_log_options`: an entry when the upstream is connected and periodically."""
    return {"flush_access_log_on_connected": True, "access_log_flush_interval": TUNNEL_FLUSH}
