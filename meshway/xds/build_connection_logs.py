"""Connection logs of node proxies (pure): one JSON line per connection when it closes, with
ztunnel's field names (`src.identity`, `dst.service`, `direction`, ...), as community ztunnel
logs every connection. What a chain knows statically (its source identity, the destination
service or workload) is written in; addresses, peers and byte counts come from Envoy."""
from __future__ import annotations

from typing import Any

from ..mesh.view import PodInfo
from .build_telemetry import build_stdout_log

Body = dict[str, Any]
_COMMON = {
    "start_time": "%START_TIME%",
    "level": "info",
    "scope": "access",
    "message": "connection complete",
    "src.addr": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "dst.addr": "%UPSTREAM_HOST%",
    "bytes_sent": "%BYTES_SENT%",
    "bytes_recv": "%BYTES_RECEIVED%",
    "duration_ms": "%DURATION%",
    "error": "%CONNECTION_TERMINATION_DETAILS%",
    "response_flags": "%RESPONSE_FLAGS%",
}


def _log(fields: Body) -> Body:
    return build_stdout_log({"json_format": {**_COMMON, **fields}, "omit_empty_values": True})


def build_outbound_log(identity: str, service: str | None = None, waypoint: str | None = None,
                       reason: str | None = None) -> Body:
    """A captured connection leaving a pod of `identity`, to a service (or a pod) directly or
    through a waypoint; `dst.hbone_addr` is the original destination carried in the tunnel;
    `reason`: why the chain refuses every connection (guaranteed traversal)."""
    fields = {"direction": "outbound", "src.identity": identity, "dst.hbone_addr": "%DOWNSTREAM_LOCAL_ADDRESS%"}
    if service:
        fields["dst.service"] = service
    if waypoint:
        fields["dst.waypoint"] = waypoint
    if reason:
        fields["reason"] = reason
    return _log(fields)


def build_inbound_log(pod: PodInfo, identity: str) -> Body:
    """An HBONE tunnel ending at a local pod: the caller is the mTLS peer."""
    return _log({"direction": "inbound", "src.identity": "%DOWNSTREAM_PEER_URI_SAN%",
                 "dst.hbone_addr": "%REQ(:AUTHORITY)%", "dst.workload": pod.name,
                 "dst.namespace": pod.namespace, "dst.identity": identity})


def _status(op: str, value: int) -> Body:
    """Tunnels that ended with this status (the chain also logs established and ongoing tunnels for
    the metrics, `build_peer_source.build_tunnel_log`: the connection log keeps one line per tunnel)."""
    return {"and_filter": {"filters": [
        {"status_code_filter": {"comparison": {"op": op, "value": {"default_value": value,
                                                                   "runtime_key": "ztunnel.inbound_log_status"}}}},
        {"log_type_filter": {"types": ["DownstreamEnd"]}}]}}


def build_inbound_logs(pod: PodInfo, identity: str) -> list[Body]:
    """The HBONE chain's loggers: a tunnel the node proxy answered with an error (an L4 policy's 403,
    a 503 when the pod refuses) gets its reason as `error` (the HTTP RBAC's
    `rbac_access_denied_matched_policy[...]`, which only the response code details carry)."""
    ok, refused = build_inbound_log(pod, identity), build_inbound_log(pod, identity)
    ok["filter"] = _status("LE", 399)
    refused["typed_config"]["log_format"]["json_format"]["error"] = "%RESPONSE_CODE_DETAILS%"
    refused["filter"] = _status("GE", 400)
    return [ok, refused]


def build_plaintext_log(pod: PodInfo) -> Body:
    """A plain TCP connection from outside the mesh to a local mesh pod."""
    return _log({"direction": "inbound", "dst.hbone_addr": "%DOWNSTREAM_LOCAL_ADDRESS%",
                 "dst.workload": pod.name, "dst.namespace": pod.namespace})
