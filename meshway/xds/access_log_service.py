"""Envoy's gRPC access log service (`envoy.service.accesslog.v3.AccessLogService`) on the control
plane's xDS servers: moves the request-log entries of waypoints (`meshway.xds.build_request_log`)
and the tunnel and connection logs of node proxies (`meshway.xds.build_peer_source`) to a sink.
Thin I/O: a stream's first message names its node, which must prove its id as an ADS stream does
(the same authenticator); a refused stream ends with PERMISSION_DENIED."""
from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

log = logging.getLogger(__name__)

# (node id, the HTTPAccessLogEntry or TCPAccessLogEntry messages of one message)
Sink = Callable[[str, list], None]
Authenticator = Callable[[Node, grpc.aio.ServicerContext], str]


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, sink: Sink, authenticate: Authenticator) -> None:
        self.sink, self.authenticate = sink, authenticate

    async def StreamAccessLogs(self, request_iterator, context):  # noqa: N802 (gRPC name)
        node_id = None
        async for message in request_iterator:
            if node_id is None:
                node = message.identifier.node
                reason = self.authenticate(node, context)
                if reason:
                    log.warning("access log stream of %r refused: %s", node.id, reason)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
                node_id = node.id
            logs = message.http_logs if message.HasField("http_logs") else \
                message.tcp_logs if message.HasField("tcp_logs") else None
            if logs is not None:
                try:
                    self.sink(node_id, list(logs.log_entry))
                except Exception:  # one bad entry never ends the stream (or the control plane)
                    log.exception("access log of %s not counted", node_id)
        return als_pb2.StreamAccessLogsResponse()


def add_access_log_service(server: grpc.aio.Server, sink: Sink, authenticate: Authenticator) -> None:
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogServicer(sink, authenticate), server)
