"""`meshway ztunnel-config`, `proxy-config log|bootstrap` and `version` without a mesh: the node proxy
dump built from a stored node-proxy config dump (tests/data/ztunnel_node: node-1 of the demo with a
workload waypoint, an out-of-mesh ratings pod and two L4 policies), rendered in istioctl's table and
JSON shapes (`istioctl/pkg/writer/ztunnel/configdump`, `pkg/version/cobra.go`). The expected tables
live in tests/golden/ztunnel_config (MESHWAY_UPDATE_GOLDEN=1 regenerates them)."""
from __future__ import annotations

import difflib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshway.cli import configdump as D
from meshway.cli import envoylog as E
from meshway.cli import version as V
from meshway.cli import ztunneldump as Z
from meshway.cli.main import cli

DATA = Path(__file__).resolve().parent / "data" / "ztunnel_node"
GOLDEN = Path(__file__).resolve().parent / "golden" / "ztunnel_config"
NOW = datetime(2026, 12, 2, 20, 0, tzinfo=timezone.utc)  # inside the workload certificates' day


def load(name: str):
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def dump() -> dict:
    return Z.build_ztunnel_dump(load("config_dump"), load("certs"), load("pods"), load("authorizationpolicies"))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MESHWAY_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"golden file {name} is missing; generate it with MESHWAY_UPDATE_GOLDEN=1 and review it")
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), name, "output"))
        pytest.fail(f"output differs from {name} (MESHWAY_UPDATE_GOLDEN=1 to refresh):\n{diff}")


# -- tables: istioctl's headers, column order, sorting and padding -------------------------------
def test_workloads_table(dump):
    text = Z.write_workloads(dump)
    assert text.splitlines()[0].split() == ["NAMESPACE", "POD", "NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]
    check_golden("workloads.txt", text)


def test_services_table(dump):
    text = Z.write_services(dump)
    assert text.splitlines()[0] == "NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS"
    check_golden("services.txt", text)


def test_policies_table(dump):
    assert Z.write_policies(dump) == (
        "NAMESPACE POLICY NAME        ACTION SCOPE\n"
        "default   deny-legacy        Deny   Namespace\n"
        "default   productpage-viewer Allow  WorkloadSelector\n")


def test_certificates_table(dump):
    text = Z.write_certificates(dump, NOW)
    header = text.splitlines()[0]
    assert [h.strip() for h in header.split("     ") if h.strip()] == [
        "CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]
    assert "TYPE     STATUS" in header  # tabwriter padding 5
    assert [line.split()[1] for line in text.splitlines()[1:3]] == ["Leaf", "Root"]
    check_golden("certificates.txt", text)


def test_all_is_every_summary_after_an_empty_line(dump):
    text = Z.write_all(dump, NOW)
    assert text == "".join("\n" + t for t in (Z.write_workloads(dump), Z.write_services(dump),
                                              Z.write_policies(dump), Z.write_certificates(dump, NOW)))


# -- what the node proxy's config says -----------------------------------------------------------
def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[1]: line.split() for line in text.splitlines()[1:]}


def test_workload_protocol_and_waypoint_come_from_the_proxy(dump):
    table = rows(Z.write_workloads(dump))
    ratings = next(v for k, v in table.items() if k.startswith("ratings-"))
    assert ratings[-2:] == ["None", "TCP"]  # labelled out of the mesh: a plain-TCP endpoint of its service
    reviews = next(v for k, v in table.items() if k.startswith("reviews-v1-"))
    assert reviews[-2:] == ["waypoint", "HBONE"]  # `ID|pod|IP|waypoint` chain -> cluster waypoint|ID|default/waypoint
    waypoint_pod = next(v for k, v in table.items() if k.startswith("waypoint-"))
    assert waypoint_pod[-2:] == ["None", "TCP"]  # as Istio shows waypoint pods (not captured)


def test_service_entries_in_ztunnel_json_names(dump):
    reviews = next(s for s in dump["services"] if s["name"] == "reviews")
    assert set(reviews) >= {"name", "namespace", "hostname", "vips", "ports", "endpoints", "subjectAltNames",
                            "ipFamilies", "waypoint"}
    assert reviews["hostname"] == "reviews.default.svc.cluster.local"
    assert reviews["waypoint"] == {"destination": "default/waypoint.default.svc.cluster.local"}
    assert reviews["vips"] == ["/10.96.0.4"] and reviews["ports"] == {"9080": 9080}
    assert len(reviews["endpoints"]) == 3
    for key, ep in reviews["endpoints"].items():
        assert set(ep) == {"workloadUid", "service", "address", "port"}
        assert key == f"{ep['workloadUid']}:{ep['address']}" and ep["workloadUid"].startswith("Kubernetes//Pod/default/")
        assert ep["service"] == "default/reviews.default.svc.cluster.local"


def test_workload_entries_in_ztunnel_json_names(dump):
    curl = next(w for w in dump["workloads"] if w["name"].startswith("curl-"))
    assert curl["uid"] == f"Kubernetes//Pod/default/{curl['name']}"
    assert (curl["serviceAccount"], curl["workloadName"], curl["workloadType"], curl["canonicalName"],
            curl["canonicalRevision"], curl["node"], curl["status"], curl["clusterId"]) == (
        "curl", "curl", "deployment", "curl", "latest", "node-1", "Healthy", "Kubernetes")
    product = next(w for w in dump["workloads"] if w["name"].startswith("productpage-"))
    assert product["authorizationPolicies"] == ["default/deny-legacy", "default/productpage-viewer"]


def test_policy_rules_in_ztunnel_nesting(dump):
    viewer = next(p for p in dump["policies"] if p["name"] == "productpage-viewer")
    assert viewer["rules"] == [[
        [{"principals": [{"Exact": "cluster.local/ns/default/sa/curl"}], "namespaces": [{"Exact": "default"}]}],
        [{"destinationPorts": [9080]}]]]
    assert Z.build_policy_rules({"rules": [{"from": [{"source": {"principals": ["*", "*/sa/x", "cluster.local/*"]}}]}]}) \
        == [[[{"principals": [{"Presence": {}}, {"Suffix": "/sa/x"}, {"Prefix": "cluster.local/"}]}]]]


def test_policy_scope_and_what_a_node_proxy_does_not_enforce():
    pod = {"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "a"}}}
    def ap(name, ns="ns", **spec):
        return {"metadata": {"name": name, "namespace": ns}, "spec": spec}
    policies = [ap("global", "istio-system"), ap("sel", selector={"matchLabels": {"app": "a"}}),
                ap("other", selector={"matchLabels": {"app": "b"}}), ap("waypoint", targetRefs=[{"kind": "Service"}]),
                ap("custom", action="CUSTOM"), ap("elsewhere", "other-ns"),
                {"metadata": {"name": "dry", "namespace": "ns", "annotations": {"istio.io/dry-run": "true"}},
                 "spec": {}}]
    applied = Z.find_local_policies(policies, [pod])[("ns", "a")]
    assert [p["metadata"]["name"] for p in applied] == ["global", "sel"]
    assert [Z.build_policy(p)["scope"] for p in applied] == ["Global", "WorkloadSelector"]


def test_certificates_are_what_envoy_loaded(dump):
    certs = load("certs")["certificates"]
    leaf = certs[0]["cert_chain"][0]
    identity = leaf["subject_alt_names"][0]["uri"]
    item = next(c for c in dump["certificates"] if c["identity"] == identity)
    assert item["state"] == "Available"
    assert item["certChain"][0]["serialNumber"] == str(int(leaf["serial_number"], 16))  # decimal, as ztunnel
    assert item["rootCerts"][0]["expirationTime"] == certs[0]["ca_cert"][0]["expiration_time"]
    # one entry per identity, though Envoy lists a certificate once per TLS context using it
    assert len(dump["certificates"]) == len({c["identity"] for c in dump["certificates"]})


def test_an_identity_without_a_certificate_is_initializing():
    items = Z.build_certificates({"certificates": []}, ["spiffe://cluster.local/ns/a/sa/b"])
    assert items == [{"identity": "spiffe://cluster.local/ns/a/sa/b", "state": "Initializing", "certChain": [],
                      "rootCerts": []}]
    assert Z.write_certificates({"certificates": items}, NOW).splitlines()[1].split() == [
        "spiffe://cluster.local/ns/a/sa/b", "NA", "Initializing", "false", "NA", "NA", "NA"]


def test_filters(dump):
    assert [w["name"] for w in Z.select_workloads(dump, Z.WorkloadFilter(node="NODE-2"))] == sorted(
        w["name"] for w in dump["workloads"] if w["node"] == "node-2")
    assert [w["workloadIps"] for w in Z.select_workloads(dump, Z.WorkloadFilter(address="10.244.1.2"))] == [
        ["10.244.1.2"]]
    assert Z.write_services(dump, "istio-system") == "NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS\n"


def test_json_and_yaml_output(dump):
    text = Z.write_data(dump["policies"], "json")
    assert text.startswith("[\n    {\n") and json.loads(text) == dump["policies"]
    assert "scope: Namespace" in Z.write_data(dump["policies"], "yaml")


def test_a_stored_dump_reads_back_and_ztunnels_maps_are_lists(dump, tmp_path):
    assert Z.parse_ztunnel_dump(json.loads(json.dumps(dump))) == dump
    as_maps = {**dump, "workloads": {f"/{w['workloadIps'][0]}": w for w in dump["workloads"]}}
    assert Z.parse_ztunnel_dump(as_maps)["workloads"] == dump["workloads"]
    with pytest.raises(ValueError, match="not a ztunnel config dump"):
        Z.parse_ztunnel_dump({"configs": []})
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(dump))
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "state"), "ztunnel-config", "services",
                                      "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == Z.write_services(dump)
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "state"), "zc", "w", "-f", str(path),
                                      "--node", "node-1"])
    assert result.exit_code == 2 and "at most one of --file, --node, or pod name" in result.output


def test_not_a_config_dump():
    with pytest.raises(ValueError, match="not an Envoy config dump"):
        Z.build_ztunnel_dump({}, {}, [], [])


# -- proxy-config bootstrap: the token never shows -----------------------------------------------
def test_redact_replaces_the_xds_token_wherever_it_is():
    from meshway.ca.tokens import TOKEN_METADATA

    assert TOKEN_METADATA in D.SECRET_METADATA
    raw = load("config_dump")
    redacted = D.redact(raw)
    text = json.dumps(redacted)
    assert "test-token-not-a-secret" not in text and '"MESHWAY_XDS_TOKEN": "[redacted]"' in text
    assert "test-token-not-a-secret" in json.dumps(raw)  # a copy: the input is left alone
    section = D.bootstrap_section(raw)
    assert section["bootstrap"]["node"]["metadata"]["MESHWAY_XDS_TOKEN"] == "[redacted]"
    assert section["bootstrap"]["node"]["metadata"]["NODE_NAME"] == "node-1"


def test_bootstrap_and_all_from_a_file(tmp_path):
    path = DATA / "config_dump.json"
    runner = CliRunner()
    for args in (["bootstrap", "-f", str(path)], ["bootstrap", "-f", str(path), "-o", "yaml"],
                 ["all", "-f", str(path), "-o", "json"], ["all", "-f", str(path), "-o", "yaml"]):
        result = runner.invoke(cli, ["--state-dir", str(tmp_path / "s"), "proxy-config", *args])
        assert result.exit_code == 0, result.output
        assert "test-token-not-a-secret" not in result.output and "[redacted]" in result.output
    bootstrap = json.loads(runner.invoke(cli, ["--state-dir", str(tmp_path / "s"), "pc", "bootstrap", "-f",
                                               str(path)]).output)
    assert set(bootstrap) == {"bootstrap"} and bootstrap["bootstrap"]["node"]["userAgentName"] == "envoy"  # protojson
    short = runner.invoke(cli, ["--state-dir", str(tmp_path / "s"), "pc", "bootstrap", "-f", str(path), "-o", "short"])
    assert short.output == "Envoy Version: 1.40.0/Clean/RELEASE/BoringSSL\n"


# -- proxy-config log: istioctl's --level grammar ------------------------------------------------
@pytest.mark.parametrize("spec,expected", [
    ("debug", [("level", "debug")]),
    ("warn", [("level", "warning")]),
    ("http:debug,rbac=trace", [("http", "debug"), ("rbac", "trace")]),
    ("info,http:debug", [("level", "info"), ("http", "debug")]),
    ("envoy::http:debug", [("http", "debug")]),
])
def test_level_spec(spec, expected):
    assert E.parse_level_spec(spec, {"http", "rbac"}) == expected


@pytest.mark.parametrize("spec,message", [("loud", "unrecognized logging level: loud"),
                                          ("http:loud", "unrecognized logging level: loud"),
                                          ("nope:debug", "unrecognized logger name: nope")])
def test_level_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        E.parse_level_spec(spec, {"http"})


def test_log_queries_and_loggers():
    assert E.build_log_queries([]) == ["/logging"]
    assert E.build_log_queries([("level", "info"), ("http", "debug")]) == ["/logging?level=info", "/logging?http=debug"]
    assert E.find_loggers("active loggers:\n  admin: info\n  http: debug\n") == {"admin", "http"}


# -- version: istioctl's shape -------------------------------------------------------------------
CLIENT = {"version": "0.1.0", "revision": "unknown", "python_version": "3.11.7", "status": "Clean", "tag": "0.1.0"}
PROXIES = [{"ID": "waypoint-x.default", "IstioVersion": "envoy-1.40.0", "Type": "waypoint"},
           {"ID": "ztunnel-node-1.istio-system", "IstioVersion": "envoy-1.40.0", "Type": "ztunnel"},
           {"ID": "ztunnel-node-2.istio-system", "IstioVersion": "envoy-1.39.1", "Type": "ztunnel"}]


def test_version_short():
    text = V.write_version(V.build_version(CLIENT, dict(CLIENT), PROXIES))
    assert text == ("client version: 0.1.0\ncontrol plane version: 0.1.0\n"
                    "data plane version: envoy-1.39.1 (1 proxies), envoy-1.40.0 (2 proxies)\n")
    assert V.write_version(V.build_version(CLIENT, None, None)) == "0.1.0\n"  # --remote=false
    assert V.write_version(V.build_version(CLIENT, dict(CLIENT), [])).endswith("data plane version: none\n")


def test_version_json_and_long_form():
    data = json.loads(V.write_version(V.build_version(CLIENT, dict(CLIENT), PROXIES[:1]), "json"))
    assert list(data) == ["clientVersion", "meshVersion", "dataPlaneVersion"]
    assert data["meshVersion"] == [{"Component": "pilot", "Revision": "default", "Info": CLIENT}]
    assert data["dataPlaneVersion"] == PROXIES[:1]
    assert "clientVersion" not in V.write_version(V.build_version(CLIENT, None, None), "json").split("meshVersion")[1:]
    long = V.write_version(V.build_version(CLIENT, dict(CLIENT), PROXIES[:1]), short=False).splitlines()
    assert long[0].startswith('client version: version.BuildInfo{Version:"0.1.0"')
    assert long[1].startswith("pilot version: version.BuildInfo{")
    assert long[2] == ('data plane version: version.ProxyInfo{ID:"waypoint-x.default", IstioVersion:"envoy-1.40.0", '
                       'Type:"waypoint"}')


def test_envoy_version_from_server_info():
    assert V.parse_envoy_version({"version": "9e55/1.40.0/Clean/RELEASE/BoringSSL"}) == "envoy-1.40.0"
    assert V.parse_envoy_version({}) == "unknown"


def test_version_without_a_control_plane(tmp_path):
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "state"), "version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __import__("meshway").__version__
    assert "control plane is not running" in result.stderr
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "state"), "version", "--remote=false"])
    assert result.output == f"{__import__('meshway').__version__}\n"


# -- on Kubernetes: the node proxies are the ztunnel DaemonSet's pods ---------------------------------
def kube_pod(name: str, node: str, image: str = "meshway/ztunnel", phase: str = "Running", deleting: bool = False) -> dict:
    meta = {"name": name, "namespace": "istio-system", **({"deletionTimestamp": "2026-12-03T10:00:00Z"} if deleting else {})}
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "istio-proxy", "image": image}]},
            "status": {"phase": phase}}


def test_the_node_proxies_of_a_cluster_are_its_running_ztunnel_pods():
    from meshway.cli.ztunnelconfig import find_kube_node_proxies, find_node_proxy

    pods = [kube_pod("ztunnel-2ktsn", "node-1"), kube_pod("ztunnel-69w58", "node-2", "docker.io/istio/ztunnel:1.28.0"),
            kube_pod("ztunnel-old", "node-2", deleting=True), kube_pod("ztunnel-new", "node-3", phase="Pending"),
            kube_pod("curl-1", "node-1", "curlimages/curl")]
    proxies = find_kube_node_proxies(pods)
    assert sorted(p["pod"] for p in proxies.values()) == ["ztunnel-2ktsn", "ztunnel-69w58"]
    assert find_node_proxy(proxies, None, "node-2", None)["pod"] == "ztunnel-69w58"  # --node: spec.nodeName
    assert find_node_proxy(proxies, "ztunnel-2ktsn.istio-system", None, None)["node"] == "node-1"
    assert find_node_proxy(proxies, "ds/ztunnel", None, None)["pod"] == "ztunnel-2ktsn"
    with pytest.raises(LookupError, match=r'no node proxy on node "node-3" \(nodes: node-1, node-2\)'):
        find_node_proxy(proxies, None, "node-3", None)


def test_the_proxies_of_a_cluster_for_metrics_are_its_waypoint_and_ztunnel_pods():
    from meshway.cli.kubeproxies import find_kube_proxies

    waypoint = kube_pod("waypoint-7999b58cb4-hw69s", "node-1", "meshway/waypoint-envoy")
    waypoint["metadata"]["namespace"] = "default"
    proxies = find_kube_proxies([waypoint, kube_pod("ztunnel-2ktsn", "node-1"), kube_pod("curl-1", "node-1", "curl")])
    assert proxies == {
        "waypoint-7999b58cb4-hw69s.default": {"pod": "waypoint-7999b58cb4-hw69s", "namespace": "default",
                                              "type": "waypoint", "node": "node-1"},
        "ztunnel-2ktsn.istio-system": {"pod": "ztunnel-2ktsn", "namespace": "istio-system", "type": "ztunnel",
                                       "node": "node-1"}}
