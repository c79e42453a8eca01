"""Push scoping (meshway/xds/push_scope.py): a change rebuilds only the waypoints that read
something of the namespaces it touched, and that is never too few: after every change of a random
sequence, each waypoint's config (all types but secrets) is what a full rebuild gives."""
from __future__ import annotations

import random
import time

import pytest
import yaml

from conftest import apply, make_waypoint_ready, set_labels
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.model import find_kind
from meshway.runtime.controlplane import ControlPlane
from meshway.xds import protos as P
from meshway.xds.push_scope import find_changed_namespaces

NAMESPACES = ("ns-a", "ns-b", "ns-c")


@pytest.mark.parametrize("changes, parents, expected", [
    ([("VirtualService", "ns-a", {})], {}, {"ns-a"}),
    ([("DestinationRule", "ns-a", {}), ("Pod", "ns-b", {})], {}, {"ns-a", "ns-b"}),
    ([("AuthorizationPolicy", "istio-system", {})], {}, None),  # the root namespace applies everywhere
    ([("Service", "ns-a", {})], {}, None),  # bindings may change anywhere
    ([("Namespace", "", {})], {}, None),
    ([("ConfigMap", "istio-system", {})], {}, None),
    ([("HTTPRoute", "ns-a", {"metadata": {"name": "r"}, "spec": {"parentRefs": [
        {"kind": "Service", "name": "x", "namespace": "ns-b"}, {"kind": "Service", "name": "y"}]}})], {},
     {"ns-a", "ns-b"}),
    ([("HTTPRoute", "ns-a", {"metadata": {"name": "r"}, "spec": {"parentRefs": []}})],
     {("ns-a", "r"): frozenset({"ns-c"})}, {"ns-a", "ns-c"}),  # where it was attached before
])
def test_changed_namespaces(changes, parents, expected):
    found = find_changed_namespaces(changes, parents)
    assert (None if found is None else set(found)) == expected


def world() -> str:
    docs = []
    for ns in NAMESPACES:
        labels = {"istio.io/use-waypoint": "waypoint"}
        if ns == "ns-c":  # ns-c's services use ns-a's waypoint
            labels["istio.io/use-waypoint-namespace"] = "ns-a"
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": {"name": "waypoint", "namespace": ns},
                     "spec": {"gatewayClassName": "istio-waypoint",
                              "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE",
                                             "allowedRoutes": {"namespaces": {"from": "All"}}}]}})
        for app in ("web", "api"):
            docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
                         "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80}]}})
            docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app, "namespace": ns},
                         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": app}},
                                  "template": {"metadata": {"labels": {"app": app, "version": "v1"}},
                                               "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    return yaml.safe_dump_all(docs)


def random_change(store, rng: random.Random) -> None:
    ns, app = rng.choice(NAMESPACES), rng.choice(("web", "api"))
    choice = rng.randrange(6)
    if choice == 0:
        apply(store, yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                     "metadata": {"name": app, "namespace": ns},
                                     "spec": {"hosts": [app], "http": [{"route": [{"destination": {"host": app}}],
                                                                        "timeout": f"{rng.randint(1, 9)}s"}]}}))
    elif choice == 1:
        apply(store, yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                                     "metadata": {"name": app, "namespace": ns},
                                     "spec": {"host": app, "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
                                              "trafficPolicy": {"loadBalancer": {"simple": rng.choice(
                                                  ["RANDOM", "LEAST_REQUEST"])}}}}))
    elif choice == 2:
        pod = rng.choice([p for p in store.list(find_kind("pod"), ns) if not p["metadata"]["name"].startswith("way")])
        store.write_status("Pod", ns, pod["metadata"]["name"],
                           {"conditions": [{"type": "Ready", "status": rng.choice(["True", "False"])}]})
    elif choice == 3:
        set_labels(store, "svc", ns, app, {"istio.io/use-waypoint": rng.choice(["none", "waypoint"])},
                   overwrite=True)
    elif choice == 5:  # a route that may move to a Service of another namespace (and back)
        parent = rng.choice(NAMESPACES)
        apply(store, yaml.safe_dump({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                                     "metadata": {"name": f"route-{app}", "namespace": ns},
                                     "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": app,
                                                              "namespace": parent}],
                                              "rules": [{"backendRefs": [{"name": app, "namespace": parent,
                                                                          "port": 80}],
                                                         "timeouts": {"request": f"{rng.randint(1, 9)}s"}}]}}))
    elif choice == 4 and rng.random() < 0.5:  # key sets fetched from a Service of any namespace
        apply(store, yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                                     "metadata": {"name": app, "namespace": ns},
                                     "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": app}],
                                              "jwtRules": [{"issuer": "i", "jwksUri": "http://api.{}.svc.cluster"
                                                            ".local/jwks".format(rng.choice(NAMESPACES))}]}}))
    else:
        apply(store, yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                                     "metadata": {"name": app, "namespace": ns},
                                     "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": app}],
                                              "action": "DENY", "rules": [{"to": [{"operation": {
                                                  "methods": [rng.choice(["PUT", "DELETE"])]}}]}]}}))


def versions(cp: ControlPlane) -> dict:
    return {s.replica.namespace: {t: cp.cache.get(s.node_id).version(t) for t in P.TYPE_ORDER if t != P.SECRET}
            for s in cp.replicas.values()}


def test_a_change_rebuilds_only_the_waypoints_it_touches_and_never_too_few(state_dir, store, monkeypatch):
    # A service unbound from a waypoint is kept there for a grace period (connections in flight);
    # a from-scratch control plane has no such memory, so compare without the grace.
    monkeypatch.setattr("meshway.runtime.controlplane.UNBIND_GRACE", 0.0)
    apply(store, world())
    for ns in NAMESPACES:
        make_waypoint_ready(store, ns, "waypoint")
        for pod in store.list(find_kind("pod"), ns):
            store.write_status("Pod", ns, pod["metadata"]["name"],
                               {"conditions": [{"type": "Ready", "status": "True"}]})
    cp = ControlPlane(state_dir)
    cp.rv, snapshot = cp.store.snapshot(XDS_KINDS)
    cp.view = MeshView.build(snapshot)
    cp.sync()
    assert len(cp.replicas) == 3
    skipped_total = units_skipped = 0
    for step in range(60):
        rng = random.Random(step)
        random_change(store, rng)
        builds = cp.builds
        cp._read_store(0.0)
        cp._push_pending()
        skipped_total += 3 - (cp.builds - builds)
        units_skipped += sum(s.translation.skipped for s in cp.replicas.values())
        scratch = ControlPlane(state_dir)
        scratch.view = MeshView.build(scratch.store.snapshot(XDS_KINDS)[1])
        scratch.sync()
        assert versions(cp) == versions(scratch), f"step {step}"
    assert skipped_total > 40  # most changes touched one namespace: the other waypoints were not rebuilt
    assert units_skipped > 0  # and builds told what changed (`xds.dirty`) reused units without checking them


def test_a_route_change_in_one_namespace_rebuilds_one_waypoint(state_dir, store):
    apply(store, world())
    for ns in NAMESPACES:
        make_waypoint_ready(store, ns, "waypoint")
    cp = ControlPlane(state_dir)
    cp.rv, snapshot = cp.store.snapshot(XDS_KINDS)
    cp.view = MeshView.build(snapshot)
    cp.sync()
    generations = {s.replica.namespace: cp.cache.generation(s.node_id) for s in cp.replicas.values()}
    apply(store, yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                 "metadata": {"name": "web", "namespace": "ns-b"},
                                 "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}],
                                                                      "timeout": "3s"}]}}))
    builds = cp.builds
    cp._read_store(0.0)
    cp._push_pending()
    assert cp.builds - builds == 1
    after = {s.replica.namespace: cp.cache.generation(s.node_id) for s in cp.replicas.values()}
    assert {ns for ns in NAMESPACES if after[ns] != generations[ns]} == {"ns-b"}
    # ns-c's services are served by ns-a's waypoint: a change in ns-c rebuilds ns-a's and ns-c's
    apply(store, yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                                 "metadata": {"name": "api", "namespace": "ns-c"},
                                 "spec": {"host": "api", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}}))
    builds = cp.builds
    cp._read_store(0.0)
    cp._push_pending()
    assert cp.builds - builds == 2
    final = {s.replica.namespace: cp.cache.generation(s.node_id) for s in cp.replicas.values()}
    assert {ns for ns in NAMESPACES if final[ns] != after[ns]} == {"ns-a"}  # ns-c's own serves nothing


def test_a_route_that_moves_to_another_parent_rebuilds_the_waypoint_it_left(state_dir, store):
    apply(store, world())
    for ns in NAMESPACES:
        make_waypoint_ready(store, ns, "waypoint")
    cp = ControlPlane(state_dir)
    cp._start()  # as the control plane starts: the object cache knows what each route named before

    def route(parent: str) -> str:
        return yaml.safe_dump({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                               "metadata": {"name": "moving", "namespace": "ns-b"},
                               "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "web",
                                                        "namespace": parent}],
                                        "rules": [{"timeouts": {"request": "7s"}}]}})

    for parent in ("ns-a", "ns-b", "ns-a"):
        apply(store, route(parent))
        cp._read_store(0.0)
        cp._push_pending()
        scratch = ControlPlane(state_dir)
        scratch.view = MeshView.build(scratch.store.snapshot(XDS_KINDS)[1])
        scratch.sync()
        assert versions(cp) == versions(scratch), f"moved to {parent}"


def test_the_pods_of_a_jwks_service_in_another_namespace_reach_the_waypoint(state_dir, store):
    """A RequestAuthentication in ns-a fetches its key set from keys.ns-b: a pod of ns-b that
    becomes ready is an endpoint of ns-a's waypoint (the jwksUri cluster), so ns-a's is rebuilt too."""
    apply(store, world())
    for ns in NAMESPACES:
        make_waypoint_ready(store, ns, "waypoint")
    apply(store, yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "keys", "namespace": "ns-b"},
         "spec": {"selector": {"app": "keys"}, "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "keys-1", "namespace": "ns-b",
                                                          "labels": {"app": "keys"}},
         "spec": {"containers": [{"name": "c", "image": "x"}]}},  # no Deployment: only ns-b changes
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": {"name": "jwt", "namespace": "ns-a"},
         "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
                  "jwtRules": [{"issuer": "i", "jwksUri": "http://keys.ns-b.svc.cluster.local/jwks"}]}}]))
    cp = ControlPlane(state_dir)
    cp._start()
    node = next(s.node_id for s in cp.replicas.values() if s.replica.namespace == "ns-a")

    def endpoints() -> int:
        cla = cp.cache.get(node)[P.ENDPOINT]["outbound|80||keys.ns-b.svc.cluster.local"]
        return sum(len(group.lb_endpoints) for group in cla.endpoints)

    for ready, expected in (("True", 1), ("False", 0)):
        store.write_status("Pod", "ns-b", "keys-1", {"phase": "Running", "conditions": [
            {"type": "Ready", "status": ready}]})
        builds = cp.builds
        cp._read_store(0.0)
        cp._push_pending()
        assert cp.builds - builds == 3  # every waypoint: ns-b holds a jwksUri service (as for providers)
        assert endpoints() == expected


def test_an_unbound_service_drains_from_its_waypoint(state_dir, store, monkeypatch):
    monkeypatch.setattr("meshway.runtime.controlplane.UNBIND_GRACE", 0.3)
    apply(store, world())
    for ns in NAMESPACES:
        make_waypoint_ready(store, ns, "waypoint")
    cp = ControlPlane(state_dir)
    cp._start()
    node = next(s.node_id for s in cp.replicas.values() if s.replica.namespace == "ns-b")
    route = "inbound-vip|80|http|web.ns-b.svc.cluster.local"
    assert route in cp.cache.get(node).resources(P.ROUTE)
    for step in range(2):  # a change that leaves the services as they are, then one that unbinds web
        apply(store, yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                                     "metadata": {"name": "api", "namespace": "ns-b"},
                                     "spec": {"host": "api", "trafficPolicy": {"loadBalancer": {
                                         "simple": ["RANDOM", "LEAST_REQUEST"][step]}}}}))
        cp._read_store(0.0)
        cp._push_pending()
        assert route in cp.cache.get(node).resources(P.ROUTE)
    set_labels(store, "svc", "ns-b", "web", {"istio.io/use-waypoint": "none"}, overwrite=True)
    cp._read_store(0.0)
    cp._push_pending()
    assert route in cp.cache.get(node).resources(P.ROUTE)  # draining: connections in flight still land
    time.sleep(0.35)
    cp.sync()  # the drain deadline's sync
    assert route not in cp.cache.get(node).resources(P.ROUTE)
