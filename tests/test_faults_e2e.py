"""The fault suite (network-namespace cluster, real Envoy, bounded load from the curl pod): what
users see while parts of the mesh fail. Each test asserts its guarantee and adds a row to the
table that the run prints at the end (tests/fault_table.py); the README's "Failure behaviour"
section quotes it. The control-plane restart and VirtualService/DestinationRule live-change rows
come from tests/test_restart_e2e.py and tests/test_destinationrule_e2e.py / test_routes_e2e.py.

Load: a client in the curl pod, a new connection per request, about 100 requests/s, bounded in
count and time; traffic stays inside the cluster's namespaces."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_support import Mesh, _mesh as cluster_mesh, via_waypoint
from fault_table import record_fault
from meshway.model import find_kind, load_yaml
from meshway.runtime.envoy import EnvoyPaths, read_pid
from meshway.runtime.envoy_admin import fetch_admin

SECRET_TTL = "2m"  # istiod's SECRET_TTL for this cluster: renewal every minute (half life)


@pytest.fixture(scope="module", name="mesh")
def short_lived_certificates_mesh(tmp_path_factory):
    """The usual test cluster, with a control plane whose workload certificates live 2 minutes."""
    os.environ["SECRET_TTL"] = SECRET_TTL  # inherited by the control plane the cluster starts
    cluster = cluster_mesh(tmp_path_factory)
    try:
        mesh = next(cluster)
    finally:
        os.environ.pop("SECRET_TTL", None)
    yield mesh
    next(cluster, None)  # down, and the check that nothing is left


def start_load(mesh: Mesh, seconds: float, method: str = "GET", headers: dict | None = None,
               path: str = "/reviews/0") -> subprocess.Popen:
    """About 100 requests/s from the curl pod to reviews for `seconds` (bounded: 100 per second)."""
    count = int(seconds * 100) + 10
    cmd = ["ip", "netns", "exec", mesh.netns(mesh.pod("curl")), sys.executable, str(mesh.client_script),
           "reviews", "9080", path, str(count), method, str(seconds), json.dumps(headers or {})]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(proc: subprocess.Popen, timeout: float = 120) -> list:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def replica_paths(mesh: Mesh) -> list[EnvoyPaths]:
    from meshway.runtime.placement import Replica, replica_sock_dir
    out = []
    for folder in sorted((mesh.state / "run" / "proxies").iterdir()):
        ns, _, pod = folder.name.partition(".")
        if ns == "default" and pod.startswith("waypoint-"):
            out.append(EnvoyPaths(folder, replica_sock_dir(mesh.state, Replica(ns, pod, "", "", ""))))
    return out


def failed_window(rows: list) -> float:
    """Seconds from the first failed request to the last one (0 when at most one failed)."""
    times = [r[3] for r in rows if r[0] != 200]
    return round(max(times) - min(times), 2) if len(times) > 1 else 0.0


def test_crash_looping_waypoint_is_never_bypassed(mesh: Mesh) -> None:
    """A waypoint replica killed again and again for 10 s, with a DENY policy for DELETE on the
    waypoint and a VirtualService that sends GETs to v1..v3 by weight: requests may fail, but none
    skips the waypoint (no response without the waypoint's server header, no DELETE answered)."""
    mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
""", "deny-delete.yaml"))
    try:
        mesh.wait_until(lambda: mesh.requests("reviews", 1, method="DELETE")[0][0] == 403, 10, "DELETE denied")
        gets, deletes = start_load(mesh, 14), start_load(mesh, 14, method="DELETE")
        time.sleep(2)
        kills, end = 0, time.monotonic() + 10
        while time.monotonic() < end:
            for paths in replica_paths(mesh):
                pid = read_pid(paths)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
            time.sleep(0.2)
        get_rows, delete_rows = results(gets), results(deletes)
    finally:
        mesh.store.delete([(find_kind("ap"), "default", "deny-delete")], ignore_not_found=True)
    bypassed = [r for r in get_rows + delete_rows if r[0] != 0 and not via_waypoint(r)]
    answered = [r for r in delete_rows if r[0] not in (0, 403, 503)]
    failed = sum(1 for r in get_rows + delete_rows if r[0] not in (200, 403))
    record_fault("waypoint replica crash-looping 10 s (DENY DELETE policy)",
                 f"{kills} kills; {len(get_rows) + len(delete_rows)} requests, {failed} failed, "
                 f"{len(bypassed)} bypassed the waypoint, {len(answered)} DELETEs answered",
                 "0 bypass (requests may fail)")
    assert not bypassed, bypassed[:5]
    assert not answered, answered[:5]
    assert kills >= 3
    mesh.wait_until(lambda: all(r[0] == 200 and via_waypoint(r) for r in mesh.requests("reviews", 5)), 40,
                    "the waypoint to serve again after the crash loop")


def test_restart_counts_are_real(mesh: Mesh) -> None:
    """RESTARTS counts each restart of a waypoint replica (the crash loop above, and one more)."""
    def restarts() -> int:
        pod = next(p for p in mesh.pods() if p["metadata"]["name"].startswith("waypoint-"))
        return pod["status"]["containerStatuses"][0]["restartCount"]

    mesh.wait_until(lambda: all(r[0] == 200 for r in mesh.requests("reviews", 3)), 40, "waypoint serving")
    before = restarts()
    (paths,) = replica_paths(mesh)
    os.kill(read_pid(paths), signal.SIGKILL)
    mesh.wait_until(lambda: restarts() == before + 1, 20, "restartCount to count the kill")
    assert before >= 3  # the crash loop of the test before was counted too


def test_waypoint_replica_kill_with_two_replicas(mesh: Mesh) -> None:
    gw = mesh.store.get(find_kind("gtw"), "default", "waypoint")
    annotations = {**(gw["metadata"].get("annotations") or {}), "meshway.io/replicas": "2"}
    mesh.store.apply(load_yaml(json.dumps({"apiVersion": gw["apiVersion"], "kind": "Gateway",
                                           "metadata": {"name": "waypoint", "namespace": "default",
                                                        "annotations": annotations},
                                           "spec": gw["spec"]}), "waypoint.yaml"))
    try:
        mesh.wait_until(lambda: len([p for p in replica_paths(mesh) if read_pid(p)]) == 2, 30, "two replicas")
        mesh.wait_ready()
        time.sleep(2)  # the node proxies learn about the second replica
        load = start_load(mesh, 8)
        time.sleep(3)
        victim = replica_paths(mesh)[0]
        os.kill(read_pid(victim), signal.SIGKILL)
        rows = results(load)
    finally:
        mesh.store.apply(load_yaml(json.dumps({"apiVersion": gw["apiVersion"], "kind": "Gateway",
                                               "metadata": {"name": "waypoint", "namespace": "default",
                                                            "annotations": gw["metadata"].get("annotations") or {}},
                                               "spec": gw["spec"]}), "waypoint.yaml"))
    failed = [r for r in rows if r[0] != 200]
    record_fault("one of 2 waypoint replicas killed", f"{len(failed)}/{len(rows)} failed over {failed_window(rows)} s",
                 "<= 1% failed for <= 2 s")
    assert len(failed) <= 0.01 * len(rows), failed[:5]
    assert failed_window(rows) <= 2.0, failed


def test_node_proxy_kill_recovers_within_2s(mesh: Mesh) -> None:
    node = mesh.pod("curl")["spec"]["nodeName"]
    paths = EnvoyPaths(mesh.state / "run" / "nodes" / node, mesh.state / "run" / "nodes" / node)
    mesh.wait_until(lambda: all(r[0] == 200 for r in mesh.requests("reviews", 3)), 40, "traffic before the kill")
    load = start_load(mesh, 6)
    time.sleep(2)
    killed_at = time.time()
    os.kill(read_pid(paths), signal.SIGKILL)
    rows = results(load)
    failed = [r for r in rows if r[0] != 200]
    last_failure = max((r[3] for r in failed), default=killed_at)
    recovery = round(max(0.0, last_failure - killed_at), 2)
    record_fault("node proxy (ztunnel) of the client's node killed",
                 f"{len(failed)}/{len(rows)} failed (fails closed); recovered in {recovery} s", "recovery <= 2 s")
    assert not [r for r in rows if r[0] == 200 and not via_waypoint(r)]  # nothing bypassed the waypoint
    assert recovery <= 2.0, [(r[1], round(r[3] - killed_at, 2)) for r in failed][::10]


def certificate_serial(admin: str) -> str:
    certs = json.loads(fetch_admin(admin, "/certs"))["certificates"]
    chains = [c for entry in certs for c in entry.get("cert_chain") or []]
    return sorted(c["serial_number"] for c in chains)[0] if chains else ""


def test_certificate_rotation_under_load(mesh: Mesh) -> None:
    """With 2-minute workload certificates (renewed every minute), three generations of the
    waypoint's certificate come and go under load without a failed request."""
    admin = mesh.waypoint_admin()
    mesh.wait_until(lambda: all(r[0] == 200 for r in mesh.requests("reviews", 3)), 40, "traffic before rotation")
    seen = [certificate_serial(admin)]
    # Renewal comes at half life (60 s) plus up to one resync (ttl/4): two renewals within 190 s.
    load = start_load(mesh, 190)
    deadline = time.monotonic() + 190
    while len(seen) < 3 and time.monotonic() < deadline and load.poll() is None:
        time.sleep(1)
        serial = certificate_serial(mesh.waypoint_admin())
        if serial and serial != seen[-1]:
            seen.append(serial)
    time.sleep(2)  # requests across the last renewal
    load.terminate()  # the client stops at SIGTERM and prints what it sent
    out, err = load.communicate(timeout=30)
    assert load.returncode == 0, err
    rows = json.loads(out) if out.strip() else []
    failed = [r for r in rows if r[0] != 200]
    record_fault(f"certificate rotation (SECRET_TTL={SECRET_TTL})",
                 f"{len(seen)} generations of the waypoint certificate; {len(failed)}/{len(rows)} failed",
                 "0 failed over 3 generations")
    assert len(seen) >= 3, seen
    assert rows and not failed, failed[:5]
