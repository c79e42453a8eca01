"""`meshway proxy-config` (alias `pc`): the writers on a config dump and cluster status captured from a
live meshway waypoint Envoy (bookinfo in `default`, reviews with DR subsets v1/v2/v3 and a 90/10 VS),
the click commands with --file, and the live path through a fake admin Unix socket."""
from __future__ import annotations

import http.server
import json
import shutil
import socketserver
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from meshway.cli import configdump as D
from meshway.cli import proxyconfig  # noqa: F401  (registers `proxy-config` and `pc`)
from meshway.runtime.envoy_admin import AdminError, fetch_admin
from meshway.cli.main import cli
from meshway.cli.proxyconfig import find_replica, split_target

DATA = Path(__file__).resolve().parent / "data"
DUMP_FILE = DATA / "waypoint_config_dump.json"
CLUSTERS_FILE = DATA / "waypoint_clusters.json"
REVIEWS = "inbound-vip|9080|http|reviews.default.svc.cluster.local"
REVIEWS_V1 = "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"
NOW = datetime(2026, 11, 21, 21, 0, tzinfo=timezone.utc)  # inside the workload cert's one-day life


@pytest.fixture(scope="module")
def raw_dump() -> dict:
    return json.loads(DUMP_FILE.read_text())


@pytest.fixture(scope="module")
def dump(raw_dump: dict) -> D.ConfigDump:
    return D.parse_config_dump(raw_dump)


@pytest.fixture(scope="module")
def statuses() -> list[dict]:
    return D.parse_cluster_statuses(json.loads(CLUSTERS_FILE.read_text()))


def vip_of(raw_dump: dict, chain: str) -> str:
    """The service VIP the main_internal matcher sends to `chain`, read straight from the dump."""
    listeners = next(c for c in raw_dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    main = next(d["active_state"]["listener"] for d in listeners["dynamic_listeners"] if d["name"] == "main_internal")
    ip_matcher = main["filter_chain_matcher"]["matcher_tree"]["custom_match"]["typed_config"]
    for rm in ip_matcher["range_matchers"]:
        actions = rm["on_match"]["matcher"]["matcher_tree"]["exact_match_map"]["map"].values()
        if any(a["action"]["name"] == chain for a in actions):
            return rm["ranges"][0]["address_prefix"]
    raise AssertionError(f"no VIP for {chain}")


def reviews_pod_ips(statuses: list[dict]) -> list[str]:
    cs = next(c for c in statuses if c["name"] == REVIEWS)
    return sorted(h["address"]["envoy_internal_address"]["endpoint_id"].split(":")[0] for h in cs["host_statuses"])


def cells(line: str) -> list[str]:
    return [c for c in line.split("  ") if c.strip()]


def cells_strip(line: str) -> list[str]:
    return [c.strip() for c in cells(line)]


# -- listeners -----------------------------------------------------------------------------------
def test_waypoint_listeners_show_chains_matches_and_destinations(dump, raw_dump):
    out = D.write_waypoint_listeners(dump.listeners)
    lines = out.splitlines()
    assert lines[0] == ("LISTENER                  CHAIN                                                       "
                        "MATCH                     DESTINATION")
    vip = vip_of(raw_dump, REVIEWS)
    assert f"envoy://main_internal     {REVIEWS}     ip={vip} -> port=9080 Inline Route: /*" in lines
    assert ["envoy://connect_originate", "ALL", "Cluster:", "connect_originate"] in [l.split() for l in lines]
    assert ["envoy://connect_terminate", "default", "ALL", "Inline", "Route:"] in [l.split() for l in lines]
    details = "inbound-vip|9080|http|details.default.svc.cluster.local"
    assert (f"envoy://main_internal     {details}     ip={vip_of(raw_dump, details)} -> port=9080 "
            f"Cluster: {details}") in lines
    # internal listeners first, by name; then by port: connect_terminate (15008) last, as in the seed blog
    names = [l.split()[0] for l in lines[1:]]
    assert names[0] == "envoy://connect_originate" and names[-1] == "envoy://connect_terminate"
    assert set(names) == {"envoy://connect_originate", "envoy://main_internal", "envoy://connect_terminate"}
    # the direct chains exist but no matcher branch reaches them in this dump
    assert cells_strip(next(l for l in lines if " direct-tcp " in l))[2:] == ["NONE", "Cluster: encap"]


def test_listener_summary(dump):
    out = D.write_listeners(dump.listeners)
    lines = out.splitlines()
    assert lines[0] == "ADDRESSES   PORT  MATCH DESTINATION"
    assert lines[-1] == "127.244.1.8 15008 ALL   Inline Route:"
    assert "            0     ALL   Cluster: connect_originate" in lines
    assert D.write_listeners(dump.listeners, D.ListenerFilter(port=15008)).splitlines()[1:] == [lines[-1]]
    assert D.write_listeners(dump.listeners, D.ListenerFilter(type="tcp"), verbose=False).splitlines() == [
        "ADDRESSES PORT TYPE", "          0    TCP"]


MATCHER_CASES = [
    # (matcher, chain, expected MATCH values)
    ({"matcher_tree": {"input": {"name": "ip"}, "custom_match": {"typed_config": {
        "@type": D.IP_MATCHER, "range_matchers": [{
            "ranges": [{"address_prefix": "10.244.1.6", "prefix_len": 32}],
            "on_match": {"matcher": {
                "matcher_tree": {"input": {"name": "application-protocol"}, "exact_match_map": {"map": {
                    "'h2c'": {"action": {"name": "direct-http"}},
                    "'http/1.1'": {"action": {"name": "direct-http"}}}}},
                "on_no_match": {"action": {"name": "direct-tcp"}}}}}]}}}},
     "direct-http", ["ip=10.244.1.6 -> application-protocol='h2c'", "ip=10.244.1.6 -> application-protocol='http/1.1'"]),
    ({"matcher_tree": {"input": {"name": "ip"}, "custom_match": {"typed_config": {
        "@type": D.IP_MATCHER, "range_matchers": [{
            "ranges": [{"address_prefix": "10.244.1.6", "prefix_len": 32}],
            "on_match": {"matcher": {
                "matcher_tree": {"input": {"name": "application-protocol"}, "exact_match_map": {"map": {
                    "'h2c'": {"action": {"name": "direct-http"}}}}},
                "on_no_match": {"action": {"name": "direct-tcp"}}}}}]}}}},
     "direct-tcp", ["ip=10.244.1.6 -> ANY"]),
    ({"matcher_tree": {"input": {"name": "ip"}, "custom_match": {"typed_config": {
        "@type": D.IP_MATCHER, "range_matchers": [{
            "ranges": [{"address_prefix": "10.1.0.0", "prefix_len": 16}],
            "on_match": {"action": {"name": "wide"}}}]}}},
      "on_no_match": {"action": {"name": "fallback"}}},
     "wide", ["ip=10.1.0.0/16"]),
    ({"matcher_tree": {"input": {"name": "port"}, "exact_match_map": {"map": {"80": {"action": {"name": "a"}}}}},
      "on_no_match": {"action": {"name": "fallback"}}},
     "fallback", ["UNMATCHED"]),
    ({"matcher_tree": {"input": {"name": "port"}, "exact_match_map": {"map": {"80": {"action": {"name": "a"}}}}}},
     "unreachable", ["NONE"]),
]


@pytest.mark.parametrize("matcher,chain,expected", MATCHER_CASES)
def test_filter_chain_matcher_walk(matcher, chain, expected):
    assert D.chain_matches({"filter_chain_matcher": matcher}, {"name": chain}) == expected


# -- clusters ------------------------------------------------------------------------------------
def test_clusters(dump):
    lines = D.write_clusters(dump.clusters).splitlines()
    assert lines[0] == ("SERVICE FQDN                              PORT     SUBSET      DIRECTION       TYPE"
                        "             DESTINATION RULE")
    assert cells_strip(lines[lines.index(next(l for l in lines if " http/v1 " in l))]) == [
        "reviews.default.svc.cluster.local", "9080", "http/v1", "inbound-vip", "EDS", "reviews.default"]
    rows = [cells_strip(l) for l in lines[1:]]
    assert ["reviews.default.svc.cluster.local", "9080", "http", "inbound-vip", "EDS", "reviews.default"] in rows
    assert ["details.default.svc.cluster.local", "9080", "http", "inbound-vip", "EDS", "-"] in rows
    assert ["connect_originate", "-", "-", "-", "ORIGINAL_DST", "-"] in rows
    assert ["main_internal", "-", "-", "-", "STATIC", "-"] in rows
    # sorted by host, then subset: the four reviews clusters in subset order
    reviews = [r[2] for r in rows if r[0] == "reviews.default.svc.cluster.local"]
    assert reviews == ["http", "http/v1", "http/v2", "http/v3"]


def test_cluster_name_parsing():
    assert D.parse_cluster_name(REVIEWS_V1) == ("inbound-vip", 9080, "http/v1", "reviews.default.svc.cluster.local")
    assert D.parse_cluster_name("encap") == ("", 0, "", "encap")


def test_cluster_filters(dump):
    header_only = D.write_clusters(dump.clusters, D.ClusterFilter(direction="outbound"))
    assert header_only.splitlines() == ["SERVICE FQDN     PORT     SUBSET     DIRECTION     TYPE     DESTINATION RULE"]
    subsets = D.select_clusters(dump.clusters, D.ClusterFilter(fqdn="reviews", subset="v2"))
    assert [c["name"] for c in subsets] == ["inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"]
    assert len(D.select_clusters(dump.clusters, D.ClusterFilter(direction="inbound", port=9080))) == 7


# -- routes --------------------------------------------------------------------------------------
def test_routes_include_the_inline_route_configs(dump):
    lines = D.write_routes(dump.routes).splitlines()
    assert lines[0] == ("NAME                                                            "
                        "VHOST NAME            DOMAINS     MATCH     VIRTUAL SERVICE")
    assert cells_strip(next(l for l in lines if l.startswith(REVIEWS))) == [
        REVIEWS, "inbound|http|9080", "*", "/*", "reviews.default"]
    assert cells_strip(next(l for l in lines if l.startswith("encap"))) == ["encap", "inbound|http|0", "*", "/*"]
    assert cells_strip(next(l for l in lines if l.startswith("default"))) == ["default", "default", "*"]
    assert len(lines) == 7  # six route configs, each once although Envoy also lists them as static


def test_inline_route_configs_are_found_in_listeners(raw_dump):
    """With no RoutesConfigDump at all, the waypoint's routes still come from its listeners' HCMs."""
    stripped = {"configs": [c for c in raw_dump["configs"] if not c["@type"].endswith("RoutesConfigDump")]}
    names = {r["name"] for r in D.parse_config_dump(stripped).routes}
    assert REVIEWS in names and "default" in names and "encap" in names


def test_route_yaml_has_the_90_10_split(dump):
    out = D.write_protos(D.select_routes(dump.routes, REVIEWS), D.ROUTE_TYPE, "yaml")
    data = yaml.safe_load(out)
    assert [r["name"] for r in data] == [REVIEWS]
    route = data[0]["virtualHosts"][0]["routes"][0]
    assert route["route"]["weightedClusters"]["clusters"] == [
        {"name": REVIEWS_V1, "weight": 90},
        {"name": "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local", "weight": 10}]
    assert route["metadata"]["filterMetadata"]["istio"]["config"].endswith("/virtual-service/reviews")
    assert "validateClusters: false" in out and "@type" not in data[0]


def test_proto_json_names_leave_map_keys_and_structs_alone():
    cluster = {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "x",
               "connect_timeout": "1s",
               "metadata": {"filter_metadata": {"istio": {"some_key": {"nested_key": 1}}}},
               "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                   "explicit_http_config": {"http2_protocol_options": {}}}},
               "field_from_the_future": {"a_b": 1}}
    assert D.to_proto_json(cluster, D.CLUSTER_TYPE) == {
        "name": "x", "connectTimeout": "1s",
        "metadata": {"filterMetadata": {"istio": {"some_key": {"nested_key": 1}}}},
        "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicitHttpConfig": {"http2ProtocolOptions": {}}}},
        "field_from_the_future": {"a_b": 1}}


# -- endpoints -----------------------------------------------------------------------------------
def test_endpoints(statuses):
    lines = D.write_endpoints(statuses).splitlines()
    assert lines[0] == "ENDPOINT                                      STATUS      OUTLIER CHECK     CLUSTER"
    ips = reviews_pod_ips(statuses)
    assert len(ips) == 3
    for ip in ips:
        row = f"envoy://connect_originate/{ip}:9080".ljust(46) + "HEALTHY     OK                " + REVIEWS
        assert row in lines
    assert any(cells_strip(l) == ["envoy://main_internal/", "HEALTHY", "OK", "main_internal"] for l in lines)
    assert any(cells_strip(l) == ["unix:///tmp/mwcp/run/sock/xds.sock", "HEALTHY", "OK", "xds-grpc"] for l in lines)
    endpoints = [l.split()[0] for l in lines[1:]]
    assert endpoints == sorted(endpoints)


def test_endpoint_filters(statuses):
    only = D.write_endpoints(statuses, D.EndpointFilter(cluster=REVIEWS_V1.upper())).splitlines()
    assert len(only) == 2 and only[1].endswith(REVIEWS_V1)
    assert len(D.write_endpoints(statuses, D.EndpointFilter(status="unhealthy")).splitlines()) == 1
    assert [c["name"] for c in D.select_cluster_statuses(statuses, D.EndpointFilter(cluster="main_internal"))] == [
        "main_internal"]


# -- secrets -------------------------------------------------------------------------------------
def test_secrets(dump):
    lines = D.write_secrets(dump.secrets, NOW).splitlines()
    assert lines[0] == ("RESOURCE NAME     TYPE           STATUS     VALID CERT     SERIAL NUMBER"
                        "                                NOT AFTER                NOT BEFORE")
    default, rootca = cells_strip(lines[1]), cells_strip(lines[2])
    assert default[:4] == ["default", "Cert Chain", "ACTIVE", "true"]
    assert rootca[:4] == ["ROOTCA", "CA", "ACTIVE", "true"]
    assert default[5] == "2026-11-22T20:12:05Z" and default[6] == "2026-11-21T20:12:05Z"
    assert all(c in "0123456789abcdef" for c in default[4])
    expired = D.write_secrets(dump.secrets, datetime(2027, 1, 1, tzinfo=timezone.utc)).splitlines()
    assert cells_strip(expired[1])[3] == "false" and cells_strip(expired[2])[3] == "true"
    assert D.write_secrets([], NOW) == "No active or warming secrets found.\n"


# -- the commands --------------------------------------------------------------------------------
@pytest.fixture
def pc(tmp_path: Path):
    runner = CliRunner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(cli, ["--state-dir", str(tmp_path / "state"), *args])
        if ok:
            assert result.exit_code == 0, f"{args}: {result.output}{result.stderr}"
        return result
    return run


def test_cli_listener_waypoint(pc, dump):
    out = pc("pc", "listener", "-f", str(DUMP_FILE), "--waypoint").stdout
    assert out == D.write_waypoint_listeners(dump.listeners)
    for name in ("envoy://connect_originate", "envoy://connect_terminate", "envoy://main_internal"):
        assert name in out
    assert pc("proxy-config", "listeners", "-f", str(DUMP_FILE), "--waypoint").stdout == out
    assert pc("pc", "l", "-f", str(DUMP_FILE)).stdout.startswith("ADDRESSES   PORT  MATCH DESTINATION\n")


def test_cli_cluster(pc):
    out = pc("pc", "clusters", "-f", str(DUMP_FILE)).stdout
    assert out.startswith("SERVICE FQDN ")
    assert any(cells_strip(l) == ["reviews.default.svc.cluster.local", "9080", "http/v1", "inbound-vip", "EDS",
                                  "reviews.default"] for l in out.splitlines())
    outbound = pc("pc", "c", "-f", str(DUMP_FILE), "--direction", "outbound").stdout
    assert outbound == "SERVICE FQDN     PORT     SUBSET     DIRECTION     TYPE     DESTINATION RULE\n"
    as_json = pc("pc", "c", "-f", str(DUMP_FILE), "--fqdn", "reviews", "--subset", "v1", "-o", "json").stdout
    assert as_json.startswith("[\n    {\n        \"name\": ")
    assert [c["name"] for c in json.loads(as_json)] == [REVIEWS_V1]


def test_cli_route_yaml(pc):
    out = pc("pc", "routes", "-f", str(DUMP_FILE), "--name", REVIEWS, "-o", "yaml").stdout
    clusters = yaml.safe_load(out)[0]["virtualHosts"][0]["routes"][0]["route"]["weightedClusters"]["clusters"]
    assert [c["weight"] for c in clusters] == [90, 10]
    assert pc("pc", "r", "-f", str(DUMP_FILE), "--name", "nope").stdout.startswith("NAME ")
    assert pc("pc", "r", "-f", str(DUMP_FILE), "--name", "nope", "-o", "json").stdout == "[]\n"


def test_cli_endpoint_secret_all(pc, statuses):
    out = pc("pc", "ep", "-f", str(CLUSTERS_FILE), "--cluster", REVIEWS).stdout.splitlines()
    assert [l.split()[0] for l in out[1:]] == [f"envoy://connect_originate/{ip}:9080" for ip in reviews_pod_ips(statuses)]
    assert all(cells_strip(l)[1:3] == ["HEALTHY", "OK"] for l in out[1:])
    secrets = pc("pc", "secret", "-f", str(DUMP_FILE)).stdout.splitlines()
    assert [l.split()[0] for l in secrets] == ["RESOURCE", "default", "ROOTCA"]
    everything = pc("pc", "all", "-f", str(DUMP_FILE), "--with-headers").stdout
    for banner in ("BOOTSTRAP", "CLUSTER", "LISTENER", "ROUTE", "SECRET", "ENDPOINTS"):
        assert f"------ {banner} INFO ------\n\n" in everything
    assert "Envoy Version: 1.40.0/Clean/RELEASE/BoringSSL\n" in everything
    assert f"cluster/{REVIEWS_V1} " in everything and f"route/{REVIEWS} " in everything


def test_cli_errors(pc):
    both = pc("pc", "l", "deploy/waypoint", "-f", str(DUMP_FILE), ok=False)
    assert both.exit_code == 2 and "not both" in both.stderr
    neither = pc("pc", "c", ok=False)
    assert neither.exit_code == 2 and "requires a TARGET" in neither.stderr
    no_proxies = pc("pc", "c", "deploy/waypoint", ok=False)
    assert no_proxies.exit_code == 1 and "no proxies found" in no_proxies.stderr
    wrong_file = pc("pc", "c", "-f", str(CLUSTERS_FILE), ok=False)
    assert wrong_file.exit_code == 1 and "not an Envoy config dump" in wrong_file.stderr


# -- the live path: proxy-status.json + the admin Unix socket ------------------------------------
STATUS = {
    "waypoint~10.244.1.8~waypoint-9cwm2cvgjl-jghwl.default~default.svc.cluster.local": {
        "pod": "waypoint-9cwm2cvgjl-jghwl", "namespace": "default", "type": "waypoint", "admin": "ADMIN"},
    "waypoint~10.244.1.9~waypoint-extra-5f6d7c8b9a-abcde.default~default.svc.cluster.local": {
        "pod": "waypoint-extra-5f6d7c8b9a-abcde", "namespace": "default", "type": "waypoint", "admin": "OTHER"},
    "waypoint~10.244.2.8~waypoint-7b8c9d0e1f-zzzzz.other~default.svc.cluster.local": {
        "pod": "waypoint-7b8c9d0e1f-zzzzz", "namespace": "other", "type": "waypoint", "admin": "OTHER-NS"},
}


@pytest.mark.parametrize("target,namespace,admin", [
    ("deploy/waypoint", None, "ADMIN"),
    ("deployment/waypoint.default", None, "ADMIN"),
    ("deploy/waypoint", "other", "OTHER-NS"),
    ("deploy/waypoint.other", "default", "OTHER-NS"),
    ("deploy/waypoint-extra", None, "OTHER"),
    ("waypoint-9cwm2cvgjl-jghwl", None, "ADMIN"),
    ("pod/waypoint-7b8c9d0e1f-zzzzz.other", None, "OTHER-NS"),
])
def test_find_replica(target, namespace, admin):
    assert find_replica(STATUS, target, namespace)["admin"] == admin


def test_find_replica_misses():
    with pytest.raises(LookupError, match='deployment "reviews"'):
        find_replica(STATUS, "deploy/reviews", None)
    with pytest.raises(LookupError, match='pod "waypoint-9cwm2cvgjl-jghwl" in namespace other'):
        find_replica(STATUS, "waypoint-9cwm2cvgjl-jghwl", "other")
    assert split_target("deploy/w.ns", None) == ("deployment", "w", "ns")


class _Admin(http.server.BaseHTTPRequestHandler):
    routes = {"/config_dump?include_eds": DUMP_FILE.read_bytes(), "/clusters?format=json": CLUSTERS_FILE.read_bytes()}

    def do_GET(self):  # noqa: N802
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"nope")))
        self.end_headers()
        self.wfile.write(body or b"nope")

    def log_message(self, *args):
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def admin_socket():
    folder = Path(tempfile.mkdtemp(prefix="mwpc", dir="/tmp"))  # short: AF_UNIX paths are limited
    path = folder / "admin.sock"
    server = _UnixHTTPServer(str(path), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder)


def test_fetch_admin(admin_socket):
    assert json.loads(fetch_admin(admin_socket, "/clusters?format=json"))["cluster_statuses"]
    with pytest.raises(AdminError, match="returned 404"):
        fetch_admin(admin_socket, "/nope")
    with pytest.raises(AdminError, match="does not exist"):
        fetch_admin(admin_socket.parent / "missing.sock", "/config_dump")


def test_cli_live_replica(pc, tmp_path, admin_socket, dump):
    run = tmp_path / "state" / "run"
    run.mkdir(parents=True)
    status = {k: {**v, "admin": str(admin_socket) if v["admin"] == "ADMIN" else "/nonexistent.sock"}
              for k, v in STATUS.items()}
    (run / "proxy-status.json").write_text(json.dumps(status))
    assert pc("pc", "cluster", "deploy/waypoint").stdout == D.write_clusters(dump.clusters)
    assert pc("pc", "l", "deploy/waypoint", "--waypoint").stdout == D.write_waypoint_listeners(dump.listeners)
    eps = pc("pc", "ep", "waypoint-9cwm2cvgjl-jghwl.default").stdout
    assert eps.startswith("ENDPOINT ") and REVIEWS_V1 in eps
    down = pc("pc", "c", "deploy/waypoint-extra", ok=False)
    assert down.exit_code == 1 and "waypoint-extra-5f6d7c8b9a-abcde.default" in down.stderr
    assert "/nonexistent.sock does not exist" in down.stderr


# -- a waypoint whose routes come over RDS (captured from a live waypoint, bookinfo + 90/10) ----------
RDS_DUMP_FILE = DATA / "waypoint_rds_config_dump.json"


@pytest.fixture(scope="module")
def rds_dump() -> D.ConfigDump:
    return D.parse_config_dump(json.loads(RDS_DUMP_FILE.read_text()))


def test_rds_routes_are_listed_from_dynamic_route_configs(rds_dump):
    raw = json.loads(RDS_DUMP_FILE.read_text())
    section = next(c for c in raw["configs"] if c["@type"].endswith(".RoutesConfigDump"))
    assert REVIEWS in {d["route_config"]["name"] for d in section["dynamic_route_configs"]}
    lines = D.write_routes(rds_dump.routes).splitlines()
    assert cells_strip(next(l for l in lines if l.startswith(REVIEWS))) == [
        REVIEWS, "inbound|http|9080", "*", "/*", "reviews.default"]
    assert sorted(cells_strip(l)[0] for l in lines[1:]) == sorted([
        "default", "encap", REVIEWS, *(f"inbound-vip|9080|http|{s}.default.svc.cluster.local"
                                       for s in ("details", "productpage", "ratings"))])  # each once


def test_rds_chains_show_their_route_config(rds_dump):
    lines = D.write_waypoint_listeners(rds_dump.listeners).splitlines()
    chain = cells_strip(next(l for l in lines if f" {REVIEWS} " in l))
    assert chain[0] == "envoy://main_internal" and chain[-1].endswith(f"Route: {REVIEWS}")
    assert ["envoy://connect_terminate", "default", "ALL", "Inline", "Route:"] in [l.split() for l in lines]


def test_cli_route_from_rds(pc):
    out = pc("pc", "routes", "-f", str(RDS_DUMP_FILE), "--name", REVIEWS, "-o", "yaml").stdout
    clusters = yaml.safe_load(out)[0]["virtualHosts"][0]["routes"][0]["route"]["weightedClusters"]["clusters"]
    assert [(c["name"], c["weight"]) for c in clusters] == [(REVIEWS_V1, 90), (REVIEWS_V1.replace("/v1", "/v2"), 10)]
