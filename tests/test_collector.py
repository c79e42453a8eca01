"""The trace collector stand-in (Zipkin / OpenTelemetry Collector images): its APIs on their own, and
a real Envoy 1.40 with the tracer config meshway generates sending it spans (Zipkin JSON, OTLP over
HTTP and gRPC) on loopback, no root needed."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshway.apps.collector import SpanStore, build_spans_from_otlp, make_handler
from meshway.apps.images import resolve_image
from meshway.apps.server import Request
from meshway.model.meshconfig import parse_mesh_config
from meshway.xds.build_provider_cluster import ProviderCluster
from meshway.xds.build_tracing import TracingDecision, build_hcm_tracing, build_tracer
from meshway.xds.proxy import Proxy
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from xds_support import ENVOY

TRACE, PARENT = "ab" * 16, "cd" * 8


def call(store: SpanStore, method: str, target: str, body: bytes = b"") -> tuple[int, object]:
    resp = asyncio.run(make_handler(store)(Request(method, target, (), body, "127.0.0.1:1", "HTTP/1.1")))
    ctype = resp.content_type
    return resp.status, json.loads(resp.body) if resp.body and ctype == "application/json" else resp.body


def test_zipkin_api_round_trip() -> None:
    store = SpanStore()
    spans = [{"traceId": TRACE.upper(), "id": "1" * 16, "parentId": PARENT, "name": "a:80/*",
              "localEndpoint": {"serviceName": "waypoint.default"}},
             {"traceId": "ef" * 16, "id": "2" * 16, "name": "b:80/*", "localEndpoint": {"serviceName": "other"}}]
    assert call(store, "POST", "/api/v2/spans", json.dumps(spans).encode())[0] == 202
    status, trace = call(store, "GET", f"/api/v2/trace/{TRACE}")
    assert status == 200 and [s["id"] for s in trace] == ["1" * 16] and trace[0]["traceId"] == TRACE
    assert call(store, "GET", "/api/v2/trace/" + "0" * 32)[0] == 404
    assert [[s["name"] for s in t] for t in call(store, "GET", "/api/v2/traces?serviceName=other")[1]] == [["b:80/*"]]
    assert call(store, "GET", "/api/v2/services")[1] == ["other", "waypoint.default"]
    assert call(store, "GET", "/receivers")[1] == {"zipkin": 2}
    assert call(store, "POST", "/api/v2/spans", b'{"not": "a list"}')[0] == 400


def test_otlp_spans_become_zipkin_spans() -> None:
    request = otlp.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "waypoint.default"
    scopes = rs.scope_spans if "scope_spans" in rs.DESCRIPTOR.fields_by_name else rs.instrumentation_library_spans
    span = scopes.add().spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex("12" * 8),
                                  parent_span_id=bytes.fromhex(PARENT), name="echo.default.svc.cluster.local:80/*",
                                  kind=2, start_time_unix_nano=2_000_000_000, end_time_unix_nano=2_000_500_000)
    span.attributes.add(key="http.status_code").value.string_value = "200"
    assert build_spans_from_otlp(request) == [{
        "traceId": TRACE, "id": "12" * 8, "parentId": PARENT, "name": "echo.default.svc.cluster.local:80/*",
        "kind": "SERVER", "timestamp": 2_000_000, "duration": 500, "localEndpoint": {"serviceName": "waypoint.default"},
        "tags": {"http.status_code": "200"}}]
    store = SpanStore()
    status, body = call(store, "POST", "/v1/traces", request.SerializeToString())
    assert status == 200 and store.received == {"otlp_http": 1}
    assert call(store, "POST", "/v1/traces", b"\xff\xff not protobuf")[0] == 400


@pytest.mark.parametrize("image, ports, grpc", [
    ("openzipkin/zipkin-slim:3.5.0", "9411", ""), ("docker.io/openzipkin/zipkin", "9411", ""),
    ("otel/opentelemetry-collector-contrib:0.120.0", "4318 9411", "4317"),
    ("jaegertracing/all-in-one:1.60", "4318 9411", "4317"),
])
def test_collector_images_run_the_stand_in(image: str, ports: str, grpc: str) -> None:
    command = resolve_image(image)
    assert command.argv[-1] == "meshway.apps.collector"
    assert (command.env["PORTS"], command.env["GRPC_PORTS"]) == (ports, grpc)


# -- a real Envoy sending spans ---------------------------------------------------------------
MESH = """
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, traceContextOption: USE_B3_WITH_W3C_PROPAGATION}
- name: otel-http
  opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4318, http: {path: /v1/traces}}
- name: otel-grpc
  opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4317}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_envoy_bootstrap(provider: str, collector_port: int, listen_port: int) -> dict:
    """One HCM with the generated tracing block in front of a direct response; spans flushed at once."""
    cluster = {"name": "collector", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "collector", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": collector_port}}}}]}]}}
    if provider == "otel-grpc":
        options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        cluster["typed_extension_protocol_options"] = {options: {
            "@type": f"type.googleapis.com/{options}", "explicit_http_config": {"http2_protocol_options": {}}}}
    notes: list[str] = []
    proxy = Proxy("waypoint~127.0.0.1~waypoint-0.default~default.svc.cluster.local", "127.0.0.1", "default",
                  "waypoint", "waypoint")
    tracer = build_tracer(parse_mesh_config(MESH).provider(provider),
                          ProviderCluster("collector.local", cluster, None), "waypoint.default", notes)
    tracing = build_hcm_tracing(TracingDecision(provider, sampling=100), tracer, 1.0, proxy, None)
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager", "stat_prefix": "test", "tracing": tracing,
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
               "match": {"prefix": "/"}, "decorator": {"operation": "echo.default.svc.cluster.local:80/*"},
               "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"node": {"id": "test", "cluster": "waypoint.default"},
            "layered_runtime": {"layers": [{"name": "flush", "static_layer": {
                "tracing.zipkin.min_flush_spans": 1, "tracing.opentelemetry.min_flush_spans": 1}}]},
            "static_resources": {"clusters": [cluster], "listeners": [{
                "name": "in", "traffic_direction": "INBOUND",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}]}}


@pytest.mark.parametrize("provider, headers, receiver", [
    ("zipkin", {"traceparent": f"00-{TRACE}-{PARENT}-01"}, "zipkin"),
    ("zipkin", {"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "1"}, "zipkin"),
    ("otel-http", {"traceparent": f"00-{TRACE}-{PARENT}-01"}, "otlp_http"),
    ("otel-grpc", {"traceparent": f"00-{TRACE}-{PARENT}-01"}, "otlp_grpc"),
])
def test_envoy_sends_the_waypoint_span_to_the_collector(tmp_path: Path, provider: str, headers: dict,
                                                        receiver: str) -> None:
    http_port, grpc_port, listen = free_port(), free_port(), free_port()
    collector = subprocess.Popen([sys.executable, "-m", "meshway.apps.collector"], stdout=subprocess.DEVNULL,
                                 env={**os.environ, "HOST": "127.0.0.1", "PORTS": str(http_port),
                                      "GRPC_PORTS": str(grpc_port)})
    boot = tmp_path / "envoy.json"
    boot.write_text(json.dumps(build_envoy_bootstrap(provider, grpc_port if provider == "otel-grpc" else http_port,
                                                     listen)))
    envoy = subprocess.Popen([ENVOY, "-c", str(boot), "--disable-hot-restart", "-l", "error"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(port: int, path: str, hdrs: dict | None = None) -> tuple[int, bytes]:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path, headers=hdrs or {})
            r = c.getresponse()
            return r.status, r.read()
        except OSError:
            return 0, b""

    try:
        deadline = time.monotonic() + 15
        while get(http_port, "/health")[0] != 200:  # gRPC starts first: both are up
            assert time.monotonic() < deadline, "collector did not start"
            time.sleep(0.1)
        while get(listen, "/hello", headers)[0] != 200:
            assert time.monotonic() < deadline, "envoy did not start"
            time.sleep(0.1)
        while (found := get(http_port, f"/api/v2/trace/{TRACE}"))[0] != 200:
            assert time.monotonic() < deadline, "no span reached the collector"
            time.sleep(0.1)
        span = json.loads(found[1])[0]
        assert (span["parentId"], span["name"], span["kind"]) == (PARENT, "echo.default.svc.cluster.local:80/*",
                                                                   "SERVER")
        assert span["localEndpoint"]["serviceName"] == "waypoint.default"
        assert span["tags"]["istio.canonical_service"] == "waypoint"
        assert json.loads(get(http_port, "/receivers")[1]).get(receiver, 0) >= 1
    finally:
        envoy.terminate()
        collector.terminate()
        envoy.wait(10)
        collector.wait(10)
