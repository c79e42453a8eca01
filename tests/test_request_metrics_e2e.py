"""Source identity in the waypoint's request metrics, end to end (root, Linux; run in CI): requests
from the curl pod through the waypoint carry Istio's source labels on istio_requests_total and the
histograms, a 403 the waypoint answers itself (AuthorizationPolicy) is counted, and the node
proxies' TCP series name both sides; two Deployments sharing one service account are told apart
(the calling pod, from the address its node proxy writes on the CONNECT), at the waypoint, on
the destination node proxy's series and on the client node proxy's (its connection log); read on the control plane's Prometheus endpoint and with
`meshway metrics`."""
from __future__ import annotations

import time
from collections import Counter

from click.testing import CliRunner

from cluster_support import Mesh, cluster_fixture, via_waypoint
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


SHARED = "spiffe://cluster.local/ns/default/sa/shared"
REVIEWS_PRINCIPAL = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
CALLERS = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: shared}
""" + "".join(f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, version: {version}}}}}
    spec:
      serviceAccountName: shared
      containers: [{{name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}}]
""" for name, version in (("caller-a", "v1"), ("caller-b", "v2")))


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


def by_source(families: dict, name: str, **match: str) -> Counter:
    """Samples of `name` whose labels have `match`, summed by (source_workload, source_app, source_version)."""
    out: Counter = Counter()
    for s in families[name].samples:
        if s.name in (name, f"{name}_total") and all(s.labels.get(k) == v for k, v in match.items()):
            out[(s.labels["source_workload"], s.labels["source_app"], s.labels["source_version"])] += int(s.value)
    return out


def test_two_deployments_of_one_service_account_are_told_apart(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml(CALLERS, "callers.yaml"))
    mesh.wait_ready()
    for caller in ("caller-a", "caller-b"):  # its node proxy has its chains once the pod is in its config
        mesh.wait_until(lambda: mesh.requests("reviews", 1, client=caller)[0][0] == 200, 30, f"{caller} in the mesh")
    reviews = next(p for p in mesh.pods() if p["metadata"]["name"].startswith("reviews-v1-"))
    reviews_ip = reviews["status"]["podIP"]
    caller_b_ip = next(p for p in mesh.pods() if p["metadata"]["name"].startswith("caller-b-"))["status"]["podIP"]
    before = scrape(mesh)
    for caller, n in (("caller-a", 6), ("caller-b", 9)):
        assert [r[0] for r in mesh.requests("reviews", n, client=caller)] == [200] * n  # through the waypoint
        assert [r[0] for r in mesh.requests(reviews_ip, n, client=caller)] == [200] * n  # by pod IP: directly
    # an application's own `forwarded` header rides inside the tunnel: it names nobody
    spoofed = mesh.requests("reviews", 4, client="caller-a", headers={"Forwarded": f"for={caller_b_ip}"})
    assert [r[0] for r in spoofed] == [200] * 4
    after = scrape(mesh)
    # the waypoint: each request with its own pod's workload, app and version (not `unknown`)
    waypoint = by_source(after, "istio_requests", reporter="waypoint", source_principal=SHARED,
                         destination_service=REVIEWS) \
        - by_source(before, "istio_requests", reporter="waypoint", source_principal=SHARED,
                    destination_service=REVIEWS)
    assert waypoint == {("caller-a", "caller-a", "v1"): 6 + 4, ("caller-b", "caller-b", "v2"): 9}, waypoint
    # the destination's node proxy: each tunnel by pod IP with its caller's pod
    match = dict(reporter="destination", source_principal=SHARED, destination_workload="reviews-v1")
    opened = by_source(after, "istio_tcp_connections_opened", **match) \
        - by_source(before, "istio_tcp_connections_opened", **match)
    assert opened == {("caller-a", "caller-a", "v1"): 6, ("caller-b", "caller-b", "v2"): 9}, opened
    mesh.wait_until(lambda: by_source(scrape(mesh), "istio_tcp_connections_closed", **match)
                    - by_source(before, "istio_tcp_connections_closed", **match) == opened, 10, "every tunnel closed")
    received = by_source(scrape(mesh), "istio_tcp_received_bytes", **match)
    assert all(received[k] > 0 for k in opened), received
    # the client's node proxy (reporter="source"): each connection with its own pod, by the service
    # (through the waypoint) and by pod IP (directly, to the pod its address names: no service),
    # opened and closed once
    for match, expected in ((dict(destination_service=REVIEWS), {("caller-a", "caller-a", "v1"): 6 + 4,
                                                                 ("caller-b", "caller-b", "v2"): 9}),
                            (dict(destination_service="unknown", destination_workload="reviews-v1",
                                  destination_version="v1", destination_principal=REVIEWS_PRINCIPAL),
                             {("caller-a", "caller-a", "v1"): 6, ("caller-b", "caller-b", "v2"): 9})):
        match = dict(reporter="source", source_principal=SHARED, **match)
        for name in ("istio_tcp_connections_opened", "istio_tcp_connections_closed"):
            mesh.wait_until(lambda: by_source(scrape(mesh), name, **match) - by_source(before, name, **match)
                            == expected, 10, f"{name} {match}")
        sent = by_source(scrape(mesh), "istio_tcp_sent_bytes", **match) \
            - by_source(before, "istio_tcp_sent_bytes", **match)
        assert set(sent) == set(expected) and all(sent.values()), sent


def test_a_service_without_its_waypoint_names_the_calling_pod_at_the_destination(mesh: Mesh) -> None:
    """The direct path of a service tunnels through the node proxy's internal listener, which is
    handed the pod's address first."""
    mesh.label("svc", "ratings", {"istio.io/use-waypoint": "none"})
    try:
        mesh.wait_until(lambda: (r := mesh.requests("ratings", 1, path="/ratings/0", client="caller-a")[0])[0] == 200
                        and not via_waypoint(r), 15, "ratings directly")
        match = dict(reporter="destination", source_principal=SHARED, destination_app="ratings")
        before = scrape(mesh)
        assert [r[0] for r in mesh.requests("ratings", 5, path="/ratings/0", client="caller-a")] == [200] * 5
        opened = by_source(scrape(mesh), "istio_tcp_connections_opened", **match) \
            - by_source(before, "istio_tcp_connections_opened", **match)
        assert opened == {("caller-a", "caller-a", "v1"): 5}, opened
    finally:
        mesh.label("svc", "ratings", {}, remove=("istio.io/use-waypoint",))


def test_destination_node_proxies_name_the_waypoint_as_the_source_of_its_tunnels(mesh: Mesh) -> None:
    mesh.requests("reviews", 5)
    families = scrape(mesh)
    inbound = [s.labels for s in families["istio_tcp_connections_opened"].samples
               if s.labels["reporter"] == "destination" and s.labels["destination_app"] == "reviews"
               and s.labels["connection_security_policy"] == "mutual_tls"]
    assert inbound and all(s["source_workload"] != "unknown" for s in inbound), inbound
    assert any(s["source_workload"] == "waypoint" and s["source_principal"].endswith("/sa/waypoint")
               for s in inbound), inbound
