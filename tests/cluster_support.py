"""The `meshway up` cluster for end-to-end tests (root, Linux; run in CI): a 2-node network-namespace
cluster with bookinfo, a curl pod and a waypoint for the default namespace, plus helpers to send
traffic from inside pods and to read the waypoint's own stats. A test module gets its own cluster
with `mesh = cluster_fixture()`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshway.runtime.envoy_admin import fetch_admin
from meshway.model import find_kind, load_yaml
from meshway.runtime.daemon import start_controlplane, stop_all
from meshway.runtime.netns import cluster_id, detect_capability, pod_netns_name
from meshway.store import Store

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "meshway" / "demo"
REVIEWS = "inbound-vip|9080|http|reviews.default.svc.cluster.local"

CLIENT = textwrap.dedent('''
    import http.client, json, signal, sys, time
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))  # stop early, still print the results
    host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    method = sys.argv[5] if len(sys.argv) > 5 else "GET"
    seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0  # run for this long instead, paced
    headers = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    out = []
    end = time.time() + seconds
    i = 0
    while not stopped and ((i < count) if not seconds else (time.time() < end and i < count)):
        i += 1
        if seconds:
            time.sleep(0.01)
        try:
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request(method, path, headers=headers)  # a new connection per request, closed by the client (as curl does)
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
        start_controlplane(state, cluster=True, metrics_addr="127.0.0.1:0")

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
        pytest.fail(f"pods not ready in {timeout}s; {self.logs()}")

    def logs(self, size: int = 3000) -> str:
        """The tails of the control plane's and the node agents' logs."""
        run = self.state / "run"
        return "\n".join(f"{path.relative_to(run)}:\n{path.read_text()[-size:]}"
                         for path in [run / "controlplane.log", *sorted(run.glob("agents/*.log"))] if path.exists())

    def pod(self, prefix: str) -> dict:
        return next(p for p in self.pods() if p["metadata"]["name"].startswith(prefix))

    def netns(self, pod: dict) -> str:
        return pod_netns_name(cluster_id(self.state), pod["metadata"]["namespace"], pod["metadata"]["name"])

    def requests(self, host: str, count: int, path: str = "/reviews/0", port: int = 9080, method: str = "GET",
                 client: str = "curl", client_ns: str = "default", headers: dict | None = None) -> list:
        """[status, server header, version from the JSON body, time] per request, sent from inside
        the client pod with a new connection each."""
        pod = next(p for p in self.pods(client_ns) if p["metadata"]["name"].startswith(client))
        cmd = ["ip", "netns", "exec", self.netns(pod), sys.executable, str(self.client_script),
               host, str(port), path, str(count), method, "0", json.dumps(headers or {})]
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
        for line in stats.splitlines():  # cluster.<name, dots as _>.<metric tags>.upstream_rq_total: N
            name_part, _, value = line.rpartition(": ")
            parts = name_part.removeprefix("cluster.").split(".", 1)[0].split("|")
            if name_part.endswith(".upstream_rq_total") and len(parts) == 4 and parts[0] == "inbound-vip" \
                    and parts[1] == port and parts[3] == host.replace(".", "_"):
                total += int(value)
        return total

    def wait_until(self, predicate, timeout: float, what: str) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.05)
        pytest.fail(f"{what}: not within {timeout}s")


def cluster_fixture():
    """A module-scoped `mesh` fixture: one cluster per test module, torn down and checked after."""
    return pytest.fixture(scope="module", name="mesh")(_mesh)


def _mesh(tmp_path_factory):
    require_cluster()
    state = tmp_path_factory.mktemp("cluster") / "state"
    host_before = host_snapshot()
    try:
        m = Mesh(state)  # inside: a start that fails half way stops what it started
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
