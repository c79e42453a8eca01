"""The Envoy bootstrap of a meshway proxy: who it is, where its admin listens, and ADS over a Unix
socket for everything else. Pure: returns a dict to be written as JSON or YAML.

The node metadata may carry the proxy's xDS credential (`meshway.ca.tokens`), so the file is
written owner-only; the admin socket, which can dump the bootstrap, is created 0600 by Envoy."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .stat_tags import build_stats_tags

XDS_CLUSTER = "xds-grpc"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
INTERNAL_LISTENER = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
ADMIN_SOCKET_MODE = 0o600


def build_bootstrap(node_id: str, cluster: str, ads_socket: str | os.PathLike[str],
                    admin_socket: str | os.PathLike[str], delta: bool = True,
                    metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": dict(metadata or {})},
        "admin": {"address": {"pipe": {"path": str(admin_socket), "mode": ADMIN_SOCKET_MODE}}},
        # Istio's metric labels, read from the stat names meshway generates (`stat_tags`); histograms
        # merged every second, so the admin's Prometheus output is at most a second behind.
        "stats_config": {"stats_tags": build_stats_tags()},
        "stats_flush_interval": "1s",
        "static_resources": {"clusters": [build_xds_cluster(ads_socket)]},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": f"type.googleapis.com/{INTERNAL_LISTENER}", "buffer_size_kb": 64},
        }],
    }


def build_xds_cluster(ads_socket: str | os.PathLike[str]) -> dict[str, Any]:
    """The static cluster that reaches the control plane: HTTP/2 (gRPC) to a Unix socket."""
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(ads_socket)}}}}]}],
        },
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    }
