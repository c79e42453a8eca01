"""Source identity in the waypoint's request metrics, end to end (root, Linux; run in CI): requests
from the curl pod through the waypoint carry Istio's source labels on istio_requests_total and the
histograms, a 403 the waypoint answers itself (AuthorizationPolicy) is counted, and the node
proxies' TCP series name both sides; read on the control plane's Prometheus endpoint and with
`meshway metrics`."""
from __future__ import annotations

import time
from collections import Counter

from click.testing import CliRunner

from cluster_support import Mesh, cluster_fixture
from meshway.cli import metrics as metrics_cli  # noqa: F401  (registers `metrics`)
from meshway.cli.main import cli
from meshway.model import find_kind, load_yaml
from test_metrics_e2e import REVIEWS, scrape

mesh = cluster_fixture()
CURL = "spiffe://cluster.local/ns/default/sa/curl"
CURL_LABELS = {"source_workload": "curl", "source_workload_namespace": "default", "source_principal": CURL,
               "source_app": "curl", "source_cluster": "Kubernetes", "connection_security_policy": "mutual_tls"}
DENY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin"]
"""


def from_curl(families: dict, name: str = "istio_requests") -> Counter:
    """Samples of `name` the waypoint reported for reviews with curl's labels, by (version, code)."""
    out: Counter = Counter()
    for s in families[name].samples:
        if s.name in (f"{name}_total", f"{name}_count") and s.labels.get("reporter") == "waypoint" \
                and s.labels.get("destination_service") == REVIEWS \
                and all(s.labels.get(k) == v for k, v in CURL_LABELS.items()):
            out[(s.labels["destination_version"], s.labels["response_code"])] += int(s.value)
    return out


def test_requests_from_curl_carry_its_identity(mesh: Mesh) -> None:
    before = scrape(mesh)
    ok = mesh.requests("reviews", 40)
    after = scrape(mesh)
    assert all(r[0] == 200 for r in ok)
    answered = Counter(r[2] for r in ok)
    delta = from_curl(after) - from_curl(before)
    assert delta == {(v, "200"): n for v, n in answered.items()}, delta
    # The histograms have the same labels and counts (the whole request's duration and sizes).
    for name in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
        assert sum((from_curl(after, name) - from_curl(before, name)).values()) == 40, name


def test_a_403_the_waypoint_answers_is_counted(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml(DENY, "deny.yaml"))
    try:
        mesh.wait_until(lambda: mesh.requests("reviews", 1, path="/admin")[0][0] == 403, 15, "the DENY in place")
        before = scrape(mesh)
        denied = mesh.requests("reviews", 7, path="/admin")
        after = scrape(mesh)
        assert [r[0] for r in denied] == [403] * 7
        delta = from_curl(after) - from_curl(before)
        assert delta == {("unknown", "403"): 7}, delta  # no upstream answered: no version
    finally:
        mesh.store.delete([(find_kind("ap"), "default", "deny-admin")])


def test_node_proxies_tcp_series_name_source_and_destination(mesh: Mesh) -> None:
    mesh.requests("reviews", 5)
    families = scrape(mesh)
    sources = [s.labels for s in families["istio_tcp_connections_opened"].samples
               if s.labels["reporter"] == "source" and s.labels["source_principal"] == CURL
               and s.labels["destination_service"] == REVIEWS]
    assert sources and all(s["source_workload"] == "curl" and s["source_app"] == "curl"
                           and s["source_workload_namespace"] == "default" for s in sources), sources


def test_meshway_metrics_prometheus_output_has_the_source_labels(mesh: Mesh) -> None:
    mesh.requests("reviews", 5)
    time.sleep(1)  # the control plane writes its tally for the CLI at most every 0.25 s
    result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), "metrics", "svc/reviews", "-o", "prometheus"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("istio_requests_total{")
             and 'reporter="waypoint"' in line]
    assert lines and all(f'{k}="{v}"' in line for line in lines if 'source_workload="curl"' in line
                         for k, v in CURL_LABELS.items())
    assert any('source_workload="curl"' in line for line in lines)
