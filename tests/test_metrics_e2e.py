"""Metrics end to end (root, Linux; run in CI): the waypoint's Istio request counters against the
requests a client really sent, and a Prometheus scrape of the control plane's host endpoint, which
federates the waypoint and node proxies, parsed with prometheus_client."""
from __future__ import annotations

import time
import urllib.request
from collections import Counter

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from cluster_support import Mesh, cluster_fixture
from meshway.cli import metrics as metrics_cli  # noqa: F401  (registers `metrics`)
from meshway.cli.main import cli

mesh = cluster_fixture()
REVIEWS = "reviews.default.svc.cluster.local"
CURL = "spiffe://cluster.local/ns/default/sa/curl"


def scrape(mesh: Mesh) -> dict:
    """Prometheus families of http://<run/metrics-address>/metrics, by name (as prometheus_client parses)."""
    address = (mesh.state / "run" / "metrics-address").read_text().strip()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def waypoint_requests(families: dict) -> Counter:
    """istio_requests_total to reviews as the waypoint reported them, by (version, response code)."""
    out: Counter = Counter()
    for s in families["istio_requests"].samples:
        if s.labels["reporter"] == "waypoint" and s.labels["destination_service"] == REVIEWS:
            out[(s.labels["destination_version"], s.labels["response_code"])] += int(s.value)
    return out


def source_tcp(families: dict, name: str) -> int:
    return sum(int(s.value) for s in families[name].samples if s.labels["reporter"] == "source"
               and s.labels["source_principal"] == CURL and s.labels["destination_service"] == REVIEWS)


def test_waypoint_counts_exactly_the_requests_each_version_answered(mesh: Mesh) -> None:
    before = scrape(mesh)
    ok = mesh.requests("reviews", 120)
    missing = mesh.requests("reviews", 30, path="/no-such-path")
    after = scrape(mesh)
    assert all(r[0] == 200 for r in ok) and all(r[0] == 404 for r in missing)
    answered = Counter(r[2] for r in ok)
    assert set(answered) == {"v1", "v2"}, answered  # 90/10: both versions answered some
    delta = waypoint_requests(after) - waypoint_requests(before)
    assert {k: v for k, v in delta.items() if k[1] == "200"} == {("v1", "200"): answered["v1"],
                                                                  ("v2", "200"): answered["v2"]}
    assert sum(v for k, v in delta.items() if k[1] == "404") == 30
    assert set(k[1] for k in delta) == {"200", "404"}
    # The client's node proxy saw one connection per request (the client does not reuse them).
    opened = source_tcp(after, "istio_tcp_connections_opened") - source_tcp(before, "istio_tcp_connections_opened")
    assert opened == 150
    assert source_tcp(after, "istio_tcp_received_bytes") > source_tcp(before, "istio_tcp_received_bytes")


def test_scrape_has_control_plane_and_every_proxy(mesh: Mesh) -> None:
    # Envoy merges histograms once a second (stats_flush_interval): they appear after the first merge.
    mesh.wait_until(lambda: "istio_request_duration_milliseconds" in scrape(mesh), 5, "the duration histogram")
    families = scrape(mesh)
    assert families["pilot_xds"].samples[0].value == 3  # one waypoint replica, two node proxies
    pushes = {s.labels["type"]: s.value for s in families["pilot_xds_pushes"].samples}
    assert pushes["cds"] > 0 and pushes["lds"] > 0
    assert sum(s.value for s in families["pilot_total_xds_rejects"].samples) == 0
    converged = [s.value for s in families["pilot_proxy_convergence_time"].samples
                 if s.name == "pilot_proxy_convergence_time_count"]
    assert converged and converged[0] >= 3
    assert families["istio_request_duration_milliseconds"].type == "histogram"
    pods = {s.labels["pod"] for f in families.values() if f.name.startswith("istio_") for s in f.samples}
    assert {"ztunnel-node-1", "ztunnel-node-2"} <= pods and any(p.startswith("waypoint-") for p in pods)


def test_closed_connections_catch_up_with_opened(mesh: Mesh) -> None:
    mesh.requests("reviews", 10)

    def settled() -> bool:
        families = scrape(mesh)
        opened = source_tcp(families, "istio_tcp_connections_opened")
        return opened == source_tcp(families, "istio_tcp_connections_closed")
    mesh.wait_until(settled, 10, "every closed client connection counted as closed")


def test_meshway_metrics_cli_on_the_live_mesh(mesh: Mesh) -> None:
    mesh.requests("reviews", 20)
    time.sleep(1.5)  # histograms are merged once a second
    result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), "metrics", "svc/reviews"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    versions = {r[1]: r for r in rows if r and r[0] == REVIEWS}
    assert {"v1", "v2"} <= set(versions) and all(int(r[2]) > 0 for r in versions.values())
    assert versions["v1"][4].endswith(("ms", "s"))  # a p50 latency from the histogram
