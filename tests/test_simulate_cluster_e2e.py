"""Request simulation against the network-namespace cluster (root, Linux; run in CI; skipped elsewhere,
failed under MESHWAY_REQUIRE_E2E=1): for requests from the curl pod, `simulate` (node proxies and
waypoint followed from their generated config) and real traffic agree: the 90/10 split through the
waypoint, a DENY policy's 403, an ALLOW policy for another identity, and an L4 policy that admits the
waypoint but refuses the caller once the service opts out of the waypoint (no HTTP answer)."""
from __future__ import annotations

import time

from cluster_support import Mesh, cluster_fixture, via_waypoint

from meshway.mesh.request import parse_request
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.model import find_kind, load_yaml
from meshway.xds.simulate import simulate

mesh = cluster_fixture()

DENY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-jason, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules:
  - to: [{operation: {methods: [GET], paths: ["/reviews/*"]}}]
    when: [{key: "request.headers[x-user]", values: [jason]}]
"""
ALLOW = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-productpage, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]}]
"""
L4 = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-l4, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/waypoint]}}]}]
"""


def simulated(mesh: Mesh, method: str, path: str, headers: dict, client: str = "curl") -> dict:
    view = MeshView.build(mesh.store.snapshot(XDS_KINDS)[1])
    source = next(p for p in view.pods.values() if p.namespace == "default" and p.name.startswith(client))
    text = f"{method} http://reviews:9080{path}" + "".join(f" -H {k}: {v}" for k, v in headers.items())
    return simulate(view, parse_request(text), source, time.time())


def agree(mesh: Mesh, method: str, path: str, headers: dict, client: str = "curl", count: int = 10) -> tuple:
    """(whether real traffic matches the simulation, what each said)."""
    doc = simulated(mesh, method, path, headers, client)
    outcome = doc["outcome"]
    results = mesh.requests("reviews", count, path=path, method=method, client=client, headers=headers)
    statuses = {r[0] for r in results}
    if outcome["status"] is not None:
        ok = statuses == {outcome["status"]}
    elif outcome["result"] == "denied":  # refused by a node proxy: no HTTP answer at all
        ok = statuses == {0}
    else:
        subsets = {d["subset"] for d in outcome["destinations"] if d["weight"] > 0}
        versions = {r[2] for r in results}
        through = doc["waypoint"] is not None
        ok = statuses == {200} and all(via_waypoint(r) == through for r in results) and (
            versions <= subsets if through else True)
    return ok, (outcome["result"], outcome["status"], doc["node_proxy"]["path"]), sorted(statuses)


def check(mesh: Mesh, method: str, path: str, headers: dict, client: str = "curl", timeout: float = 10) -> dict:
    """Real traffic agrees with the simulation, within `timeout` of a config change (pushes are async)."""
    last = []

    def matches() -> bool:
        ok, *said = agree(mesh, method, path, headers, client)
        last[:] = said
        return ok
    try:
        mesh.wait_until(matches, timeout, f"{client} {method} {path} {headers}")
    except BaseException:
        raise AssertionError(f"{client} {method} {path} {headers}: simulated {last[0]}, real statuses {last[1]}")
    return simulated(mesh, method, path, headers, client)["outcome"]


def test_split_deny_allow_and_l4_agree_with_real_traffic(mesh: Mesh) -> None:
    outcome = check(mesh, "GET", "/reviews/0", {})
    assert [(d["subset"], d["weight"]) for d in outcome["destinations"]] == [("v1", 90.0), ("v2", 10.0)]
    mesh.store.apply(load_yaml(DENY, "deny.yaml"))
    assert check(mesh, "GET", "/reviews/1", {"x-user": "jason"})["status"] == 403
    assert check(mesh, "GET", "/reviews/1", {"x-user": "bob"})["result"] == "allowed"
    assert check(mesh, "DELETE", "/reviews/1", {"x-user": "jason"})["result"] == "allowed"
    mesh.store.apply(load_yaml(ALLOW, "allow.yaml"))
    assert check(mesh, "GET", "/reviews/1", {"x-user": "bob"})["status"] == 403
    assert check(mesh, "GET", "/reviews/1", {"x-user": "bob"}, client="productpage")["result"] == "allowed"
    assert check(mesh, "GET", "/reviews/1", {"x-user": "jason"}, client="productpage")["status"] == 403
    mesh.store.delete([(find_kind("ap"), "default", n) for n in ("allow-productpage", "deny-jason")])
    mesh.store.apply(load_yaml(L4, "l4.yaml"))
    assert check(mesh, "GET", "/reviews/1", {})["result"] == "allowed"  # through the waypoint: its identity
    mesh.label("svc", "reviews", {"istio.io/use-waypoint": "none"})
    try:
        assert check(mesh, "GET", "/reviews/1", {})["result"] == "denied"  # direct: the caller's own identity
    finally:
        mesh.label("svc", "reviews", {}, remove=("istio.io/use-waypoint",))
        mesh.store.delete([(find_kind("ap"), "default", "reviews-l4")])
