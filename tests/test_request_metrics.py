"""Waypoint request metrics from the request log (pure): the caller's Istio labels, the destination
labels as the cluster stats carry them, every request counted (403s included), bounded label sets,
and the Prometheus text the control plane serves and `meshway metrics` reads back."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import StringValue
from prometheus_client.parser import text_string_to_metric_families

from meshway.mesh.view import MeshView, PodInfo
from meshway.observe.metrics import write_text
from meshway.observe.requests import (RequestCounts, RequestRecord, build_request_families, build_request_labels,
                                      find_caller_labels, find_source_labels, find_source_pod, parse_forwarded,
                                      parse_request_families, read_entry)
from meshway.runtime.request_metrics import CLUSTER_TYPE, RequestMetrics
from meshway.xds.build_request_log import build_request_log
from meshway.xds.proxy import build_node_id
from meshway.xds.stat_tags import build_stat_name, parse_stat_name

CURL = "spiffe://cluster.local/ns/default/sa/curl"
REVIEWS = "reviews.default.svc.cluster.local"


def pod(name: str, sa: str, labels: dict, ns: str = "default", template_hash: str | None = None) -> PodInfo:
    labels = {**labels, **({"pod-template-hash": template_hash} if template_hash else {})}
    return PodInfo(ns, name, labels, "10.244.1.9", sa, "node-1", True)


PODS = [
    pod("curl-6b4f8d9c7d-x2x9k", "curl", {"app": "curl"}, template_hash="6b4f8d9c7d"),
    pod("reviews-v1-7c9f-abcde", "bookinfo-reviews", {"app": "reviews", "version": "v1"}, template_hash="7c9f"),
    pod("reviews-v2-8d0a-fghij", "bookinfo-reviews", {"app": "reviews", "version": "v2"}, template_hash="8d0a"),
    pod("sleep", "sleep", {"app": "sleep", "version": "v1", "service.istio.io/canonical-name": "snooze"}, ns="other"),
    pod("two-a", "shared", {"app": "a"}), pod("two-b", "shared", {"app": "b"}),
]


@pytest.mark.parametrize("principal, expected", [
    (CURL, {"source_principal": "cluster.local/ns/default/sa/curl", "source_workload_namespace": "default",
            "source_workload": "curl", "source_app": "curl", "source_canonical_service": "curl",
            "source_canonical_revision": "latest"}),
    # one service account, two Deployments: the workload, its version and revision are not known; the app is
    ("spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
     {"source_principal": "cluster.local/ns/default/sa/bookinfo-reviews", "source_workload_namespace": "default",
      "source_app": "reviews"}),
    # a bare pod: the pod's own name; canonical name from Istio's label first
    ("spiffe://cluster.local/ns/other/sa/sleep",
     {"source_principal": "cluster.local/ns/other/sa/sleep", "source_workload_namespace": "other",
      "source_workload": "sleep", "source_app": "sleep", "source_version": "v1", "source_canonical_service": "snooze",
      "source_canonical_revision": "v1"}),
    # pods that disagree on every label
    ("spiffe://cluster.local/ns/default/sa/shared",
     {"source_principal": "cluster.local/ns/default/sa/shared", "source_workload_namespace": "default"}),
    # an identity without pods (yet, or any more): its namespace still
    ("spiffe://cluster.local/ns/gone/sa/x",
     {"source_principal": "cluster.local/ns/gone/sa/x", "source_workload_namespace": "gone"}),
    ("", {}), ("-", {}), ("spiffe://cluster.local/not-a-workload", {}),
])
def test_source_labels_of_a_caller(principal: str, expected: dict) -> None:
    assert find_source_labels(PODS, principal) == expected


def record(principal: str = CURL, cluster: str = "", code: int = 200, tags: dict | None = None) -> RequestRecord:
    return RequestRecord(principal, cluster, tags if tags is not None else {
        "destination_service": REVIEWS, "destination_service_name": "reviews",
        "destination_service_namespace": "default"}, code, 3.5, 120, 900)


V2 = f"inbound-vip|9080|http/v2|{REVIEWS}"
CLUSTERS = {V2: parse_stat_name(build_stat_name(V2, {
    "reporter": "waypoint", "request_protocol": "http", "destination_service": REVIEWS,
    "destination_service_name": "reviews", "destination_service_namespace": "default", "destination_version": "v2"}))}


@pytest.mark.parametrize("rec, expected", [
    # answered by v2: the cluster's labels (version), the caller's, mutual TLS
    (record(cluster=V2), {"destination_version": "v2", "destination_service": REVIEWS, "response_code": "200",
                          "source_workload": "curl", "source_principal": CURL, "source_cluster": "Kubernetes",
                          "connection_security_policy": "mutual_tls", "destination_cluster": "Kubernetes"}),
    # a 403 of the waypoint's own: the chain's service, no version
    (record(code=403), {"destination_version": "unknown", "destination_service": REVIEWS, "response_code": "403",
                        "source_workload": "curl", "source_app": "curl"}),
    # no caller identity: unknown source, security policy unknown
    (record(principal="", code=429), {"source_workload": "unknown", "source_principal": "unknown",
                                      "source_cluster": "unknown", "connection_security_policy": "unknown",
                                      "response_code": "429"}),
    # pod-addressed traffic (the direct chain): no service
    (record(tags={}, code=0), {"destination_service": "unknown", "response_code": "0", "reporter": "waypoint"}),
])
def test_request_labels(rec: RequestRecord, expected: dict) -> None:
    labels = dict(build_request_labels(rec, find_source_labels(PODS, rec.principal), CLUSTERS))
    assert {k: labels[k] for k in expected} == expected
    assert labels["reporter"] == "waypoint" and labels["request_protocol"] == "http"


def entry(principal: str | None, cluster: str, code: int, answered: bool, forwarded: str | None = None
          ) -> HTTPAccessLogEntry:
    e = HTTPAccessLogEntry()
    c = e.common_properties
    for key, value in (("io.istio.peer_principal", principal), ("io.meshway.peer_forwarded", forwarded)):
        if value is not None:
            packed = AnyProto()
            packed.Pack(StringValue(value=value))
            c.filter_state_objects[key].CopyFrom(packed)
    c.upstream_cluster = cluster
    if answered:
        c.upstream_remote_address.CopyFrom(Address())
    c.custom_tags["destination_service"] = REVIEWS
    c.time_to_last_downstream_tx_byte.FromMilliseconds(12)
    e.response.response_code.value = code
    e.request.request_headers_bytes, e.request.request_body_bytes = 80, 20
    e.response.response_headers_bytes, e.response.response_body_bytes = 100, 400
    return e


def test_read_entry() -> None:
    r = read_entry(entry(CURL, V2, 200, True))
    assert (r.principal, r.cluster, r.response_code, r.duration_ms, r.request_bytes, r.response_bytes) == \
        (CURL, V2, 200, 12.0, 100, 500)
    assert r.tags == {"destination_service": REVIEWS}
    local = read_entry(entry(None, V2, 403, False))  # the route named a cluster, nobody upstream answered
    assert (local.principal, local.cluster, local.response_code) == ("", "", 403)


def test_label_sets_are_bounded_and_the_rest_counted_as_overflow() -> None:
    counts = RequestCounts(max_series=2)
    for code in (200, 200, 404, 503, 503):
        counts.add(build_request_labels(record(code=code), {}, {}), record(code=code))
    assert sorted(s.requests for s in counts.series.values()) == [1, 2] and counts.overflow == 2
    names = {f.name for f in build_request_families([({"pod": "w"}, counts)])}
    assert "meshway_request_metrics_overflow_total" in names


def test_families_are_prometheus_text_and_read_back() -> None:
    counts = RequestCounts()
    for code in (200, 200, 403):
        r = record(cluster=V2 if code == 200 else "", code=code)
        counts.add(build_request_labels(r, find_source_labels(PODS, r.principal), CLUSTERS), r)
    text = write_text(build_request_families([({"pod": "waypoint-a", "namespace": "default"}, counts)]))
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    totals = {s.labels["response_code"]: s.value for s in parsed["istio_requests"].samples}
    assert totals == {"200": 2, "403": 1}
    duration = parsed["istio_request_duration_milliseconds"]
    assert duration.type == "histogram"
    assert sorted(s.value for s in duration.samples if s.name.endswith("_count")) == [1, 2]
    assert any(s.labels.get("le") == "3600000" for s in duration.samples)
    back = parse_request_families(text, lambda labels: labels.get("pod") == "waypoint-a")
    assert [f.name for f in back] == ["istio_requests_total", "istio_request_duration_milliseconds",
                                      "istio_request_bytes", "istio_response_bytes"]
    assert write_text(back) == text
    assert parse_request_families(text, lambda labels: labels.get("pod") == "other") == []


def test_control_plane_tally_by_waypoint_pod(tmp_path) -> None:
    view = MeshView(pods={(p.namespace, p.name): p for p in PODS})
    node = build_node_id("waypoint", "10.244.1.5", "waypoint-abc", "default")
    snapshot = {CLUSTER_TYPE: {V2: Cluster(name=V2, alt_stat_name=build_stat_name(V2, CLUSTERS[V2]))}}
    tally = RequestMetrics(lambda: view, lambda n: snapshot if n == node else None, tmp_path / "requests.prom")
    tally.record(node, [entry(CURL, V2, 200, True), entry(CURL, V2, 403, False)])
    ztunnel = build_node_id("ztunnel", "10.244.1.1", "ztunnel-node-1", "istio-system")
    tally.record(ztunnel, [entry(CURL, V2, 200, True)])  # a node proxy's log is a tunnel log: no request
    samples = [dict(s.labels) for f in tally.families() if f.name == "istio_requests_total" for s in f.samples]
    assert sorted((s["response_code"], s["destination_version"], s["source_workload"], s["pod"]) for s in samples) \
        == [("200", "v2", "curl", "waypoint-abc"), ("403", "unknown", "curl", "waypoint-abc")]
    assert tally.families([]) == []  # a proxy not in the status is left out (and forgotten after a while)
    assert "waypoint-abc" in (tmp_path / "requests.prom").read_text()  # no loop: written at once


def test_request_log_of_a_chain() -> None:
    svc = SimpleNamespace(hostname=REVIEWS, name="reviews", namespace="default")
    config = build_request_log(svc)["typed_config"]["common_config"]
    assert config["grpc_service"] == {"envoy_grpc": {"cluster_name": "xds-grpc"}}
    assert config["filter_state_objects_to_log"] == ["io.istio.peer_principal", "io.meshway.peer_forwarded"]
    assert config["buffer_size_bytes"] == 0
    assert {t["tag"]: t["literal"]["value"] for t in config["custom_tags"]} == {
        "destination_service": REVIEWS, "destination_service_name": "reviews", "destination_service_namespace": "default"}
    assert "custom_tags" not in build_request_log(None)["typed_config"]["common_config"]


def test_access_log_service_moves_entries_of_authenticated_nodes() -> None:
    import grpc
    from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
    from meshway.xds.access_log_service import add_access_log_service

    got: list = []

    async def run(tmp: str) -> grpc.StatusCode | None:
        server = grpc.aio.server()
        add_access_log_service(server, lambda node, entries: got.append((node, len(entries))),
                               lambda node, context: "" if node.id.startswith("waypoint~") else "no")
        server.add_insecure_port(f"unix:{tmp}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix:{tmp}") as channel:
                stub = als_pb2_grpc.AccessLogServiceStub(channel)

                def messages(node_id: str):
                    first = als_pb2.StreamAccessLogsMessage()
                    first.identifier.node.id = node_id
                    first.http_logs.log_entry.add().CopyFrom(entry(CURL, V2, 200, True))
                    second = als_pb2.StreamAccessLogsMessage()
                    second.http_logs.log_entry.add().CopyFrom(entry(CURL, V2, 403, False))
                    return iter([first, second])
                await stub.StreamAccessLogs(messages("waypoint~1~a.b~b.svc.cluster.local"))
                try:
                    await stub.StreamAccessLogs(messages("intruder"))
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return None
        finally:
            await server.stop(None)

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        refused = asyncio.run(run(f"{tmp}/als.sock"))
    assert got == [("waypoint~1~a.b~b.svc.cluster.local", 1), ("waypoint~1~a.b~b.svc.cluster.local", 1)]
    assert refused == grpc.StatusCode.PERMISSION_DENIED


# -- the calling pod: the address its node proxy wrote on the CONNECT ------------------------------
SHARED = "spiffe://cluster.local/ns/default/sa/shared"
CALLERS = [PodInfo("default", "caller-a-5f6d7c8b9-aaaaa", {"app": "caller-a", "version": "v1",
                                                           "pod-template-hash": "5f6d7c8b9"},
                   "10.244.1.20", "shared", "node-1", True),
           PodInfo("default", "caller-b-6a7b8c9d0-bbbbb", {"app": "caller-b", "version": "v2",
                                                           "pod-template-hash": "6a7b8c9d0"},
                   "10.244.2.21", "shared", "node-2", True), *PODS]
BY_IP = {p.ip: p for p in CALLERS if p.ip != "10.244.1.9"}  # (PODS share one IP)


@pytest.mark.parametrize("value, address", [
    ("for=10.244.1.20", "10.244.1.20"), ('for="10.244.1.20:41234"', "10.244.1.20"),
    ("For=10.244.1.20;proto=http, for=10.0.0.1", "10.244.1.20"), ('for="[2001:db8::1]:80"', "2001:db8::1"),
    ("proto=http;for=10.1.2.3", "10.1.2.3"), ("-", ""), ("", ""), ("by=10.0.0.1", ""),
])
def test_forwarded_header(value: str, address: str) -> None:
    assert parse_forwarded(value) == address


@pytest.mark.parametrize("principal, address, pod", [
    (SHARED, "10.244.1.20", "caller-a-5f6d7c8b9-aaaaa"),
    (SHARED, "10.244.2.21", "caller-b-6a7b8c9d0-bbbbb"),
    # a peer naming a pod of another identity is not believed (nor one of another namespace)
    (CURL, "10.244.1.20", None), ("spiffe://cluster.local/ns/other/sa/shared", "10.244.1.20", None),
    (SHARED, "10.9.9.9", None), (SHARED, "", None), ("", "10.244.1.20", None),
])
def test_source_pod_must_have_the_peers_identity(principal: str, address: str, pod: str | None) -> None:
    found = find_source_pod(BY_IP, principal, address)
    assert (found.name if found else None) == pod


def test_two_deployments_of_one_service_account_are_told_apart() -> None:
    a = find_caller_labels(CALLERS, BY_IP, SHARED, "10.244.1.20")
    b = find_caller_labels(CALLERS, BY_IP, SHARED, "10.244.2.21")
    assert (a["source_workload"], a["source_app"], a["source_version"]) == ("caller-a", "caller-a", "v1")
    assert (b["source_workload"], b["source_app"], b["source_version"]) == ("caller-b", "caller-b", "v2")
    assert a["source_canonical_service"] == "caller-a" and b["source_canonical_revision"] == "v2"
    # no (believable) address: the identity's pods, which disagree
    assert find_caller_labels(CALLERS, BY_IP, SHARED, "") == find_source_labels(CALLERS, SHARED) == {
        "source_principal": "cluster.local/ns/default/sa/shared", "source_workload_namespace": "default"}
    assert find_caller_labels(CALLERS, BY_IP, CURL, "10.244.1.20") == find_source_labels(CALLERS, CURL)


def test_control_plane_tally_names_the_calling_pod(tmp_path) -> None:
    view = MeshView(pods={(p.namespace, p.name): p for p in CALLERS})
    node = build_node_id("waypoint", "10.244.1.5", "waypoint-abc", "default")
    tally = RequestMetrics(lambda: view, lambda n: None)
    tally.record(node, [entry(SHARED, "", 200, False, "for=10.244.1.20"),
                        entry(SHARED, "", 200, False, "for=10.244.2.21"),
                        entry(SHARED, "", 200, False, "for=10.244.3.3"), entry(SHARED, "", 200, False)])
    samples = [dict(s.labels) for f in tally.families() if f.name == "istio_requests_total" for s in f.samples]
    assert sorted((s["source_workload"], s["source_version"]) for s in samples) == [
        ("caller-a", "v1"), ("caller-b", "v2"), ("unknown", "unknown")]
    assert [s.value for f in tally.families() if f.name == "istio_requests_total" for s in f.samples
            if dict(s.labels)["source_workload"] == "unknown"] == [2]  # no pod there, and no address
    assert read_entry(entry(SHARED, "", 200, False, "for=10.244.1.20")).forwarded == "10.244.1.20"
