"""RequestAuthentication on Kubernetes (the real kube-apiserver, Istio's CRD, kubectl): the control
plane watches it and writes meshway's `WaypointAccepted` through the status subresource, as on the
embedded store (`Accepted` for targetRefs to the waypoint, `Ignored` for a selector policy)."""
from __future__ import annotations

import signal

from kube_support import kubectl, wait_for
from test_kube_controlplane_e2e import WAYPOINT, ControlPlaneProcess, cluster, get_json  # noqa: F401

POLICIES = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: waypoint-jwt, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules: [{issuer: "https://accounts.example.com", jwksUri: "https://accounts.example.com/jwks.json"}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: sidecar-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: "https://accounts.example.com", jwksUri: "https://accounts.example.com/jwks.json"}]
"""


def test_request_authentication_status_on_kubernetes(cluster, tmp_path):  # noqa: F811
    h, bin_dir = cluster
    cp = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp.log")
    try:
        (tmp_path / "waypoint.yaml").write_text(WAYPOINT)
        (tmp_path / "ra.yaml").write_text(POLICIES)
        kubectl(bin_dir, h.kubeconfig, "apply", "-f", str(tmp_path / "waypoint.yaml"))
        kubectl(bin_dir, h.kubeconfig, "apply", "-f", str(tmp_path / "ra.yaml"))
        rows = kubectl(bin_dir, h.kubeconfig, "get", "ra", "-n", "default").splitlines()
        assert rows[0].split() == ["NAME", "AGE"] and {r.split()[0] for r in rows[1:]} == {"waypoint-jwt", "sidecar-jwt"}

        def accepted(name: str):
            conds = (get_json(h, bin_dir, "ra", name, "-n", "default").get("status") or {}).get("conditions")
            return {c["type"]: (c["status"], c["reason"]) for c in conds or ()} or None

        assert wait_for("WaypointAccepted on waypoint-jwt", lambda: accepted("waypoint-jwt"), 30) == \
            {"WaypointAccepted": ("True", "Accepted")}, cp.tail()
        assert wait_for("WaypointAccepted on sidecar-jwt", lambda: accepted("sidecar-jwt"), 30) == \
            {"WaypointAccepted": ("False", "Ignored")}, cp.tail()
        assert cp.proc.poll() is None, cp.tail()
    finally:
        cp.kill(signal.SIGTERM)
        kubectl(bin_dir, h.kubeconfig, "delete", "-f", str(tmp_path / "ra.yaml"), "--ignore-not-found")
        kubectl(bin_dir, h.kubeconfig, "delete", "-f", str(tmp_path / "waypoint.yaml"), "--ignore-not-found")
