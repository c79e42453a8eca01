"""Distributed tracing at the waypoint, end to end on the `meshway up` cluster (root, Linux; run in CI).

Collectors run as pods in istio-system (Zipkin, and an OpenTelemetry Collector taking OTLP over HTTP
and gRPC); the mesh ConfigMap names them as extension providers and a Telemetry turns tracing on at
100%. A request from the curl pod carries a W3C or B3 parent; the waypoint's span must reach the
collector as that parent's child, named as Istio names it, and the request the backend received must
carry the waypoint's span as its parent. One test, loopback only, checks a live waypoint ACKs the
tracing golden case."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cluster_support import Mesh, cluster_fixture
from meshway.runtime.envoy_admin import fetch_admin
from meshway.model import find_kind, load_yaml
from xds_support import GOLDEN

mesh = cluster_fixture()

COLLECTORS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: zipkin, namespace: istio-system}
spec:
  selector: {matchLabels: {app: zipkin}}
  template:
    metadata: {labels: {app: zipkin}}
    spec: {containers: [{name: zipkin, image: openzipkin/zipkin-slim:3.5.0, ports: [{containerPort: 9411}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  selector: {app: zipkin}
  ports: [{name: http-query, port: 9411, targetPort: 9411}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: opentelemetry-collector, namespace: istio-system}
spec:
  selector: {matchLabels: {app: opentelemetry-collector}}
  template:
    metadata: {labels: {app: opentelemetry-collector}}
    spec: {containers: [{name: otel, image: otel/opentelemetry-collector-contrib:0.120.0}]}
---
apiVersion: v1
kind: Service
metadata: {name: opentelemetry-collector, namespace: istio-system}
spec:
  selector: {app: opentelemetry-collector}
  ports:
  - {name: grpc-otlp, port: 4317}
  - {name: http-otlp, port: 4318}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec: {containers: [{name: echo, image: meshway/echo}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: zipkin
      zipkin:
        service: zipkin.istio-system.svc.cluster.local
        port: 9411
        traceContextOption: USE_B3_WITH_W3C_PROPAGATION
    - name: otel-http
      opentelemetry:
        service: opentelemetry-collector.istio-system.svc.cluster.local
        port: 4318
        http: {path: /v1/traces}
    - name: otel-grpc
      opentelemetry:
        service: opentelemetry-collector.istio-system.svc.cluster.local
        port: 4317
"""
TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 100
"""
CLIENT = textwrap.dedent('''
    import http.client, json, sys
    host, port, path, headers = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    print(json.dumps({"status": r.status, "headers": dict(r.getheaders()), "body": r.read().decode()}))
''')


def get(mesh: Mesh, pod: dict, host: str, port: int, path: str, headers: dict | None = None,
        check: bool = True) -> dict | None:
    """One GET from inside `pod`: status, response headers and body (None on a failure unless `check`)."""
    script = mesh.state / "trace_client.py"
    script.write_text(CLIENT)
    cmd = ["ip", "netns", "exec", mesh.netns(pod), sys.executable, str(script), host, str(port), path,
           json.dumps(headers or {})]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if not check and out.returncode != 0:
        return None
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def collector(mesh: Mesh, app: str) -> dict:
    return next(p for p in mesh.pods("istio-system") if p["metadata"]["labels"].get("app") == app)


def query(mesh: Mesh, app: str, path: str) -> tuple[int, object]:
    """The collector's own API, asked from inside its pod (the query port is not in the mesh)."""
    r = get(mesh, collector(mesh, app), "127.0.0.1", 9411, path)
    return r["status"], json.loads(r["body"])


def trace_spans(mesh: Mesh, app: str, trace_id: str, count: int = 1, timeout: float = 20) -> list[dict]:
    """The trace's spans once at least `count` arrived (Envoy flushes spans every 5 s)."""
    found: list[dict] = []

    def arrived() -> bool:
        status, body = query(mesh, app, f"/api/v2/trace/{trace_id}")
        found[:] = body if status == 200 else []
        return len(found) >= count
    mesh.wait_until(arrived, timeout, f"{count} span(s) of trace {trace_id} at {app}")
    return found


def tracer_in_config(mesh: Mesh, tracer: str) -> bool:
    return tracer in fetch_admin(mesh.waypoint_admin(), "/config_dump?resource=dynamic_listeners").decode()


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def seen_by_backend(response: dict) -> dict:
    assert response["status"] == 200, response
    return json.loads(response["body"])["headers"]


@pytest.fixture(scope="module")
def traced(mesh: Mesh) -> Mesh:
    mesh.store.apply(load_yaml(COLLECTORS, "collectors.yaml"))
    mesh.wait_ready()

    def echo_via_waypoint() -> bool:
        r = get(mesh, mesh.pod("curl"), "echo", 80, "/", check=False)
        return bool(r) and r["status"] == 200 and r["headers"].get("server") == "istio-envoy"
    mesh.wait_until(echo_via_waypoint, 30, "echo reached through the waypoint")
    mesh.store.apply(load_yaml(TELEMETRY, "telemetry.yaml"))
    mesh.wait_until(lambda: tracer_in_config(mesh, "envoy.tracers.zipkin"), 30, "zipkin tracer on the waypoint")
    return mesh


def test_w3c_parent_waypoint_span_at_zipkin_and_passed_upstream(traced: Mesh) -> None:
    trace_id, parent = new_ids()
    headers = seen_by_backend(get(traced, traced.pod("curl"), "echo", 80, "/hello",
                                  {"traceparent": f"00-{trace_id}-{parent}-01"}))
    [span] = trace_spans(traced, "zipkin", trace_id)
    assert span["parentId"] == parent  # the waypoint's span is the caller's span's child
    assert span["name"] == "echo.default.svc.cluster.local:80/*"  # the route decorator, as Istio names it
    assert span["kind"] == "SERVER"
    assert span["localEndpoint"]["serviceName"] == "waypoint.default"
    assert span["tags"]["istio.canonical_service"] == "waypoint"
    assert span["tags"]["http.url"].endswith("/hello")
    # The backend's request carries the waypoint's span as its parent, in W3C and in B3.
    assert headers["traceparent"] == f"00-{trace_id}-{span['id']}-01"
    assert (headers["x-b3-traceid"], headers["x-b3-spanid"], headers["x-b3-parentspanid"]) == \
        (trace_id, span["id"], parent)


def test_b3_parent_waypoint_span_at_zipkin_and_passed_upstream(traced: Mesh) -> None:
    trace_id, parent = new_ids()
    headers = seen_by_backend(get(traced, traced.pod("curl"), "echo", 80, "/b3", {
        "x-b3-traceid": trace_id, "x-b3-spanid": parent, "x-b3-sampled": "1"}))
    [span] = trace_spans(traced, "zipkin", trace_id)
    assert (span["parentId"], span["name"]) == (parent, "echo.default.svc.cluster.local:80/*")
    assert (headers["x-b3-traceid"], headers["x-b3-spanid"], headers["x-b3-parentspanid"]) == \
        (trace_id, span["id"], parent)
    assert headers["x-b3-sampled"] == "1"


def test_bookinfo_propagates_so_each_hop_is_the_previous_hops_child(traced: Mesh) -> None:
    """productpage forwards the trace headers it received (as the real bookinfo does): the waypoint's
    spans for details and reviews are children of its span for productpage."""
    trace_id, parent = new_ids()
    response = get(traced, traced.pod("curl"), "productpage", 9080, "/productpage",
                   {"traceparent": f"00-{trace_id}-{parent}-01"})
    assert response["status"] == 200
    spans = trace_spans(traced, "zipkin", trace_id, count=3)
    by_name = {s["name"]: s for s in spans}
    page = by_name["productpage.default.svc.cluster.local:9080/*"]
    details = by_name["details.default.svc.cluster.local:9080/*"]
    reviews = [s for s in spans if s["name"].startswith("reviews")]
    assert page["parentId"] == parent
    assert details["parentId"] == page["id"]
    assert reviews and all(s["parentId"] == page["id"] for s in reviews)
    for ratings in (s for s in spans if s["name"].startswith("ratings")):  # reviews v2 calls ratings
        assert ratings["parentId"] in {s["id"] for s in reviews}


@pytest.mark.parametrize("provider, receiver", [("otel-http", "otlp_http"), ("otel-grpc", "otlp_grpc")])
def test_opentelemetry_collector_over_otlp(traced: Mesh, provider: str, receiver: str) -> None:
    traced.store.apply(load_yaml(f"""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: echo-otel, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  tracing: [{{providers: [{{name: {provider}}}]}}]
""", "otel.yaml"))
    try:
        traced.wait_until(lambda: tracer_in_config(traced, "envoy.tracers.opentelemetry"), 30, "otel tracer")
        time.sleep(0.5)
        trace_id, parent = new_ids()
        headers = seen_by_backend(get(traced, traced.pod("curl"), "echo", 80, "/otel",
                                      {"traceparent": f"00-{trace_id}-{parent}-01"}))
        [span] = trace_spans(traced, "opentelemetry-collector", trace_id)
        assert (span["parentId"], span["kind"]) == (parent, "SERVER")
        assert span["name"] == "echo.default.svc.cluster.local:80/*"
        assert span["localEndpoint"]["serviceName"] == "waypoint.default"
        assert headers["traceparent"] == f"00-{trace_id}-{span['id']}-01"
        assert query(traced, "opentelemetry-collector", "/receivers")[1].get(receiver, 0) >= 1
    finally:
        traced.store.delete([(find_kind("telemetry"), "default", "echo-otel")])
        traced.wait_until(lambda: not tracer_in_config(traced, "envoy.tracers.opentelemetry"), 30, "otel tracer gone")


def test_tracing_golden_case_is_acked_by_a_live_waypoint(tmp_path: Path) -> None:
    """Loopback, no root: the tracing golden case pushed to a real waypoint is ACKed, never NACKed."""
    from meshway.store import Store
    from xds_support import live_controlplane, wait_programmed

    store = Store(tmp_path / "state")
    store.apply(load_yaml((GOLDEN / "tracing.yaml").read_text(), "tracing.yaml"))
    with live_controlplane(tmp_path / "state") as cp:
        assert wait_programmed(store, "trace"), "waypoint for the tracing case never became Programmed"
        status = cp.cache.status[next(iter(cp.replicas))]
        assert {t.rsplit(".", 1)[-1]: v["state"] for t, v in status.items()} == {
            "Cluster": "SYNCED", "ClusterLoadAssignment": "SYNCED", "Listener": "SYNCED", "RouteConfiguration": "SYNCED",
            "Secret": "SYNCED"}
