"""Istio metrics from Envoy's own stats: the stat names meshway generates, the translation of real
captured Envoy output (tests/data/envoy_*_stats.txt, from a live cluster), the control plane's own
metrics, the scrape endpoint and `meshway metrics`."""
from __future__ import annotations

import http.client
import json
import math
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from meshway.cli import metrics as metrics_cli  # noqa: F401  (registers `metrics`)
from meshway.cli.main import cli
from meshway.mesh.view import PodInfo
from meshway.observe.metrics import Family, Sample, build_istio_metrics, merge_families, parse_samples, write_text
from meshway.observe.requests import find_caller_labels
from meshway.observe.summary import HttpRow, build_http_rows, build_tcp_rows, find_quantile
from meshway.observe.tunnels import END, TunnelCounts, TunnelRecord, build_tunnel_families, build_tunnel_labels
from meshway.runtime.monitoring import ControlPlaneMetrics, MetricsServer
from meshway.xds import protos as P
from meshway.xds.bootstrap import build_bootstrap
from meshway.xds.stat_tags import build_stat_name, build_stats_tags, build_workload_tags, find_workload_name
from meshway.xds.stream import Acked, Nacked, Sent

DATA = Path(__file__).parent / "data"
WAYPOINT = (DATA / "envoy_waypoint_stats.txt").read_text()
ZTUNNEL = (DATA / "envoy_ztunnel_stats.txt").read_text()
REVIEWS = "reviews.default.svc.cluster.local"


def series(families: list[Family], name: str, **labels: str) -> list[Sample]:
    return [s for f in families for s in f.samples if s.name == name
            and all(s.label(k) == v for k, v in labels.items())]


def total(families: list[Family], name: str, **labels: str) -> float:
    return sum(s.value for s in series(families, name, **labels))


# -- stat names ----------------------------------------------------------------------------------
def extract(stat: str) -> tuple[str, dict[str, str]]:
    """Envoy's tag extraction, for the extractors that matter here: ours plus its default cluster
    name and response code ones (each matches the full name; the first groups are removed)."""
    extractors = [("envoy.cluster_name", r"^cluster\.((.+?)\.)"), ("envoy.response_code", r"_rq(_(\d{3}))$")]
    extractors += [(t["tag_name"], t["regex"]) for t in build_stats_tags()]
    tags, removed = {}, set()
    for name, regex in extractors:
        m = re.search(regex, stat)
        if m:
            tags[name] = m.group(2)
            removed |= set(range(*m.span(1)))
    return "".join(c for i, c in enumerate(stat) if i not in removed), tags


def test_stat_name_carries_istio_labels_past_envoys_default_extractors() -> None:
    alt = build_stat_name("inbound-vip|9080|http/v1|reviews.default.svc.cluster.local",
                          {"reporter": "waypoint", "destination_service": REVIEWS, "destination_version": "v1",
                           "destination_workload": ""})
    assert alt.startswith("inbound-vip|9080|http/v1|reviews_default_svc_cluster_local.")  # dot-free token
    assert "destination_workload" not in alt  # empty values are left out
    name, tags = extract(f"cluster.{alt}.upstream_rq_200")
    assert name == "cluster.upstream_rq"
    assert tags == {"envoy.cluster_name": "inbound-vip|9080|http/v1|reviews_default_svc_cluster_local",
                    "envoy.response_code": "200", "reporter": "waypoint", "destination_service": REVIEWS,
                    "destination_version": "v1"}


def test_label_names_do_not_match_inside_longer_ones() -> None:
    _, tags = extract("cluster." + build_stat_name("c", {"destination_canonical_service": "reviews"}) + ".x")
    assert "destination_service" not in tags and tags["destination_canonical_service"] == "reviews"


def test_bootstrap_has_the_extractors_and_envoy_accepts_them() -> None:
    boot = build_bootstrap("id", "c", "/tmp/ads.sock", "/tmp/admin.sock")
    assert boot["stats_config"]["stats_tags"] == build_stats_tags()
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from google.protobuf import json_format
    json_format.ParseDict(boot, bootstrap_pb2.Bootstrap())  # a valid Bootstrap message


def test_workload_labels_of_a_deployment_pod() -> None:
    pod = PodInfo("default", "reviews-v2-gjk8vht8lp-pfrjv", {"app": "reviews", "version": "v2",
                                                             "pod-template-hash": "gjk8vht8lp"}, "10.244.1.4",
                  "bookinfo-reviews", "node-1", True)
    assert find_workload_name(pod) == "reviews-v2"
    tags = build_workload_tags(pod, "spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    assert tags["destination_principal"] == "cluster.local/ns/default/sa/bookinfo-reviews"
    assert (tags["destination_app"], tags["destination_version"], tags["destination_canonical_revision"]) == \
        ("reviews", "v2", "v2")
    bare = PodInfo("default", "sleep", {}, None, "default", None, True)
    assert find_workload_name(bare) == "sleep" and build_workload_tags(bare, "x")["destination_canonical_revision"] \
        == "latest"


# -- translation of captured Envoy output --------------------------------------------------------
def test_parse_samples_reads_names_labels_and_values_exactly() -> None:
    samples = list(parse_samples('# TYPE a counter\na{x="1",y="q\\"uo\\\\te"} 3\nb 2.5\n\n'))
    assert samples == [("a", {"x": "1", "y": 'q"uo\\te'}, 3.0), ("b", {}, 2.5)]


def test_waypoint_requests_by_version_and_response_code() -> None:
    families = build_istio_metrics(WAYPOINT, {"pod": "waypoint-x", "namespace": "default"})
    counts = {(s.label("destination_version"), s.label("response_code")): s.value
              for s in series(families, "istio_requests_total", destination_service=REVIEWS)}
    assert counts == {("v1", "200"): 42, ("v1", "404"): 6, ("v2", "200"): 3}  # as Envoy counted them
    sample = series(families, "istio_requests_total", destination_version="v2")[0]
    labels = dict(sample.labels)
    assert labels["reporter"] == "waypoint" and labels["request_protocol"] == "http"
    assert (labels["destination_service_name"], labels["destination_service_namespace"]) == ("reviews", "default")
    assert labels["source_workload"] == "unknown" and labels["destination_cluster"] == "Kubernetes"
    assert (labels["pod"], labels["namespace"]) == ("waypoint-x", "default")
    # untagged clusters (xds-grpc, main_internal) and look-alike families are not Istio metrics
    assert total(families, "istio_requests_total") == 42 + 6 + 3 + 3  # + 3 to ratings
    assert not series(families, "istio_tcp_connections_opened_total")  # http clusters' connections


def test_waypoint_histograms_are_istio_histograms() -> None:
    families = build_istio_metrics(WAYPOINT)
    assert [f.name for f in families] == ["istio_requests_total", "istio_request_duration_milliseconds",
                                          "istio_request_bytes", "istio_response_bytes"]
    buckets = series(families, "istio_request_duration_milliseconds_bucket", destination_version="v1")
    bounds = [s.label("le") for s in buckets]
    assert bounds[0] == "0.5" and bounds[-1] == "+Inf" and len(bounds) == 20
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative, in order
    assert total(families, "istio_request_duration_milliseconds_count", destination_version="v1") == 48
    assert total(families, "istio_response_bytes_count", destination_version="v2") == 3


def test_node_proxy_tcp_metrics_from_its_stats() -> None:
    families = build_istio_metrics(ZTUNNEL)
    # The capture predates the connection log: its outbound chains' stats still name their identity.
    # Those series now come from the log, per source pod (`meshway.observe.tunnels`), never from here
    # as well (they would count every connection twice).
    assert 'reporter="source"' in ZTUNNEL
    assert not series(families, "istio_tcp_connections_opened_total", reporter="source")
    inbound = series(families, "istio_tcp_connections_opened_total", reporter="destination",
                     destination_workload="reviews-v2")
    assert [s.value for s in inbound] == [1]  # the waypoint's one pooled tunnel to the pod
    labels = dict(inbound[0].labels)
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert labels["connection_security_policy"] == "mutual_tls" and "response_code" not in labels
    assert total(families, "istio_tcp_sent_bytes_total", destination_workload="reviews-v2") == 1788
    assert not series(families, "istio_requests_total")  # the CONNECT of a tunnel is not a request


def test_text_round_trips_through_prometheus_client() -> None:
    families = merge_families([build_istio_metrics(WAYPOINT, {"pod": "w"}), build_istio_metrics(ZTUNNEL, {"pod": "z"})])
    parsed = {f.name: f for f in text_string_to_metric_families(write_text(families))}
    assert {"istio_requests", "istio_request_duration_milliseconds", "istio_tcp_connections_opened"} <= set(parsed)
    assert parsed["istio_request_duration_milliseconds"].type == "histogram"
    assert sum(s.value for s in parsed["istio_requests"].samples) == total(families, "istio_requests_total")


def test_merge_keeps_one_family_per_name() -> None:
    a = [Family("m", "counter", "h", (Sample("m", (("pod", "a"),), 1),))]
    b = [Family("m", "counter", "h", (Sample("m", (("pod", "b"),), 2),))]
    assert merge_families([a, b]) == [Family("m", "counter", "h", (Sample("m", (("pod", "a"),), 1),
                                                                     Sample("m", (("pod", "b"),), 2)))]
    assert write_text([Family("pilot_xds_pushes", "counter", "h", (Sample("pilot_xds_pushes", (), 3),))]) == \
        "# HELP pilot_xds_pushes h\n# TYPE pilot_xds_pushes counter\npilot_xds_pushes 3\n"


# -- summaries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("q,buckets,expected", [
    (0.5, [(1, 0), (5, 10), (float("inf"), 10)], 3.0),  # inside (1, 5]: 1 + 4 * 5/10
    (0.99, [(1, 5), (5, 10), (float("inf"), 10)], 4.92),
    (0.5, [(0.5, 10), (float("inf"), 10)], 0.25),  # first bucket interpolates from 0
    (0.99, [(10, 1), (float("inf"), 100)], 10.0),  # in +Inf: the highest finite bound
])
def test_quantile_like_histogram_quantile(q: float, buckets: list, expected: float) -> None:
    assert find_quantile(q, buckets) == pytest.approx(expected)


def test_quantile_of_nothing_is_nan() -> None:
    assert math.isnan(find_quantile(0.5, [(1, 0), (float("inf"), 0)])) and math.isnan(find_quantile(0.5, []))


def test_rows_per_destination_version() -> None:
    rows = build_http_rows(build_istio_metrics(WAYPOINT))
    assert [(r.service, r.version, r.requests, r.errors) for r in rows] == [
        ("ratings.default.svc.cluster.local", "unknown", 3, 0), (REVIEWS, "v1", 48, 6), (REVIEWS, "v2", 3, 0)]
    assert all(r.p50 <= r.p90 <= r.p99 for r in rows)
    tcp = build_tcp_rows(build_istio_metrics(ZTUNNEL))
    assert ("destination", "unknown", "reviews-v2.default") in [(r.reporter, r.source, r.destination) for r in tcp]


def test_writer_table() -> None:
    text = metrics_cli.write_http([HttpRow(REVIEWS, "v1", 10, 1, 0.4, 2.25, 1500.0),
                                   HttpRow(REVIEWS, "v2", 0, 0, math.nan, math.nan, math.nan)])
    assert text.splitlines() == [
        "DESTINATION                         VERSION   REQUESTS   ERRORS   P50 LATENCY   P90 LATENCY   P99 LATENCY",
        "reviews.default.svc.cluster.local   v1        10         1        0.4ms         2.2ms         1.50s",
        "reviews.default.svc.cluster.local   v2        0          0        -             -             -"]


# -- control plane -------------------------------------------------------------------------------
CDS, LDS = P.CLUSTER, P.LISTENER


def test_control_plane_counts_pushes_rejects_and_convergence() -> None:
    now = [100.0]
    m = ControlPlaneMetrics(clock=lambda: now[0])
    m.published("w")
    for event in (Sent(CDS, "v1", "1", ()), Sent(LDS, "v1", "2", ()), Acked(CDS, "v1", "1")):
        m.on_event("w", event)
    assert m.convergence.counts == [0] * 11  # LDS not answered yet
    now[0] = 100.3
    m.on_event("w", Nacked(LDS, "v1", "2", "bad listener", ""))
    m.on_event("w", Acked(LDS, "v0", "2"))  # a late duplicate changes nothing
    assert (dict(m.pushes), dict(m.rejects)) == ({"cds": 1, "lds": 1}, {"lds": 1})
    assert sum(m.convergence.counts) == 1 and m.convergence.sum == pytest.approx(0.3)
    m.on_event("w", Sent(CDS, "v2", "3", ()))  # sent without a new snapshot: no convergence to measure
    m.on_event("w", Acked(CDS, "v2", "3"))
    assert sum(m.convergence.counts) == 1
    families = {f.name: f for f in m.families(connected=2)}
    assert families["pilot_xds"].samples[0].value == 2
    assert [(s.label("type"), s.value) for s in families["pilot_xds_pushes"].samples] == [("cds", 2), ("lds", 1)]
    assert [(s.label("type"), s.value) for s in families["pilot_total_xds_rejects"].samples] == [("lds", 1)]
    m.observe_build("waypoint", 0.002)
    text = write_text(m.families(connected=2))
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["pilot_proxy_convergence_time"].type == "histogram"
    assert 'meshway_config_build_seconds_count{proxy_type="waypoint"} 1' in text


def test_metrics_server_serves_prometheus_text() -> None:
    families = [Family("pilot_xds", "gauge", "h", (Sample("pilot_xds", (("version", "x"),), 1),))]
    server = MetricsServer("127.0.0.1:0", lambda: families)
    server.start()
    try:
        host, port = server.address.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
        assert [f.name for f in text_string_to_metric_families(response.read().decode())] == ["pilot_xds"]
    finally:
        server.stop()


# -- `meshway metrics` against a fake admin socket -----------------------------------------------
class _Admin(BaseHTTPRequestHandler):
    text = ""

    def do_GET(self) -> None:  # noqa: N802
        body = self.text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def serve_admin(path: Path, text: str) -> socketserver.UnixStreamServer:
    handler = type("Admin", (_Admin,), {"text": text, "address_string": lambda self: "admin"})
    server = socketserver.ThreadingUnixStreamServer(str(path), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def source_tally() -> list[Family]:
    """A node proxy's `reporter="source"` series as the control plane tallies its connection log: one
    connection of the curl pod to reviews."""
    curl = PodInfo("default", "curl-6d8f-xxxxx", {"app": "curl", "pod-template-hash": "6d8f"}, "10.244.1.9", "curl",
                   "node-1", True)
    record = TunnelRecord("c1", END, "spiffe://cluster.local/ns/default/sa/curl", curl.ip, {
        "reporter": "source", "request_protocol": "tcp", "connection_security_policy": "mutual_tls",
        "destination_service": REVIEWS, "destination_service_name": "reviews",
        "destination_service_namespace": "default"}, 200, 74, 543)
    counts = TunnelCounts()
    counts.add(build_tunnel_labels(record, find_caller_labels([curl], {curl.ip: curl}, record.principal, curl.ip)),
               record)
    return build_tunnel_families([({"pod": "ztunnel-node-1", "namespace": "istio-system"}, counts)])


@pytest.fixture()
def fake_mesh(tmp_path: Path):
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    servers = [serve_admin(tmp_path / "w.sock", WAYPOINT), serve_admin(tmp_path / "z.sock", ZTUNNEL)]
    status = {
        "waypoint~1": {"pod": "waypoint-9cwm2cvgjl-kf47k", "namespace": "default", "type": "waypoint",
                       "admin": str(tmp_path / "w.sock")},
        "ztunnel~1": {"pod": "ztunnel-node-1", "namespace": "istio-system", "type": "ztunnel",
                      "admin": str(tmp_path / "z.sock")},
    }
    (state / "run" / "proxy-status.json").write_text(json.dumps(status))
    # A waypoint's HTTP series come from the control plane's tally of its request log: here the
    # same numbers as its stats, as that tally writes them.
    tally = [f for f in build_istio_metrics(WAYPOINT, {"pod": "waypoint-9cwm2cvgjl-kf47k", "namespace": "default"})
             if not f.name.startswith("istio_tcp_")]
    (state / "run" / "request-metrics.prom").write_text(write_text(tally + source_tally()))
    yield state
    for server in servers:
        server.shutdown()
        server.server_close()


def run_metrics(state: Path, *args: str):
    return CliRunner().invoke(cli, ["--state-dir", str(state), "metrics", *args])


def test_cli_summary_of_a_waypoint(fake_mesh: Path) -> None:
    result = run_metrics(fake_mesh, "deploy/waypoint")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["DESTINATION", "VERSION", "REQUESTS", "ERRORS"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["ratings.default.svc.cluster.local", "unknown", "3", "0"], [REVIEWS, "v1", "48", "6"],
        [REVIEWS, "v2", "3", "0"]]


def test_cli_service_target_spans_waypoint_and_node_proxies(fake_mesh: Path) -> None:
    result = run_metrics(fake_mesh, "svc/reviews")
    assert result.exit_code == 0, result.output
    assert "ratings" not in result.output
    # the node proxy's source side, from the tally of its connection log: curl's workload
    assert ["source", "curl.default", REVIEWS, "1", "1", "74", "543"] in [line.split() for line in
                                                                         result.output.splitlines()]
    raw = run_metrics(fake_mesh, "svc/reviews", "-o", "prometheus")
    families = {f.name: f for f in text_string_to_metric_families(raw.output)}
    assert {s.labels["destination_service_name"] for f in families.values() for s in f.samples} == {"reviews"}


@pytest.mark.parametrize("proxy, tally_pod, shown", [
    # on Kubernetes a node proxy is its node's DaemonSet pod; the tally names it by its node id
    ({"pod": "ztunnel-9tfqn", "namespace": "istio-system", "type": "ztunnel", "node": "node-1"}, "ztunnel-node-1",
     "ztunnel-9tfqn"),
    ({"pod": "ztunnel-9tfqn", "namespace": "istio-system", "type": "ztunnel", "node": "node-2"}, "ztunnel-node-1",
     None),  # another node's
    ({"pod": "ztunnel-node-1", "namespace": "istio-system", "type": "ztunnel"}, "ztunnel-node-1", "ztunnel-node-1"),
    ({"pod": "waypoint-7999b58cb4-j6ktg", "namespace": "default", "type": "waypoint", "node": "node-1"},
     "waypoint-7999b58cb4-j6ktg", "waypoint-7999b58cb4-j6ktg"),
])
def test_the_tally_is_read_for_the_proxies_chosen_by_their_shown_names(proxy, tally_pod, shown) -> None:
    tally = write_text([Family("istio_tcp_connections_opened_total", "counter", "h", (Sample(
        "istio_tcp_connections_opened_total", (("reporter", "source"), ("pod", tally_pod),
                                               ("namespace", proxy["namespace"])), 2),))])
    families = metrics_cli.fetch_families([proxy], tally, fetch=lambda p, path: b"")
    assert [s.label("pod") for f in families for s in f.samples] == ([shown] if shown else [])


def test_cli_node_proxy_target_and_errors(fake_mesh: Path) -> None:
    result = run_metrics(fake_mesh, "ztunnel-node-1", "-n", "istio-system")
    assert result.exit_code == 0 and result.output.startswith("REPORTER"), result.output
    missing = run_metrics(fake_mesh, "no-such-pod")
    assert missing.exit_code == 1 and 'pod "no-such-pod" not found' in missing.output
