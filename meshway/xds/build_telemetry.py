"""Access logging from the Telemetry API (telemetry.istio.io) for waypoint chains (pure).

Precedence as Istio's: the root namespace's mesh-wide Telemetry, then the namespace-wide one, then
one naming the waypoint or the service in `targetRefs`; the most specific `accessLogging` wins.
Logs are JSON lines on the proxy's stdout in Istio's default field set (plus the caller's SPIFFE
identity), so `meshway logs deploy/<waypoint>` shows them.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from .. import labels as L
from ..model.istio import Telemetry
from .protos import typed

Body = dict[str, Any]
JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
    "source_principal": "%FILTER_STATE(io.istio.peer_principal:PLAIN)%",
}
_EXPR = re.compile(r"^\s*response\.code\s*(>=|<=|==|!=|>|<)\s*(\d{3})\s*$")
_OPS = {">=": ("GE", 0), ">": ("GE", 1), "<=": ("LE", 0), "<": ("LE", -1), "==": ("EQ", 0)}


def build_stdout_log(log_format: Body) -> Body:
    """A file access logger on the proxy's stdout (its log file, read by `meshway logs`)."""
    return {"name": "envoy.access_loggers.file", "typed_config": typed(
        "envoy.extensions.access_loggers.file.v3.FileAccessLog", path="/dev/stdout", log_format=log_format)}


def _refs(t: Telemetry) -> list:
    return list(t.spec.targetRefs or []) + ([t.spec.targetRef] if t.spec.targetRef else [])


def find_access_logging(telemetries: Iterable[Telemetry], waypoint_ns: str, waypoint: str, service_ns: str,
                        service: str) -> list | None:
    """The accessLogging list in force for one service chain of a waypoint (None: not configured)."""
    ranked = []
    for t in telemetries:
        if not t.spec.accessLogging:
            continue
        refs = _refs(t)
        if not refs and not t.spec.selector:
            if t.namespace == L.ROOT_NAMESPACE:
                ranked.append((0, t))
            elif t.namespace in (waypoint_ns, service_ns):
                ranked.append((1, t))
        for ref in refs:
            ns = ref.namespace or t.namespace
            if (ref.kind == "Gateway" and (ns, ref.name) == (waypoint_ns, waypoint)) or \
                    (ref.kind in ("Service", "ServiceEntry") and (ns, ref.name) == (service_ns, service)):
                ranked.append((2, t))
                break
    if not ranked:
        return None
    return max(ranked, key=lambda r: (r[0], r[1].metadata.creationTimestamp or ""))[1].spec.accessLogging


def build_filter(expression: str) -> Body | None:
    """A CEL `response.code OP NNN` expression as Envoy's status-code filter (None if not of that form)."""
    m = _EXPR.match(expression)
    if not m:
        return None
    op, code = m.group(1), int(m.group(2))
    if op == "!=":
        return {"or_filter": {"filters": [
            {"status_code_filter": {"comparison": {"op": "LE", "value": {"default_value": code - 1,
                                                                          "runtime_key": "meshway.al.lt"}}}},
            {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": code + 1,
                                                                          "runtime_key": "meshway.al.gt"}}}}]}}
    env_op, delta = _OPS[op]
    return {"status_code_filter": {"comparison": {"op": env_op, "value": {"default_value": code + delta,
                                                                          "runtime_key": "meshway.al.code"}}}}


def build_access_logs(logging: list | None, problems: list[str]) -> list[Body]:
    if not logging:
        return []
    out = []
    for entry in logging:
        if entry.disabled:
            return []
        providers = [p.name for p in entry.providers or []] or ["envoy"]
        if not any(p in ("envoy", "stdout") for p in providers):
            problems.append(f"access log providers {providers} are not configured (available: envoy)")
            continue
        log = build_stdout_log({"json_format": JSON_FORMAT})
        if entry.filter:
            built = build_filter(entry.filter.expression)
            if built is None:
                problems.append(f"access log filter {entry.filter.expression!r} is not supported "
                                "(supported: response.code <op> NNN); logging every request")
            else:
                log["filter"] = built
        out.append(log)
    return out[:1]
