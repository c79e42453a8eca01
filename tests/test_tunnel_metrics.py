"""Which pod a tunnel comes from (pure, and real Envoy's validation): the node proxy writes the pod's
address on every CONNECT it originates, the waypoint keeps it from the CONNECT only, the destination
node proxy logs each tunnel with it; the control plane counts the destination-side TCP series with
the calling pod's labels, believing an address only for a pod of the tunnel's mTLS identity. The
client's node proxy logs each captured connection of its outbound chains, and the control plane
counts the source-side series by the pod at the connection's source address."""
from __future__ import annotations

from pathlib import Path

import pytest
from envoy.data.accesslog.v3.accesslog_pb2 import AccessLogType, HTTPAccessLogEntry, TCPAccessLogEntry
from prometheus_client.parser import text_string_to_metric_families
from xds_support import ENVOY, build_store, translate, view_of

from meshway.ca import CertificateAuthority
from meshway.ca.sds import SDS_ROOT, build_certificate_secret, build_root_secret, build_secrets
from meshway.mesh.view import MeshView, PodInfo
from meshway.observe.metrics import write_text
from meshway.observe.requests import parse_request_families
from meshway.observe.tunnels import END, ESTABLISHED, PERIODIC, TunnelCounts, TunnelRecord, build_tunnel_families, \
    build_tunnel_labels, read_connection_entry, read_tunnel_entry
from meshway.runtime.request_metrics import RequestMetrics
from meshway.xds import protos as P
from meshway.xds.build_peer_source import CONNECTION_LOG_NAME, build_tunnel_tags
from meshway.xds.build_ztunnel import NodeProxy, _h, build_ztunnel_config
from meshway.xds.proxy import build_node_id
from meshway.xds.validate import run_validate

DEMO = Path(__file__).resolve().parents[1] / "meshway" / "demo"
SHARED = "spiffe://cluster.local/ns/default/sa/shared"
WAYPOINT_SA = "spiffe://cluster.local/ns/default/sa/waypoint"
REVIEWS = PodInfo("default", "reviews-v1-7c9f-abcde", {"app": "reviews", "version": "v1", "pod-template-hash": "7c9f"},
                  "10.244.2.7", "bookinfo-reviews", "node-2", True)
PODS = [PodInfo("default", "caller-a-5f6d-aaaaa", {"app": "caller-a", "version": "v1", "pod-template-hash": "5f6d"},
                "10.244.1.20", "shared", "node-1", True),
        PodInfo("default", "caller-b-6a7b-bbbbb", {"app": "caller-b", "version": "v2", "pod-template-hash": "6a7b"},
                "10.244.1.21", "shared", "node-1", True),
        PodInfo("default", "waypoint-9c8d-ccccc",
                {"gateway.networking.k8s.io/gateway-name": "waypoint", "pod-template-hash": "9c8d"},
                "10.244.1.5", "waypoint", "node-1", True),
        REVIEWS]
TAGS = build_tunnel_tags(REVIEWS, "spiffe://cluster.local/ns/default/sa/bookinfo-reviews")


def entry(stream: str, event: str, principal: str = SHARED, forwarded: str | None = "for=10.244.1.20",
          status: int = 200, received: int = 0, sent: int = 0, remote: str = "10.244.1.1") -> HTTPAccessLogEntry:
    e = HTTPAccessLogEntry()
    c = e.common_properties
    c.stream_id, c.access_log_type = stream, AccessLogType.Value(event)
    c.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=principal)
    c.downstream_remote_address.socket_address.address = remote
    c.custom_tags.update(TAGS)
    if forwarded is not None:
        e.request.request_headers["forwarded"] = forwarded
    e.response.response_code.value = status
    e.request.request_body_bytes, e.response.response_body_bytes = received, sent
    return e


def test_read_tunnel_entry() -> None:
    r = read_tunnel_entry(entry("s1", END, received=10, sent=20))
    assert r == TunnelRecord("s1", END, SHARED, "10.244.1.20", TAGS, 200, 10, 20)
    # no header (a waypoint's tunnel): the address it connects from
    assert read_tunnel_entry(entry("s2", ESTABLISHED, WAYPOINT_SA, None, remote="10.244.1.5")).address == "10.244.1.5"


def test_a_tunnel_is_opened_once_closed_once_and_its_bytes_counted_as_they_grow() -> None:
    counts = TunnelCounts()
    labels = build_tunnel_labels(read_tunnel_entry(entry("s", ESTABLISHED)), {})
    for e in (entry("s", ESTABLISHED), entry("s", PERIODIC, received=100, sent=1000),
              entry("s", PERIODIC, received=150, sent=1000), entry("s", END, received=160, sent=1500)):
        counts.add(labels, read_tunnel_entry(e))
    assert counts.series == {labels: [1, 1, 160, 1500]} and counts.open == {}
    # refused (a 403 of an L4 policy): no connection
    counts.add(labels, read_tunnel_entry(entry("r", END, status=403, received=5)))
    # established before the tally knew it (a control-plane restart): opened when first seen, once
    counts.add(labels, read_tunnel_entry(entry("late", PERIODIC, received=7, sent=9)))
    counts.add(labels, read_tunnel_entry(entry("late", END, received=8, sent=9)))
    counts.add(labels, read_tunnel_entry(entry("ended", END, received=1, sent=2)))
    assert counts.series == {labels: [3, 3, 169, 1511]}


def test_open_tunnels_and_label_sets_are_bounded() -> None:
    counts = TunnelCounts(max_series=1, max_open=2)
    a = build_tunnel_labels(read_tunnel_entry(entry("a", ESTABLISHED)), {"source_workload": "a"})
    b = build_tunnel_labels(read_tunnel_entry(entry("b", ESTABLISHED)), {"source_workload": "b"})
    for stream in ("1", "2", "3"):
        counts.add(a, read_tunnel_entry(entry(stream, ESTABLISHED)))
    assert list(counts.open) == ["2", "3"]
    counts.add(b, read_tunnel_entry(entry("4", ESTABLISHED)))
    assert counts.overflow == 1 and list(counts.series) == [a]
    assert "meshway_tunnel_metrics_overflow_total" in {f.name for f in build_tunnel_families([({"pod": "z"}, counts)])}


def test_control_plane_tally_names_the_calling_pod_and_believes_only_its_identity(tmp_path) -> None:
    view = MeshView(pods={(p.namespace, p.name): p for p in PODS})
    node = build_node_id("ztunnel", "10.244.2.1", "ztunnel-node-2", "istio-system")
    tally = RequestMetrics(lambda: view, lambda n: None, tmp_path / "requests.prom")
    tally.record(node, [entry("a", ESTABLISHED), entry("a", END, received=3, sent=4),
                        entry("b", ESTABLISHED, forwarded="for=10.244.1.21"),
                        # curl's identity naming caller-a's address: not believed, curl's own labels
                        entry("c", ESTABLISHED, "spiffe://cluster.local/ns/default/sa/curl"),
                        # the waypoint: no header, its own address
                        entry("w", ESTABLISHED, WAYPOINT_SA, None, remote="10.244.1.5")])
    text = write_text(tally.families())
    opened = {(s.labels["source_workload"], s.labels["source_version"], s.labels["source_principal"]): s.value
              for f in text_string_to_metric_families(text) if f.name == "istio_tcp_connections_opened"
              for s in f.samples}
    assert opened == {("caller-a", "v1", SHARED): 1, ("caller-b", "v2", SHARED): 1,
                      ("unknown", "unknown", "spiffe://cluster.local/ns/default/sa/curl"): 1,
                      ("waypoint", "unknown", WAYPOINT_SA): 1}
    sample = next(s for f in text_string_to_metric_families(text) if f.name == "istio_tcp_received_bytes"
                  for s in f.samples if s.labels["source_workload"] == "caller-a")
    assert sample.value == 3 and sample.labels["reporter"] == "destination"
    assert (sample.labels["destination_workload"], sample.labels["destination_version"], sample.labels["pod"],
            sample.labels["connection_security_policy"]) == ("reviews-v1", "v1", "ztunnel-node-2", "mutual_tls")
    # `meshway metrics` reads the same series back from the file
    back = parse_request_families((tmp_path / "requests.prom").read_text(), lambda labels: True)
    assert [f.name for f in back] == ["istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                                      "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"]


# -- the source side: the client node proxy's connection log ----------------------------------------
SOURCE_TAGS = {"reporter": "source", "request_protocol": "tcp", "connection_security_policy": "mutual_tls",
               "destination_service": "reviews.default.svc.cluster.local", "destination_service_name": "reviews",
               "destination_service_namespace": "default"}


def connection(stream: str, event: str, remote: str = "10.244.1.20", received: int = 0, sent: int = 0,
               port: int = 40000, principal: str = "cluster.local/ns/default/sa/shared",
               local: str = "10.96.0.20", tags: dict = SOURCE_TAGS) -> TCPAccessLogEntry:
    """An entry of a node proxy's connection log, as `build_connection_log` makes Envoy send it."""
    e = TCPAccessLogEntry()
    c = e.common_properties
    c.stream_id, c.access_log_type = stream, AccessLogType.Value(event)
    c.downstream_remote_address.socket_address.address = remote
    c.downstream_remote_address.socket_address.port_value = port
    c.downstream_local_address.socket_address.address = local
    c.downstream_local_address.socket_address.port_value = 9080
    c.custom_tags.update({**tags, "source_principal": principal})
    e.connection_properties.received_bytes, e.connection_properties.sent_bytes = received, sent
    return e


@pytest.mark.parametrize("event,expected", [("TcpUpstreamConnected", ESTABLISHED), ("TcpPeriodic", PERIODIC),
                                            ("TcpConnectionEnd", END)])
def test_read_connection_entry(event: str, expected: str) -> None:
    r = read_connection_entry(connection("s1", event, received=10, sent=20))
    assert r == TunnelRecord("s1", expected, SHARED, "10.244.1.20", SOURCE_TAGS, 200, 10, 20, "10.96.0.20")


def test_a_connection_without_stream_id_is_known_by_its_addresses() -> None:
    a, b = (read_connection_entry(connection("", "TcpPeriodic", port=p)) for p in (40000, 40001))
    assert a.stream == "10.244.1.20:40000>10.96.0.20:9080" and a.stream != b.stream


@pytest.mark.parametrize("events,expected", [
    # (event, received, sent) of one connection -> opened, closed, received, sent
    ([("TcpUpstreamConnected", 0, 0), ("TcpPeriodic", 40, 400), ("TcpConnectionEnd", 74, 543)], [1, 1, 74, 543]),
    ([("TcpUpstreamConnected", 0, 0), ("TcpPeriodic", 40, 400)], [1, 0, 40, 400]),  # still open
    # its upstream never connected (refused, no endpoint): ztunnel counts the connection it accepted too
    ([("TcpConnectionEnd", 12, 0)], [1, 1, 12, 0]),
    # open before the tally knew it (a control-plane restart): opened when first seen, once
    ([("TcpPeriodic", 5, 6), ("TcpPeriodic", 7, 9), ("TcpConnectionEnd", 8, 9)], [1, 1, 8, 9]),
])
def test_a_connection_is_counted_once_with_its_bytes_as_they_grow(events: list, expected: list) -> None:
    counts = TunnelCounts()
    labels = build_tunnel_labels(read_connection_entry(connection("s", "TcpConnectionEnd")), {})
    for event, received, sent in events:
        counts.add(labels, read_connection_entry(connection("s", event, received=received, sent=sent)))
    assert counts.series == {labels: expected}


def test_control_plane_tally_names_each_source_pod_of_one_identity(tmp_path) -> None:
    """Two Deployments on one service account, both on node-1: each connection is its own pod's
    (by the connection's source address); an address that is no pod of the chain's identity gives
    the identity's labels (its pods disagree: `unknown`), never that pod's."""
    view = MeshView(pods={(p.namespace, p.name): p for p in PODS})
    node = build_node_id("ztunnel", "10.244.1.1", "ztunnel-node-1", "istio-system")
    tally = RequestMetrics(lambda: view, lambda n: None, None)
    tally.record(node, [connection("a", "TcpUpstreamConnected"),
                        connection("a", "TcpConnectionEnd", received=3, sent=4),
                        connection("b", "TcpUpstreamConnected", remote="10.244.1.21"),
                        connection("b2", "TcpConnectionEnd", remote="10.244.1.21", received=1),
                        connection("w", "TcpUpstreamConnected", remote="10.244.1.5")])  # the waypoint's address
    families = {f.name: f for f in text_string_to_metric_families(write_text(tally.families()))}
    opened = {(s.labels["reporter"], s.labels["source_workload"], s.labels["source_app"], s.labels["source_version"],
               s.labels["destination_service"], s.labels["pod"]): s.value
              for s in families["istio_tcp_connections_opened"].samples}
    reviews = "reviews.default.svc.cluster.local"
    assert opened == {("source", "caller-a", "caller-a", "v1", reviews, "ztunnel-node-1"): 1,
                      ("source", "caller-b", "caller-b", "v2", reviews, "ztunnel-node-1"): 2,
                      ("source", "unknown", "unknown", "unknown", reviews, "ztunnel-node-1"): 1}
    closed = {s.labels["source_workload"]: s.value for s in families["istio_tcp_connections_closed"].samples}
    assert closed == {"caller-a": 1, "caller-b": 1, "unknown": 0}
    sample = next(s for s in families["istio_tcp_received_bytes"].samples if s.labels["source_workload"] == "caller-a")
    assert sample.value == 3 and sample.labels["source_principal"] == SHARED
    assert sample.labels["source_workload_namespace"] == "default"
    assert sample.labels["connection_security_policy"] == "mutual_tls"


def test_a_direct_connection_to_a_pod_ip_names_that_pods_workload(tmp_path) -> None:
    """The chain that serves every pod addressed directly names no workload: the tally takes the
    destination pod from the connection's original destination address, as ztunnel knows it."""
    view = MeshView(pods={(p.namespace, p.name): p for p in PODS})
    node = build_node_id("ztunnel", "10.244.1.1", "ztunnel-node-1", "istio-system")
    tally = RequestMetrics(lambda: view, lambda n: None, None)
    direct = {"reporter": "source", "request_protocol": "tcp", "connection_security_policy": "mutual_tls"}
    tally.record(node, [connection("p", "TcpUpstreamConnected", local=REVIEWS.ip, tags=direct),
                        connection("q", "TcpUpstreamConnected", local="10.244.9.9", tags=direct),  # no pod there
                        connection("s", "TcpUpstreamConnected")])  # a service chain: its own tags
    families = {f.name: f for f in text_string_to_metric_families(write_text(tally.families()))}
    opened = {(s.labels["destination_workload"], s.labels["destination_version"], s.labels["destination_principal"],
               s.labels["destination_service"]): s.value for s in families["istio_tcp_connections_opened"].samples}
    assert opened == {("reviews-v1", "v1", "spiffe://cluster.local/ns/default/sa/bookinfo-reviews", "unknown"): 1,
                      ("unknown", "unknown", "unknown", "unknown"): 1,
                      ("unknown", "unknown", "unknown", "reviews.default.svc.cluster.local"): 1}


# -- the config: what each proxy sends, keeps and logs ------------------------------------------
WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> tuple:
    tmp = tmp_path_factory.mktemp("mesh")
    files = []
    for name, text in (("bookinfo.yaml", (DEMO / "bookinfo.yaml").read_text()),
                       ("client.yaml", (DEMO / "bookinfo-client.yaml").read_text()), ("waypoint.yaml", WAYPOINT)):
        files.append(tmp / name)
        files[-1].write_text(text)
    store = build_store(tmp / "s", files)
    return tmp, store, view_of(store)


def node_resources(view: MeshView, node: str) -> tuple[dict, set]:
    return build_ztunnel_config(view, NodeProxy(build_node_id("ztunnel", "10.244.1.1", "ztunnel-" + node,
                                                              "istio-system"), node))


def filters(chain: dict) -> list[str]:
    return [f["name"] for f in chain["filters"]]


def test_node_proxy_writes_the_pods_address_on_every_connect_it_originates(mesh) -> None:
    _, _, view = mesh
    for node in sorted({p.node for p in view.pods.values() if p.node}):
        resources, _ = node_resources(view, node)
        listeners = resources[P.LISTENER]
        tunnels = [f["typed_config"] for ln in listeners.values() for c in ln["filter_chains"] for f in c["filters"]
                   if f["name"] == "envoy.filters.network.tcp_proxy" and "tunneling_config" in f["typed_config"]]
        assert tunnels and all(t["tunneling_config"]["headers_to_add"] == [{
            "header": {"key": "forwarded", "value": "for=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}] for t in tunnels)
        # a service's direct chain, whose cluster reaches mesh pods through connect_originate's
        # internal listener, hands the pod's address on; the others tunnel themselves (their
        # downstream is the pod) or refuse
        for c in listeners["ztunnel_outbound"]["filter_chains"]:
            direct = "|svc|" in c["name"] and c["name"].rsplit("|", 1)[-1].isdigit()
            assert (filters(c)[0] == "envoy.filters.network.set_filter_state") == direct, c["name"]


def test_destination_node_proxy_logs_each_tunnel_with_the_header(mesh) -> None:
    _, _, view = mesh
    reviews = next(p for p in view.pods.values() if p.name.startswith("reviews-v1"))
    resources, _ = node_resources(view, reviews.node)
    chain = next(c for c in resources[P.LISTENER]["ztunnel_inbound"]["filter_chains"]
                 if c["name"] == f"inbound|default/{reviews.name}")
    hcm = chain["filters"][0]["typed_config"]
    grpc = next(a["typed_config"] for a in hcm["access_log"] if a["name"] == "envoy.access_loggers.http_grpc")
    assert grpc["additional_request_headers_to_log"] == ["forwarded"]
    assert {t["tag"]: t["literal"]["value"] for t in grpc["common_config"]["custom_tags"]}["destination_workload"] \
        == "reviews-v1"
    assert hcm["access_log_options"] == {"flush_log_on_tunnel_successfully_established": True,
                                         "access_log_flush_interval": "5s"}
    # the connection log stays one line per tunnel, at its end
    stdout = [a for a in hcm["access_log"] if a["name"] != "envoy.access_loggers.http_grpc"]
    assert stdout and all({"log_type_filter": {"types": ["DownstreamEnd"]}} in a["filter"]["and_filter"]["filters"]
                          for a in stdout)
    # the tunnels' cluster carries no labels (its series would count them twice); plaintext's does
    clusters = resources[P.CLUSTER]
    assert clusters[f"inbound|default/{reviews.name}"]["alt_stat_name"] == f"inbound|default/{reviews.name}"
    assert "reporter=.=destination" in clusters[f"plaintext|default/{reviews.name}"]["alt_stat_name"]


def test_client_node_proxy_logs_each_connection_of_its_outbound_chains(mesh) -> None:
    """Every outbound chain that proxies a pod's connection logs it to the control plane with the
    chain's identity and destination; its stats carry no labels (the log's series would count twice)."""
    _, _, view = mesh
    curl = next(p for p in view.pods.values() if p.name.startswith("curl"))
    resources, _ = node_resources(view, curl.node)
    chains = [c for c in resources[P.LISTENER]["ztunnel_outbound"]["filter_chains"] if c["name"] != "passthrough"]
    assert chains
    for chain in chains:
        tcp = chain["filters"][-1]["typed_config"]
        grpc = [a["typed_config"] for a in tcp["access_log"] if a["name"] == "envoy.access_loggers.tcp_grpc"]
        assert len(grpc) == 1, chain["name"]
        common = grpc[0]["common_config"]
        assert (common["log_name"], common["grpc_service"]["envoy_grpc"]["cluster_name"],
                common["buffer_size_bytes"]) == (CONNECTION_LOG_NAME, "xds-grpc", 0)
        tags = {t["tag"]: t["literal"]["value"] for t in common["custom_tags"]}
        assert tags["reporter"] == "source" and tags["source_principal"].startswith("cluster.local/ns/"), tags
        assert tcp["access_log_options"] == {"flush_access_log_on_connected": True,
                                             "access_log_flush_interval": "5s"}
        assert "=.=" not in tcp["stat_prefix"] and "connection_limit" not in str(filters(chain)), chain["name"]
    # curl's chain to reviews (directly here: the waypoint has no ready replica in this view)
    reviews = next(c for c in chains if c["name"] == f"{_h('spiffe://cluster.local/ns/default/sa/curl')}"
                   "|svc|default/reviews|9080")
    tags = {t["tag"]: t["literal"]["value"] for a in reviews["filters"][-1]["typed_config"]["access_log"]
            if a["name"] == "envoy.access_loggers.tcp_grpc" for t in a["typed_config"]["common_config"]["custom_tags"]}
    assert tags == {"reporter": "source", "request_protocol": "tcp",
                    "source_principal": "cluster.local/ns/default/sa/curl",
                    "destination_service": "reviews.default.svc.cluster.local", "destination_service_name": "reviews",
                    "destination_service_namespace": "default"}


def test_waypoint_keeps_the_header_of_the_connect_only(mesh) -> None:
    tmp, store, _ = mesh
    config = translate(store, "default")
    terminate = config.resources[P.LISTENER]["connect_terminate"]
    hcm = terminate["filter_chains"][0]["filters"][0]["typed_config"]
    states = {s["object_key"]: s for f in hcm["http_filters"] if f["name"] == "connect_authority"
              for s in f["typed_config"]["on_request_headers"]}
    assert states["io.meshway.peer_forwarded"]["format_string"]["text_format_source"]["inline_string"] \
        == "%REQ(forwarded)%"
    assert states["io.meshway.peer_forwarded"]["shared_with_upstream"] == "ONCE"


def test_envoy_accepts_both_proxies(mesh) -> None:
    tmp, store, view = mesh
    ca = CertificateAuthority(tmp / "ca")
    curl = next(p for p in view.pods.values() if p.name.startswith("curl"))
    resources, identities = node_resources(view, curl.node)
    messages = {t: {n: P.to_dict(P.to_message(t, r)) for n, r in items.items()} for t, items in resources.items()}
    secrets = {}
    for identity in identities:
        ns, sa = identity.split("/ns/", 1)[1].split("/sa/")
        secret = build_certificate_secret(ca.issue(ns, sa))
        secret.name = identity
        secrets[identity] = P.to_dict(secret)
    secrets[SDS_ROOT] = P.to_dict(build_root_secret(ca.root_pem()))
    messages[P.SECRET] = secrets
    ok, output = run_validate(messages, ENVOY)
    assert ok, output
    issued = build_secrets(ca.issue("default", "waypoint"), ca.root_pem())
    ok, output = run_validate(translate(store, "default", secrets={n: P.to_dict(m) for n, m in issued.items()}
                                        ).resources, ENVOY)
    assert ok, output


# -- real Envoy: the pod's address survives the internal listener ---------------------------------
def test_live_envoy_writes_the_downstream_address_through_connect_originate(tmp_path: Path) -> None:
    """A direct service chain (set_filter_state, then tcp_proxy to an internal endpoint) and
    `connect_originate` (original_dst, then tcp_proxy tunneling): the CONNECT it sends upstream names
    the client's address, not the internal listener's."""
    import socket
    import threading
    import time

    from meshway.runtime.envoy import EnvoyPaths, start_envoy, stop_envoy
    from meshway.xds.build_clusters import _internal_upstream
    from meshway.xds.build_listeners import _original_dst
    from meshway.xds.build_peer_source import build_source_address_state
    from meshway.xds.build_ztunnel import _tcp
    from meshway.xds.validate import build_static_bootstrap

    upstream = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = upstream.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        got.append(data)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        while conn.recv(4096):  # until the client closes
            pass
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inner = "connect_originate|test"
    resources = {P.LISTENER: {
        "outer": {"name": "outer", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                  "filter_chains": [{"filters": [build_source_address_state(), _tcp("to_inner", "outer")]}]},
        inner: {"name": inner, "internal_listener": {}, "listener_filters": [_original_dst()],
                "filter_chains": [{"filters": [_tcp("upstream", inner, tunnel=True)]}]}},
        P.CLUSTER: {
            "to_inner": {"name": "to_inner", "type": "STATIC", "connect_timeout": "5s",
                         "transport_socket": _internal_upstream(True), "load_assignment": {
                             "cluster_name": "to_inner", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                                 "envoy_internal_address": {"server_listener_name": inner,
                                                            "endpoint_id": "10.244.2.7:9080"}}},
                                 "metadata": {"filter_metadata": {"envoy.filters.listener.original_dst": {
                                     "local": "10.244.2.7:9080"}}}}]}]}},
            "upstream": {"name": "upstream", "type": "STATIC", "connect_timeout": "5s", "load_assignment": {
                "cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": upstream.getsockname()[1]}}}}]}]}}},
        P.SECRET: {}}
    bootstrap = build_static_bootstrap({t: {n: P.to_dict(P.to_message(t, r)) if t != P.SECRET else r
                                            for n, r in items.items()} for t, items in resources.items()})
    paths = EnvoyPaths(tmp_path / "envoy", tmp_path / "envoy")
    bootstrap["admin"] = {"address": {"pipe": {"path": str(paths.admin)}}}
    start_envoy(paths, bootstrap, envoy=ENVOY)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.7", 0))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with client:
            client.sendall(b"ping")
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop_envoy(paths)
        upstream.close()
    assert got, "no CONNECT reached the upstream"
    head = got[0].decode().lower()
    assert head.startswith("connect ") and "\r\nforwarded: for=127.0.0.7\r\n" in head, head


def test_live_envoy_logs_a_connection_with_the_clients_address(tmp_path: Path) -> None:
    """An outbound tcp_proxy with the connection log (`build_connection_log`) and its options, on real
    Envoy, to a gRPC access log server: one connection from 127.0.0.7 arrives as entries of one stream
    (upstream connected, then its end) naming that address, which the tally counts once with its bytes."""
    import socket
    import threading
    import time
    from concurrent import futures

    import grpc
    from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

    from meshway.runtime.envoy import EnvoyPaths, start_envoy, stop_envoy
    from meshway.xds.build_peer_source import build_connection_log, build_connection_log_options
    from meshway.xds.build_ztunnel import _tcp
    from meshway.xds.validate import build_static_bootstrap

    received: list = []

    class Sink(als_pb2_grpc.AccessLogServiceServicer):
        def StreamAccessLogs(self, request_iterator, context):  # noqa: N802
            for message in request_iterator:
                received.extend(message.tcp_logs.log_entry)
            return als_pb2.StreamAccessLogsResponse()

    als = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(Sink(), als)
    als_port = als.add_insecure_port("127.0.0.1:0")
    als.start()
    upstream = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = upstream.accept()
        while data := conn.recv(4096):
            conn.sendall(data * 2)
        conn.close()
    threading.Thread(target=echo, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    principal = "cluster.local/ns/default/sa/shared"

    def static(name: str, port_: int, **extra) -> dict:
        return {"name": name, "type": "STATIC", "connect_timeout": "5s", **extra, "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port_}}}}]}]}}
    tcp = _tcp("upstream", "outbound", logs=(build_connection_log({**SOURCE_TAGS, "source_principal": principal}),),
               log_options=build_connection_log_options())
    resources = {P.LISTENER: {"outbound": {
        "name": "outbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [tcp]}]}},
        P.CLUSTER: {"upstream": static("upstream", upstream.getsockname()[1]),
                    "xds-grpc": static("xds-grpc", als_port, typed_extension_protocol_options={
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": P.typed(
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            explicit_http_config={"http2_protocol_options": {}})})},
        P.SECRET: {}}
    bootstrap = build_static_bootstrap({t: {n: P.to_dict(P.to_message(t, r)) for n, r in items.items()}
                                        for t, items in resources.items()})
    paths = EnvoyPaths(tmp_path / "envoy", tmp_path / "envoy")
    bootstrap["admin"] = {"address": {"pipe": {"path": str(paths.admin)}}}
    start_envoy(paths, bootstrap, envoy=ENVOY)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.7", 0))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with client:
            client.sendall(b"ping")
            reply = b""
            while len(reply) < 8:
                reply += client.recv(4096)
        while not any(e.common_properties.access_log_type == AccessLogType.Value("TcpConnectionEnd")
                      for e in received) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop_envoy(paths)
        upstream.close()
        als.stop(0)
    records = [read_connection_entry(e) for e in received]
    assert [r.event for r in records] == [ESTABLISHED, END], records
    assert len({r.stream for r in records}) == 1 and records[0].stream
    assert {(r.principal, r.address) for r in records} == {(SHARED, "127.0.0.7")}
    assert records[0].tags == SOURCE_TAGS
    counts = TunnelCounts()
    for r in records:
        counts.add(build_tunnel_labels(r, {}), r)
    assert list(counts.series.values()) == [[1, 1, 4, 8]]
