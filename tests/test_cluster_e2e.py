"""The mesh on one host, end to end (root, Linux; run in CI): a 2-node network-namespace cluster,
bookinfo + a curl pod, node proxies (ztunnel Envoys) capturing with iptables, a waypoint in its own
pod namespace. Traffic is sent from inside the curl pod; whether it went through the waypoint is
read from the waypoint's own stats and response headers, not assumed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshway.cli.envoy_admin import fetch_admin
from meshway.model import find_kind, load_yaml
from meshway.runtime.daemon import start_controlplane, stop_all
from meshway.runtime.netns import cluster_id, detect_capability, pod_netns_name
from meshway.store import Store

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "meshway" / "demo"
REVIEWS = "inbound-vip|9080|http|reviews.default.svc.cluster.local"

CLIENT = textwrap.dedent('''
    import http.client, json, sys, time
    host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    method = sys.argv[5] if len(sys.argv) > 5 else "GET"
    seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0  # run for this long instead, paced
    out = []
    end = time.time() + seconds
    i = 0
    while (i < count) if not seconds else (time.time() < end and i < count):
        i += 1
        if seconds:
            time.sleep(0.01)
        try:
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request(method, path)  # a new connection per request, closed by the client (as curl does)
            r = c.getresponse()
            body = r.read()
            try:
                version = json.loads(body).get("version")
            except Exception:
                version = None
            out.append([r.status, r.getheader("server"), version, round(time.time(), 3)])
            c.close()
        except Exception as exc:
            out.append([0, type(exc).__name__, None, round(time.time(), 3)])
    print(json.dumps(out))
''')


def require_cluster() -> None:
    reason = detect_capability()
    if reason:
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(f"end-to-end cluster tests need root, network namespaces and iptables: {reason}")
        pytest.skip(reason)


class Mesh:
    def __init__(self, state: Path):
        self.state = state
        self.store = Store(state)
        self.store.set_nodes(2)
        for f in ("bookinfo.yaml", "bookinfo-client.yaml", "reviews-traffic.yaml"):
            self.store.apply(load_yaml((DEMO / f).read_text(), f))
        self.store.apply(load_yaml("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
""", "waypoint.yaml"))
        self.label("ns", "default", {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"})
        self.client_script = state / "client.py"
        self.client_script.write_text(CLIENT)
        start_controlplane(state, cluster=True)

    def label(self, kind: str, name: str, labels: dict, remove: tuple = (), ns: str = "default") -> None:
        self.store.label(find_kind(kind), ns, [name], None, labels, list(remove), overwrite=True)

    def pods(self, ns: str = "default") -> list[dict]:
        return self.store.list(find_kind("pod"), ns)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.pods(None)
            if pods and all(any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
                            for p in pods):
                return
            time.sleep(0.5)
        log = (self.state / "run" / "controlplane.log").read_text()[-4000:]
        pytest.fail(f"pods not ready in {timeout}s; control plane log:\n{log}")

    def pod(self, prefix: str) -> dict:
        return next(p for p in self.pods() if p["metadata"]["name"].startswith(prefix))

    def netns(self, pod: dict) -> str:
        return pod_netns_name(cluster_id(self.state), pod["metadata"]["namespace"], pod["metadata"]["name"])

    def requests(self, host: str, count: int, path: str = "/reviews/0", port: int = 9080, method: str = "GET",
                 client: str = "curl", client_ns: str = "default") -> list:
        pod = next(p for p in self.pods(client_ns) if p["metadata"]["name"].startswith(client))
        cmd = ["ip", "netns", "exec", self.netns(pod), sys.executable, str(self.client_script),
               host, str(port), path, str(count), method]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def start_requests(self, host: str, seconds: float) -> subprocess.Popen:
        """Requests at about 100/s for `seconds` (at most 5,000), in the background."""
        cmd = ["ip", "netns", "exec", self.netns(self.pod("curl")), sys.executable, str(self.client_script),
               host, "9080", "/reviews/0", "5000", "GET", str(seconds)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def waypoint_admin(self, ns: str = "default", name: str = "waypoint") -> str:
        status = json.loads((self.state / "run" / "proxy-status.json").read_text())
        return next(v["admin"] for v in status.values() if v["type"] == "waypoint" and v["namespace"] == ns
                    and v["pod"].startswith(name + "-"))

    def waypoint_requests(self, ns: str = "default", name: str = "waypoint", cluster: str = REVIEWS) -> int:
        """Requests the waypoint sent to the service's clusters (subsets included), from its own stats."""
        _, port, _, host = cluster.split("|")
        stats = fetch_admin(self.waypoint_admin(ns, name), "/stats?filter=upstream_rq_total").decode()
        total = 0
        for line in stats.splitlines():
            name_part, _, value = line.rpartition(": ")
            parts = name_part.removeprefix("cluster.").removesuffix(".upstream_rq_total").split("|")
            if len(parts) == 4 and parts[0] == "inbound-vip" and parts[1] == port and parts[3] == host:
                total += int(value)
        return total

    def wait_until(self, predicate, timeout: float, what: str) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.05)
        pytest.fail(f"{what}: not within {timeout}s")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_cluster()
    state = tmp_path_factory.mktemp("cluster") / "state"
    host_before = host_snapshot()
    m = Mesh(state)
    try:
        m.wait_ready()
        # Readiness of the waypoint reaches the node proxies with the next push: wait for the path.
        m.wait_until(lambda: all(r[0] == 200 and via_waypoint(r) for r in m.requests("reviews", 5)), 30,
                     "traffic through the waypoint after start-up")
        yield m
    finally:
        stop_all(state)
        leftovers(state, host_before)


def host_snapshot() -> dict:
    def run(*cmd: str) -> str:
        return subprocess.run(list(cmd), capture_output=True, text=True).stdout

    return {"links": run("ip", "-o", "link"), "routes": run("ip", "-o", "route", "show", "table", "all"),
            "iptables": "\n".join(l for l in run("iptables-save").splitlines() if not l.startswith("#")),
            "netns": run("ip", "netns", "list")}


def leftovers(state: Path, before: dict) -> None:
    """`down` must leave nothing: namespaces, veths, routes, rules, /etc/netns entries, processes."""
    after = host_snapshot()
    prefix = f"mw{cluster_id(state)}-"
    assert prefix not in after["netns"], after["netns"]
    assert not [p for p in Path("/etc/netns").glob(f"{prefix}*")] if Path("/etc/netns").exists() else True
    for key in ("links", "routes", "iptables"):
        assert after[key] == before[key], f"host {key} changed"
    procs = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True).stdout.split()
    assert not procs, f"processes left: {procs}"


def via_waypoint(result: list) -> bool:
    return result[1] == "istio-envoy"


def test_traffic_goes_through_the_waypoint_and_splits_90_10(mesh: Mesh) -> None:
    before = mesh.waypoint_requests()
    results = mesh.requests("reviews", 1000)
    assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]
    assert all(via_waypoint(r) for r in results)
    assert mesh.waypoint_requests() - before >= 1000  # counted by the waypoint itself
    v2 = sum(1 for r in results if r[2] == "v2") / len(results)
    v1 = sum(1 for r in results if r[2] == "v1") / len(results)
    assert abs(v2 - 0.10) <= 0.03 and abs(v1 - 0.90) <= 0.03, (v1, v2)


def test_pods_on_two_nodes_talk_over_hbone(mesh: Mesh) -> None:
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in mesh.pods()}
    assert len(set(nodes.values())) == 2
    client_node = nodes[mesh.pod("curl")["metadata"]["name"]]
    remote = [p for p in mesh.pods() if p["spec"]["nodeName"] != client_node and
              p["metadata"]["labels"].get("app") in ("details", "ratings", "reviews", "productpage")]
    assert remote, "the scheduler should spread pods over both nodes"
    app = remote[0]["metadata"]["labels"]["app"]
    path = {"details": "/details/0", "ratings": "/ratings/0", "reviews": "/reviews/0",
            "productpage": "/productpage"}[app]
    assert all(r[0] == 200 for r in mesh.requests(app, 20, path))


def test_enrollment_changes_apply_within_2s_without_failed_requests(mesh: Mesh) -> None:
    runner = mesh.start_requests("reviews", 12.0)
    time.sleep(1.0)
    steps = []
    try:
        mesh.label("ns", "default", {}, remove=("istio.io/use-waypoint",))
        t0 = time.time()
        steps.append(("unenrolled", t0, False))
        time.sleep(2.5)
        mesh.label("ns", "default", {"istio.io/use-waypoint": "waypoint"})
        steps.append(("enrolled", time.time(), True))
        time.sleep(2.5)
        mesh.label("svc", "reviews", {"istio.io/use-waypoint": "none"})
        steps.append(("service opted out", time.time(), False))
        time.sleep(2.5)
        mesh.label("svc", "reviews", {}, remove=("istio.io/use-waypoint",))
        steps.append(("service label removed", time.time(), True))
        time.sleep(2.5)
    finally:
        out, err = runner.communicate(timeout=300)
    results = json.loads(out)
    failed = [r for r in results if r[0] != 200]
    assert not failed, (f"{len(failed)} failed requests, e.g. {failed[:3]}; steps: "
                                       f"{[(n, round(f[0][3] - at, 3)) for n, at, _ in steps for f in [failed]]}")
    for name, at, expected in steps:
        window = [r for r in results if at + 2.0 <= r[3] <= at + 2.5]
        assert window, f"no requests in the window after {name}"
        assert all(via_waypoint(r) == expected for r in window), f"{name}: not effective within 2 s"


def test_l4_policy_at_the_destination_requires_the_waypoint(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-via-waypoint, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/waypoint]}}]}]
""", "ap.yaml"))
    try:
        time.sleep(2.5)
        assert all(r[0] == 200 and via_waypoint(r) for r in mesh.requests("reviews", 10))
        mesh.label("svc", "reviews", {"istio.io/use-waypoint": "none"})  # now the client goes direct
        mesh.wait_until(lambda: all(r[0] != 200 for r in mesh.requests("reviews", 5)), 3,
                        "the client's own identity refused at the destination")
    finally:
        mesh.label("svc", "reviews", {}, remove=("istio.io/use-waypoint",))
        mesh.store.delete([(find_kind("ap"), "default", "reviews-via-waypoint")])
        time.sleep(1.5)


def test_l7_policy_on_the_waypoint(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE], paths: ["/reviews/*"]}}]}]
""", "ap.yaml"))
    try:
        mesh.wait_until(lambda: mesh.requests("reviews", 1, method="DELETE")[0][0] == 403, 5, "DENY DELETE")
        assert mesh.requests("reviews", 1)[0][0] == 200
    finally:
        mesh.store.delete([(find_kind("ap"), "default", "no-delete")])


def test_pod_waypoint_for_workload_reached_by_pod_ip(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pod-waypoint, namespace: default, labels: {istio.io/waypoint-for: workload}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
""", "gw.yaml"))
    target = mesh.pod("reviews-v2")
    try:
        mesh.wait_until(lambda: _programmed(mesh, "pod-waypoint"), 60, "pod waypoint Programmed")
        ip = target["status"]["podIP"]
        time.sleep(1.0)  # the new waypoint's readiness reaches the node proxies first
        mesh.label("pod", target["metadata"]["name"], {"istio.io/use-waypoint": "pod-waypoint"})
        mesh.wait_until(lambda: via_waypoint(mesh.requests(ip, 1)[0]), 2, "pod-IP traffic via the pod waypoint")
        results = mesh.requests(ip, 10)
        assert all(r[0] == 200 and via_waypoint(r) and r[2] == "v2" for r in results), results
    finally:
        mesh.label("pod", target["metadata"]["name"], {}, remove=("istio.io/use-waypoint",))
        mesh.store.delete([(find_kind("gtw"), "default", "pod-waypoint")])


def _programmed(mesh: Mesh, name: str, ns: str = "default") -> bool:
    gw = mesh.store.get(find_kind("gtw"), ns, name)
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in gw["status"]["conditions"])


def test_cross_namespace_waypoint_with_allowed_routes(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared, namespace: infra}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: default}}}}
""", "infra.yaml"))
    try:
        mesh.wait_until(lambda: _programmed(mesh, "shared", "infra"), 60, "shared waypoint Programmed")
        time.sleep(1.0)
        mesh.label("svc", "ratings", {"istio.io/use-waypoint": "shared", "istio.io/use-waypoint-namespace": "infra"})
        cluster = "inbound-vip|9080|http|ratings.default.svc.cluster.local"
        mesh.wait_until(lambda: mesh.requests("ratings", 1, "/ratings/0")[0][0] == 200 and
                        mesh.waypoint_requests("infra", "shared", cluster) > 0, 2, "ratings via infra/shared")
    finally:
        mesh.label("svc", "ratings", {}, remove=("istio.io/use-waypoint", "istio.io/use-waypoint-namespace"))
        mesh.store.delete([(find_kind("ns"), "", "infra")])


def test_pods_outside_the_mesh_reach_services_and_meet_policy(mesh: Mesh) -> None:
    """A pod in a namespace not enrolled in ambient: its traffic is not captured (no waypoint, no
    HBONE), services still work (kube-proxy's DNAT), and at a mesh pod its plaintext is captured
    inbound, where L4 policy applies (a principal cannot be proven without mTLS)."""
    mesh.store.apply(load_yaml("""
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: curl-outside, namespace: outside, labels: {app: curl-outside}}
spec: {containers: [{name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}]}
""", "outside.yaml"))
    try:
        mesh.wait_ready()
        results = mesh.requests("reviews.default", 10, client="curl-outside", client_ns="outside")
        assert all(r[0] == 200 and not via_waypoint(r) for r in results), results
        mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-only, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [default]}}]}]
""", "ap.yaml"))
        time.sleep(2.5)
        details_ip = mesh.pod("details")["status"]["podIP"]
        refused = mesh.requests(details_ip, 3, "/details/0", client="curl-outside", client_ns="outside")
        assert all(r[0] != 200 for r in refused), refused
        assert all(r[0] == 200 for r in mesh.requests("details", 3, "/details/0"))  # mesh clients still pass
    finally:
        mesh.store.delete([(find_kind("ap"), "default", "mesh-only")], ignore_not_found=True)
        mesh.store.delete([(find_kind("ns"), "", "outside")])
