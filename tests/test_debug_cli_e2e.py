"""End to end (root, network namespaces): the debug commands of Istio's docs on the running mesh.
`ztunnel-config` shows each node proxy's own state (its Envoy's config and certificates) and follows
a change; `proxy-config log` changes a live Envoy's levels and `--reset` restores them;
`proxy-config bootstrap|all -o json|yaml` never shows the xDS token; `version` reports the running
control plane and every proxy's Envoy."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509

from cluster_support import Mesh, cluster_fixture
from meshway import __version__
from meshway.cli import proxyconfig, version, ztunnelconfig  # noqa: F401  (register the commands)
from meshway.cli.main import cli
from meshway.model import find_kind, load_yaml
from meshway.runtime.envoy_admin import fetch_admin

mesh = cluster_fixture()


def run(mesh: Mesh, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), *args])
    assert result.exit_code == 0, f"meshway {' '.join(args)}: {result.output}"
    return result.stdout


def proxies(mesh: Mesh) -> dict:
    return json.loads((mesh.state / "run" / "proxy-status.json").read_text())


def node_proxy_admin(mesh: Mesh, node: str) -> str:
    return next(p["admin"] for p in proxies(mesh).values() if p["pod"] == f"ztunnel-{node}")


def mesh_pods(mesh: Mesh) -> list[dict]:
    return [p for p in mesh.pods() if not p["metadata"]["name"].startswith("waypoint-")]


def test_workloads_are_what_each_node_proxy_knows(mesh: Mesh) -> None:
    expected = {(p["metadata"]["name"], p["spec"]["nodeName"], p["status"]["podIP"]) for p in mesh_pods(mesh)}
    for node in ("node-1", "node-2"):
        workloads = json.loads(run(mesh, "ztunnel-config", "workloads", "--node", node, "-o", "json"))
        hbone = {(w["name"], w["node"], w["workloadIps"][0]) for w in workloads if w["protocol"] == "HBONE"}
        assert hbone == expected, node  # every mesh pod, wherever it runs
        waypoint = [w for w in workloads if w["name"].startswith("waypoint-")]
        assert waypoint and all(w["protocol"] == "TCP" for w in waypoint)  # as Istio shows waypoint pods
    table = run(mesh, "zc", "workloads", "ztunnel-node-1.istio-system").splitlines()
    assert table[0].split() == ["NAMESPACE", "POD", "NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]
    curl = next(line.split() for line in table if " curl-" in line)
    assert curl[0] == "default" and curl[-1] == "HBONE"


def service_row(mesh: Mesh, name: str, node: str = "node-1") -> list[str]:
    table = run(mesh, "ztunnel-config", "services", "--node", node).splitlines()
    assert table[0].split() == [
        "NAMESPACE", "SERVICE", "NAME", "SERVICE", "VIP", "WAYPOINT", "ENDPOINTS"]
    return next(line.split() for line in table[1:] if line.split()[1] == name)


def test_services_follow_the_proxy_when_a_service_opts_out(mesh: Mesh) -> None:
    reviews = mesh.store.get(find_kind("svc"), "default", "reviews")
    vip = reviews["spec"]["clusterIP"]
    assert service_row(mesh, "reviews") == ["default", "reviews", vip, "waypoint", "3/3"]
    mesh.label("svc", "reviews", {"istio.io/use-waypoint": "none"})
    try:
        mesh.wait_until(lambda: service_row(mesh, "reviews")[3] == "None", 20, "reviews without its waypoint")
        assert service_row(mesh, "reviews", "node-2")[3] == "None"
    finally:
        mesh.label("svc", "reviews", {}, remove=("istio.io/use-waypoint",))
    mesh.wait_until(lambda: service_row(mesh, "reviews")[3] == "waypoint", 20, "reviews back on its waypoint")


def sds_serials(mesh: Mesh, node: str) -> dict[str, int]:
    """{identity: serial} of the workload certificates the control plane sent the node proxy (SDS)."""
    dump = json.loads(fetch_admin(node_proxy_admin(mesh, node), "/config_dump"))
    sds = next(c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump"))
    out = {}
    for s in sds.get("dynamic_active_secrets") or []:
        chain = ((s["secret"].get("tls_certificate") or {}).get("certificate_chain") or {}).get("inline_bytes")
        if chain:
            out[s["name"]] = x509.load_pem_x509_certificate(base64.b64decode(chain)).serial_number
    return out


def test_certificates_are_the_node_proxys_own(mesh: Mesh) -> None:
    for node in ("node-1", "node-2"):
        certs = json.loads(run(mesh, "zc", "certificates", "--node", node, "-o", "json"))
        local = {f"spiffe://cluster.local/ns/default/sa/{p['spec']['serviceAccountName']}"
                 for p in mesh_pods(mesh) if p["spec"]["nodeName"] == node}
        assert {c["identity"] for c in certs} == local, node  # only its local pods' identities
        assert all(c["state"] == "Available" for c in certs)
        serials = sds_serials(mesh, node)
        assert {c["identity"]: int(c["certChain"][0]["serialNumber"]) for c in certs} == serials
        table = run(mesh, "zc", "certs", "--node", node).splitlines()
        assert table[0].split()[:2] == ["CERTIFICATE", "NAME"]
        leaves = {line.split()[0]: line.split()[4] for line in table[1:] if line.split()[1] == "Leaf"}
        assert leaves == {i: format(s, "x") for i, s in serials.items()}
        assert all(line.split()[3] == "true" for line in table[1:])


def test_policies_are_those_of_the_nodes_local_pods(mesh: Mesh) -> None:
    ratings_node = next(p["spec"]["nodeName"] for p in mesh.pods() if p["metadata"]["name"].startswith("ratings-"))
    other = "node-1" if ratings_node == "node-2" else "node-2"
    mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-from-default, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {namespaces: ["default"]}}]
""", "ap.yaml"))
    try:
        rows = run(mesh, "zc", "policies", "--node", ratings_node).splitlines()
        assert rows[0].split() == ["NAMESPACE", "POLICY", "NAME", "ACTION", "SCOPE"]
        assert ["default", "ratings-from-default", "Allow", "WorkloadSelector"] in [r.split() for r in rows[1:]]
        if not any(p["metadata"]["name"].startswith("ratings-") and p["spec"]["nodeName"] == other
                   for p in mesh.pods()):
            assert "ratings-from-default" not in run(mesh, "zc", "policies", "--node", other)
        data = json.loads(run(mesh, "zc", "policies", "--node", ratings_node, "-o", "json"))
        policy = next(p for p in data if p["name"] == "ratings-from-default")
        assert policy["rules"] == [[[{"namespaces": [{"Exact": "default"}]}]]]
    finally:
        mesh.store.delete([(find_kind("ap"), "default", "ratings-from-default")], ignore_not_found=True)


def levels(text: str) -> dict[str, str]:
    return dict(line.strip().split(": ", 1) for line in text.splitlines() if line.startswith("  "))


def test_proxy_config_log_sets_and_resets_a_live_envoys_levels(mesh: Mesh) -> None:
    out = run(mesh, "proxy-config", "log", "deploy/waypoint", "--level", "rbac:debug,http:trace")
    assert re.match(r"waypoint-\S+\.default:\nactive loggers:\n", out)
    assert (levels(out)["rbac"], levels(out)["http"]) == ("debug", "trace")
    admin = mesh.waypoint_admin()
    assert levels(fetch_admin(admin, "/logging", method="POST").decode())["rbac"] == "debug"  # the Envoy's own
    started = json.loads(fetch_admin(admin, "/server_info"))["command_line_options"]["log_level"]
    out = run(mesh, "pc", "log", "deploy/waypoint", "-r")
    assert set(levels(out).values()) == {started}
    result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), "pc", "log", "deploy/waypoint", "--level",
                                      "nosuchlogger:debug"])
    assert result.exit_code == 1 and "unrecognized logger name: nosuchlogger" in result.output
    out = run(mesh, "zc", "log", "--level", "info")
    assert out.count("ztunnel-node-") == 2 and "debug" not in out
    out = run(mesh, "zc", "log", "-r")
    assert set(levels(out).values()) == {json.loads(fetch_admin(node_proxy_admin(mesh, "node-1"), "/server_info"))[
        "command_line_options"]["log_level"]}


def test_no_output_shows_the_xds_token(mesh: Mesh) -> None:
    for target in ("deploy/waypoint", "ztunnel-node-1.istio-system"):
        admin = mesh.waypoint_admin() if target.startswith("deploy/") else node_proxy_admin(mesh, "node-1")
        config_path = json.loads(fetch_admin(admin, "/server_info"))["command_line_options"]["config_path"]
        token = json.loads(Path(config_path).read_text())["node"]["metadata"]["MESHWAY_XDS_TOKEN"]
        assert token
        bootstrap = json.loads(run(mesh, "pc", "bootstrap", target))
        assert bootstrap["bootstrap"]["node"]["metadata"]["MESHWAY_XDS_TOKEN"] == "[redacted]"
        assert bootstrap["bootstrap"]["node"]["id"].split("~")[2].startswith(target.split("/")[-1].split(".")[0])
        for args in (["bootstrap", target, "-o", "yaml"], ["all", target, "-o", "json"], ["all", target, "-o", "yaml"],
                     ["all", target]):
            assert token not in run(mesh, "pc", *args), args
        assert run(mesh, "pc", "bootstrap", target, "-o", "short").startswith("Envoy Version: ")


def test_version_reports_the_running_control_plane_and_every_proxy(mesh: Mesh) -> None:
    lines = run(mesh, "version").splitlines()
    n = len(proxies(mesh))
    assert lines[0] == f"client version: {__version__}"
    assert lines[1] == f"control plane version: {__version__}"
    assert re.fullmatch(rf"data plane version: envoy-\d+\.\d+\.\d+ \({n} proxies\)", lines[2])
    data = json.loads(run(mesh, "version", "-o", "json"))
    assert data["meshVersion"][0]["Info"]["version"] == __version__
    ids = {f"{p['pod']}.{p['namespace']}" for p in proxies(mesh).values()}
    assert {p["ID"] for p in data["dataPlaneVersion"]} == ids
    assert {p["Type"] for p in data["dataPlaneVersion"]} == {"waypoint", "ztunnel"}
    info = json.loads(fetch_admin(mesh.waypoint_admin(), "/server_info"))
    assert f"/{data['dataPlaneVersion'][0]['IstioVersion'].removeprefix('envoy-')}/" in info["version"]
    assert run(mesh, "version", "--remote=false") == f"{__version__}\n"
    assert (mesh.state / "run" / "version.json").exists()
