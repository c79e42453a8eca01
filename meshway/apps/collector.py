"""`python -m meshway.apps.collector`: a trace collector standing in for Zipkin and the OpenTelemetry
Collector. Spans are kept in memory as Zipkin v2 JSON, whichever way they came:

- Zipkin: `POST /api/v2/spans` (JSON v2, as Envoy's zipkin tracer sends them);
- OTLP/HTTP: `POST /v1/traces` (protobuf, as Envoy's opentelemetry tracer sends them);
- OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on GRPC_PORTS.

Zipkin's query API reads them back: `GET /api/v2/traces[?serviceName=&spanName=&limit=]`,
`/api/v2/trace/{traceId}`, `/api/v2/services`, `/health`; `GET /receivers` counts spans per receiver.
HTTP on every port in PORTS (default 9411), gRPC on every port in GRPC_PORTS (default none).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp

from .server import Handler, Request, Response, json_response, serve_connection

Span = dict[str, Any]
MAX_SPANS = 20000
TRACE_PATH = re.compile(r"/api/v2/trace/([0-9a-fA-F]{16,32})")
OTLP_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


@dataclass
class SpanStore:
    spans: list[Span] = field(default_factory=list)
    received: Counter = field(default_factory=Counter)  # receiver -> spans

    def add(self, spans: list[Span], receiver: str) -> None:
        self.spans.extend(spans)
        del self.spans[:-MAX_SPANS]
        self.received[receiver] += len(spans)

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s["traceId"] == trace_id.lower()]

    def traces(self, service: str | None, span_name: str | None, limit: int) -> list[list[Span]]:
        """Traces with a span matching the filters, newest first."""
        ids = [s["traceId"] for s in reversed(self.spans)
               if (not service or s.get("localEndpoint", {}).get("serviceName") == service)
               and (not span_name or s.get("name") == span_name)]
        return [self.trace(t) for t in list(dict.fromkeys(ids))[:limit]]


def _value(v: Any) -> str:
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    value = getattr(v, kind)
    return str(value).lower() if kind == "bool_value" else str(value)


def _scope_spans(resource_spans: Any) -> Any:
    """Field 2 of ResourceSpans: `scope_spans` in current OTLP, `instrumentation_library_spans` in the
    older copy of the protos that xds-protos ships (the same wire format)."""
    if "scope_spans" in resource_spans.DESCRIPTOR.fields_by_name:
        return resource_spans.scope_spans
    return resource_spans.instrumentation_library_spans


def build_spans_from_otlp(request: otlp.ExportTraceServiceRequest) -> list[Span]:
    """OTLP spans in Zipkin v2 form: ids in hex, microseconds, `service.name` as the local endpoint."""
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in _scope_spans(rs):
            for s in ss.spans:
                span: Span = {"traceId": s.trace_id.hex(), "id": s.span_id.hex(), "name": s.name,
                              "timestamp": s.start_time_unix_nano // 1000,
                              "duration": max(0, s.end_time_unix_nano - s.start_time_unix_nano) // 1000,
                              "localEndpoint": {"serviceName": resource.get("service.name", "")},
                              "tags": {a.key: _value(a.value) for a in s.attributes}}
                if s.parent_span_id:
                    span["parentId"] = s.parent_span_id.hex()
                if s.kind in OTLP_KINDS:
                    span["kind"] = OTLP_KINDS[s.kind]
                out.append(span)
    return out


def normalize_zipkin(spans: Any) -> list[Span]:
    if not isinstance(spans, list) or not all(isinstance(s, dict) and "traceId" in s and "id" in s for s in spans):
        raise ValueError("expected a JSON list of Zipkin v2 spans (each with traceId and id)")
    return [{**s, "traceId": s["traceId"].lower().rjust(16, "0"), "id": s["id"].lower()} for s in spans]


def make_handler(store: SpanStore) -> Handler:
    async def handle(req: Request) -> Response:
        url = urlsplit(req.target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if req.method == "POST" and req.path == "/api/v2/spans":
            try:
                store.add(normalize_zipkin(json.loads(req.body or b"[]")), "zipkin")
            except ValueError as exc:
                return json_response(400, {"error": str(exc)})
            return Response(202, b"", "text/plain")
        if req.method == "POST" and req.path == "/v1/traces":
            try:
                request = otlp.ExportTraceServiceRequest.FromString(req.body)
            except Exception as exc:  # protobuf's DecodeError
                return json_response(400, {"error": f"not an OTLP ExportTraceServiceRequest: {exc}"})
            store.add(build_spans_from_otlp(request), "otlp_http")
            return Response(200, otlp.ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")
        if req.path == "/api/v2/traces":
            limit = int(query.get("limit") or 10)
            return json_response(200, store.traces(query.get("serviceName"), query.get("spanName"), limit))
        if m := TRACE_PATH.fullmatch(req.path):
            spans = store.trace(m.group(1))
            if not spans:
                return json_response(404, {"error": f"trace {m.group(1)} not found"})
            return json_response(200, spans)
        if req.path == "/api/v2/services":
            return json_response(200, sorted({s.get("localEndpoint", {}).get("serviceName", "") for s in store.spans}))
        if req.path == "/receivers":
            return json_response(200, dict(store.received))
        if req.path in ("/health", "/"):
            return json_response(200, {"status": "UP", "spans": len(store.spans)})
        return json_response(404, {"error": f"not found: {req.method} {req.path}"})
    return handle


async def start_grpc(store: SpanStore, host: str, ports: list[int]):
    import grpc

    async def export(request: otlp.ExportTraceServiceRequest, context) -> otlp.ExportTraceServiceResponse:
        store.add(build_spans_from_otlp(request), "otlp_grpc")
        return otlp.ExportTraceServiceResponse()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(TRACE_SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=otlp.ExportTraceServiceRequest.FromString,
            response_serializer=otlp.ExportTraceServiceResponse.SerializeToString)})])
    for port in ports:
        server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server


def parse_ports(text: str | None, default: str) -> list[int]:
    return [int(p) for p in (text if text is not None else default).replace(",", " ").split()]


async def run(host: str, ports: list[int], grpc_ports: list[int]) -> None:
    store, stop = SpanStore(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    handler = make_handler(store)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, handler, None)

    grpc_server = await start_grpc(store, host, grpc_ports) if grpc_ports else None
    servers = [await asyncio.start_server(on_connection, host, p, reuse_address=True) for p in ports]
    print(f"collector listening on {host} HTTP {ports} gRPC {grpc_ports} (pid {os.getpid()})", flush=True)
    await stop.wait()
    for s in servers:
        s.close()
    if grpc_server:
        await grpc_server.stop(0)
    print("collector stopping", flush=True)


def main() -> None:
    host = os.environ.get("HOST") or "0.0.0.0"
    asyncio.run(run(host, parse_ports(os.environ.get("PORTS"), "9411"), parse_ports(os.environ.get("GRPC_PORTS"), "")))


if __name__ == "__main__":
    main()
