"""Incremental translation equals translation from scratch: over random sequences of changes to a
store (routes, weights, DestinationRules, pods coming and going and changing labels, enrollment,
HTTPRoutes, policies), a waypoint's config and a node proxy's config built with their memos
(rebuilding only the units a change touched) are identical, resource for resource and problem for
problem, to builds without one. A third build is told which keys each change touched
(`meshway.xds.dirty`) and skips the units that read none of them: it must be identical too."""
from __future__ import annotations

import random
from pathlib import Path

import yaml

from conftest import apply, set_labels
from meshway.mesh.view import XDS_KINDS, MeshView, expand_kinds
from meshway.model import find_kind
from meshway.store.informer import ObjectCache
from meshway.xds.build_snapshot import build_waypoint_config
from meshway.xds.dirty import find_change_keys
from meshway.xds.build_ztunnel import NodeProxy, build_ztunnel_config
from meshway.xds.memo import Memo
from meshway.xds.proxy import Proxy

DEMO = Path(__file__).resolve().parents[1] / "meshway" / "demo"
WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"""
SERVICES = ("reviews", "ratings", "details", "productpage")
# Spans of `reviews` go to a collector whose endpoints are the `ratings` pods: a pod change must
# reach the collector's cluster even in a build told it changed only pods.
TRACING = """
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: zipkin
      zipkin: {service: ratings.default.svc.cluster.local, port: 9080}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-tracing, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  tracing: [{providers: [{name: zipkin}]}]
"""


def vs(rng: random.Random, name: str) -> dict:
    """Routes to another service (some to one of its subsets: which exist depends on that service's
    DestinationRule) and a weighted split over two of its own subsets."""
    weight = rng.randrange(0, 101, 10)
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": f"vs-{name}", "namespace": "default"},
            "spec": {"hosts": [name], "http": [
                {"match": [{"uri": {"prefix": "/p"}}], "route": [{"destination": {
                    "host": rng.choice(SERVICES),
                    **({"subset": rng.choice(["v1", "v3"])} if rng.random() < 0.5 else {})}}],
                 "timeout": f"{rng.randint(1, 9)}s"},
                {"route": [{"destination": {"host": name, "subset": "v1"}, "weight": weight},
                           {"destination": {"host": name, "subset": rng.choice(["v2", "v9"])},
                            "weight": 100 - weight}]}]}}


def dr(rng: random.Random, name: str) -> dict:
    subsets = [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")[:rng.randint(1, 3)]]
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": f"dr-{name}", "namespace": "default"},
            "spec": {"host": name, "subsets": subsets, "trafficPolicy": {
                "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}} if rng.random() < 0.3 else
                {"simple": rng.choice(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])},
                "connectionPool": {"tcp": {"maxConnections": rng.randint(1, 100)}}}}}


def http_route(rng: random.Random, name: str) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"route-{name}", "namespace": "default"},
            "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": name}],
                     "rules": [{"backendRefs": [{"name": name, "port": 9080, "weight": rng.randint(1, 9)}]}]}}


def policy(rng: random.Random, name: str) -> dict:
    if rng.random() < 0.5:  # a node-proxy (L4) policy on the service's pods
        return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": f"ap-{name}", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"app": name}}, "action": "ALLOW",
                         "rules": [{"from": [{"source": {"namespaces": [rng.choice(["default", "other"])]}}]}]}}
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": f"ap-{name}", "namespace": "default"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": name}], "action": "DENY",
                     "rules": [{"to": [{"operation": {"methods": [rng.choice(["DELETE", "PUT"])]}}]}]}}


def change(store, rng: random.Random) -> None:
    name = rng.choice(SERVICES)
    kind, make = rng.choice([("VirtualService", vs), ("DestinationRule", dr), ("HTTPRoute", http_route),
                             ("AuthorizationPolicy", policy), ("Pod", None), ("Service", None)])
    if kind == "Pod":
        pod = rng.choice(store.list(find_kind("pod"), "default"))
        meta = pod["metadata"]
        if rng.random() < 0.5:
            ready = rng.choice(["True", "False"])
            store.write_status("Pod", "default", meta["name"], {"conditions": [{"type": "Ready", "status": ready}]})
        else:
            set_labels(store, "pod", "default", meta["name"], {"version": rng.choice(["v1", "v2", "v3"])},
                       overwrite=True)
    elif kind == "Service":
        if rng.random() < 0.5:
            set_labels(store, "svc", "default", name, {"istio.io/use-waypoint": "none"}, overwrite=True)
        else:
            set_labels(store, "svc", "default", name, {}, remove=["istio.io/use-waypoint"])
    elif rng.random() < 0.25:
        store.delete([(find_kind(kind), "default", make(rng, name)["metadata"]["name"])], ignore_not_found=True)
    else:
        apply(store, yaml.safe_dump(make(rng, name)))


def test_incremental_equals_from_scratch_on_random_changes(store, make_waypoint_ready):
    for f in ("bookinfo.yaml", "bookinfo-client.yaml"):
        apply(store, (DEMO / f).read_text())
    apply(store, WAYPOINT)
    apply(store, TRACING)
    set_labels(store, "namespace", None, "default", {"istio.io/use-waypoint": "waypoint",
                                                     "istio.io/dataplane-mode": "ambient"})
    make_waypoint_ready(store, "default", "waypoint")
    for pod in store.list(find_kind("pod"), "default"):
        store.write_status("Pod", "default", pod["metadata"]["name"],
                           {"conditions": [{"type": "Ready", "status": "True"}]})
    proxy = Proxy("waypoint~test", "10.244.1.100", "default", "waypoint", "waypoint")
    memo, reused, changed, previous, most_bound = Memo(), 0, 0, None, 0
    node_memo, node_reused = Memo(), 0
    node = NodeProxy("ztunnel~test", store.list(find_kind("pod"), "default")[0]["spec"]["nodeName"])
    rv, snapshot = store.snapshot(XDS_KINDS)
    view = MeshView.build(snapshot)
    objects, keyed_memo, keyed_builds, skipped = ObjectCache(snapshot), Memo(), 0, 0
    for step in range(120):
        rng = random.Random(step)
        for _ in range(rng.randint(1, 3)):
            change(store, rng)
        changes = store.db.changes_since(rv)
        rv = changes[-1].rv if changes else rv
        kinds = {c.kind for c in changes} & set(XDS_KINDS)
        keys = find_change_keys((c.kind, objects.find(c.kind, c.namespace, c.name), c.body)
                                for c in changes if c.kind in XDS_KINDS)
        objects.apply(changes)
        view = view.with_changes(store.snapshot(expand_kinds(kinds))[1]) if kinds else view
        incremental = build_waypoint_config(view, proxy, memo=memo)
        reused += memo.reused
        scratch = build_waypoint_config(MeshView.build(store.snapshot(XDS_KINDS)[1]), proxy)
        assert incremental.resources == scratch.resources, f"step {step}"
        assert incremental.problems == scratch.problems, f"step {step}"
        keyed = build_waypoint_config(view, proxy, memo=keyed_memo, changed=keys)
        assert keyed.resources == scratch.resources, f"step {step}, told {keys}"
        assert keyed.problems == scratch.problems, f"step {step}, told {keys}"
        keyed_builds += keys is not None
        skipped += keyed_memo.skipped
        node_incremental = build_ztunnel_config(view, node, node_memo)
        node_reused += node_memo.reused
        assert node_incremental == build_ztunnel_config(MeshView.build(store.snapshot(XDS_KINDS)[1]), node), \
            f"node proxy, step {step}"
        changed += incremental.resources != previous
        previous = incremental.resources
        most_bound = max(most_bound, len(previous["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]))
    assert reused > 0 and node_reused > 0  # the memos did serve units: not a from-scratch build every time
    assert keyed_builds > 30 and skipped > 100  # many builds were told what changed and skipped units
    assert changed > 50  # and the changes did change the config (most steps)
    assert most_bound >= 3  # several services were bound to the waypoint along the way
