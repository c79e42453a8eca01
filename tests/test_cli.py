"""The `meshway` CLI end to end (in-process through click, plus real subprocesses): the seed docs'
steps, istioctl's exact lines, and bad input that must change nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshway.cli.main import cli, main  # noqa: F401
from meshway.cli import analyze, explain, up, waypoint  # noqa: F401  (register commands)
from meshway.store import Store

BOOKINFO = Path(__file__).resolve().parents[1] / "meshway" / "demo" / "bookinfo.yaml"


class Meshway:
    def __init__(self, state: Path):
        self.state = state
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, ok: bool = True):
        result = self.runner.invoke(cli, ["--state-dir", str(self.state), *args], input=input)
        if ok:
            assert result.exit_code == 0, f"{args}: {result.output}{result.stderr}"
        return result

    def dump(self):
        store = Store(self.state)
        try:
            return store.dump()
        finally:
            store.close()

    def explain(self, target: str, ns: str = "default") -> dict:
        return json.loads(self("explain", target, "-n", ns, "-o", "json").stdout)


@pytest.fixture
def mw(tmp_path: Path) -> Meshway:
    return Meshway(tmp_path / "state")


@pytest.fixture
def bookinfo(mw: Meshway) -> Meshway:
    mw("apply", "-f", str(BOOKINFO))
    mw("label", "namespace", "default", "istio.io/dataplane-mode=ambient")
    return mw


GENERATED = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels:
    istio.io/waypoint-for: service
  name: waypoint
  namespace: default
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"""


def test_waypoint_generate_matches_istioctl(mw: Meshway) -> None:
    assert mw("waypoint", "generate", "--for", "service", "-n", "default").stdout == GENERATED
    plain = mw("waypoint", "generate").stdout
    assert "namespace:" not in plain and "labels" not in plain and "name: waypoint" in plain


def test_apply_prints_kubectl_lines_and_is_idempotent(mw: Meshway) -> None:
    out = mw("apply", "-f", str(BOOKINFO)).stdout.splitlines()
    assert out[:3] == ["service/details created", "serviceaccount/bookinfo-details created",
                       "deployment.apps/details-v1 created"]
    again = mw("apply", "-f", str(BOOKINFO)).stdout.splitlines()
    assert all(line.endswith(" unchanged") for line in again) and len(again) == len(out)


def test_namespace_enrollment_walkthrough(bookinfo: Meshway) -> None:
    mw = bookinfo
    out = mw("waypoint", "apply", "-n", "default", "--enroll-namespace").stdout
    assert out == ('✅ waypoint default/waypoint applied\n'
                   '✅ namespace default labeled with "istio.io/use-waypoint: waypoint"\n')
    again = mw("waypoint", "apply", "-n", "default", "--enroll-namespace").stdout
    assert again == ("⚠️ Warning: namespace (default) already has an enrolled Waypoint. Consider adding the "
                     "`--overwrite` flag to your apply command.\n")
    listing = mw("waypoint", "list").stdout
    assert listing.splitlines()[0].split() == ["NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED"]
    assert listing.splitlines()[1].split() == ["waypoint", "default", "none", "False"]
    decision = mw.explain("service/reviews")
    assert decision["waypoint"] == "default/waypoint" and decision["reason"] == "WaypointIsNotReady"
    assert decision["ready"] is False and decision["addressed_as"] == "service"
    svc = json.loads(mw("get", "svc", "reviews", "-o", "json").stdout)
    cond = [c for c in svc["status"]["conditions"] if c["type"] == "istio.io/WaypointBound"][0]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False", "WaypointIsNotReady", 'waypoint "default/waypoint" is not ready')
    status = mw("waypoint", "status", "--no-wait").stdout.splitlines()
    assert status[0].split() == ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    assert status[1].split()[:4] == ["waypoint", "False", "Programmed", "AddressNotAssigned"]


def test_not_ambient_warning(mw: Meshway) -> None:
    out = mw("waypoint", "apply", "-n", "default", "--enroll-namespace").stdout
    assert out.splitlines()[0] == ("⚠️ Warning: namespace is not enrolled in ambient. Consider running\t"
                                   "`kubectl label namespace default istio.io/dataplane-mode=ambient`")


def test_service_and_pod_waypoints(bookinfo: Meshway) -> None:
    mw = bookinfo
    assert mw("waypoint", "apply", "-n", "default", "--name", "reviews-svc-waypoint").stdout == \
        "✅ waypoint default/reviews-svc-waypoint applied\n"
    assert mw("label", "service", "reviews", "istio.io/use-waypoint=reviews-svc-waypoint").stdout == \
        "service/reviews labeled\n"
    assert mw.explain("service/reviews")["waypoint"] == "default/reviews-svc-waypoint"

    mw("waypoint", "apply", "-n", "default", "--name", "reviews-v2-pod-waypoint", "--for", "workload")
    out = mw("label", "pod", "-l", "version=v2,app=reviews", "istio.io/use-waypoint=reviews-v2-pod-waypoint").stdout
    assert out.startswith("pod/reviews-v2-") and out.endswith(" labeled\n") and out.count("\n") == 1
    pod = json.loads(mw("get", "pods", "-l", "version=v2,app=reviews", "-o", "json").stdout)["items"][0]
    by_ip = mw.explain(pod["status"]["podIP"])
    assert by_ip["addressed_as"] == "workload" and by_ip["waypoint"] == "default/reviews-v2-pod-waypoint"
    # The original destination type decides: service-addressed traffic still uses the service waypoint.
    svc_ip = json.loads(mw("get", "svc", "reviews", "-o", "json").stdout)["spec"]["clusterIP"]
    assert mw.explain(f"{svc_ip}:9080")["waypoint"] == "default/reviews-svc-waypoint"
    # Opt out.
    mw("label", "svc", "reviews", "istio.io/use-waypoint=none", "--overwrite")
    assert mw.explain("service/reviews")["reason"] == "OptedOut"


def test_cross_namespace_with_allowed_routes_selector(mw: Meshway) -> None:
    mw("apply", "-f", "-", input="""
apiVersion: v1
kind: Namespace
metadata: {name: common-infrastructure}
---
apiVersion: v1
kind: Namespace
metadata: {name: cross-namespace-waypoint-consumer}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: egress-gateway
  namespace: common-infrastructure
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels:
            kubernetes.io/metadata.name: cross-namespace-waypoint-consumer
""")
    se = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-site}
spec:
  hosts: [istio.io]
  addresses: [240.240.0.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"""
    for ns in ("cross-namespace-waypoint-consumer", "other"):
        mw("apply", "-n", ns, "-f", "-", input=se)
        assert mw("label", "serviceentries.networking.istio.io", "istio-site", "-n", ns,
                  "istio.io/use-waypoint=egress-gateway").stdout == \
            "serviceentry.networking.istio.io/istio-site labeled\n"
        mw("label", "se", "istio-site", "-n", ns, "istio.io/use-waypoint-namespace=common-infrastructure")
    ok = mw.explain("serviceentry/istio-site", "cross-namespace-waypoint-consumer")
    assert ok["reason"] == "WaypointIsNotReady" and ok["waypoint"] == "common-infrastructure/egress-gateway"
    denied = mw.explain("serviceentry/istio-site", "other")
    assert denied["reason"] == "AttachmentDenied" and denied["waypoint"] is None
    se_obj = json.loads(mw("get", "se", "istio-site", "-n", "other", "-o", "json").stdout)
    assert se_obj["status"]["conditions"][0]["reason"] == "AttachmentDenied"


def test_cleanup_delete_all_and_label_removal(bookinfo: Meshway) -> None:
    mw = bookinfo
    mw("waypoint", "apply", "-n", "default", "--enroll-namespace")
    mw("waypoint", "apply", "-n", "default", "--name", "second")
    assert mw("waypoint", "delete", "--all", "-n", "default").stdout == \
        "waypoint default/second deleted\nwaypoint default/waypoint deleted\n"
    assert mw("label", "ns", "default", "istio.io/use-waypoint-").stdout == "namespace/default labeled\n"
    assert mw("waypoint", "list").stdout == "No waypoints found.\n"
    assert mw("get", "deploy", "waypoint", ok=False).exit_code == 1  # owned objects were collected
    assert mw.explain("service/reviews")["reason"] == "NoWaypoint"
    assert mw("waypoint", "delete", "nope").stdout == "waypoint default/nope not found\n"


def test_waypoint_delete_argument_errors(mw: Meshway) -> None:
    r = mw("waypoint", "delete", "--all", "x", ok=False)
    assert r.exit_code == 1 and r.stderr == "error: cannot specify waypoint names when deleting all waypoints\n"
    r = mw("waypoint", "delete", ok=False)
    assert "must specify a waypoint name or delete all using --all" in r.stderr


def test_get_tables(bookinfo: Meshway) -> None:
    mw = bookinfo
    svc = mw("get", "svc").stdout.splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc[1].split()[:5] == ["details", "ClusterIP", svc[1].split()[2], "<none>", "9080/TCP"]
    wide = mw("get", "svc", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "SELECTOR" and wide[1].split()[-1] == "app=details"
    ns = mw("get", "ns", "-L", "istio.io/dataplane-mode").stdout.splitlines()
    assert ns[0].split() == ["NAME", "STATUS", "AGE", "DATAPLANE-MODE"]
    assert ns[1].split()[0] == "default" and ns[1].split()[-1] == "ambient"
    all_pods = mw("get", "po", "-A").stdout.splitlines()
    assert all_pods[0].split()[:2] == ["NAMESPACE", "NAME"] and len(all_pods) == 7
    r = mw("get", "svc", "-n", "kube-public")
    assert r.stdout == "" and r.stderr == "No resources found in kube-public namespace.\n"
    r = mw("get", "svc", "nope", ok=False)
    assert r.exit_code == 1 and r.stderr == 'Error from server (NotFound): services "nope" not found\n'


def test_analyze_seed_topology(mw: Meshway) -> None:
    out = json.loads(mw("analyze", "config-distribution", "--namespaces", "2", "--deployments", "25", "--pods", "10",
                        "--waypoint-replicas", "2", "-o", "json").stdout)
    assert out["sidecar_namespace_scoped"]["configurations"] == 12500
    assert out["sidecar_mesh_wide"]["configurations"] == 25000
    assert out["waypoint"]["configurations"] == 100
    assert out["ratio"] == 0.008
    # Real serialized xDS: 2 waypoints x 2 replicas versus 500 sidecars holding all 50 services.
    assert out["waypoint"]["bytes"] == 2 * sum(out["bytes_per_waypoint"].values())
    assert out["sidecar_mesh_wide"]["bytes"] == 500 * out["bytes_per_sidecar"]
    assert 0 < out["bytes_ratio"] < 0.008
    table = mw("analyze", "config-distribution", "--namespaces", "2").stdout
    assert "25 configurations * 250 sidecars" in table and "0.8%" in table


def test_analyze_store_contents(bookinfo: Meshway) -> None:
    mw = bookinfo
    mw("waypoint", "apply", "-n", "default", "--enroll-namespace")
    out = json.loads(mw("analyze", "config-distribution", "-o", "json").stdout)
    # 4 bookinfo services x 6 app pods; the waypoint's own service and pod are not counted.
    assert out["sidecar_namespace_scoped"]["configurations"] == 24
    assert out["waypoint"]["configurations"] == 4


BAD_INPUTS = {
    "malformed": ("apiVersion: v1\nkind: Service\nmetadata: {name: x\n", "invalid YAML at line"),
    "unknown-kind": ("apiVersion: v1\nkind: Widget\nmetadata: {name: x}\n", 'no matches for kind "Widget"'),
    "wrong-type": ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: eighty}]}\n",
                   "spec.ports[0].port: Input should be a valid integer"),
    "missing-field": ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\n"
                      "spec: {listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n",
                      "spec.gatewayClassName: Required value"),
    "bad-name": ("apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n", "metadata.name: invalid value"),
    "bad-label": ("apiVersion: v1\nkind: Namespace\nmetadata: {name: ok, labels: {a: 'has space'}}\n",
                  "metadata.labels: invalid label value"),
    "bad-enum": ("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\n"
                 "spec: {hosts: [a.b], resolution: MAGIC}\n", "spec.resolution: Unsupported value"),
    "duplicate-key": ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nmetadata: {name: b}\n",
                      'mapping key "metadata" already defined'),
    "bad-second-doc": ("apiVersion: v1\nkind: Namespace\nmetadata: {name: good}\n---\n"
                       "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 70000}]}\n",
                       "document 2 (Service default/x): spec.ports[0].port"),
    "missing-namespace": ("apiVersion: v1\nkind: Namespace\nmetadata: {name: good}\n---\n"
                          "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: ghost}\n"
                          "spec: {ports: [{port: 80}]}\n", 'namespaces "ghost" not found'),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_apply_changes_nothing(bookinfo: Meshway, case: str, tmp_path: Path) -> None:
    text, expected = BAD_INPUTS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    before = bookinfo.dump()
    r = bookinfo("apply", "-f", str(path), ok=False)
    assert r.exit_code == 1
    assert expected in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr + r.stdout
    assert str(path) in r.stderr or case == "missing-namespace"
    assert bookinfo.dump() == before


BAD_COMMANDS = {
    "waypoint-none": (["waypoint", "apply", "--name", "none"],
                      "error: invalid name provided for waypoint, 'none' is a reserved value"),
    "generate-none": (["waypoint", "generate", "--name", "none"],
                      "error: invalid name provided for waypoint, 'none' is a reserved value"),
    "bad-for": (["waypoint", "apply", "--for", "everything"],
                "error: invalid traffic type: everything. Valid options are: [all none service workload]"),
    "label-missing": (["label", "svc", "ghost", "a=b"], 'Error from server (NotFound): services "ghost" not found'),
    "label-bad-value": (["label", "svc", "reviews", "a=b c"], "invalid label value 'b c'"),
    "label-overwrite": (["label", "ns", "default", "istio.io/dataplane-mode=none"],
                        "error: 'istio.io/dataplane-mode' already has a value (ambient), and --overwrite is false"),
    "unknown-kind": (["get", "widgets"], 'error: the server doesn\'t have a resource type "widgets"'),
    "delete-missing": (["delete", "svc", "ghost"], 'Error from server (NotFound): services "ghost" not found'),
    "delete-default-ns": (["delete", "ns", "default"], "this namespace may not be deleted"),
    "explain-missing": (["explain", "service/ghost"], 'services "ghost" not found'),
    "explain-bad-target": (["explain", "deployment/x"], "invalid target"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_commands_change_nothing(bookinfo: Meshway, case: str) -> None:
    args, expected = BAD_COMMANDS[case]
    before = bookinfo.dump()
    r = bookinfo(*args, ok=False)
    assert r.exit_code != 0 and expected in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr + r.stdout
    assert bookinfo.dump() == before


def test_real_process_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MESHWAY_STATE_DIR": str(tmp_path / "s")}
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n")
    r = subprocess.run([sys.executable, "-m", "meshway", "apply", "-f", str(bad)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"error: {bad}: document 1 (Pod default/p): spec.containers")
    assert r.stderr.count("\n") == 1


def test_up_walkthrough_runs_and_down_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "MESHWAY_STATE_DIR": str(tmp_path / "s")}
    try:
        r = subprocess.run([sys.executable, "-m", "meshway", "up"], env=env, capture_output=True, text=True,
                           timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "✅ waypoint default/waypoint applied" in r.stdout
        assert "Reason:       WaypointIsNotReady" in r.stdout  # before the control plane runs
        assert "Reason:       WaypointAccepted" in r.stdout  # once the waypoint Envoy ACKed its config
        assert "waypoint     True       Programmed" in r.stdout
        assert "12500" in r.stdout and "0.8%" in r.stdout
    finally:
        down = subprocess.run([sys.executable, "-m", "meshway", "down"], env=env, capture_output=True, text=True,
                              timeout=60)
    assert down.returncode == 0 and "stopped controlplane" in down.stdout and "stopped proxy waypoint-" in down.stdout
    pids = [p for p in (tmp_path / "s" / "run" / "proxies").glob("*/envoy.pid")]
    assert not pids
