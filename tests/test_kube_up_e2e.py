"""`meshway up --kubernetes` / `meshway down`: a Kubernetes cluster on this machine (the real etcd,
kube-apiserver, kube-controller-manager and kube-scheduler built here, meshway's control plane, node
agents when the build has them), the CRDs installed and the demo applied through the API; `down`
stops every process and leaves none; a second `up` reuses the state (etcd data, PKI, ports)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from kube_support import kubectl, require_binaries, wait_for


def meshway(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshway", "--state-dir", str(state), *args], capture_output=True,
                          text=True, timeout=timeout, env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})


def processes_of(state: Path) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state) in cmd:
            out.append(cmd)
    return out


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_up_kubernetes_runs_the_demo_through_the_api_and_down_leaves_nothing(tmp_path):
    bin_dir = require_binaries()
    state = tmp_path / "state"
    try:
        up = meshway(state, "up", "--kubernetes")
        assert up.returncode == 0, up.stdout + up.stderr
        kubeconfig = state / "kubernetes" / "admin.kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in up.stdout
        assert "✅ waypoint default/waypoint applied" in up.stdout
        assert kubectl(bin_dir, kubeconfig, "get", "gtw", "waypoint", "-n", "default", "-o",
                       "jsonpath={.spec.gatewayClassName}") == "istio-waypoint"
        wait_for("the waypoint Deployment from the control plane", lambda: kubectl(
            bin_dir, kubeconfig, "get", "deploy", "-n", "default", "-o", "name").count("deployment.apps/waypoint"), 60)
        assert "reviews" in kubectl(bin_dir, kubeconfig, "get", "vs", "-n", "default", "-o", "name")

        again = meshway(state, "up", "--kubernetes")
        assert again.returncode == 0 and "is running" in again.stdout and "started etcd" not in again.stdout

        port = int(__import__("json").loads((state / "kubernetes" / "ports.json").read_text())["apiserver"])
        down = meshway(state, "down")
        assert down.returncode == 0, down.stderr
        for name in ("controlplane", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            assert f"stopped {name}" in down.stdout
        assert processes_of(state) == [] and port_closed(port)

        # the state stays: a new `up` comes back on the same etcd, PKI and ports
        back = meshway(state, "up", "--kubernetes", "-f", str(Path(__file__).parent.parent / "meshway" / "demo" /
                                                                 "reviews-traffic.yaml"))
        assert back.returncode == 0, back.stdout + back.stderr
        assert "unchanged" in back.stdout  # the VirtualService and DestinationRule were kept in etcd
        assert kubectl(bin_dir, kubeconfig, "get", "gtw", "waypoint", "-n", "default", "-o", "name").strip() == \
            "gateway.gateway.networking.k8s.io/waypoint"
    finally:
        meshway(state, "down")
    assert processes_of(state) == []
