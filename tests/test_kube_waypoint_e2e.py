"""Waypoint pods on Kubernetes (issue 12 item 3), against the real kube-apiserver, etcd,
kube-controller-manager and kube-scheduler built here, the real kubectl and istioctl, meshway's
control plane (`--xds-addr`: xDS and Istio's CA API on one TLS port) and one node agent running as
`system:node:node-1` (the Node authorizer and NodeRestriction apply to its TokenRequests).

`istioctl waypoint apply --enroll-namespace --wait` returns `is ready!`: the controller-manager made
the Deployment's pod, the scheduler bound it to node-1, the agent got the pod's token (TokenRequest,
audience istio-ca, bound to the pod), a certificate for it from the control plane's CA
(CreateCertificate, checked with a TokenReview), and ran Envoy in the pod's namespace with the
bootstrap; Envoy ACKed its config, its 15021 readiness answered, the pod went Ready and the Gateway
Programmed. `kubectl scale --replicas 2` gives two Ready replicas, each ACKed (the control plane's
proxy-status.json). A token of another service account gets no certificate for the waypoint's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cluster_support import require_cluster
from kube_support import kubectl, require_binaries, run, wait_for
from meshway.ca.certs import build_key, spiffe_id
from meshway.ca.csr import build_csr
from meshway.kube.harness import Harness
from meshway.node.identity import fetch_certificate
from meshway.xds.proxy import build_node_id

NAMESPACE = "default"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    bin_dir = require_binaries("istioctl")
    require_cluster()
    tmp = tmp_path_factory.mktemp("waypoint-pods")
    h = Harness.create(bin_dir)
    h.start()
    procs: list[subprocess.Popen] = []
    try:
        out = subprocess.run([sys.executable, "-m", "meshway", "install", "--kubeconfig", str(h.kubeconfig)],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        state = tmp / "controlplane"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "meshway", "controlplane", "--kubeconfig", str(h.kubeconfig), "--xds-addr",
             "127.0.0.1:0", "-v"], stdout=open(tmp / "controlplane.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "MESHWAY_STATE_DIR": str(state)}))
        address = wait_for("the control plane's xDS address", lambda: (state / "run" / "xds-address").exists()
                           and (state / "run" / "xds-address").read_text().strip(), 60)
        creds = h.issue_node_credentials("node-1", "127.0.0.1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "meshway", "node", "--kubeconfig", str(creds.kubeconfig), "--name", "node-1",
             "--port", "0", "--root-dir", str(tmp / "node-1"), "--tls-cert-file", str(creds.serving_cert),
             "--tls-private-key-file", str(creds.serving_key), "--client-ca-file", str(creds.client_ca),
             "--xds-address", address, "--xds-root-cert", str(state / "ca" / "root-cert.pem"), "-v"],
            stdout=open(tmp / "node-1.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True))
        wait_for("node-1 Ready", lambda: " Ready " in kubectl(bin_dir, h.kubeconfig, "get", "nodes", "--no-headers")
                 + " ", 60)
        yield h, bin_dir, state, address, tmp
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        h.stop()


def waypoint_pods(bin_dir: Path, kc: Path) -> list[dict]:
    return [p for p in json.loads(kubectl(bin_dir, kc, "get", "pods", "-n", NAMESPACE, "-l",
                                          "gateway.networking.k8s.io/gateway-name=waypoint", "-o", "json"))["items"]
            if not p["metadata"].get("deletionTimestamp")]


def detect_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


def acked(state: Path, pods: list[dict]) -> bool:
    path = state / "run" / "proxy-status.json"
    status = json.loads(path.read_text()) if path.exists() else {}
    for pod in pods:
        entry = status.get(build_node_id("waypoint", pod["status"]["podIP"], pod["metadata"]["name"], NAMESPACE))
        if not entry or not entry["connected"] or any(
                (entry["xds"].get(t) or {}).get("state") != "SYNCED" for t in ("Cluster", "Listener", "Secret")):
            return False
    return True


def logs(tmp: Path) -> str:
    files = [tmp / "controlplane.log", tmp / "node-1.log", *sorted((tmp / "node-1" / "run" / "pods").glob("*/*.log"))]
    return "\n".join(f"--- {path}\n" + path.read_text(errors="replace")[-3000:] for path in files if path.exists())


def test_istioctl_waypoint_apply_wait_is_ready_and_scales_to_two_serving_replicas(cluster):
    h, bin_dir, state, _, tmp = cluster
    kc = h.kubeconfig
    kubectl(bin_dir, kc, "label", "namespace", NAMESPACE, "istio.io/dataplane-mode=ambient")
    out = run(bin_dir, "istioctl", kc, "waypoint", "apply", "-n", NAMESPACE, "--enroll-namespace", "--wait",
              check=False, timeout=150)
    assert out.returncode == 0, out.stdout + out.stderr + logs(tmp)
    assert out.stdout.splitlines() == ["✅ waypoint default/waypoint applied",
                                       "✅ waypoint default/waypoint is ready!",
                                       '✅ namespace default labeled with "istio.io/use-waypoint: waypoint"'], out.stdout

    (pod,) = waypoint_pods(bin_dir, kc)
    assert detect_ready(pod) and pod["spec"]["nodeName"] == "node-1"
    (container,) = pod["status"]["containerStatuses"]
    assert (container["name"], container["ready"], container["restartCount"]) == ("istio-proxy", True, 0)
    gtw = kubectl(bin_dir, kc, "get", "gtw", "waypoint", "-n", NAMESPACE).splitlines()
    assert gtw[0].split() == ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
    assert gtw[1].split()[:2] == ["waypoint", "istio-waypoint"] and gtw[1].split()[3] == "True", gtw
    wait_for("the waypoint replica ACKed", lambda: acked(state, [pod]), 30)

    kubectl(bin_dir, kc, "scale", "deploy/waypoint", "-n", NAMESPACE, "--replicas", "2")
    two = wait_for("two Ready waypoint pods", lambda: (lambda ps: ps if len(ps) == 2 and all(map(detect_ready, ps))
                                                       else None)(waypoint_pods(bin_dir, kc)), 120)
    assert len({p["status"]["podIP"] for p in two}) == 2
    wait_for("both replicas ACKed", lambda: acked(state, two), 30)
    assert "Programmed" in run(bin_dir, "istioctl", kc, "waypoint", "status", "-n", NAMESPACE).stdout


def test_a_token_of_another_service_account_gets_no_certificate_for_the_waypoints(cluster):
    h, bin_dir, state, address, _ = cluster
    kc = h.kubeconfig
    root = (state / "ca" / "root-cert.pem").read_text()
    waypoint = spiffe_id(NAMESPACE, "waypoint")
    csr = build_csr(build_key(), waypoint)
    other = kubectl(bin_dir, kc, "create", "token", "default", "-n", NAMESPACE, "--audience", "istio-ca").strip()
    with pytest.raises(grpc.RpcError) as refused:
        fetch_certificate(address, root, other, csr)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may only be certified as spiffe://cluster.local/ns/default/sa/default" in refused.value.details()
    wrong_audience = kubectl(bin_dir, kc, "create", "token", "waypoint", "-n", NAMESPACE).strip()  # the API's audience
    with pytest.raises(grpc.RpcError) as refused:
        fetch_certificate(address, root, wrong_audience, csr)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    own = kubectl(bin_dir, kc, "create", "token", "waypoint", "-n", NAMESPACE, "--audience", "istio-ca").strip()
    chain = fetch_certificate(address, root, own, csr)
    assert len(chain) == 2 and chain[-1] == root
