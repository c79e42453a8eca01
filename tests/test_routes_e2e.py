"""Route changes drop nothing (issue 9 item 4), in the network-namespace cluster (root, Linux; run
in CI): clients in the curl pod keep HTTP/1.1 connections open to reviews (node proxy -> HBONE ->
waypoint) while the VirtualService's weights change 50 times. Routes travel over RDS, so a change
updates one RouteConfiguration: no request fails, no connection is closed, the waypoint's listener
is never updated in place, and the open connections follow the new weights. DestinationRule changes
(clusters swapped, their endpoints re-sent) under the same load fail nothing either."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from cluster_support import Mesh, cluster_fixture
from fault_table import record_fault
from meshway.model import load_yaml
from meshway.runtime.envoy_admin import fetch_admin

mesh = cluster_fixture()

# Keep-alive clients: each thread holds one connection and sends requests on it until the end; an
# error or a `Connection: close` is counted, and the thread reconnects.
KEEPALIVE_CLIENT = textwrap.dedent('''
    import collections, http.client, json, sys, threading, time
    host, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    end = time.time() + seconds
    counts = collections.Counter()
    lock = threading.Lock()

    def run():
        conn, seen = None, collections.Counter()
        while time.time() < end:
            if conn is None:
                conn = http.client.HTTPConnection(host, 9080, timeout=5)
                seen["connections"] += 1
            try:
                conn.request("GET", "/reviews/0")
                r = conn.getresponse()
                body = r.read()
                seen["ok" if r.status == 200 else f"status {r.status}"] += 1
                if r.status == 200 and time.time() > end - 1.0:  # the last second: which versions answer
                    seen["tail " + str(json.loads(body).get("version"))] += 1
                if (r.getheader("connection") or "").lower() == "close":
                    seen["connection: close"] += 1
                    conn.close()
                    conn = None
            except Exception as exc:
                seen["error " + type(exc).__name__] += 1
                conn.close()
                conn = None
            time.sleep(0.005)
        with lock:
            counts.update(seen)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps(counts))
''')

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: V1}
    - {destination: {host: reviews, subset: v2}, weight: V2}
"""


def in_place_updates(mesh: Mesh) -> int:
    text = fetch_admin(mesh.waypoint_admin(), "/stats?filter=listener_manager.listener_in_place_updated").decode()
    return int(text.split(":")[1])


def keepalive_clients(mesh: Mesh, seconds: float, threads: int = 4) -> subprocess.Popen:
    script = mesh.state / "keepalive.py"
    script.write_text(KEEPALIVE_CLIENT)
    cmd = ["ip", "netns", "exec", mesh.netns(mesh.pod("curl")), sys.executable, str(script), "reviews",
           str(seconds), str(threads)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fifty_weight_changes_on_keep_alive_connections_fail_nothing(mesh: Mesh) -> None:
    updates = in_place_updates(mesh)
    changes = [(i, 100 - i) for i in range(10, 59)] + [(0, 100)]  # 50 changes, the last: all to v2
    runner = keepalive_clients(mesh, seconds=len(changes) * 0.15 + 6.0)  # room for a slow (loaded) last push
    time.sleep(1.0)
    started = time.monotonic()
    try:
        for v1, v2 in changes:
            mesh.store.apply(load_yaml(VS.replace("V1", str(v1)).replace("V2", str(v2)), "vs.yaml"))
            time.sleep(0.15)
        took = time.monotonic() - started
    finally:
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    counts = json.loads(out)
    failed = sum(v for k, v in counts.items() if k.startswith(("error", "status")))
    closed = counts.get("connection: close", 0)
    record_fault(f"{len(changes)} VirtualService weight changes in {took:.1f} s, 4 keep-alive clients",
                 f"{failed} failed of {counts.get('ok', 0) + failed}, {closed} connections closed, "
                 f"{in_place_updates(mesh) - updates} listener updates in place", "0 failed")
    assert failed == 0 and closed == 0, counts
    assert counts["connections"] == 4, counts  # the same four connections throughout
    assert counts.get("ok", 0) > 500, counts
    assert in_place_updates(mesh) == updates  # routes over RDS: the listener never changed
    # the last change (all to v2) reached the open connections: their last second is all v2
    assert {k for k in counts if k.startswith("tail ")} == {"tail v2"}, counts
    mesh.store.apply(load_yaml(VS.replace("V1", "90").replace("V2", "10"), "vs.yaml"))


DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: POLICY
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""
POLICIES = ["{loadBalancer: {simple: ROUND_ROBIN}}", "{loadBalancer: {simple: RANDOM}}",
            "{connectionPool: {tcp: {maxConnections: 1000}, http: {maxRequestsPerConnection: 100}}}",
            "{outlierDetection: {consecutive5xxErrors: 50, interval: 10s}}",
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}", "{}"]


def test_destination_rule_changes_on_keep_alive_connections_fail_nothing(mesh: Mesh) -> None:
    """Each change modifies the service's clusters (CDS + their endpoints again): requests on open
    connections keep being answered while Envoy swaps the clusters."""
    runner = keepalive_clients(mesh, seconds=len(POLICIES) * 4 * 0.25 + 3.0)
    time.sleep(1.0)
    try:
        for policy in POLICIES * 4:
            mesh.store.apply(load_yaml(DR.replace("POLICY", policy), "dr.yaml"))
            time.sleep(0.25)
    finally:
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    counts = json.loads(out)
    failed = sum(v for k, v in counts.items() if k.startswith(("error", "status")))
    record_fault(f"{len(POLICIES) * 4} DestinationRule changes, 4 keep-alive clients",
                 f"{failed} failed of {counts.get('ok', 0) + failed}", "0 failed")
    assert failed == 0 and counts.get("connection: close", 0) == 0, counts
    assert counts.get("ok", 0) > 300, counts
