"""Guaranteed waypoint traversal on the `meshway up` cluster (root, Linux; run in CI): each way
around a bound waypoint that Istio documents, first as Istio does it (`optional`, the default: the
request bypasses the waypoint and the application answers), then with
`meshway.io/waypoint-traversal=required` on the Service (refused, or through the waypoint):

- the waypoint is missing (a label naming no Gateway) or not ready (a Gateway that is not
  programmed): direct in Istio; refused by the client's node proxy, whose connection log says why;
- a mesh client addressing the pod IP: direct in Istio; refused by the destination's node proxy
  (HBONE is admitted only from the waypoint's identity), while the Service still answers through it;
- a client outside the mesh (plaintext, by Service VIP through kube-proxy or by pod IP): direct in
  Istio; refused by the destination's node proxy;
- a pod outside the mesh behind the Service (the waypoint reaches it in plain TCP): every other
  client reaches it directly in Istio; refused by the packet filter its node agent puts in its
  namespace, which admits only the waypoint's pods;
- a keep-alive connection opened before the binding: still answered directly in Istio; closed
  within seconds by the destination's node agent in required mode, and the client's new connection
  goes through the waypoint.

Target: bookinfo's `details` (one pod, port 9080); clients: the mesh's curl pod and a pod in a
namespace outside the mesh. Fails, does not skip, with MESHWAY_REQUIRE_E2E=1 (cluster_support)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from cluster_support import Mesh, cluster_fixture, via_waypoint
from meshway.model import find_kind, load_yaml

mesh = cluster_fixture()
T = "meshway.io/waypoint-traversal"
W = "istio.io/use-waypoint"
POLICY = "rbac_access_denied_matched_policy[ns[default]-policy[waypoint-traversal-required]-rule[0]]"
DRAIN = 30  # the node proxies' --drain-time-s (meshway.runtime.controlplane)

OUTSIDE = """
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: curl-outside, namespace: outside, labels: {app: curl-outside}}
spec: {containers: [{name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}]}
"""
# A second details, outside the mesh (its own label), behind a Service of the mesh's namespace.
PLAIN = """
apiVersion: v1
kind: Pod
metadata: {name: details-plain, namespace: default, labels: {app: details-plain, istio.io/dataplane-mode: none}}
spec: {containers: [{name: details, image: docker.io/istio/examples-bookinfo-details-v1:1.20.2,
                     ports: [{containerPort: 9080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: details-plain, namespace: default}
spec: {selector: {app: details-plain}, ports: [{name: http, port: 9080}]}
"""
CLOSE_DELAY = 2  # meshway.runtime.guards: a mesh pod's connections opened before its guards
UNPROGRAMMED = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: unprogrammed, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: http, port: 80, protocol: HTTP}]}
"""
# One keep-alive connection: a request every 0.25 s; on an error it records it and opens a new one.
KEEPALIVE = textwrap.dedent('''
    import http.client, json, signal, sys, time
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    out, conn, n = [], None, 0
    end = time.time() + seconds
    while not stopped and time.time() < end:
        try:
            if conn is None:
                conn, n = http.client.HTTPConnection(host, port, timeout=5), n + 1
            conn.request("GET", "/details/0")
            r = conn.getresponse()
            r.read()
            out.append([round(time.time(), 3), r.status, r.getheader("server"), n])
        except Exception as exc:
            out.append([round(time.time(), 3), 0, type(exc).__name__, n])
            conn.close()
            conn = None
        time.sleep(0.25)
    print(json.dumps(out))
''')


@pytest.fixture(scope="module", name="outside")
def outside_fixture(mesh: Mesh):
    mesh.store.apply(load_yaml(OUTSIDE, "outside.yaml"))
    try:
        mesh.wait_ready()
        yield
    finally:
        mesh.store.delete([(find_kind("ns"), "", "outside")])


def node_proxy_logs(mesh: Mesh, node: str, wanted) -> list[dict]:
    """The node proxy's connection log lines (JSON) of `node` once one satisfies `wanted` (a line is
    written when its connection closes), from `meshway logs`."""
    from click.testing import CliRunner

    from meshway.cli import clustercmds  # noqa: F401  (registers `logs`)
    from meshway.cli.main import cli
    for _ in range(50):
        result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), "logs", f"ztunnel-{node}",
                                          "-n", "istio-system"])
        lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        if any(wanted(e) for e in lines):
            return lines
        time.sleep(0.1)
    return lines


def calls(mesh: Mesh, target: str, client: str = "curl", client_ns: str = "default", count: int = 3) -> list:
    return mesh.requests(target, count, "/details/0", client=client, client_ns=client_ns)


def codes(results: list) -> list[int]:
    return [r[0] for r in results]


def direct(results: list) -> bool:
    """Answered by the application itself, not through the waypoint."""
    return all(r[0] == 200 and not via_waypoint(r) for r in results)


def through_waypoint(results: list) -> bool:
    return all(r[0] == 200 and via_waypoint(r) for r in results)


def details_ip(mesh: Mesh) -> str:
    return mesh.pod("details")["status"]["podIP"]


GUARD_CHANGED = [0.0]


def set_details(mesh: Mesh, labels: dict, remove: tuple = ()) -> None:
    mesh.label("svc", "details", labels, remove=remove)
    if T in labels or T in remove:
        GUARD_CHANGED[0] = time.time()


def settle() -> None:
    """Wait until the drain of the details pod's last replaced HBONE chain is over: a change of its
    guards replaces the chain, and tunnels opened on the old one (by anyone, the client node proxy's
    pooled HBONE connection included) close when the drain ends."""
    wait = GUARD_CHANGED[0] + DRAIN + 3 - time.time()
    if wait > 0:
        time.sleep(wait)


def reset_details(mesh: Mesh) -> None:
    set_details(mesh, {}, remove=(T, W))
    mesh.wait_until(lambda: through_waypoint(calls(mesh, "details", count=1)), 15, "details back on its waypoint")


def test_missing_or_unprogrammed_waypoint(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml(UNPROGRAMMED, "gw.yaml"))
    try:
        for waypoint, reason in (("ghost", "waypoint default/ghost does not exist (WaypointNotFound)"),
                                 ("unprogrammed", "waypoint default/unprogrammed is not programmed "
                                                  "(WaypointIsNotReady)")):
            set_details(mesh, {W: waypoint})  # Istio: no waypoint in the path, straight to the pod
            mesh.wait_until(lambda: direct(calls(mesh, "details", count=1)), 15, f"{waypoint}: direct (Istio)")
            assert direct(calls(mesh, "details")), waypoint
            set_details(mesh, {T: "required"})
            mesh.wait_until(lambda: codes(calls(mesh, "details", count=1)) == [0], 15, f"{waypoint}: refused")
            assert codes(calls(mesh, "details")) == [0] * 3, waypoint  # no answer at all: not the app, not a 503
            def wanted(e: dict) -> bool:
                return e.get("direction") == "outbound" and e.get("response_flags") == "UH" and \
                    e.get("dst.service") == "details.default.svc.cluster.local" and e.get("dst.waypoint") == \
                    f"default/{waypoint}"
            logs = node_proxy_logs(mesh, mesh.pod("curl")["spec"]["nodeName"], wanted)
            refused = [e for e in logs if wanted(e)]
            assert refused and refused[-1]["reason"] == f"waypoint traversal required: {reason}", \
                json.dumps(logs[-2:])
            set_details(mesh, {}, remove=(T,))
    finally:
        reset_details(mesh)
        mesh.store.delete([(find_kind("gateway"), "default", "unprogrammed")])


def test_pod_ip_and_clients_outside_the_mesh(mesh: Mesh, outside) -> None:
    ip = details_ip(mesh)
    # Istio: the Service goes through the waypoint, everything else bypasses it
    assert through_waypoint(calls(mesh, "details"))
    assert direct(calls(mesh, ip))
    assert direct(calls(mesh, "details.default", "curl-outside", "outside"))
    assert direct(calls(mesh, ip, "curl-outside", "outside"))
    set_details(mesh, {T: "required"})
    try:
        # at once, not at the end of the drain: the curl's node proxy still holds the HBONE connection
        # it just used, opened on the chain being replaced, and its new tunnels read the pod's route
        took = mesh.wait_until(lambda: codes(calls(mesh, ip, count=1)) == [0], 15, "pod IP refused")
        assert took < DRAIN / 3, took
        assert codes(calls(mesh, ip)) == [0] * 3
        assert codes(calls(mesh, "details.default", "curl-outside", "outside")) == [0] * 3
        assert codes(calls(mesh, ip, "curl-outside", "outside")) == [0] * 3
        assert through_waypoint(calls(mesh, "details", count=10))  # the waypoint's identity is admitted
        logs = node_proxy_logs(mesh, mesh.pod("details")["spec"]["nodeName"],
                               lambda e: e.get("error") == POLICY and "src.identity" not in e)
        refused = [e for e in logs if e.get("dst.workload", "").startswith("details") and e.get("error") == POLICY]
        assert any(e.get("src.identity") == "spiffe://cluster.local/ns/default/sa/curl" for e in refused), \
            json.dumps([e for e in logs if e.get("direction") == "inbound" and "src.identity" in e][-4:])
        assert any("src.identity" not in e for e in refused), logs[-5:]  # the plaintext client
    finally:
        reset_details(mesh)
    mesh.wait_until(lambda: direct(calls(mesh, ip, count=1)), 15, "pod IP direct again")


def test_a_pod_outside_the_mesh_behind_a_required_service(mesh: Mesh, outside) -> None:
    """Istio: the waypoint reaches it in plain TCP, and every other client bypasses the waypoint.
    Required: its node agent's filter in the pod's namespace admits only the waypoint's pods; a
    keep-alive connection from outside, opened before, is closed at once."""
    mesh.store.apply(load_yaml(PLAIN, "plain.yaml"))
    try:
        mesh.wait_ready()
        ip = mesh.pod("details-plain")["status"]["podIP"]
        mesh.wait_until(lambda: through_waypoint(calls(mesh, "details-plain", count=1)), 15, "through the waypoint")
        assert direct(calls(mesh, ip))
        assert direct(calls(mesh, "details-plain.default", "curl-outside", "outside"))
        assert direct(calls(mesh, ip, "curl-outside", "outside"))
        proc = start_keepalive(mesh, ip, 12, client=("outside", "curl-outside"))
        time.sleep(3)
        guarded_at = time.time()
        mesh.label("svc", "details-plain", {T: "required"})
        took = mesh.wait_until(lambda: codes(calls(mesh, ip, count=1)) == [0], 15, "pod IP refused")
        results = finish(proc)
        assert codes(calls(mesh, ip)) == [0] * 3
        assert codes(calls(mesh, "details-plain.default", "curl-outside", "outside")) == [0] * 3
        assert codes(calls(mesh, ip, "curl-outside", "outside")) == [0] * 3
        assert through_waypoint(calls(mesh, "details-plain", count=10))  # the waypoint's pod is admitted
        before = [r for r in results if r[0] < guarded_at]
        assert before and all(r[1] == 200 and r[3] == 1 for r in before), before[-3:]
        closed_at = next(r[0] for r in results if r[1] == 0)
        print(f"outside keep-alive to a pod outside the mesh: closed {closed_at - guarded_at:.1f}s after the "
              f"label (pod IP refused after {took:.1f}s)")
        assert closed_at - guarded_at <= 5, closed_at - guarded_at
        assert all(r[1] == 0 for r in results if r[0] > closed_at)  # reconnecting: refused
        mesh.label("svc", "details-plain", {}, remove=(T,))
        mesh.wait_until(lambda: direct(calls(mesh, ip, count=1)), 15, "pod IP direct again")
        assert direct(calls(mesh, ip, "curl-outside", "outside"))
    finally:
        mesh.store.delete([(find_kind("svc"), "default", "details-plain"), (find_kind("pod"), "default",
                                                                            "details-plain")])


def start_keepalive(mesh: Mesh, host: str, seconds: float,
                    client: tuple[str, str] = ("default", "curl")) -> subprocess.Popen:
    script = mesh.state / "keepalive.py"
    script.write_text(KEEPALIVE)
    pod = next(p for p in mesh.pods(client[0]) if p["metadata"]["name"].startswith(client[1]))
    cmd = ["ip", "netns", "exec", mesh.netns(pod), sys.executable, str(script), host, "9080",
           str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> list:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_connections_opened_before_the_binding(mesh: Mesh, mode: str) -> None:
    """The pod-IP keep-alive connection, opened while details is opted out of its waypoint."""
    ip = details_ip(mesh)
    set_details(mesh, {W: "none"})
    mesh.wait_until(lambda: direct(calls(mesh, "details", count=1)), 15, "details opted out")
    settle()
    seconds = DRAIN + 20
    proc = start_keepalive(mesh, ip, seconds)
    try:
        time.sleep(3)
        bound_at = time.time()
        set_details(mesh, {T: mode} if mode == "required" else {}, remove=(W,))
        mesh.wait_until(lambda: through_waypoint(calls(mesh, "details", count=1)), 15, "details bound")
        results = finish(proc)
    finally:
        proc.kill()
        reset_details(mesh)
    before = [r for r in results if r[0] < bound_at]
    assert before and all(r[1] == 200 and r[2] != "istio-envoy" and r[3] == 1 for r in before), before[-3:]
    first = [r for r in results if r[3] == 1]
    if mode == "optional":  # Istio: the connection stays open and keeps bypassing the waypoint
        assert all(r[1] == 200 and r[2] != "istio-envoy" for r in results), [r for r in results if r[1] != 200][:3]
        assert first[-1][0] - bound_at >= DRAIN + 10, "the connection was not kept"
        return
    closed_at = next(r[0] for r in results if r[1] == 0)
    print(f"pod-IP keep-alive ({mode}): closed {closed_at - bound_at:.1f}s after the binding")
    # closed by the node agent CLOSE_DELAY after it saw the guard, not at the end of the drain
    assert closed_at - bound_at <= CLOSE_DELAY + 6, f"closed {closed_at - bound_at:.1f}s after the binding"
    assert all(r[1] == 200 for r in first if r[0] < closed_at)  # answered until then
    after = [r for r in results if r[0] > closed_at]
    assert after and all(r[1] == 0 for r in after), after[:3]  # reconnecting by pod IP: refused
    assert through_waypoint(calls(mesh, "details"))  # while by Service, through the waypoint


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_a_keepalive_connection_to_the_service_is_reestablished_through_the_waypoint(mesh: Mesh, mode: str) -> None:
    """By Service VIP, opened while details is opted out: closed at the end of the drain in both
    modes (meshway replaces the client node proxy's direct chain, which Envoy drains; Istio's ztunnel
    keeps such a connection), and the new one goes through the waypoint."""
    set_details(mesh, {W: "none"})
    mesh.wait_until(lambda: direct(calls(mesh, "details", count=1)), 15, "details opted out")
    settle()
    proc = start_keepalive(mesh, "details", DRAIN + 15)
    try:
        time.sleep(3)
        bound_at = time.time()
        set_details(mesh, {T: mode} if mode == "required" else {}, remove=(W,))
        results = finish(proc)
    finally:
        proc.kill()
        reset_details(mesh)
    first = [r for r in results if r[3] == 1]
    later = [r for r in results if r[3] > 1]
    assert later, "the first connection was never closed"
    print(f"service keep-alive ({mode}): closed {later[0][0] - bound_at:.1f}s after the binding")
    # required: the destination's node agent closes it; optional: the client node proxy's drain ends
    assert later[0][0] - bound_at <= (CLOSE_DELAY + 6 if mode == "required" else DRAIN + 8)
    assert all(r[1] == 200 and r[2] != "istio-envoy" for r in first if r[1] != 0)  # direct until then
    answered = [r for r in later if r[1] != 0]
    assert answered and all(r[1] == 200 and r[2] == "istio-envoy" for r in answered)  # the new one: waypoint
