"""A node whose agent is gone, by Kubernetes' own rules (the real kube-controller-manager built here,
with the grace period and the eviction toleration shortened for the test: 25 s (the agents renew
their Lease every 10 s) and 5 s instead of 50 s and 300 s): its Lease stops being renewed, the node lifecycle controller marks it NotReady
(Ready=Unknown, tainted unreachable), the pods there are evicted after their toleration and their
ReplicaSet's replacements run on the other node. Two node agents share one network, as under
`meshway up --kubernetes`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_support import require_cluster
from kube_support import kubectl, require_binaries, wait_for
from meshway.kube.harness import Harness
from meshway.runtime.netns import down as network_down

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ratings-v1
spec:
  replicas: 2
  selector:
    matchLabels: {app: ratings}
  template:
    metadata:
      labels: {app: ratings}
    spec:
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Honor,
         labelSelector: {matchLabels: {app: ratings}}}
      containers:
      - name: ratings
        image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.1
        ports:
        - containerPort: 9080
"""


@pytest.fixture()
def cluster(tmp_path):
    bin_dir = require_binaries()
    require_cluster()
    h = Harness.create(bin_dir, node_monitor_grace_seconds=25, eviction_toleration_seconds=5)
    h.start()
    network = tmp_path / "network"
    agents: dict[str, subprocess.Popen] = {}

    def start(name: str) -> subprocess.Popen:
        agents[name] = subprocess.Popen(
            [sys.executable, "-m", "meshway", "node", "--kubeconfig", str(h.kubeconfig), "--name", name,
             "--port", "0", "--network-dir", str(network), "--nodes", "2", "-v"],
            stdout=open(tmp_path / f"{name}.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MESHWAY_STATE_DIR": str(tmp_path / name)})
        return agents[name]
    try:
        for name in ("node-1", "node-2"):
            start(name)
        yield h, bin_dir, agents
    finally:
        for agent in agents.values():
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGTERM)
                agent.wait(60)
        network_down(network)  # what the killed agent left running, and the network itself
        h.stop()


def ratings(bin_dir: Path, kc: Path) -> list[dict]:
    return json.loads(kubectl(bin_dir, kc, "get", "pods", "-l", "app=ratings", "-o", "json"))["items"]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def node_ready(bin_dir: Path, kc: Path, node: str) -> str:
    return kubectl(bin_dir, kc, "get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")


def test_a_node_gone_past_its_grace_period_is_notready_and_its_pods_are_rescheduled(cluster, tmp_path):
    h, bin_dir, agents = cluster
    kc = h.kubeconfig
    wait_for("both nodes Ready", lambda: all(node_ready(bin_dir, kc, n) == "True" for n in ("node-1", "node-2"))
             if len(kubectl(bin_dir, kc, "get", "nodes", "-o", "name").split()) == 2 else False, 60)
    (tmp_path / "ratings.yaml").write_text(DEPLOYMENT)
    kubectl(bin_dir, kc, "apply", "-f", str(tmp_path / "ratings.yaml"))
    running = wait_for("a ratings pod Ready on each node", lambda: (p := [x for x in ratings(bin_dir, kc) if ready(x)])
                       and sorted(x["spec"]["nodeName"] for x in p) == ["node-1", "node-2"] and p, 90)
    lost = next(p["metadata"]["name"] for p in running if p["spec"]["nodeName"] == "node-1")

    os.kill(agents["node-1"].pid, signal.SIGKILL)  # the node's agent is gone; its pods keep running
    agents["node-1"].wait()
    wait_for("node-1 NotReady (Ready=Unknown)", lambda: node_ready(bin_dir, kc, "node-1") == "Unknown", 60)
    assert "NotReady" in kubectl(bin_dir, kc, "get", "node", "node-1")

    def taints() -> list[dict]:
        node = json.loads(kubectl(bin_dir, kc, "get", "node", "node-1", "-o", "json"))
        return [{k: t[k] for k in ("key", "effect")} for t in node["spec"].get("taints") or []]
    wait_for("node-1 tainted unreachable:NoExecute", lambda: {"key": "node.kubernetes.io/unreachable",
                                                              "effect": "NoExecute"} in taints(), 30)

    def rescheduled():
        pods = ratings(bin_dir, kc)
        evicted = [p for p in pods if p["metadata"]["name"] == lost and p["metadata"].get("deletionTimestamp")]
        fresh = [p for p in pods if p["metadata"]["name"] != lost and ready(p) and p["spec"]["nodeName"] == "node-2"]
        return (evicted or lost not in {p["metadata"]["name"] for p in pods}) and len(fresh) == 2 and fresh
    wait_for("the evicted pod's replacement Ready on node-2", rescheduled, 90)
