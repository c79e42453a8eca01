"""The CLI against the real kube-apiserver built here (`meshway --kubeconfig FILE ...`), checked with
the real kubectl and against the same commands on the embedded store (tests/kube_support.py: fails
under MESHWAY_REQUIRE_E2E=1 without the binaries, skips otherwise). The Gateway API and Istio CRDs
come from `meshway install`.

- apply: Istio's bookinfo is created (kubectl sees it) with the embedded store's lines, again
  `unchanged`; bad input gets the embedded store's one-line error and creates nothing, also when
  the API server (not the local validation) refuses a later document;
- get: the same table as kubectl's and, for the same objects, as the embedded store's;
- label, waypoint apply|list|status|delete, explain (the embedded store's decision for the same
  objects; the status the control plane writes appears once `meshway controlplane --kubeconfig`
  runs), delete (the API server's garbage collector removes the waypoint's objects), analyze;
- the backend rule: `$KUBECONFIG` selects the API unless MESHWAY_STATE_DIR is set."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshway.kube.harness import Harness
from kube_support import require_binaries, run, wait_for

ROOT = Path(__file__).resolve().parent.parent
BOOKINFO = ROOT / "meshway" / "demo" / "bookinfo.yaml"
TRAFFIC = ROOT / "meshway" / "demo" / "reviews-traffic.yaml"
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("MESHWAY_STATE_DIR", "KUBECONFIG", "MESHWAY_DEBUG")}
BAD = """\
apiVersion: v1
kind: Service
metadata:
  name: fine
spec:
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: broken
spec:
  ports:
  - port: 70000
"""
# Valid for meshway's models, refused by the API server: a Service's clusterIP cannot change.
REFUSED_LATER = """\
apiVersion: v1
kind: Service
metadata:
  name: fresh
spec:
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: productpage
spec:
  clusterIP: 10.96.250.250
  ports:
  - port: 9080
    name: http
  selector:
    app: productpage
"""


class Cluster:
    def __init__(self, harness: Harness, bin_dir: Path, embedded_state: Path):
        self.h, self.bin_dir, self.embedded_state = harness, bin_dir, embedded_state

    def mw(self, *args: str, ok: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        """`meshway --kubeconfig FILE ARGS` as a user runs it."""
        return self._run(["--kubeconfig", str(self.h.kubeconfig), *args], ok, env)

    def embedded(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        """The same command on the embedded store."""
        return self._run(["--state-dir", str(self.embedded_state), *args], ok)

    @staticmethod
    def _run(args: list[str], ok: bool, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "meshway", *args], capture_output=True, text=True,
                              timeout=120, env=env or CLEAN_ENV)
        if ok:
            assert proc.returncode == 0, f"meshway {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(self.bin_dir, "kubectl", self.h.kubeconfig, *args, check=check)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    bin_dir = require_binaries()
    h = Harness.create(bin_dir)
    h.start()
    try:
        c = Cluster(h, bin_dir, tmp_path_factory.mktemp("embedded") / "state")
        c._run(["install", "--kubeconfig", str(h.kubeconfig)], ok=True)
        applied = c.mw("apply", "-f", str(BOOKINFO))
        c.embedded("apply", "-f", str(BOOKINFO))
        c.first_apply = applied.stdout
        yield c
    finally:
        h.stop()


def test_apply_creates_what_kubectl_sees_with_the_embedded_stores_lines(cluster):
    embedded = cluster.embedded("apply", "-f", str(BOOKINFO)).stdout  # the second time: unchanged
    assert cluster.first_apply == embedded.replace(" unchanged", " created")
    assert cluster.first_apply.splitlines()[:3] == [
        "service/details created", "serviceaccount/bookinfo-details created", "deployment.apps/details-v1 created"]
    names = cluster.kubectl("get", "svc,deploy,sa", "-o", "name").stdout.split()
    for name in ("service/details", "service/reviews", "deployment.apps/reviews-v3", "serviceaccount/bookinfo-ratings"):
        assert name in names
    again = cluster.mw("apply", "-f", str(BOOKINFO)).stdout
    assert again == embedded and set(line.rsplit(" ", 1)[1] for line in again.splitlines()) == {"unchanged"}


def _drop_last_column(table: str) -> list[list[str]]:
    return [line.split()[:-1] for line in table.splitlines()]


def test_get_prints_kubectls_table_and_the_embedded_stores(cluster):
    # AGE aside. (Not `sa`: kubectl 1.37 no longer shows SECRETS, meshway's tables still do.)
    for args in (("svc",), ("deploy",), ("ns",), ("pods", "-A"), ("gtw", "-A")):
        mine = cluster.mw("get", *args).stdout
        assert _drop_last_column(mine) == _drop_last_column(cluster.kubectl("get", *args).stdout), args
    mine = {row[0]: row for row in (line.split() for line in cluster.mw("get", "svc").stdout.splitlines())}
    ours = {row[0]: row for row in (line.split() for line in cluster.embedded("get", "svc").stdout.splitlines())}
    assert mine["NAME"] == ours["NAME"] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    for svc in ("details", "ratings", "reviews", "productpage"):  # the cluster IPs are each store's own
        assert [mine[svc][i] for i in (0, 1, 3, 4)] == [ours[svc][i] for i in (0, 1, 3, 4)]
    assert cluster.mw("get", "svc", "-l", "app=reviews", "-o", "name").stdout == \
        cluster.kubectl("get", "svc", "-l", "app=reviews", "-o", "name").stdout == "service/reviews\n"
    body = json.loads(cluster.mw("get", "svc", "reviews", "-o", "json").stdout)
    assert (body["kind"], body["apiVersion"], "managedFields" in body["metadata"]) == ("Service", "v1", False)
    missing = cluster.mw("get", "svc", "ghost", ok=False)
    assert (missing.returncode, missing.stderr) == (1, cluster.embedded("get", "svc", "ghost", ok=False).stderr)


def test_bad_input_gets_the_embedded_error_and_creates_nothing(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    mine, ours = cluster.mw("apply", "-f", str(bad), ok=False), cluster.embedded("apply", "-f", str(bad), ok=False)
    assert (mine.returncode, mine.stdout, mine.stderr) == (ours.returncode, ours.stdout, ours.stderr)
    assert mine.stderr == (f"error: {bad}: document 2 (Service default/broken): spec.ports[0].port: Input should be "
                           "less than or equal to 65535, got 70000\n")
    assert cluster.kubectl("get", "svc", "fine", check=False).returncode == 1
    # The API server refuses document 2 (a Service's clusterIP cannot change): the dry run of every
    # document comes first, so document 1 is not created either.
    refused = tmp_path / "refused.yaml"
    refused.write_text(REFUSED_LATER)
    out = cluster.mw("apply", "-f", str(refused), ok=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f'Error from server (Invalid): error when applying patch "{refused}": Service '
                                 '"productpage" is invalid: spec.clusterIPs[0]: Invalid value')
    assert len(out.stderr.splitlines()) == 1
    assert cluster.kubectl("get", "svc", "fresh", check=False).returncode == 1
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text(BAD.split("---")[0].replace("name: fine", "name: fine\n  namespace: ghost"))
    mine, ours = cluster.mw("apply", "-f", str(ghost), ok=False), cluster.embedded("apply", "-f", str(ghost), ok=False)
    assert (mine.returncode, mine.stderr) == (ours.returncode, ours.stderr) == \
        (1, f'Error from server (NotFound): error when creating "{ghost}": namespaces "ghost" not found\n')


def test_label_is_seen_by_kubectl_with_kubectls_rules(cluster):
    cluster.kubectl("create", "namespace", "labels")
    cluster.embedded("apply", "-f", str(_namespace_file(cluster, "labels")))
    for run_ in (cluster.mw, cluster.embedded):
        assert run_("label", "ns", "labels", "istio.io/dataplane-mode=ambient").stdout == "namespace/labels labeled\n"
        assert run_("label", "ns", "labels", "istio.io/dataplane-mode=ambient").stdout == \
            "namespace/labels not labeled\n"
    labels = json.loads(cluster.kubectl("get", "ns", "labels", "-o", "jsonpath={.metadata.labels}").stdout)
    assert labels["istio.io/dataplane-mode"] == "ambient"
    mine = cluster.mw("label", "ns", "labels", "istio.io/dataplane-mode=none", ok=False)
    ours = cluster.embedded("label", "ns", "labels", "istio.io/dataplane-mode=none", ok=False)
    assert (mine.returncode, mine.stderr) == (ours.returncode, ours.stderr) == \
        (1, "error: 'istio.io/dataplane-mode' already has a value (ambient), and --overwrite is false\n")
    assert cluster.mw("label", "ns", "labels", "istio.io/dataplane-mode-").stdout == "namespace/labels labeled\n"
    assert "istio.io/dataplane-mode" not in cluster.kubectl("get", "ns", "labels", "--show-labels").stdout
    assert cluster.mw("label", "svc", "ghost", "a=b", ok=False).stderr == \
        'Error from server (NotFound): services "ghost" not found\n'


def _namespace_file(cluster: Cluster, name: str) -> Path:
    path = cluster.embedded_state.parent / f"ns-{name}.yaml"
    path.write_text(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
    return path


class ControlPlane:
    """`meshway controlplane --kubeconfig FILE` as a subprocess of its own process group."""

    def __init__(self, kubeconfig: Path, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "meshway", "controlplane", "--kubeconfig", str(kubeconfig),
                                      "-v"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=CLEAN_ENV)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # a clean stop releases the Lease
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


def _decision(result: subprocess.CompletedProcess) -> dict:
    d = json.loads(result.stdout)
    d["destination"].pop("address", None)  # each store allocates its own cluster IPs
    return d


def test_waypoint_explain_and_the_control_planes_status(cluster, tmp_path):
    for run_ in (cluster.mw, cluster.embedded):
        run_("label", "ns", "default", "istio.io/dataplane-mode=ambient", "--overwrite")
        assert run_("waypoint", "apply", "-n", "default", "--enroll-namespace", "--overwrite").stdout == (
            "✅ waypoint default/waypoint applied\n"
            '✅ namespace default labeled with "istio.io/use-waypoint: waypoint"\n')
        run_("apply", "-f", str(TRAFFIC))
    assert cluster.kubectl("get", "gtw", "waypoint", "-o", "name").stdout == \
        "gateway.gateway.networking.k8s.io/waypoint\n"
    assert cluster.kubectl("get", "ns", "default", "-o", "jsonpath={.metadata.labels.istio\\.io/use-waypoint}").stdout \
        == "waypoint"
    assert cluster.mw("waypoint", "list").stdout.splitlines()[0].split() == \
        ["NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED"]
    # No control plane yet: the same decision as the embedded store's for the same objects.
    mine = _decision(cluster.mw("explain", "service/reviews", "-o", "json"))
    ours = _decision(cluster.embedded("explain", "service/reviews", "-o", "json"))
    assert mine == ours
    assert (mine["waypoint"], mine["reason"], mine["control_plane"]) == \
        ("default/waypoint", "WaypointIsNotReady", "not running")
    text = cluster.mw("explain", "service/reviews").stdout
    assert text.splitlines()[2:4] == ["Waypoint:     default/waypoint (not ready)", "Reason:       WaypointIsNotReady"]
    waiting = cluster.mw("waypoint", "status", ok=False)
    assert waiting.returncode == 1 and "`meshway controlplane --kubeconfig FILE` starts it" in waiting.stderr

    cp = ControlPlane(cluster.h.kubeconfig, tmp_path / "controlplane.log")
    try:
        def bound():
            body = json.loads(cluster.mw("get", "svc", "reviews", "-o", "json").stdout)
            return next((c for c in body.get("status", {}).get("conditions", [])
                         if c["type"] == "istio.io/WaypointBound"), None)
        cond = wait_for("the control plane's WaypointBound on service/reviews", bound, timeout=60)
        assert (cond["status"], cond["reason"]) == ("False", "WaypointIsNotReady")
        wait_for("the waypoint Deployment", lambda: cluster.kubectl(
            "get", "deploy", "waypoint", check=False).returncode == 0, timeout=60)
        live = _decision(cluster.mw("explain", "service/reviews", "-o", "json"))
        assert live["control_plane"] == "running" and live["reason"] == "WaypointIsNotReady"
        status = wait_for("the Gateway's Programmed status from the control plane", lambda: (lambda out: out if (
            "AddressNotAssigned" in out) else None)(cluster.mw("waypoint", "status", "--no-wait").stdout), timeout=60)
        assert status.splitlines()[1].split()[:4] == ["waypoint", "False", "Programmed", "AddressNotAssigned"]
    finally:
        cp.stop()
    # Not running once its Lease is released or has expired (15 s).
    wait_for("explain to see the control plane stopped", lambda: _decision(
        cluster.mw("explain", "service/reviews", "-o", "json"))["control_plane"] == "not running", timeout=40)

    # Deleting the waypoint: the API server's garbage collector removes what the control plane made.
    assert cluster.mw("waypoint", "delete", "waypoint").stdout == "waypoint default/waypoint deleted\n"
    assert cluster.mw("waypoint", "list").stdout == "No waypoints found.\n"
    wait_for("the garbage collector to remove the waypoint Deployment", lambda: cluster.kubectl(
        "get", "deploy", "waypoint", check=False).returncode == 1, timeout=60)


def test_delete_and_analyze(cluster):
    assert cluster.mw("delete", "svc", "details").stdout == 'service "details" deleted\n'
    assert "NotFound" in cluster.kubectl("get", "svc", "details", check=False).stderr
    mine, ours = cluster.mw("delete", "svc", "ghost", ok=False), cluster.embedded("delete", "svc", "ghost", ok=False)
    assert (mine.returncode, mine.stderr) == (ours.returncode, ours.stderr) == \
        (1, 'Error from server (NotFound): services "ghost" not found\n')
    assert cluster.mw("delete", "svc", "ghost", "--ignore-not-found").stdout == ""
    cluster.kubectl("create", "namespace", "doomed")
    assert cluster.mw("delete", "ns", "doomed").stdout == 'namespace "doomed" deleted\n'  # waited for: gone
    assert cluster.kubectl("get", "ns", "doomed", check=False).returncode == 1
    table = cluster.mw("analyze", "config-distribution").stdout
    assert "Bytes: waypoints / sidecars" in table


def test_kubeconfig_from_the_environment_unless_a_state_dir_is_named(cluster):
    env = {**CLEAN_ENV, "KUBECONFIG": str(cluster.h.kubeconfig)}
    assert "kube-node-lease" in Cluster._run(["get", "ns"], True, env).stdout  # only a real cluster has it
    env_state = {**env, "MESHWAY_STATE_DIR": str(cluster.embedded_state)}
    assert "kube-node-lease" not in Cluster._run(["get", "ns"], True, env_state).stdout
    refused = Cluster._run(["--kubeconfig", str(cluster.h.kubeconfig), "status"], False)
    assert (refused.returncode, refused.stderr) == (
        1, "error: `meshway status` works on the local mesh (the embedded store), not on a Kubernetes API: drop "
           "--kubeconfig\n")
