#!/usr/bin/env python
"""Waypoint data plane: translation, config bytes, push latency and requests through a real Envoy.

xDS translation time and size, waypoint vs unscoped-sidecar config bytes, store change -> Envoy
ACK latency, and requests/s through a live waypoint Envoy vs a direct connection, in one run.

    python benchmarks/dataplane.py            # full: under 2 minutes on 2 CPUs
    python benchmarks/dataplane.py --quick    # smoke run, about 30 s

Writes benchmarks/results/dataplane.{json,md} (`--quick`: dataplane-quick.{json,md}).
See benchmarks/README.md for what each measurement means. All traffic stays on 127.0.0.0/8.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import gc
import http.client
import io
import json
import math
import os
import pstats
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):  # meshway from this checkout; selection.py beside us
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from selection import Measurement, fmt_time, machine_info, measure  # noqa: E402

from meshway import labels as L  # noqa: E402
from meshway.ca import CertificateAuthority, build_secrets  # noqa: E402
from meshway.mesh.distribution import build_distribution, generate_topology  # noqa: E402
from meshway.mesh.view import MeshView  # noqa: E402
from meshway.model import find_kind, load_yaml  # noqa: E402
from meshway.runtime.controlplane import ControlPlane  # noqa: E402
from meshway.runtime.envoy import EnvoyPaths, find_envoy, read_pid, start_envoy, stop_envoy  # noqa: E402
from meshway.runtime.placement import LoopbackPlacement  # noqa: E402
from meshway.store import Store  # noqa: E402
from meshway.xds import protos as P  # noqa: E402
from meshway.xds.build_listeners import build_tls_context  # noqa: E402
from meshway.xds.build_node_inbound import build_node_inbound_cluster, build_node_inbound_listener  # noqa: E402
from meshway.xds.build_snapshot import WaypointConfig, build_waypoint_config  # noqa: E402
from meshway.xds.cache import SYNCED  # noqa: E402
from meshway.xds.proxy import Proxy  # noqa: E402
from meshway.xds.scope import WaypointScope  # noqa: E402
from meshway.xds.validate import _strip_sds_source  # noqa: E402  (as tests/test_waypoint_e2e.py does)

Body = dict[str, Any]
RESULTS = Path(__file__).resolve().parent / "results"
NOW = "2025-01-01T00:00:00Z"
SHORT = {P.CLUSTER: "CDS", P.ENDPOINT: "EDS", P.LISTENER: "LDS", P.ROUTE: "RDS", P.SECRET: "SDS"}
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ROUTED_SERVICES = 3  # per namespace: svc-1..svc-3 get a DestinationRule (v1, v2) and a VirtualService 90/10
WRK_REQUEST_CAP = 2_000_000  # per wrk run: a safety bound on count; unreachable at this machine's rates


# == topology =====================================================================================

def build_topology(namespaces: int, services: int, pods: int, replicas: int,
                   routed: int = ROUTED_SERVICES) -> tuple[dict[str, list[Body]], dict[tuple[str, str], int]]:
    """`generate_topology(namespaces, services, pods, replicas)` completed the way the store would
    hold it: every pod Ready with a pod IP and a `version` label (every 5th pod v2, the rest v1), a
    ready waypoint Deployment per namespace, and, for the first `routed` services of each
    namespace, a DestinationRule with subsets v1/v2 plus a VirtualService splitting 90/10."""
    snap, replica_counts = generate_topology(namespaces, services, pods, replicas)
    snap = copy.deepcopy(snap)
    for body in snap["Namespace"]:
        body["kind"] = "Namespace"
        body["metadata"].update(creationTimestamp=NOW, uid=f"ns-{body['metadata']['name']}")
    for body in snap["Service"] + snap["Gateway"]:
        body["metadata"].update(creationTimestamp=NOW, uid=f"{body['kind']}-{body['metadata']['namespace']}-"
                                                            f"{body['metadata']['name']}")
    for i, body in enumerate(snap["Pod"]):
        ip = f"10.244.{i // 250}.{i % 250 + 2}"
        meta = body["metadata"]
        meta["labels"]["version"] = "v2" if int(meta["name"].rsplit("-", 1)[1]) % 5 == 0 else "v1"
        meta.update(creationTimestamp=NOW, uid=f"pod-{i}")
        body["kind"] = "Pod"
        body["spec"] = {"containers": [{"name": "app", "image": "x"}], "serviceAccountName": "default",
                        "nodeName": f"node-{i // 250}"}
        body["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                          "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": NOW}]}
    snap["Deployment"] = [{
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "waypoint", "namespace": ns, "creationTimestamp": NOW,
                     "labels": {L.GATEWAY_NAME: "waypoint", L.GATEWAY_CLASS_NAME: L.WAYPOINT_CLASS}},
        "spec": {"replicas": n}, "status": {"replicas": n, "readyReplicas": n, "availableReplicas": n}}
        for (ns, _), n in sorted(replica_counts.items())]
    snap["DestinationRule"], snap["VirtualService"], snap["HTTPRoute"] = [], [], []
    for svc in snap["Service"]:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        if int(name.split("-")[1]) > routed:
            continue
        meta = {"name": name, "namespace": ns, "creationTimestamp": NOW, "generation": 1}
        snap["DestinationRule"].append({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": dict(meta),
            "spec": {"host": name, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                               {"name": "v2", "labels": {"version": "v2"}}]}})
        snap["VirtualService"].append({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": dict(meta),
            "spec": {"hosts": [name], "http": [{"route": [
                {"destination": {"host": name, "subset": "v1"}, "weight": 90},
                {"destination": {"host": name, "subset": "v2"}, "weight": 10}]}]}})
    return snap, replica_counts


def waypoint_proxy(namespace: str, name: str = "waypoint", ip: str = "10.245.0.2") -> Proxy:
    """A waypoint replica's Proxy, as tests/xds_support.translate builds it."""
    return Proxy(f"waypoint~{ip}~{name}-0.{namespace}~{namespace}.svc.cluster.local", ip, namespace, name, name)


# == 1. translation ===============================================================================

def serialized_bytes(messages: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Sum of `SerializeToString()` per xDS type (CDS/EDS/LDS/RDS/SDS)."""
    return {SHORT[t]: sum(len(m.SerializeToString()) for m in items.values()) for t, items in messages.items()}


def resource_counts(config: WaypointConfig) -> dict[str, int]:
    return {SHORT[t]: len(items) for t, items in config.resources.items()}


def bench_translate_one(reps: int) -> tuple[list[Measurement], Body]:
    """One waypoint serving 25 services x 10 pods (3 with DestinationRule subsets + VirtualService)."""
    snapshot, _ = build_topology(1, 25, 10, 1)
    view = MeshView.build(snapshot)
    proxy = waypoint_proxy("ns-1")
    config = build_waypoint_config(view, proxy)
    messages = config.messages()

    def serialize() -> int:
        return sum(len(m.SerializeToString()) for items in messages.values() for m in items.values())

    ms = [
        measure("one_build", "1a.i   build_waypoint_config (scope + dicts)", lambda: build_waypoint_config(view, proxy),
                reps),
        measure("one_messages", "1a.ii  WaypointConfig.messages() (dicts -> protobuf)", config.messages, reps),
        measure("one_serialize", "1a.iii SerializeToString of every resource", serialize, reps),
        measure("one_translate", "1a. translate one waypoint (build + messages)",
                lambda: build_waypoint_config(view, proxy).messages(), reps),
    ]
    by_type = serialized_bytes(messages)
    info = {"topology": "generate_topology(1, 25, 10, 1) + ready pods with IPs + 3 DestinationRules (2 subsets) "
                        "+ 3 VirtualServices (90/10)",
            "services": len(view.services), "pods": len(view.pods),
            "resources": resource_counts(config), "bytes": {**by_type, "total": sum(by_type.values())},
            "problems": [list(p) for p in config.problems]}
    ms[-1].notes = f"{sum(info['resources'].values())} resources, {info['bytes']['total']:,} bytes serialized"
    return ms, info


def bench_translate_many(reps: int) -> tuple[list[Measurement], Body]:
    """100 namespaces, one waypoint each, 10 services x 10 pods each: translate every waypoint."""
    snapshot, _ = build_topology(100, 10, 10, 1)
    m_view = measure("many_view", "1b.0 MeshView.build (100 ns, 1,000 services, 10,000 pods)",
                     lambda: MeshView.build(snapshot), reps, memory=False)
    view = MeshView.build(snapshot)
    waypoints = sorted(view.waypoints)
    proxies = [waypoint_proxy(ns, name, f"10.245.{i // 250}.{i % 250 + 2}") for i, (ns, name) in enumerate(waypoints)]
    stages: dict[str, list[float]] = {"build": [], "messages": [], "serialize": [], "per_waypoint": []}
    sizes: list[dict[str, int]] = []
    for rep in range(reps + 1):  # the first pass is the warm-up
        gc.collect()
        build = msgs = ser = 0.0
        per: list[float] = []
        sizes = []
        for proxy in proxies:
            t0 = time.perf_counter()
            config = build_waypoint_config(view, proxy)
            t1 = time.perf_counter()
            messages = config.messages()
            t2 = time.perf_counter()
            sizes.append(serialized_bytes(messages))
            t3 = time.perf_counter()
            build, msgs, ser = build + t1 - t0, msgs + t2 - t1, ser + t3 - t2
            per.append(t2 - t0)
        if rep:
            stages["build"].append(build)
            stages["messages"].append(msgs)
            stages["serialize"].append(ser)
            stages["per_waypoint"].append(statistics.median(per))
        print(f"  pass {rep}{' (warm-up)' if not rep else ''}: build {fmt_time(build)}, messages {fmt_time(msgs)}, "
              f"serialize {fmt_time(ser)}", flush=True)
    n = len(proxies)
    totals = [b + m for b, m in zip(stages["build"], stages["messages"])]
    ms = [
        m_view,
        Measurement("many_build", f"1b.i   build_waypoint_config, all {n} waypoints", stages["build"]),
        Measurement("many_messages", f"1b.ii  .messages(), all {n} waypoints", stages["messages"]),
        Measurement("many_serialize", f"1b.iii SerializeToString, all {n} waypoints", stages["serialize"]),
        Measurement("many_translate", f"1b. translate all {n} waypoints (build + messages)", totals),
        Measurement("many_per_waypoint", "1b.iv  median translate time of one waypoint (build + messages)",
                    stages["per_waypoint"]),
    ]
    types = sorted({t for s in sizes for t in s})
    avg = {t: sum(s.get(t, 0) for s in sizes) / n for t in types}
    info = {"topology": "generate_topology(100, 10, 10, 1) + ready pods with IPs + per namespace 3 DestinationRules "
                        "(2 subsets) + 3 VirtualServices (90/10)",
            "waypoints": n, "services": len(view.services), "pods": len(view.pods),
            "virtual_services": len(snapshot["VirtualService"]), "destination_rules": len(snapshot["DestinationRule"]),
            "avg_bytes_per_waypoint": {**{t: round(v) for t, v in avg.items()}, "total": round(sum(avg.values()))},
            "total_bytes": sum(sum(s.values()) for s in sizes)}
    ms[4].notes = f"avg {info['avg_bytes_per_waypoint']['total']:,} bytes per waypoint"
    return ms, info


# == 2. waypoint vs sidecar bytes =================================================================

def config_bytes(view: MeshView, proxy: Proxy, scope: WaypointScope | None = None) -> dict[str, int]:
    by_type = serialized_bytes(build_waypoint_config(view, proxy, scope=scope).messages())
    return {**by_type, "total": sum(by_type.values())}


def compare_bytes(snapshot: dict[str, list[Body]], replicas: dict[tuple[str, str], int]) -> Body:
    """Waypoints: each namespace's real config x its replicas. Unscoped sidecars: per pod, the config
    of a proxy whose scope holds every service of the mesh (one translation per namespace, times the
    namespace's pods: per-pod configs differ only in the proxy's own address)."""
    view = MeshView.build(snapshot)
    services = tuple(sorted((s for s in view.services.values() if s.addresses),
                            key=lambda s: (s.created, s.namespace, s.name)))
    waypoint_rows, sidecar_rows = [], []
    for (ns, name), wp in sorted(view.waypoints.items()):
        size = config_bytes(view, waypoint_proxy(ns, name))
        waypoint_rows.append({"namespace": ns, "replicas": replicas.get((ns, wp.service_name), 1), "bytes": size})
        pods = sorted((p for p in view.pods.values() if p.namespace == ns), key=lambda p: p.name)
        first_ip = pods[0].ip or "10.244.0.2"
        sidecar = Proxy(f"sidecar~{first_ip}~{pods[0].name}.{ns}~{ns}.svc.cluster.local", first_ip, ns, "default", name)
        size = config_bytes(view, sidecar, WaypointScope(wp, services, ()))
        sidecar_rows.append({"namespace": ns, "pods": len(pods), "bytes": size})
    waypoint_total = sum(r["bytes"]["total"] * r["replicas"] for r in waypoint_rows)
    sidecar_total = sum(r["bytes"]["total"] * r["pods"] for r in sidecar_rows)
    dist = build_distribution(view, replicas)
    return {
        "waypoints": waypoint_rows, "sidecars": sidecar_rows,
        "waypoint_replicas": sum(r["replicas"] for r in waypoint_rows),
        "sidecar_count": sum(r["pods"] for r in sidecar_rows), "mesh_services": len(services),
        "waypoint_total_bytes": waypoint_total, "sidecar_total_bytes": sidecar_total,
        "ratio": waypoint_total / sidecar_total if sidecar_total else None,
        "configurations": {"waypoint": dist.waypoint, "sidecar_namespace_scoped": dist.sidecar_namespace_scoped,
                           "sidecar_mesh_wide": dist.sidecar_mesh_wide, "ratio": dist.ratio},
    }


def bench_bytes() -> Body:
    """The seed topology: 2 namespaces x 25 deployments x 10 pods, 2 waypoint replicas, no routing rules."""
    snapshot, replicas = build_topology(2, 25, 10, 2, routed=0)
    out = compare_bytes(snapshot, replicas)
    print(f"  waypoints {out['waypoint_total_bytes']:,} B, sidecars {out['sidecar_total_bytes']:,} B, "
          f"ratio {100 * out['ratio']:.3f}%", flush=True)
    return out


# == live mesh (3 and 4) ==========================================================================

class BenchPlacement(LoopbackPlacement):
    """LoopbackPlacement on 127.77.x.y instead of 127.244.x.y, so that the e2e tests can run at the
    same time without fighting over <pod alias>:9080 and :15008."""

    @staticmethod
    def dial(pod_ip: str) -> str:
        return "127.77." + ".".join(pod_ip.split(".")[2:])


MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bench}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: bench}
spec: {selector: {app: echo}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-v1, namespace: bench, labels: {app: echo, version: v1}}
spec: {serviceAccountName: echo, containers: [{name: echo, image: echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-v2, namespace: bench, labels: {app: echo, version: v2}}
spec: {serviceAccountName: echo, containers: [{name: echo, image: echo}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: bench}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def vs_yaml(v1: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: bench}}
spec:
  hosts: [echo]
  http:
  - route:
    - {{destination: {{host: echo, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: echo, subset: v2}}, weight: {100 - v1}}}
"""


def _hcm_direct_response(name: str, body: str) -> Body:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": P.typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", stat_prefix=name,
        route_config={"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}]}]},
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": P.typed("envoy.extensions.filters.http.router.v3.Router")}])}


def _static_secrets(secrets: dict) -> list[Body]:
    return [{"name": n, **{k: v for k, v in P.to_dict(s).items() if k != "name"}} for n, s in secrets.items()]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def admin_get(sock: Path, path: str, timeout: float = 5.0) -> str:
    """GET from an Envoy admin that listens on a Unix socket."""
    conn = _UnixHTTPConnection(sock, timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"Envoy admin {sock} GET {path}: {response.status} {body[:200]}")
    return body


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process, from /proc (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time the machine spent in processes (user + nice + system, all CPUs), from /proc/stat. Interrupt
    and softirq time (loopback TCP) is left out: it is charged to no process."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    return sum(values) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU time of this process (all threads, the control plane's included) and its waited-for children (wrk)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LiveMesh:
    """Store + ControlPlane (in a thread, its default debounce/poll) + one waypoint Envoy, a
    destination node-proxy Envoy, an Envoy `direct_response` backend on both echo pods' addresses,
    and a client Envoy that tunnels each TCP connection to the waypoint over mTLS HBONE
    (tcp_proxy tunneling_config, envoy-notes §3). Torn down in reverse order by `close`."""

    def __init__(self, tmp: Path, envoy: str):
        self.tmp, self.envoy = tmp, envoy
        self.placement = BenchPlacement()
        self.state = tmp / "state"
        self.envoys: dict[str, EnvoyPaths] = {}
        self.pids: dict[str, int] = {}
        self.cp: ControlPlane | None = None
        self.thread: threading.Thread | None = None
        self.store = Store(self.state)
        self.store.apply(load_yaml(MANIFESTS + "---\n" + vs_yaml(90), "dataplane.yaml"))
        self.pods = {p["metadata"]["name"]: p for p in self.store.list(find_kind("pod"), "bench")
                     if p["metadata"]["name"].startswith("echo-")}
        for name in self.pods:
            self.store.write_status("Pod", "bench", name, {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}]})
        self.ca = CertificateAuthority(self.state)
        self.vip = self.store.get(find_kind("svc"), "bench", "echo")["spec"]["clusterIP"]
        self.backend_ip = {n.split("-")[1]: self.placement.dial(p["status"]["podIP"]) for n, p in self.pods.items()}

    def start(self) -> None:
        self._start_backend()
        self._start_node_proxy()
        self.cp = ControlPlane(self.state, placement=self.placement, envoy=self.envoy)
        self.stop_event = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.cp.run(self.stop_event),),
                                       daemon=True)
        self.thread.start()
        self.wait_programmed()
        self.client_port = free_port()
        self._start_client()
        self.wait_serving()

    def _run_envoy(self, name: str, static: Body) -> None:
        paths = EnvoyPaths(self.tmp / name, self.tmp / name)
        bootstrap = {"node": {"id": f"{name}~bench", "cluster": name},
                     "admin": {"address": {"pipe": {"path": str(paths.admin)}}},
                     "static_resources": static}
        self.envoys[name] = paths
        self.pids[name] = start_envoy(paths, bootstrap, envoy=self.envoy)

    def _start_backend(self) -> None:
        listeners = [{"name": f"backend_{v}", "address": {"socket_address": {"address": ip, "port_value": 9080}},
                      "filter_chains": [{"filters": [_hcm_direct_response(f"backend_{v}", f"{v}\n")]}]}
                     for v, ip in sorted(self.backend_ip.items())]
        self._run_envoy("backend", {"listeners": listeners})

    def _start_node_proxy(self) -> None:
        secrets = build_secrets(self.ca.issue("bench", "echo"), self.ca.root_pem())
        listeners = [build_node_inbound_listener(self.placement.dial(p["status"]["podIP"]), name=f"hbone_{n}")
                     for n, p in sorted(self.pods.items())]
        self._run_envoy("node-proxy", _strip_sds_source({
            "listeners": listeners, "clusters": [build_node_inbound_cluster()],
            "secrets": _static_secrets(secrets)}))

    def _start_client(self) -> None:
        secrets = build_secrets(self.ca.issue("bench", "client"), self.ca.root_pem())
        tcp_proxy = P.typed("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", stat_prefix="outbound",
                            cluster="hbone_waypoint", tunneling_config={"hostname": f"{self.vip}:9080"})
        cluster = {
            "name": "hbone_waypoint", "type": "STATIC", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "hbone_waypoint", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": self.waypoint_ip(), "port_value": L.HBONE_PORT}}}}]}]},
            "typed_extension_protocol_options": {HTTP_OPTIONS: P.typed(
                HTTP_OPTIONS, explicit_http_config={"http2_protocol_options": {}})},
            "transport_socket": build_tls_context("UpstreamTlsContext", L.CLUSTER_DOMAIN),
        }
        listener = {"name": "outbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.client_port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                    "typed_config": tcp_proxy}]}]}
        self._run_envoy("client", _strip_sds_source({"listeners": [listener], "clusters": [cluster],
                                                     "secrets": _static_secrets(secrets)}))

    @property
    def waypoint_state(self):
        return next(iter(self.cp.replicas.values()))

    @property
    def node_id(self) -> str:
        return self.waypoint_state.node_id

    def waypoint_pid(self) -> int | None:
        return read_pid(self.waypoint_state.paths)

    def waypoint_ip(self) -> str:
        return self.placement.listen_address(self.waypoint_state.replica)

    def wait_programmed(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            gw = self.store.get(find_kind("gtw"), "bench", "waypoint")
            if any(c["type"] == "Programmed" and c["status"] == "True" for c in gw["status"].get("conditions", [])):
                return
            time.sleep(0.1)
        raise RuntimeError(f"waypoint not Programmed within {timeout:g} s; see {self.state / 'run' / 'proxies'}")

    def wait_serving(self, timeout: float = 30) -> None:
        """Until a request through the client Envoy and the waypoint reaches a backend."""
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=2)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                conn.close()
                if response.status == 200 and body.strip() in self.backend_ip:
                    return
                last = f"{response.status} {body[:80]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"no path through the waypoint within {timeout:g} s: {last}")

    def backend_counts(self) -> dict[str, int]:
        """2xx responses per backend version, from the backend Envoy's stats."""
        text = admin_get(self.envoys["backend"].admin, "/stats?filter=downstream_rq_2xx")
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if name.startswith("http.backend_") and name.endswith(".downstream_rq_2xx"):
                out[name.split(".")[1].removeprefix("backend_")] = int(value)
        return out

    def close(self) -> None:
        if self.thread is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(10)
        if self.cp is not None:
            self.cp.stop_proxies()
        for paths in reversed(list(self.envoys.values())):
            stop_envoy(paths)


# == 3. store change -> Envoy ACK =================================================================

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def bench_ack(mesh: LiveMesh, changes: int, timeout: float = 10.0) -> Body:
    """Apply a VirtualService weight change, then poll (every 2 ms) until the cache records the new
    RDS version as ACKed (SYNCED) for the waypoint (routes travel over RDS: a weight change changes
    no listener). Also records when the new snapshot was set in
    the cache (`SnapshotCache.watch`) and how long the control plane's `sync` took."""
    cp, node = mesh.cp, mesh.node_id
    cache = cp.cache
    set_at: list[tuple[float, int]] = []
    syncs: list[tuple[float, float]] = []
    unwatch = cache.watch(node, lambda generation: set_at.append((time.perf_counter(), generation)))
    original_sync = cp.sync

    def timed_sync(*args, **kwargs) -> None:  # instance attribute: wraps this ControlPlane's sync, for timing only
        start = time.perf_counter()
        original_sync(*args, **kwargs)
        syncs.append((start, time.perf_counter()))

    cp.sync = timed_sync
    rng = random.Random(1)
    rows = []
    try:
        time.sleep(0.5)
        for i in range(changes):
            manifests = load_yaml(vs_yaml((80, 70)[i % 2]), "vs.yaml")  # v1 weight 90 -> 80 -> 70 -> 80 ...
            generation = cache.generation(node)
            t0 = time.perf_counter()
            mesh.store.apply(manifests)
            t_applied = time.perf_counter()
            deadline = t0 + timeout
            while cache.generation(node) == generation:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"change {i}: no new snapshot within {timeout:g} s")
                time.sleep(0.002)
            version = cache.get(node).version(P.ROUTE)
            while True:
                status = dict(cache.status.get(node, {}).get(P.ROUTE, {}))
                if status.get("state") == SYNCED and status.get("version") == version:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"change {i}: RDS {version} not ACKed within {timeout:g} s: {status}")
                time.sleep(0.002)
            t_ack = time.perf_counter()
            while not any(g > generation for _, g in list(set_at)):  # the watcher runs just after the set
                time.sleep(0.0005)
            t_set = next(t for t, g in set_at if g > generation)
            sync = [e - s for s, e in syncs if s >= t_applied and e <= t_set + 0.001]
            rows.append({"apply": t_applied - t0, "to_snapshot": t_set - t0, "snapshot_to_ack": t_ack - t_set,
                         "total": t_ack - t0, "sync": sync[-1] if sync else None})
            time.sleep(rng.uniform(0.1, 0.2))  # idle between changes; random so the poll phase varies
        restore = load_yaml(vs_yaml(90), "vs.yaml")
        mesh.store.apply(restore)
        time.sleep(0.5)
    finally:
        cp.sync = original_sync
        unwatch()

    def stats(key: str) -> Body:
        values = [r[key] for r in rows if r[key] is not None]
        return {"p50": percentile(values, 50), "p99": percentile(values, 99), "min": min(values),
                "max": max(values), "mean": statistics.fmean(values)} if values else {}

    out = {"changes": changes, "poll_s": cp.poll, "debounce_s": cp.debounce,
           "debounce_max_s": getattr(cp, "debounce_max", None), "delta_xds": cp.delta,
           "samples": rows, **{k: stats(k) for k in ("total", "apply", "to_snapshot", "sync", "snapshot_to_ack")}}
    print(f"  store change -> RDS ACK: p50 {fmt_time(out['total']['p50'])}, p99 {fmt_time(out['total']['p99'])} "
          f"(snapshot set -> ACK p50 {fmt_time(out['snapshot_to_ack']['p50'])})", flush=True)
    return out


# == 4. load: through the waypoint vs direct =======================================================

WRK_SCRIPT = """
local n = 0
local cap = tonumber(os.getenv("WRK_REQUEST_CAP") or "0")
function response(status, headers, body)
  n = n + 1
  if cap > 0 and n >= cap then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def run_wrk(wrk: str, script: Path, url: str, connections: int, duration: float) -> Body:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "-s", str(script), url]
    env = {**os.environ, "WRK_REQUEST_CAP": str(WRK_REQUEST_CAP)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    r = json.loads(line[len("WRKJSON "):])
    seconds = r["duration_us"] / 1e6
    return {"requests": r["requests"], "seconds": seconds, "rps": r["requests"] / seconds,
            "p50_ms": r["latency_us"]["p50"] / 1e3, "p90_ms": r["latency_us"]["p90"] / 1e3,
            "p99_ms": r["latency_us"]["p99"] / 1e3, "max_ms": r["latency_us"]["max"] / 1e3,
            "errors": r["errors"], "capped": r["requests"] >= WRK_REQUEST_CAP}


def run_python_load(url: str, connections: int, duration: float, cap: int = 200_000) -> Body:
    """Fallback when wrk is missing: `connections` threads, each with one keep-alive http.client
    connection, until `duration` or `cap` requests. Client-bound (GIL): compare paths, not numbers."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    latencies: list[float] = []
    errors = {"status": 0, "other": 0}
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def connect() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def worker() -> None:
        conn = connect()
        mine: list[float] = []
        while time.perf_counter() < stop_at and len(latencies) + len(mine) < cap:
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    errors["status"] += 1
            except (OSError, http.client.HTTPException):
                errors["other"] += 1
                conn.close()
                conn = connect()
                continue
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    seconds = time.perf_counter() - start
    return {"requests": len(latencies), "seconds": seconds, "rps": len(latencies) / seconds,
            "p50_ms": percentile(latencies, 50) * 1e3, "p90_ms": percentile(latencies, 90) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "max_ms": max(latencies) * 1e3, "errors": errors,
            "capped": len(latencies) >= cap}


def bench_load(mesh: LiveMesh, concurrency: tuple[int, ...], rounds: int, duration: float, tmp: Path) -> Body:
    """Rounds of (for each concurrency: direct, then through the waypoint), each run bounded by
    `duration` and a request cap. CPU seconds of every Envoy are read around each run."""
    wrk = shutil.which("wrk")
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)
    paths = {"direct": f"http://{mesh.backend_ip['v1']}:9080/",
             "waypoint": f"http://127.0.0.1:{mesh.client_port}/"}

    def load(url: str, c: int, seconds: float) -> Body:
        return run_wrk(wrk, script, url, c, seconds) if wrk else run_python_load(url, c, seconds)

    for url in paths.values():  # warm-up: connections, pools, tunnels
        load(url, 4, 1)
    pids = {**mesh.pids, "waypoint": mesh.waypoint_pid()}
    runs: list[Body] = []
    before_split = mesh.backend_counts()
    for rnd in range(rounds):
        for c in concurrency:
            for path, url in paths.items():
                cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
                busy0, own0 = machine_busy_seconds(), own_seconds()
                result = load(url, c, duration)
                cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
                others = machine_busy_seconds() - busy0 - (own_seconds() - own0) - sum(cpu.values())
                result.update(path=path, connections=c, round=rnd + 1, cpu_s=cpu,
                              cpu_us_per_request={k: v / max(1, result["requests"]) * 1e6 for k, v in cpu.items()},
                              other_processes_cpus=max(0.0, others) / result["seconds"])
                runs.append(result)
                errors = sum(result["errors"].values())
                print(f"  round {rnd + 1} c={c:<2} {path:8}: {result['rps']:8,.0f} req/s, "
                      f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, {errors} errors; "
                      f"other processes used {result['other_processes_cpus']:.2f} CPUs", flush=True)
    after_split = mesh.backend_counts()
    waypoint_requests = sum(r["requests"] for r in runs if r["path"] == "waypoint")
    direct_requests = sum(r["requests"] for r in runs if r["path"] == "direct")
    counts = {k: after_split.get(k, 0) - before_split.get(k, 0) for k in after_split}
    through_waypoint = sum(counts.values()) - direct_requests  # direct runs only ever reach v1
    summary = {}
    for c in concurrency:
        row: Body = {}
        for path in paths:
            rs = [r for r in runs if r["path"] == path and r["connections"] == c]
            row[path] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
            row[path]["rps_range"] = [min(r["rps"] for r in rs), max(r["rps"] for r in rs)]
            row[path]["errors"] = sum(sum(r["errors"].values()) for r in rs)
            row[path]["other_processes_cpus"] = statistics.median(r["other_processes_cpus"] for r in rs)
            row[path]["cpu_us_per_request"] = {k: statistics.median(r["cpu_us_per_request"][k] for r in rs)
                                               for k in pids}
        row["ratio"] = {"rps": row["waypoint"]["rps"] / row["direct"]["rps"],
                        "p50": row["waypoint"]["p50_ms"] / row["direct"]["p50_ms"],
                        "p99": row["waypoint"]["p99_ms"] / row["direct"]["p99_ms"]}
        summary[str(c)] = row
    return {"client": "wrk" if wrk else "python", "wrk": wrk, "rounds": rounds, "duration_s": duration,
            "concurrency": list(concurrency), "request_cap_per_run": WRK_REQUEST_CAP if wrk else 200_000,
            "paths": {"direct": "load client -> backend Envoy direct_response (pod alias :9080)",
                      "waypoint": "load client -> client Envoy (tcp_proxy tunneling_config, mTLS HBONE) -> waypoint "
                                  "Envoy (connect_terminate -> main_internal -> VirtualService 90/10 -> "
                                  "connect_originate, mTLS HBONE) -> node-proxy Envoy -> backend Envoy"},
            "summary": summary, "runs": runs,
            "split": {"v2_share_through_waypoint": counts.get("v2", 0) / max(1, through_waypoint),
                      "backend_2xx": counts, "waypoint_requests": waypoint_requests,
                      "direct_requests": direct_requests}}


def bench_live(changes: int, concurrency: tuple[int, ...], rounds: int, duration: float,
               envoy: str) -> tuple[Body, Body]:
    with tempfile.TemporaryDirectory(prefix="mw-dp-") as tmp_name:
        tmp = Path(tmp_name)
        mesh = LiveMesh(tmp, envoy)
        try:
            t0 = time.perf_counter()
            mesh.start()
            print(f"  live mesh up in {time.perf_counter() - t0:.1f} s: waypoint {mesh.waypoint_ip()}, "
                  f"VIP {mesh.vip}, backends {mesh.backend_ip}", flush=True)
            ack = bench_ack(mesh, changes)
            mesh.wait_serving()
            load = bench_load(mesh, concurrency, rounds, duration, tmp)
        finally:
            mesh.close()
    return ack, load


# == profile ======================================================================================

def profile_translation(path: Path) -> None:
    """cProfile of translating 10 of the 100-namespace waypoints and the 25x10 waypoint."""
    big, _ = build_topology(100, 10, 10, 1)
    small, _ = build_topology(1, 25, 10, 1)
    views = [(MeshView.build(big), [f"ns-{n}" for n in range(1, 11)]), (MeshView.build(small), ["ns-1"])]
    out = io.StringIO()
    for view, namespaces in views:
        prof = cProfile.Profile()
        prof.enable()
        for ns in namespaces:
            build_waypoint_config(view, waypoint_proxy(ns)).messages()
        prof.disable()
        out.write(f"== {len(view.services)} services / {len(view.pods)} pods in the view; "
                  f"translated {len(namespaces)} waypoint(s)\n")
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
    path.write_text(out.getvalue())
    print(f"  wrote {path}", flush=True)


# == output =======================================================================================

def tool_versions(envoy: str) -> Body:
    out: Body = {}
    try:
        out["envoy"] = subprocess.run([envoy, "--version"], capture_output=True, text=True,
                                      timeout=30).stdout.strip().split("version: ")[-1]
    except Exception:  # pragma: no cover
        out["envoy"] = None
    wrk = shutil.which("wrk")
    if wrk:
        text = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10).stdout
        out["wrk"] = text.split(" [")[0].strip() or None
    try:
        out["protobuf"] = __import__("google.protobuf", fromlist=["__version__"]).__version__
        from google.protobuf.internal import api_implementation
        out["protobuf_backend"] = api_implementation.Type()
    except Exception:  # pragma: no cover
        pass
    return out


def _fmt_b(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _md_translation(report: Body, measurements: list[Measurement]) -> list[str]:
    machine, tr = report["machine"], report["translation"]
    lines = [
        f"# Data-plane benchmark ({report['mode']})", "",
        f"Python {machine['python']} on {machine['platform']}, {machine['cpu_count']} CPUs; "
        f"Envoy {machine.get('envoy')} (`--concurrency 1`); load client {report['load']['client']}"
        f"{' (' + machine['wrk'] + ')' if machine.get('wrk') and report['load']['client'] == 'wrk' else ''}; "
        f"protobuf {machine.get('protobuf')} ({machine.get('protobuf_backend')}); "
        f"meshway {machine.get('meshway_commit')}; "
        f"run {report['started']} ({report['duration_s']:.0f} s).", "",
        "## 1. Translation (`build_waypoint_config` + `messages()`)", "",
        f"1a: one waypoint, {tr['one']['services']} services x 10 pods, 3 with DestinationRule subsets v1/v2 and a "
        f"90/10 VirtualService. 1b: {tr['many']['waypoints']} namespaces, one waypoint each, "
        f"{tr['many']['services']:,} services, {tr['many']['pods']:,} pods, "
        f"{tr['many']['virtual_services']} VirtualServices.", "",
        "| measurement | median | min | runs | notes |", "|---|---|---|---|---|",
    ]
    for m in measurements:
        lines.append(f"| {m.name} | {fmt_time(m.median)} | {fmt_time(m.min)} | {len(m.samples)} | {m.notes} |")
    types = [t for t in ("CDS", "EDS", "LDS", "RDS", "SDS") if t in tr["one"]["bytes"]]
    lines += ["", "Serialized bytes (sum of `SerializeToString()`; no secrets; routes over RDS):", "",
              "| config | " + " | ".join(types) + " | total |", "|---|" + "---|" * (len(types) + 1),
              "| 1a one waypoint (25 services) | " + " | ".join(f"{tr['one']['bytes'][t]:,}" for t in types)
              + f" | **{tr['one']['bytes']['total']:,}** |",
              "| 1b average per waypoint (10 services) | "
              + " | ".join(f"{tr['many']['avg_bytes_per_waypoint'].get(t, 0):,}" for t in types)
              + f" | **{tr['many']['avg_bytes_per_waypoint']['total']:,}** |", ""]
    return lines


def _md_bytes(b: Body) -> list[str]:
    lines = ["## 2. Config bytes: waypoints vs unscoped sidecars (seed topology)", "",
             "2 namespaces x 25 deployments x 10 pods, 2 waypoint replicas per namespace. A sidecar's config is "
             "approximated by translating with a scope holding all 50 services (one translation per namespace, "
             "times its pods).", "",
             "| topology | waypoint config (each) | waypoint total | sidecar config (each) | sidecar total | "
             "bytes ratio | configurations ratio |", "|---|---|---|---|---|---|---|"]
    wp_each = " / ".join(_fmt_b(r["bytes"]["total"]) for r in b["waypoints"])
    sc_each = " / ".join(_fmt_b(r["bytes"]["total"]) for r in b["sidecars"])
    conf = b["configurations"]
    lines.append(f"| pods Ready with IPs, no routing rules | {wp_each} x {b['waypoint_replicas']} replicas | "
                 f"{_fmt_b(b['waypoint_total_bytes'])} | {sc_each} x {b['sidecar_count']} pods | "
                 f"{_fmt_b(b['sidecar_total_bytes'])} | **{100 * b['ratio']:.2f}%** | "
                 f"{conf['waypoint']} / {conf['sidecar_namespace_scoped']:,} = {100 * conf['ratio']:.1f}% |")
    return lines


def _md_ack(a: Body) -> list[str]:
    lines = ["", "## 3. Store change -> waypoint Envoy ACK", "",
             f"{a['changes']} VirtualService weight changes (`Store.apply`), one at a time; latency until "
             f"`cache.status[node][RDS]` is SYNCED at the new snapshot's version (polled every 2 ms). Control plane "
             + (f"defaults: store commits signalled (no poll), debounce {a['debounce_s'] * 1e3:.0f} ms "
                f"(at most {a['debounce_max_s'] * 1e3:.0f} ms under a burst), "
                if a.get("debounce_max_s") is not None else
                f"defaults: store poll {a['poll_s'] * 1e3:.0f} ms, debounce {a['debounce_s'] * 1e3:.0f} ms, ") +
             f"{'Delta' if a['delta_xds'] else 'SotW'} ADS.", "",
             "| part | p50 | p99 | min | max |", "|---|---|---|---|---|"]
    for key, label in (("total", "**store change -> RDS ACK**"), ("apply", "of which `Store.apply`"),
                       ("to_snapshot", "store change -> new snapshot in the cache (signal + debounce + sync)"),
                       ("sync", "of which `ControlPlane.sync` (translate + set_snapshot)"),
                       ("snapshot_to_ack", "new snapshot -> RDS ACK (push, Envoy applies, ACK)")):
        s = a[key]
        if s:
            lines.append(f"| {label} | {fmt_time(s['p50'])} | {fmt_time(s['p99'])} | {fmt_time(s['min'])} | "
                         f"{fmt_time(s['max'])} |")
    return lines


def _md_load(ld: Body, machine: Body) -> list[str]:
    lines = ["", "## 4. Requests through the waypoint vs direct", "",
             f"{ld['rounds']} round(s) of {ld['duration_s']:g} s runs per path and concurrency, interleaved; medians "
             f"over rounds (rps range in brackets). `direct`: {ld['paths']['direct']}. `waypoint`: "
             f"{ld['paths']['waypoint']}.", "",
             "| connections | path | req/s | p50 | p99 | errors | waypoint CPU / req | all Envoys CPU / req | "
             "other processes |", "|---|---|---|---|---|---|---|---|---|"]
    for c, row in ld["summary"].items():
        for route in ("direct", "waypoint"):
            r = row[route]
            cpu = r["cpu_us_per_request"]
            wp_cpu = f"{cpu['waypoint']:.0f} µs" if route == "waypoint" else "—"
            lines.append(f"| {c} | {route} | {r['rps']:,.0f} [{r['rps_range'][0]:,.0f}–{r['rps_range'][1]:,.0f}] | "
                         f"{r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['errors']} | {wp_cpu} | "
                         f"{sum(cpu.values()):.0f} µs | {r['other_processes_cpus']:.2f} CPUs |")
        ratio = row["ratio"]
        lines.append(f"| {c} | **waypoint / direct** | **{ratio['rps']:.2f}x** | **{ratio['p50']:.1f}x** | "
                     f"**{ratio['p99']:.1f}x** | | | | |")
    split = ld["split"]
    lines += ["", f"Requests through the waypoint that reached v2: {100 * split['v2_share_through_waypoint']:.1f}% "
                  f"(VirtualService 90/10; {split['waypoint_requests']:,} requests).", "",
              "Times are wall clock. All processes share the machine's CPUs (load client, 4 Envoys on the waypoint "
              "path, the control plane thread), so the load numbers are contention-bound lower bounds; compare the "
              "two paths of one run, not runs on different machines. CPU / req is each Envoy's utime + stime "
              "(/proc) over the run divided by its requests. 'other processes' is the machine's user + system CPU "
              "time (/proc/stat) during the run minus this benchmark's own processes, in CPUs; above ~0.1 the run "
              f"shared the machine with other work (load average at start: {machine['loadavg_at_start'][0]:.2f}).",
              ""]
    return lines


def write_markdown(path: Path, report: Body, measurements: list[Measurement]) -> None:
    lines = (_md_translation(report, measurements) + _md_bytes(report["bytes"]) + _md_ack(report["ack"])
             + _md_load(report["load"], report["machine"]))
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, changes and shorter load runs")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: %(default)s)")
    ap.add_argument("--envoy", default=None, help="envoy binary (default: the one next to this Python)")
    ap.add_argument("--profile", action="store_true", help="also write a cProfile of translation to the results")
    args = ap.parse_args(argv)
    envoy = args.envoy or find_envoy()

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    loadavg = os.getloadavg()
    if loadavg[0] > 0.5:
        print(f"note: load average {loadavg[0]:.2f} at start; other work on the machine skews the live numbers "
              "(see 'other processes' in the results)", flush=True)
    if args.quick:
        reps = {"one": 3, "many": 1}
        changes, rounds, duration = 10, 1, 2.0
    else:
        reps = {"one": 7, "many": 3}
        changes, rounds, duration = 30, 3, 5.0
    concurrency = (1, 16)

    print("1. translation", flush=True)
    one_ms, one_info = bench_translate_one(reps["one"])
    many_ms, many_info = bench_translate_many(reps["many"])
    print("2. waypoint vs sidecar bytes (seed topology)", flush=True)
    bytes_info = bench_bytes()
    print("3/4. live mesh: store change -> ACK, then load", flush=True)
    ack, load = bench_live(changes, concurrency, rounds, duration, envoy)
    stem = "dataplane-quick" if args.quick else "dataplane"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile_translation(args.out / f"{stem}-profile.txt")
    duration_s = time.perf_counter() - t0

    measurements = one_ms + many_ms
    one_build, many_build = one_ms[0], many_ms[1]
    per_wp = many_build.median / many_info["waypoints"]
    per_svc = per_wp / (many_info["services"] / many_info["waypoints"])
    many_build.notes = (f"{fmt_time(per_wp)} per waypoint, {fmt_time(per_svc)} per service "
                        f"(1a.i: {fmt_time(one_build.median / one_info['services'])} per service): each waypoint "
                        "scans the whole mesh (README)")
    report = {
        "benchmark": "dataplane", "mode": "quick" if args.quick else "full",
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_s": duration_s,
        "machine": {**machine_info(), **tool_versions(envoy), "loadavg_at_start": loadavg},
        "settings": {"repetitions": reps, "changes": changes, "load_rounds": rounds, "load_duration_s": duration,
                     "concurrency": list(concurrency)},
        "translation": {"one": one_info, "many": many_info, "measurements": [m.to_json() for m in measurements]},
        "bytes": bytes_info, "ack": ack, "load": load,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / f"{stem}.md", report, measurements)
    c16 = load["summary"][str(concurrency[-1])]["ratio"]["rps"]
    print(f"bytes ratio {100 * bytes_info['ratio']:.2f}%; ACK p50 {fmt_time(ack['total']['p50'])}; "
          f"c={concurrency[-1]} waypoint/direct {c16:.2f}x; total {duration_s:.0f} s; "
          f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
