"""Golden files: input YAML -> generated waypoint xDS as YAML. Refresh with MESHWAY_UPDATE_GOLDEN=1;
a mismatch fails with a unified diff."""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from xds_support import BOOKINFO, ENVOY, GOLDEN, TRAFFIC, build_store, dump, plain, translate

from meshway.ca import CertificateAuthority, build_secrets
from meshway.model import find_kind, load_yaml
from meshway.xds import protos as P
from meshway.xds.cache import Snapshot
from meshway.xds.validate import build_static_bootstrap, run_validate

CASES = {
    "reviews": ([BOOKINFO, TRAFFIC, GOLDEN / "reviews.yaml"], "default"),
    "features": ([GOLDEN / "features.yaml"], "shop"),
    "empty": ([GOLDEN / "empty.yaml"], "default"),
    "envoyfilter": ([BOOKINFO, TRAFFIC, GOLDEN / "reviews.yaml", GOLDEN / "envoyfilter.yaml"], "default"),
    "extauthz": ([GOLDEN / "extauthz.yaml"], "foo"),
    "jwt": ([GOLDEN / "jwt.yaml"], "foo"),
    "tracing": ([GOLDEN / "tracing.yaml"], "trace"),
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.expected.yaml"
    if os.environ.get("MESHWAY_UPDATE_GOLDEN"):
        path.write_text(text)
    if not path.exists():  # never written silently: a missing golden file is a failure
        pytest.fail(f"golden file {path.name} is missing; generate it with MESHWAY_UPDATE_GOLDEN=1 and review it")
    expected = path.read_text()
    if expected != text:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "generated"))
        pytest.fail(f"generated config differs from {path.name} (MESHWAY_UPDATE_GOLDEN=1 to refresh):\n{diff}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, tmp_path: Path) -> None:
    files, ns = CASES[case]
    config = translate(build_store(tmp_path / "s", files), ns)
    check_golden(case, dump({"resources": plain(config), "problems": [list(p) for p in config.problems]}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_validates_generated_config(case: str, tmp_path: Path) -> None:
    files, ns = CASES[case]
    ca = CertificateAuthority(tmp_path / "ca")
    secrets = {n: P.to_dict(m) for n, m in build_secrets(ca.issue(ns, "waypoint"), ca.root_pem()).items()}
    config = translate(build_store(tmp_path / "s", files), ns, secrets=secrets)
    resources = {t: {n: P.to_dict(m) for n, m in items.items()} for t, items in config.messages().items()}
    ok, output = run_validate(resources, ENVOY)
    assert ok, output


def test_reviews_scope_and_names(tmp_path: Path) -> None:
    config = plain(translate(build_store(tmp_path / "s", CASES["reviews"][0]), "default"))
    clusters = set(config["Cluster"])
    assert "inbound-vip|9080|http|reviews.default.svc.cluster.local" in clusters
    assert {"inbound-vip|9080|http/v1|reviews.default.svc.cluster.local",
            "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"} <= clusters
    assert not [c for c in clusters if c.startswith("outbound|")]  # a waypoint has no outbound clusters
    chains = [c["name"] for c in config["Listener"]["main_internal"]["filter_chains"]]
    assert "inbound-vip|9080|http|reviews.default.svc.cluster.local" in chains  # chain name == cluster name
    chain = next(c for c in config["Listener"]["main_internal"]["filter_chains"]
                 if c["name"] == "inbound-vip|9080|http|reviews.default.svc.cluster.local")
    rds = chain["filters"][0]["typed_config"]["rds"]  # routes over RDS, named as the chain (Istio's)
    assert rds["route_config_name"] == chain["name"] and "route_config" not in chain["filters"][0]["typed_config"]
    assert rds["config_source"] == {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    rc = config["RouteConfiguration"][chain["name"]]
    assert rc["name"] == chain["name"] and rc["virtual_hosts"][0]["name"] == "inbound|http|9080"
    weighted = rc["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]["clusters"]
    assert [(c["name"].split("|")[2], c["weight"]) for c in weighted] == [("http/v1", 90), ("http/v2", 10)]
    eps = config["ClusterLoadAssignment"]["inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"]
    addr = eps["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["envoy_internal_address"]
    assert addr["server_listener_name"] == "connect_originate" and addr["endpoint_id"].endswith(":9080")


def test_other_namespace_is_not_in_scope(tmp_path: Path) -> None:
    files = CASES["reviews"][0] + [GOLDEN / "features.yaml"]
    store = build_store(tmp_path / "s", files)
    default = plain(translate(store, "default"))
    assert not [c for c in default["Cluster"] if "shop" in c]
    shop = plain(translate(store, "shop"))
    assert not [c for c in shop["Cluster"] if "default.svc" in c]


def test_missing_subset_is_reported_not_pushed(tmp_path: Path) -> None:
    config = translate(build_store(tmp_path / "s", [GOLDEN / "features.yaml"]), "shop")
    assert any("v9" in message for _, message in config.problems)
    web = plain(config)["RouteConfiguration"]["inbound-vip|80|http|web.shop.svc.cluster.local"]
    ghost = [r for r in web["virtual_hosts"][0]["routes"] if r.get("name") == "missing-subset"][0]
    assert ghost["direct_response"]["status"] == 503


def test_offline_validation_sees_the_rds_routes(tmp_path: Path) -> None:
    """`envoy --mode validate` gets the RDS route configs inlined, so bad routes are still refused."""
    ca = CertificateAuthority(tmp_path / "ca")
    secrets = {n: P.to_dict(m) for n, m in build_secrets(ca.issue("default", "waypoint"), ca.root_pem()).items()}
    config = translate(build_store(tmp_path / "s", CASES["reviews"][0]), "default", secrets=secrets)
    resources = {t: {n: P.to_dict(m) for n, m in items.items()} for t, items in config.messages().items()}
    assert run_validate(resources, ENVOY)[0]
    text = json.dumps(build_static_bootstrap(resources))
    assert '"rds"' not in text and '"inbound|http|9080"' in text
    name = "inbound-vip|9080|http|reviews.default.svc.cluster.local"
    resources[P.ROUTE][name]["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "(("}}
    ok, output = run_validate(resources, ENVOY)
    assert not ok and "missing ): ((" in output


def test_a_weight_change_updates_one_route_config_and_no_listener(tmp_path: Path) -> None:
    """Routes travel over RDS: a VirtualService change changes the RouteConfiguration of that
    service's chain only; listeners (an in-place update drains connections) and clusters keep their
    versions, so only RDS is pushed."""
    store = build_store(tmp_path / "s", CASES["reviews"][0])
    before = Snapshot(translate(store, "default").messages())
    store.apply(load_yaml(TRAFFIC.read_text().replace("weight: 90", "weight: 40").replace("weight: 10", "weight: 60"),
                          "weights.yaml"))
    after = Snapshot(translate(store, "default").messages())
    assert [t for t in P.TYPE_ORDER if before.version(t) != after.version(t)] == [P.ROUTE]
    changed = [n for n in after.resources(P.ROUTE)
               if before.resource_version(P.ROUTE, n) != after.resource_version(P.ROUTE, n)]
    assert changed == ["inbound-vip|9080|http|reviews.default.svc.cluster.local"]
    weighted = P.to_dict(after.resources(P.ROUTE)[changed[0]])["virtual_hosts"][0]["routes"][0]["route"]
    assert [c["weight"] for c in weighted["weighted_clusters"]["clusters"]] == [40, 60]


CONSISTENT = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: TRAFFIC_POLICY
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: SUBSET_POLICY
"""


@pytest.mark.parametrize("traffic_policy, subset_policy, expected", [
    ("{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}", "{}", [{"header": {"header_name": "x-user"}}]),
    ("{loadBalancer: {consistentHash: {httpQueryParameterName: u}}}", "{}", [{"query_parameter": {"name": "u"}}]),
    ("{loadBalancer: {consistentHash: {useSourceIp: true}}}", "{}", [{"connection_properties": {"source_ip": True}}]),
    # the 90/10 route's two subsets hash differently: no hash policy (as Istio)
    ("{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
     "{loadBalancer: {consistentHash: {httpHeaderName: x-other}}}", None),
    ("{}", "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}", None),
])
def test_consistent_hash_puts_a_hash_policy_on_the_route(tmp_path: Path, traffic_policy: str, subset_policy: str,
                                                         expected: list | None) -> None:
    store = build_store(tmp_path / "s", CASES["reviews"][0])
    store.apply(load_yaml(CONSISTENT.replace("TRAFFIC_POLICY", traffic_policy).replace("SUBSET_POLICY",
                                                                                          subset_policy), "dr.yaml"))
    config = plain(translate(store, "default"))
    route = config["RouteConfiguration"]["inbound-vip|9080|http|reviews.default.svc.cluster.local"][
        "virtual_hosts"][0]["routes"][0]["route"]
    assert route.get("hash_policy") == expected
    assert ("retry_host_predicate" in route["retry_policy"]) == (expected is None)  # Istio drops it when hashing
    v1 = config["Cluster"]["inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"]
    assert (v1.get("lb_policy") == "RING_HASH") == ("consistentHash" in traffic_policy)


def test_consistent_hash_on_httproute_and_default_routes_and_maglev(tmp_path: Path) -> None:
    config = plain(translate(build_store(tmp_path / "s", [GOLDEN / "features.yaml"]), "shop"))
    api = "inbound-vip|8080|http|api.shop.svc.cluster.local"
    routes = [r["route"] for r in config["RouteConfiguration"][api]["virtual_hosts"][0]["routes"] if "route" in r]
    assert [r["hash_policy"] for r in routes] == [[{"cookie": {"name": "session", "path": "/", "ttl": "60s"}}]] * 2
    assert config["Cluster"][api]["lb_policy"] == "RING_HASH"
    assert config["Cluster"][api]["ring_hash_lb_config"] == {"minimum_ring_size": "1024"}
    store = build_store(tmp_path / "m", [GOLDEN / "features.yaml"])
    store.delete([(find_kind("httproute"), "shop", "api")])
    store.apply(load_yaml("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec: {host: api, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-u, maglev: {tableSize: 65537}}}}}
""", "maglev.yaml"))
    config = plain(translate(store, "shop"))
    assert config["Cluster"][api]["lb_policy"] == "MAGLEV"
    assert config["Cluster"][api]["maglev_lb_config"] == {"table_size": "65537"}
    [default] = config["RouteConfiguration"][api]["virtual_hosts"][0]["routes"]
    assert default["name"] == "default" and default["route"]["hash_policy"] == [{"header": {"header_name": "x-u"}}]


@pytest.mark.parametrize("protocol, pool, expected", [
    ("http", {"http": {"maxConcurrentStreams": 8}}, None),  # HTTP/1.1 upstream: no HTTP/2 streams to limit
    ("http2", {"http": {"maxConcurrentStreams": 8}}, {"explicit_http_config": {
        "http2_protocol_options": {"max_concurrent_streams": 8}}}),
    ("auto", {"http": {"maxConcurrentStreams": 8}}, {"use_downstream_protocol_config": {
        "http_protocol_options": {}, "http2_protocol_options": {"max_concurrent_streams": 8}}}),
    ("http", {"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}}, {
        "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}),
    ("http", {"tcp": {"maxConnectionDuration": "90s"}}, {
        "explicit_http_config": {"http_protocol_options": {}},
        "common_http_protocol_options": {"max_connection_duration": "90s"}}),
    ("tcp", {"tcp": {"maxConnectionDuration": "90s"}, "http": {"useClientProtocol": True}}, None),
])
def test_connection_pool_protocol_options(protocol: str, pool: dict, expected: dict | None) -> None:
    from meshway.model.istio import DestinationRule
    from meshway.xds.build_clusters import HTTP_OPTIONS, build_service_cluster

    dr = DestinationRule.model_validate({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                                         "metadata": {"name": "r", "namespace": "default"},
                                         "spec": {"host": "r", "trafficPolicy": {"connectionPool": pool}}},
                                        strict=False)
    cluster, notes = build_service_cluster("inbound-vip|80|http|r.default.svc.cluster.local", "r", "r", "default",
                                           protocol, None, dr, 80)
    options = cluster.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS)
    assert ({k: v for k, v in options.items() if k != "@type"} if options else None) == expected and not notes


def test_an_httproute_change_updates_one_route_config_and_no_listener(tmp_path: Path) -> None:
    store = build_store(tmp_path / "s", [GOLDEN / "features.yaml"])
    before = Snapshot(translate(store, "shop").messages())
    store.apply(load_yaml("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: api, port: 8080}]
    timeouts: {request: 5s}
""", "httproute.yaml"))
    after = Snapshot(translate(store, "shop").messages())
    assert [t for t in P.TYPE_ORDER if before.version(t) != after.version(t)] == [P.ROUTE]
    assert [n for n in after.resources(P.ROUTE) if before.resource_version(P.ROUTE, n)
            != after.resource_version(P.ROUTE, n)] == ["inbound-vip|8080|http|api.shop.svc.cluster.local"]


def test_a_weight_change_is_one_small_delta_push(tmp_path: Path) -> None:
    """Over Delta ADS, a VirtualService weight change sends one RouteConfiguration (about 1 kB), not
    the listener with every service's routes in it."""
    from meshway.xds.stream import DeltaStream
    from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

    store = build_store(tmp_path / "s", CASES["reviews"][0])
    before = Snapshot(translate(store, "default").messages())
    stream = DeltaStream("node", before)
    for type_url in P.TYPE_ORDER:
        names = [] if type_url in (P.CLUSTER, P.LISTENER) else list(before.resources(type_url))
        for response in stream.on_request(DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names)):
            stream.on_request(DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce))
    store.apply(load_yaml(TRAFFIC.read_text().replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50"),
                          "weights.yaml"))
    [push] = stream.on_snapshot(Snapshot(translate(store, "default").messages()))
    assert push.type_url == P.ROUTE and [r.name for r in push.resources] == [
        "inbound-vip|9080|http|reviews.default.svc.cluster.local"] and not push.removed_resources
    assert push.ByteSize() < 2000, push.ByteSize()
    inline = before.resources(P.LISTENER)["main_internal"].ByteSize() + sum(
        rc.ByteSize() for rc in before.resources(P.ROUTE).values())  # what the push was with inline routes
    assert push.ByteSize() * 5 < inline, (push.ByteSize(), inline)


def test_a_missing_golden_file_fails_and_is_not_written(monkeypatch) -> None:
    monkeypatch.delenv("MESHWAY_UPDATE_GOLDEN", raising=False)
    with pytest.raises(pytest.fail.Exception, match="golden file no-such-case.expected.yaml is missing"):
        check_golden("no-such-case", "anything")
    assert not (GOLDEN / "no-such-case.expected.yaml").exists()
