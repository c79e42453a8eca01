"""End to end on loopback with real Envoy and real mTLS (no root needed):

  Python HBONE client --mTLS CONNECT :authority=<reviews VIP>:9080--> waypoint Envoy (run by
  `ControlPlane`, configured over ADS/SDS) --connect_originate HBONE mTLS--> destination node-proxy
  Envoy (:15008 on each pod's loopback alias) --> Python backends for reviews v1 / v2.

Pod IPs 10.244.1.x are reached at their loopback aliases 127.X.1.x (LoopbackPlacement, X from the state folder)."""
from __future__ import annotations

import asyncio
import collections
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from xds_support import ENVOY

from meshway.ca import CertificateAuthority, build_root, build_secrets, build_workload_cert, cert_to_pem, key_to_pem
from meshway.hbone import HboneConnection, HboneError, build_client_context
from meshway.model import find_kind, load_yaml
from meshway.runtime.controlplane import ControlPlane
from meshway.runtime.envoy import EnvoyPaths, start_envoy, stop_envoy
from meshway.runtime.placement import LoopbackPlacement
from meshway.store import Store
from meshway.xds import protos as P
from meshway.xds.build_node_inbound import build_node_inbound_cluster, build_node_inbound_listener
from meshway.xds.validate import _strip_sds_source

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: other}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: other}
spec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
spec: {serviceAccountName: bookinfo-reviews, containers: [{name: reviews, image: reviews}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
spec: {serviceAccountName: bookinfo-reviews, containers: [{name: reviews, image: reviews}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /fault-abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /fault-delay}}]
    fault: {delay: {fixedDelay: 0.5s, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /flaky}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 0.3s
    retries: {attempts: 0}
    route: [{destination: {host: reviews, subset: v1}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: WEIGHT_V1}
    - {destination: {host: reviews, subset: v2}, weight: WEIGHT_V2}
"""


def vs(v1: int, v2: int) -> str:
    return VS.replace("WEIGHT_V1", str(v1)).replace("WEIGHT_V2", str(v2))


class Backend(BaseHTTPRequestHandler):
    version = "?"
    hits: collections.Counter = collections.Counter()

    def do_GET(self) -> None:  # noqa: N802
        key = self.headers.get("x-key", "")
        self.hits[(self.path, key)] += 1
        if self.path.startswith("/flaky") and self.hits[(self.path, key)] == 1:
            return self._reply(503, {"error": "first attempt fails"})
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        self._reply(200, {"version": self.version, "path": self.path})

    do_DELETE = do_GET  # noqa: N815

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def start_backend(ip: str, version: str) -> ThreadingHTTPServer:
    handler = type(f"Backend_{version}", (Backend,), {"version": version, "hits": collections.Counter()})
    server = ThreadingHTTPServer((ip, 9080), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Mesh:
    """Everything the test runs, torn down in reverse order."""

    def __init__(self, tmp: Path, delta: bool = True):
        self.tmp = tmp
        self.state = tmp / "state"
        self.store = Store(self.state)
        self.placement = LoopbackPlacement.for_state(self.state)  # the control plane's own
        self.store.apply(load_yaml(MANIFESTS + "---\n" + vs(90, 10), "e2e.yaml"))
        self.pods = {p["metadata"]["name"]: p for p in self.store.list(find_kind("pod"), "default")}
        self.backends = []
        for name in ("reviews-v1", "reviews-v2"):
            ip = self.placement.dial(self.pods[name]["status"]["podIP"])
            self.backends.append(start_backend(ip, name.split("-")[1]))
            self.store.write_status("Pod", "default", name, {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}]})
        self.ca = CertificateAuthority(self.state)
        self.node_proxy = self._start_node_proxy()
        self.cp = ControlPlane(self.state, envoy=ENVOY, delta=delta)  # delta=False: state-of-the-world ADS
        self.stop = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.cp.run(self.stop),),
                                       daemon=True)
        self.thread.start()

    def _start_node_proxy(self) -> EnvoyPaths:
        """The destination node proxy: HBONE in on each app pod's :15008, delivered to the pod."""
        secrets = build_secrets(self.ca.issue("default", "bookinfo-reviews"), self.ca.root_pem())
        listeners = [build_node_inbound_listener(self.placement.dial(p["status"]["podIP"]), name=f"hbone_{n}")
                     for n, p in self.pods.items() if n.startswith("reviews")]
        static = {"listeners": listeners, "clusters": [build_node_inbound_cluster()],
                  "secrets": [{"name": n, **{k: v for k, v in P.to_dict(s).items() if k != "name"}}
                              for n, s in secrets.items()]}
        paths = EnvoyPaths(self.tmp / "node-proxy", self.tmp / "node-proxy")
        start_envoy(paths, {"node": {"id": "ztunnel~node-1", "cluster": "ztunnel"},
                            "admin": {"address": {"pipe": {"path": str(paths.admin)}}},
                            "static_resources": _strip_sds_source(static)}, envoy=ENVOY)
        return paths

    def waypoint_ip(self, ns: str = "default") -> str:
        pod = next(p for p in self.store.list(find_kind("pod"), ns)
                   if p["metadata"]["labels"].get("gateway.networking.k8s.io/gateway-name") == "waypoint")
        return self.placement.dial(pod["status"]["podIP"])

    def vip(self) -> str:
        return self.store.get(find_kind("svc"), "default", "reviews")["spec"]["clusterIP"]

    def wait_programmed(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            gw = self.store.get(find_kind("gtw"), "default", "waypoint")
            if any(c["type"] == "Programmed" and c["status"] == "True" for c in gw["status"]["conditions"]):
                return
            time.sleep(0.1)
        log = next((self.state / "run" / "proxies").glob("default.*/envoy.log")).read_text()[-3000:]
        pytest.fail(f"waypoint not Programmed within {timeout}s; envoy log:\n{log}")

    def client(self, sa: str = "sleep", ca: CertificateAuthority | None = None) -> HboneConnection:
        ca = ca or self.ca
        cert = ca.issue("default", sa)
        ctx = build_client_context(cert.cert_pem, cert.key_pem, self.ca.root_pem(), str(self.tmp))
        return HboneConnection(self.waypoint_ip(), 15008, ctx)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.cp.stop_proxies()
        stop_envoy(self.node_proxy)
        for b in self.backends:
            b.shutdown()


@pytest.fixture
def mesh(tmp_path: Path):
    m = Mesh(tmp_path)
    try:
        m.wait_programmed()
        yield m
    finally:
        m.close()


def versions(tunnel, n: int, headers: dict | None = None) -> collections.Counter:
    seen = collections.Counter()
    for _ in range(n):
        r = tunnel.request("GET", "/", headers, host="reviews")
        assert r.status == 200, r
        seen[json.loads(r.body)["version"]] += 1
    return seen


def test_split_90_10_through_waypoint_and_node_proxy(mesh: Mesh) -> None:
    conn = mesh.client()
    tunnel = conn.open(f"{mesh.vip()}:9080")
    seen = versions(tunnel, 2000)
    assert seen["v1"] + seen["v2"] == 2000
    assert abs(seen["v2"] / 2000 - 0.10) <= 0.03, seen
    conn.close()


def test_header_match_faults_retries_timeouts(mesh: Mesh) -> None:
    conn = mesh.client()
    tunnel = conn.open(f"{mesh.vip()}:9080")
    assert versions(tunnel, 20, {"x-canary": "yes"}) == {"v2": 20}
    assert tunnel.request("GET", "/fault-abort").status == 418
    start = time.monotonic()
    assert tunnel.request("GET", "/fault-delay").status == 200
    assert time.monotonic() - start >= 0.5
    r = tunnel.request("GET", "/flaky", {"x-key": "k1"})
    assert r.status == 200  # the first attempt got 503, Envoy retried
    v1 = next(b for b in mesh.backends if b.RequestHandlerClass.version == "v1")
    assert v1.RequestHandlerClass.hits[("/flaky", "k1")] == 2
    start = time.monotonic()
    r = tunnel.request("GET", "/slow")
    assert r.status == 504 and time.monotonic() - start < 0.9
    conn.close()


def test_client_from_another_ca_is_refused(mesh: Mesh) -> None:
    root, root_key = build_root(__import__("datetime").datetime.now(__import__("datetime").timezone.utc))
    import datetime
    cert, key = build_workload_cert(root, root_key, "spiffe://cluster.local/ns/default/sa/evil",
                                    datetime.datetime.now(datetime.timezone.utc))
    ctx = build_client_context(cert_to_pem(cert), key_to_pem(key), mesh.ca.root_pem(), str(mesh.tmp))
    with pytest.raises((ssl.SSLError, HboneError, ConnectionError, OSError)):
        conn = HboneConnection(mesh.waypoint_ip(), 15008, ctx)
        conn.open(f"{mesh.vip()}:9080").request("GET", "/")


def test_live_weight_change_pushes_only_the_affected_waypoint(mesh: Mesh) -> None:
    other = next(s.node_id for s in mesh.cp.replicas.values() if s.replica.namespace == "other")
    mine = next(s.node_id for s in mesh.cp.replicas.values() if s.replica.namespace == "default")
    time.sleep(0.5)
    before = dict(mesh.cp.cache.pushes)
    mesh.store.apply(load_yaml(vs(0, 100), "vs.yaml"))
    applied = time.monotonic()
    conn = mesh.client()
    while True:  # a new tunnel each time: an open connection keeps its chain's old routes until drained
        tunnel = conn.open(f"{mesh.vip()}:9080")
        if versions(tunnel, 5) == {"v2": 5}:
            break
        tunnel.close()
        assert time.monotonic() - applied < 1.0, "new weights not serving within 1 s"
    assert mesh.cp.cache.pushes[mine] > before.get(mine, 0)
    assert mesh.cp.cache.pushes[other] == before.get(other, 0)
    conn.close()


def test_every_feature_is_acked_by_a_live_waypoint(tmp_path: Path) -> None:
    """The feature matrix of the golden tests, pushed to a real waypoint: ACKed, never NACKed;
    the VirtualService's route to a missing subset is reported on its status."""
    from xds_support import GOLDEN, live_controlplane, wait_programmed

    store = Store(tmp_path / "state")
    store.apply(load_yaml((GOLDEN / "features.yaml").read_text(), "features.yaml"))
    with live_controlplane(tmp_path / "state") as cp:
        assert wait_programmed(store, "shop"), "waypoint for the feature matrix never became Programmed"
        status = cp.cache.status[next(iter(cp.replicas))]
        assert {t.rsplit(".", 1)[-1]: v["state"] for t, v in status.items()} == {
            "Cluster": "SYNCED", "ClusterLoadAssignment": "SYNCED", "Listener": "SYNCED", "RouteConfiguration": "SYNCED",
            "Secret": "SYNCED"}
        vs_status = store.get(find_kind("vs"), "shop", "web").get("status") or {}
        cond = vs_status["conditions"][0]
        assert cond["type"] == "Reconciled" and cond["status"] == "False" and "v9" in cond["message"]


def test_l7_authorization_policy_on_the_waypoint(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}, {when: [{key: "request.headers[x-block]", values: ["yes"]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-sleep, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]
""", "ap.yaml"))

    def status_of(sa: str, method: str = "GET", headers: dict | None = None) -> int:
        conn = mesh.client(sa)
        try:
            return conn.open(f"{mesh.vip()}:9080").request(method, "/", headers).status
        finally:
            conn.close()

    deadline = time.monotonic() + 5
    while status_of("sleep", "DELETE") != 403:
        assert time.monotonic() < deadline, "the DENY policy never took effect"
        time.sleep(0.1)
    assert status_of("sleep") == 200
    assert status_of("sleep", headers={"x-block": "yes"}) == 403  # DENY wins over ALLOW
    assert status_of("productpage") == 403  # not the allowed principal


def test_access_log_from_the_telemetry_api(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: access-logs, namespace: default}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
""", "telemetry.yaml"))
    log = next((mesh.state / "run" / "proxies").glob("default.*/envoy.log"))
    conn = mesh.client("sleep")
    try:
        deadline = time.monotonic() + 5
        lines: list[dict] = []
        while time.monotonic() < deadline and not lines:
            tunnel = conn.open(f"{mesh.vip()}:9080")
            assert tunnel.request("GET", "/logged", {"x-key": "al"}).status == 200
            tunnel.close()
            time.sleep(0.3)
            lines = [json.loads(line) for line in log.read_text().splitlines()
                     if line.startswith("{") and '"/logged"' in line]
        assert lines, "no access log line from the waypoint"
    finally:
        conn.close()
    entry = lines[-1]
    assert (entry["method"], entry["path"], entry["response_code"]) == ("GET", "/logged", 200)
    assert entry["upstream_cluster"].startswith("inbound-vip|9080|http/v")
    assert entry["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert isinstance(entry["duration"], int)


def test_fifty_weight_changes_drop_no_request_on_keep_alive_connections(mesh: Mesh) -> None:
    """Routes travel over RDS: 50 VirtualService weight changes while four clients send requests on
    keep-alive tunnels update only the route config. No request fails, no response closes its
    connection, the listener is never updated in place, and an open connection follows the new
    weights at once."""
    from meshway.runtime.envoy_admin import fetch_admin

    state = next(s for s in mesh.cp.replicas.values() if s.replica.namespace == "default")

    def in_place_updates() -> int:
        stats = fetch_admin(state.paths.admin, "/stats?filter=listener_manager.listener_in_place_updated").decode()
        return int(stats.split(":")[1])

    listener_version = mesh.cp.cache.get(state.node_id).version(P.LISTENER)
    updates_before = in_place_updates()
    stop = threading.Event()
    results: list[collections.Counter] = []
    authority = f"{mesh.vip()}:9080"
    lock = threading.Lock()  # the test's client set-up (store, certificate files) is not thread-safe

    def connect():
        with lock:
            conn = mesh.client()
        return conn, conn.open(authority)

    def client(conn, tunnel) -> None:
        seen: collections.Counter = collections.Counter()
        results.append(seen)
        while not stop.is_set():
            try:
                r = tunnel.request("GET", "/", host="reviews")
            except (HboneError, OSError) as exc:
                seen[f"error {type(exc).__name__}"] += 1
                conn.close()
                conn, tunnel = connect()
                continue
            seen["ok" if r.status == 200 else f"status {r.status}"] += 1
            if r.headers.get("connection", "").lower() == "close":
                seen["connection: close"] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=connect()) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 50):
            mesh.store.apply(load_yaml(vs(i, 100 - i), "vs.yaml"))
            time.sleep(0.1)
        mesh.store.apply(load_yaml(vs(0, 100), "vs.yaml"))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    total = sum(results, collections.Counter())
    assert set(total) == {"ok"} and total["ok"] > 200, total
    assert mesh.cp.cache.get(state.node_id).version(P.LISTENER) == listener_version
    assert in_place_updates() == updates_before
    conn = mesh.client()
    tunnel = conn.open(f"{mesh.vip()}:9080")
    assert versions(tunnel, 20) == {"v2": 20}
    conn.close()
