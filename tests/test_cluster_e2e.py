"""The mesh on one host, end to end (root, Linux; run in CI): a 2-node network-namespace cluster,
bookinfo + a curl pod, node proxies (ztunnel Envoys) capturing with iptables, a waypoint in its own
pod namespace. Traffic is sent from inside the curl pod; whether it went through the waypoint is
read from the waypoint's own stats and response headers, not assumed."""
from __future__ import annotations

import json
import time

from cluster_support import Mesh, cluster_fixture, via_waypoint
from meshway.model import find_kind, load_yaml

mesh = cluster_fixture()


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
        # A policy for the whole waypoint applies to traffic addressed to its pods too.
        mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: pod-waypoint-no-delete, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: pod-waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
""", "ap.yaml"))
        mesh.wait_until(lambda: mesh.requests(ip, 1, method="DELETE")[0][0] == 403, 5, "DENY on the pod waypoint")
        assert mesh.requests(ip, 1)[0][0] == 200
    finally:
        mesh.store.delete([(find_kind("ap"), "default", "pod-waypoint-no-delete")], ignore_not_found=True)
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
    inbound, where L4 policy applies (a principal cannot be proven without mTLS), whether it comes
    by pod IP or through the service VIP, from another node or from the destination's own node."""
    details_node = mesh.pod("details")["spec"]["nodeName"]
    other_node = "node-2" if details_node == "node-1" else "node-1"
    mesh.store.apply(load_yaml(f"""
apiVersion: v1
kind: Namespace
metadata: {{name: outside}}
---
apiVersion: v1
kind: Pod
metadata: {{name: curl-outside, namespace: outside, labels: {{app: curl-outside}}}}
spec: {{nodeName: {other_node}, containers: [{{name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: near-curl, namespace: outside, labels: {{app: curl-outside}}}}
spec: {{nodeName: {details_node}, containers: [{{name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}}]}}
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
        for client in ("curl-outside", "near-curl"):
            for target in (details_ip, "details.default"):
                refused = mesh.requests(target, 3, "/details/0", client=client, client_ns="outside")
                assert all(r[0] != 200 for r in refused), (client, target, refused)
        near = mesh.requests("reviews.default", 5, client="near-curl", client_ns="outside")
        assert all(r[0] == 200 for r in near), near  # services without such a policy still answer
        assert all(r[0] == 200 for r in mesh.requests("details", 3, "/details/0"))  # mesh clients still pass
    finally:
        mesh.store.delete([(find_kind("ap"), "default", "mesh-only")], ignore_not_found=True)
        mesh.store.delete([(find_kind("ns"), "", "outside")])


def meshway_logs(mesh: Mesh, *args: str) -> list[dict]:
    """JSON lines of `meshway logs ARGS` (the CLI users run), other lines skipped."""
    from click.testing import CliRunner

    from meshway.cli import clustercmds  # noqa: F401  (registers `logs`)
    from meshway.cli.main import cli
    result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), "logs", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_access_log_one_line_per_request_and_node_proxy_connection_logs(mesh: Mesh) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
""", "telemetry.yaml"))
    try:
        path = f"/reviews/{int(time.time() * 1000) % 100000}"
        mesh.wait_until(lambda: any(e.get("path") == path for e in meshway_logs(mesh, "deploy/waypoint")) or
                        not mesh.requests("reviews", 1, path=path), 5, "access logging switched on")
        counted = path + "?n=7"  # a path of its own: the warm-up's lines may still be arriving
        mine = lambda: [e for e in meshway_logs(mesh, "deploy/waypoint") if e.get("path") == counted]  # noqa: E731
        results = mesh.requests("reviews", 7, path=counted)
        assert all(r[0] == 200 for r in results)
        mesh.wait_until(lambda: len(mine()) >= 7, 5, "7 access log lines")
        time.sleep(1.5)  # longer than the log flush interval: an eighth line would show by now
        lines = mine()
        assert len(lines) == 7, lines  # exactly one per request
        for e in lines:
            assert (e["method"], e["response_code"]) == ("GET", 200)
            assert e["upstream_cluster"].startswith("inbound-vip|9080|http")
            assert e["source_principal"] == "spiffe://cluster.local/ns/default/sa/curl"
            assert isinstance(e["duration"], int)
    finally:
        mesh.store.delete([(find_kind("telemetry"), "istio-system", "mesh-default")])
    # Node proxies log every connection, as ztunnel does: the client's node the outbound side
    # (to the waypoint), the waypoint's node the inbound side.
    curl = mesh.pod("curl")
    node = curl["spec"]["nodeName"]
    outbound = [e for e in meshway_logs(mesh, "-n", "istio-system", f"ztunnel-{node}")
                if e.get("direction") == "outbound" and e.get("dst.service") == "reviews.default.svc.cluster.local"]
    assert outbound, "no outbound connection log on the client's node proxy"
    assert outbound[-1]["src.identity"] == "spiffe://cluster.local/ns/default/sa/curl"
    assert outbound[-1]["dst.waypoint"] == "default/waypoint"
    assert outbound[-1]["src.addr"].startswith(curl["status"]["podIP"] + ":")
    # Without a waypoint: the destination's node proxy logs the tunnel's end, with the caller's identity.
    mesh.label("svc", "details", {"istio.io/use-waypoint": "none"})
    try:
        details = mesh.pod("details")
        dest_node = details["spec"]["nodeName"]

        def inbound() -> list[dict]:
            return [e for e in meshway_logs(mesh, "-n", "istio-system", f"ztunnel-{dest_node}")
                    if e.get("direction") == "inbound" and e.get("dst.workload") == details["metadata"]["name"]
                    and e.get("src.identity") == "spiffe://cluster.local/ns/default/sa/curl"]

        mesh.wait_until(lambda: mesh.requests("details", 1, path="/details/0")[0][0] == 200 and inbound(), 5,
                        "an inbound connection log at the destination's node proxy")
        entry = inbound()[-1]
        assert entry["dst.identity"] == "spiffe://cluster.local/ns/default/sa/bookinfo-details"
        assert entry["dst.hbone_addr"] == f"{details['status']['podIP']}:9080"
        # The tunnel comes from the client's node proxy (its node address), not from the pod itself.
        assert entry["src.addr"].startswith(curl["status"]["podIP"].rsplit(".", 1)[0] + ".1:")
        assert entry["bytes_sent"] > 0 and entry["bytes_recv"] > 0
    finally:
        mesh.label("svc", "details", {}, remove=("istio.io/use-waypoint",))
