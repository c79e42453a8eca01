"""`meshway node` against the real kube-apiserver, etcd, kube-controller-manager and kube-scheduler
built here, driven with the real kubectl (tests/kube_support.py: fails under MESHWAY_REQUIRE_E2E=1
without the binaries; tests/cluster_support.require_cluster: needs root and network namespaces).

The agent runs as `system:node:node-1` (a client certificate from the harness CA: the Node
authorizer and NodeRestriction apply) and serves its kubelet API with a serving certificate of the
same CA, which the API server checks. Its Node gets Ready, the real scheduler binds a Deployment's
pods to it, they run in network namespaces with addresses of 10.244.1.0/24 and get Ready,
`kubectl logs` reaches the app's log through the API server, `kubectl delete pod` is finished by
the agent (the ReplicaSet's replacement comes up), `kubectl scale` gives two pods, a restarted agent runs them again
at the same addresses, and a stopped agent leaves no namespace and no process behind."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_support import require_cluster
from kube_support import kubectl, require_binaries, run, wait_for
from meshway.kube.harness import Harness
from meshway.runtime.netns import cluster_id

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ratings-v1
  labels: {app: ratings, version: v1}
spec:
  replicas: 1
  selector:
    matchLabels: {app: ratings, version: v1}
  template:
    metadata:
      labels: {app: ratings, version: v1}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: ratings
        image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.1
        ports:
        - containerPort: 9080
"""
ECHO = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 1
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      terminationGracePeriodSeconds: 5
      nodeSelector: {kubernetes.io/hostname: node-2}
      containers:
      - name: echo
        image: hashicorp/http-echo
        ports:
        - containerPort: 5678
"""


@pytest.fixture(scope="module")
def cluster():
    bin_dir = require_binaries()
    require_cluster()
    h = Harness.create(bin_dir)
    h.start()
    try:
        yield h, bin_dir
    finally:
        h.stop()


def pods(bin_dir: Path, kc: Path) -> list[dict]:
    return json.loads(kubectl(bin_dir, kc, "get", "pods", "-n", "default", "-l", "app=ratings", "-o", "json"))["items"]


def detect_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


def ready_pods(bin_dir: Path, kc: Path, count: int) -> list[dict] | None:
    items = [p for p in pods(bin_dir, kc) if not p["metadata"].get("deletionTimestamp")]
    return items if len(items) == count and all(detect_ready(p) for p in items) else None


def netns_pids(name: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_node_runs_deployment_pods(cluster, tmp_path):
    h, bin_dir = cluster
    kc = h.kubeconfig
    creds = h.issue_node_credentials("node-1", "127.0.0.1")
    root = tmp_path / "node-1"
    log = tmp_path / "node-1.log"

    def start_agent() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "meshway", "node", "--kubeconfig", str(creds.kubeconfig), "--name", "node-1",
             "--node-ip", "127.0.0.1", "--port", "0", "--root-dir", str(root), "--tls-cert-file",
             str(creds.serving_cert), "--tls-private-key-file", str(creds.serving_key), "--client-ca-file",
             str(creds.client_ca), "-v"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    agent = start_agent()
    prefix = f"mw{cluster_id(root)}-"
    try:
        # the Node: Ready, its CIDR, its kubelet endpoint; its Lease, owned by it
        wait_for("node-1 Ready", lambda: " Ready " in kubectl(bin_dir, kc, "get", "nodes", "--no-headers") + " ",
                 timeout=60)
        node = json.loads(kubectl(bin_dir, kc, "get", "node", "node-1", "-o", "json"))
        assert node["spec"]["podCIDR"] == "10.244.1.0/24"
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
        assert {a["type"]: a["address"] for a in node["status"]["addresses"]} == \
            {"InternalIP": "127.0.0.1", "Hostname": "node-1"}
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
        lease = json.loads(kubectl(bin_dir, kc, "get", "lease", "-n", "kube-node-lease", "node-1", "-o", "json"))
        assert lease["spec"]["holderIdentity"] == "node-1"
        assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]

        # a Deployment: bound by the real scheduler, run here, Running/Ready with an address of the CIDR
        (tmp_path / "ratings.yaml").write_text(DEPLOYMENT)
        kubectl(bin_dir, kc, "apply", "-f", str(tmp_path / "ratings.yaml"))
        (first,) = wait_for("the ratings pod Ready", lambda: ready_pods(bin_dir, kc, 1), timeout=90)
        status = first["status"]
        assert first["spec"]["nodeName"] == "node-1"
        assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network("10.244.1.0/24")
        assert status["podIPs"] == [{"ip": status["podIP"]}] and status["hostIP"] == "127.0.0.1"
        assert {c["type"] for c in status["conditions"]} >= {"PodScheduled", "Initialized", "ContainersReady", "Ready"}
        (c,) = status["containerStatuses"]
        assert (c["name"], c["ready"], c["started"], c["restartCount"]) == ("ratings", True, True, 0)
        assert "startedAt" in c["state"]["running"]
        netns = f"{prefix}default-{first['metadata']['name']}"
        assert netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        addr = subprocess.run(["ip", "-n", netns, "-o", "addr", "show", "eth0"], capture_output=True, text=True).stdout
        assert f"{status['podIP']}/32" in addr

        # kubectl logs, through the API server and the kubelet API (client certificate, SubjectAccessReview)
        out = wait_for("kubectl logs", lambda: kubectl(bin_dir, kc, "logs", "deploy/ratings-v1"))
        assert "ratings v1 listening on 0.0.0.0:9080" in out
        assert kubectl(bin_dir, kc, "logs", first["metadata"]["name"], "--tail=1").count("\n") == 1
        missing = run(bin_dir, "kubectl", kc, "logs", first["metadata"]["name"], "-c", "nope", check=False)
        assert missing.returncode != 0

        # kubectl delete pod: stopped, removed from the API by the agent, replaced through the ReplicaSet
        first_pids = netns_pids(netns)
        assert first_pids
        kubectl(bin_dir, kc, "delete", "pod", first["metadata"]["name"], "--timeout=60s")
        (second,) = wait_for("the replacement Ready", lambda: ready_pods(bin_dir, kc, 1), timeout=90)
        assert second["metadata"]["name"] != first["metadata"]["name"]
        assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [p for p in first_pids if Path(f"/proc/{p}").exists()]

        # kubectl scale: two pods, two addresses of the CIDR
        kubectl(bin_dir, kc, "scale", "deploy/ratings-v1", "--replicas", "2")
        both = wait_for("two ratings pods Ready", lambda: ready_pods(bin_dir, kc, 2), timeout=90)
        ips = {p["status"]["podIP"] for p in both}
        assert len(ips) == 2 and all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.244.1.0/24") for ip in ips)
        renewed = json.loads(kubectl(bin_dir, kc, "get", "lease", "-n", "kube-node-lease", "node-1", "-o", "json"))
        assert renewed["spec"]["renewTime"] >= lease["spec"]["renewTime"]

        # a restarted agent (same root dir) takes the Node and the pods back, at the same addresses
        os.killpg(agent.pid, signal.SIGTERM)
        assert agent.wait(60) == 0
        agent = start_agent()

        def restarted_once() -> list[dict] | None:
            got = ready_pods(bin_dir, kc, 2)
            return got if got and all(p["status"]["containerStatuses"][0]["restartCount"] == 1 for p in got) else None
        again = wait_for("the pods running again", restarted_once, timeout=90)
        assert {p["metadata"]["name"]: p["status"]["podIP"] for p in again} == \
            {p["metadata"]["name"]: p["status"]["podIP"] for p in both}
        pids = set().union(*(netns_pids(f"{prefix}default-{p['metadata']['name']}") for p in both))
        assert len(pids) >= 2
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
            pytest.fail(f"the node agent did not stop within 60 s:\n{log.read_text()[-3000:]}")
    # a stopped agent leaves nothing of its node on the machine
    assert agent.returncode == 0, log.read_text()[-3000:]
    assert prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not list(Path("/etc/netns").glob(f"{prefix}*")) if Path("/etc/netns").exists() else True
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], "pod processes left"


def test_node_gets_its_serving_certificate_from_the_cluster(cluster, tmp_path):
    """As `meshway up --kubernetes` runs it: an admin kubeconfig and no --tls-cert-file. The agent
    requests its serving certificate from the kubernetes.io/kubelet-serving signer, approves it
    (the admin may), and kube-controller-manager signs it with the cluster CA, which the API server
    checks when `kubectl logs` reaches the node."""
    h, bin_dir = cluster
    kc = h.kubeconfig
    root = tmp_path / "node-2"
    log = tmp_path / "node-2.log"
    agent = subprocess.Popen([sys.executable, "-m", "meshway", "node", "--kubeconfig", str(kc), "--name", "node-2",
                              "--port", "0", "-v"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                             start_new_session=True, env={**os.environ, "MESHWAY_STATE_DIR": str(root)})
    try:
        wait_for("node-2 Ready", lambda: "True" == kubectl(
            bin_dir, kc, "get", "node", "node-2", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
            if "node-2" in kubectl(bin_dir, kc, "get", "nodes", "-o", "name") else "", timeout=60)
        csrs = kubectl(bin_dir, kc, "get", "csr", "--no-headers")
        assert "kubernetes.io/kubelet-serving" in csrs and "Approved,Issued" in csrs
        (tmp_path / "echo.yaml").write_text(ECHO)
        kubectl(bin_dir, kc, "apply", "-f", str(tmp_path / "echo.yaml"))

        def echo_ready():
            items = json.loads(kubectl(bin_dir, kc, "get", "pods", "-l", "app=echo", "-o", "json"))["items"]
            return items if len(items) == 1 and detect_ready(items[0]) else None
        (pod,) = wait_for("the echo pod Ready on node-2", echo_ready, timeout=90)
        assert pod["spec"]["nodeName"] == "node-2"
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network("10.244.2.0/24")
        out = wait_for("kubectl logs on node-2", lambda: kubectl(bin_dir, kc, "logs", "deploy/echo"))
        assert "listening" in out
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(60)
    assert agent.returncode == 0, log.read_text()[-3000:]
    assert f"mw{cluster_id(root)}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                          text=True).stdout
