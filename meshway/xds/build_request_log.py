"""The request log every waypoint HTTP chain streams to the control plane (pure): Istio's request
metrics with the caller's identity, which stock Envoy's stats cannot carry.

Stock Envoy has no `istio.stats` filter, and its stats are per cluster: they know neither the caller
nor the requests the waypoint answers itself (an RBAC 403, a 429, a fault abort, no route). So each
HTTP chain of `main_internal` gets Envoy's gRPC access logger (`envoy.access_loggers.http_grpc`) on
the control-plane connection (the `xds-grpc` cluster of the bootstrap): one entry per downstream
request, with the HBONE peer's SPIFFE identity (filter state `io.istio.peer_principal`, shared from
`connect_terminate`), the caller's pod address its node proxy wrote on the CONNECT
(`build_peer_source.PEER_FORWARDED`) and the chain's service as custom tags (a local reply has no upstream cluster to
name it). `meshway.observe.requests` turns the entries into `istio_requests_total` and the duration
and size histograms. No batching (`buffer_size_bytes: 0`): an entry is sent when its request ends, so
a scrape right after a client's last response counts it.
"""
from __future__ import annotations

from typing import Any

from ..mesh.view import ServiceInfo
from .bootstrap import XDS_CLUSTER
from .build_peer_source import PEER_FORWARDED
from .protos import typed

Body = dict[str, Any]
LOG_NAME = "istio-requests"
PEER_PRINCIPAL = "io.istio.peer_principal"
SERVICE_TAGS = ("destination_service", "destination_service_name", "destination_service_namespace")


def build_service_tags(svc: ServiceInfo | None) -> dict[str, str]:
    """The destination labels a chain knows without an upstream cluster (none for pod-addressed traffic)."""
    if svc is None:
        return {}
    return dict(zip(SERVICE_TAGS, (svc.hostname, svc.name, svc.namespace)))


def build_request_log(svc: ServiceInfo | None) -> Body:
    """The gRPC access logger of one waypoint HTTP chain (`svc` None: the `direct-http` chain)."""
    tags = [{"tag": k, "literal": {"value": v}} for k, v in build_service_tags(svc).items()]
    common: Body = {"log_name": LOG_NAME, "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
                    "buffer_size_bytes": 0, "filter_state_objects_to_log": [PEER_PRINCIPAL, PEER_FORWARDED]}
    if tags:
        common["custom_tags"] = tags
    return {"name": "envoy.access_loggers.http_grpc", "typed_config": typed(
        "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig", common_config=common)}
