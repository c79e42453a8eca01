"""Tracing from the Telemetry API, without Envoy: which Telemetry wins (Istio's merge), the sampling
default, and the HCM tracing block for Zipkin and OpenTelemetry collectors; a provider that cannot be
used is a reported problem and no tracing."""
from __future__ import annotations

import pytest
import yaml

from meshway.mesh.view import MeshView
from meshway.model.istio import Telemetry
from meshway.model.meshconfig import parse_mesh_config
from meshway.xds.build_provider_cluster import build_provider_cluster, find_provider_service
from meshway.xds.build_tracing import TracingDecision, build_tracing, find_default_sampling, find_tracing
from meshway.xds.proxy import Proxy

PROXY = Proxy("waypoint~10.0.0.9~waypoint-0.shop~shop.svc.cluster.local", "0.0.0.0", "shop", "waypoint", "waypoint")
MESH = """
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: otel-grpc
  opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4317}
- name: otel-http
  opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4318, http: {path: v1/traces}}
- name: dd
  datadog: {service: dd.istio-system.svc.cluster.local, port: 8126}
- name: nowhere
  zipkin: {service: nowhere.istio-system.svc.cluster.local, port: 9411}
"""


def telemetry(name: str, ns: str, tracing: list, refs: list | None = None, created: str = "2026-01-01T00:00:00Z"):
    spec = {"tracing": tracing, **({"targetRefs": refs} if refs else {})}
    return Telemetry.model_validate({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {
        "name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec}, strict=False)


ROOT = telemetry("mesh-default", "istio-system", [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10}])
NS = telemetry("ns", "shop", [{"randomSamplingPercentage": 50}])
SVC = telemetry("web", "shop", [{"providers": [{"name": "otel-http"}]}], [{"kind": "Service", "name": "web"}])
GW = telemetry("wp", "shop", [{"disableSpanReporting": True}], [{"kind": "Gateway", "name": "waypoint"}])
CLIENT = telemetry("client", "shop", [{"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 0}])
OTHER_NS = telemetry("other", "bar", [{"randomSamplingPercentage": 70}])
OTHER_SVC = telemetry("api", "shop", [{"providers": [{"name": "dd"}]}], [{"kind": "Service", "name": "api"}])


@pytest.mark.parametrize("telemetries, defaults, expected", [
    ([], None, None),
    ([], ["zipkin"], TracingDecision("zipkin")),
    ([ROOT], None, TracingDecision("zipkin", sampling=10, sources=("istio-system/mesh-default",))),
    ([ROOT, NS], None, TracingDecision("zipkin", sampling=50, sources=("istio-system/mesh-default", "shop/ns"))),
    ([SVC, NS, ROOT], None, TracingDecision("otel-http", sampling=50,
                                            sources=("istio-system/mesh-default", "shop/ns", "shop/web"))),
    ([ROOT, GW], None, TracingDecision("zipkin", disabled=True, sampling=10,
                                       sources=("istio-system/mesh-default", "shop/wp"))),
    ([NS], ["otel-grpc"], TracingDecision("otel-grpc", sampling=50, sources=("shop/ns",))),
    ([NS], None, TracingDecision(None, sampling=50, sources=("shop/ns",))),
    ([ROOT, OTHER_NS, OTHER_SVC], None, TracingDecision("zipkin", sampling=10, sources=("istio-system/mesh-default",))),
])
def test_precedence_root_then_namespace_then_target_refs(telemetries, defaults, expected) -> None:
    assert find_tracing(telemetries, defaults, "shop", "waypoint", "shop", "web") == expected


def test_client_only_entries_do_not_apply_to_a_waypoint() -> None:
    decision = find_tracing([ROOT, CLIENT], None, "shop", "waypoint", "shop", "web")
    assert decision.sampling == 10


def test_only_the_oldest_namespace_wide_telemetry_counts() -> None:
    newer = telemetry("newer", "shop", [{"randomSamplingPercentage": 99}], created="2026-02-01T00:00:00Z")
    assert find_tracing([newer, NS], None, "shop", "waypoint", "shop", "web").sampling == 50


@pytest.mark.parametrize("default_config, expected", [
    ({}, 1.0), ({"tracing": {"sampling": 42.5}}, 42.5), ({"tracing": {"sampling": 250}}, 1.0),
    ({"tracing": {"sampling": 0}}, 1.0),
])
def test_default_sampling_is_one_percent_unless_default_config_says(default_config, expected) -> None:
    assert find_default_sampling(parse_mesh_config(yaml.safe_dump({"defaultConfig": default_config}))) == expected


def view() -> MeshView:
    def svc(name: str, ports: list, ns: str = "istio-system") -> dict:
        return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"app": name}, "clusterIP": "10.96.0.50", "ports": ports}}

    pod = {"kind": "Pod", "metadata": {"name": "zipkin-1", "namespace": "istio-system", "labels": {"app": "zipkin"}},
           "spec": {"containers": [{"name": "z", "ports": [{"name": "query", "containerPort": 9412}]}]},
           "status": {"podIP": "10.244.1.7", "conditions": [{"type": "Ready", "status": "True"}]}}
    se = {"kind": "ServiceEntry", "metadata": {"name": "saas", "namespace": "istio-system"},
          "spec": {"hosts": ["collector.example.com"], "ports": [{"name": "http", "number": 443}]}}
    return MeshView.build({"Service": [svc("zipkin", [{"port": 9411, "targetPort": "query"}]),
                                       svc("otel", [{"port": 4317}, {"port": 4318}]),
                                       svc("otel", [{"port": 4318}], ns="other")],
                           "ServiceEntry": [se], "Pod": [pod]})


def test_zipkin_tracing_block_and_collector_cluster() -> None:
    notes: list[str] = []
    tracing, collector = build_tracing(TracingDecision("zipkin", sampling=100), parse_mesh_config(MESH), view(),
                                       PROXY, lambda ip: ip, notes)
    assert notes == []
    assert collector.cluster["name"] == "outbound|9411||zipkin.istio-system.svc.cluster.local"
    assert collector.endpoints["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == \
        {"address": "10.244.1.7", "port_value": 9412}  # the named target port
    assert tracing["random_sampling"] == {"value": 100} and tracing["overall_sampling"] == {"value": 100.0}
    config = tracing["provider"]["typed_config"]
    assert tracing["provider"]["name"] == "envoy.tracers.zipkin"
    assert config["collector_service"]["http_uri"] == {
        "uri": "http://zipkin.istio-system.svc.cluster.local/api/v2/spans",
        "cluster": "outbound|9411||zipkin.istio-system.svc.cluster.local", "timeout": "5s"}
    assert (config["collector_endpoint_version"], config["trace_id_128bit"], config["shared_span_context"],
            config["trace_context_option"]) == ("HTTP_JSON", True, False, "USE_B3")
    assert "spawn_upstream_span" not in tracing  # one SERVER span per request, as Istio's waypoints
    tags = {t["tag"]: t for t in tracing["custom_tags"]}
    assert tags["istio.canonical_service"]["literal"]["value"] == "waypoint"
    assert tags["istio.namespace"]["literal"]["value"] == "shop"


def test_opentelemetry_grpc_uses_an_http2_cluster_and_http_joins_the_path() -> None:
    mesh, notes = parse_mesh_config(MESH), []
    tracing, collector = build_tracing(TracingDecision("otel-grpc"), mesh, view(), PROXY, lambda ip: ip, notes)
    config = tracing["provider"]["typed_config"]
    assert config["grpc_service"]["envoy_grpc"] == {
        "cluster_name": "outbound|4317||otel.istio-system.svc.cluster.local",
        "authority": "otel.istio-system.svc.cluster.local"}
    assert config["service_name"] == "waypoint.shop"
    assert "http2_protocol_options" in str(collector.cluster["typed_extension_protocol_options"])
    assert tracing["random_sampling"] == {"value": 1.0}
    tracing, _ = build_tracing(TracingDecision("otel-http"), mesh, view(), PROXY, lambda ip: ip, notes)
    assert tracing["provider"]["typed_config"]["http_service"]["http_uri"]["uri"] == \
        "otel.istio-system.svc.cluster.local/v1/traces"
    assert notes == []


@pytest.mark.parametrize("decision, message", [
    (TracingDecision("jaeger"), "'jaeger' is not defined in meshConfig.extensionProviders"),
    (TracingDecision("dd"), "(datadog) does not support tracing here"),
    (TracingDecision("nowhere"), "could not find service nowhere.istio-system.svc.cluster.local"),
    (TracingDecision(None), "names no provider"),
])
def test_unusable_provider_is_a_problem_and_no_tracing(decision, message) -> None:
    notes: list[str] = []
    assert build_tracing(decision, parse_mesh_config(MESH), view(), PROXY, lambda ip: ip, notes) == (None, None)
    assert len(notes) == 1 and message in notes[0], notes


def test_disabled_or_unconfigured_tracing_is_silent() -> None:
    notes: list[str] = []
    assert build_tracing(None, parse_mesh_config(MESH), view(), PROXY, lambda ip: ip, notes) == (None, None)
    assert build_tracing(TracingDecision("zipkin", disabled=True), parse_mesh_config(MESH), view(), PROXY,
                         lambda ip: ip, notes) == (None, None)
    assert notes == []


def test_provider_service_lookup_as_istio() -> None:
    v = view()
    twice = {"kind": "ServiceEntry", "metadata": {"name": "saas", "namespace": "other"},
             "spec": {"hosts": ["collector.example.com"], "ports": [{"name": "http", "number": 443}]}}
    ambiguous = v.with_changes({"ServiceEntry": [twice, *[{"kind": "ServiceEntry", "metadata": {
        "name": s.name, "namespace": s.namespace}, "spec": {"hosts": list(s.hosts), "ports": [
            {"name": "http", "number": 443}]}} for s in v.services.values() if s.kind == "ServiceEntry"]]})
    with pytest.raises(LookupError, match=r"multiple namespaces \[istio-system other\]"):
        find_provider_service(ambiguous, "collector.example.com", 443)
    assert find_provider_service(ambiguous, "other/collector.example.com", 443).namespace == "other"
    with pytest.raises(LookupError, match="could not find service zipkin.istio-system:9411 in Istio service registry"):
        find_provider_service(v, "zipkin.istio-system", 9411)  # a hostname is the FQDN, as in Istio
    saas = build_provider_cluster(v, "collector.example.com", 443)
    assert saas.cluster["type"] == "STRICT_DNS" and saas.endpoints is None
    assert saas.cluster["name"] == "outbound|443||collector.example.com"
