"""The config index (meshway/mesh/index.py) answers exactly what a scan of every object answers:
random VirtualServices, DestinationRules and HTTPRoutes (short, qualified and wildcard hosts,
gateways with and without `mesh`), checked against a brute-force reference for every service."""
from __future__ import annotations

import fnmatch
import random

import yaml

from conftest import apply
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.model import find_kind
from meshway.mesh.index import resolve_host
from meshway.xds.build_snapshot import find_destination_rule, find_routes_for, find_virtual_services
from meshway.xds.scope import find_service_pods

NAMESPACES = ("default", "shop", "istio-system")
SERVICES = ("reviews", "ratings", "cart")


def world(rng: random.Random) -> str:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in NAMESPACES]
    for ns in NAMESPACES[:2]:
        for name in SERVICES:
            docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080}]}})
            docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-{rng.randrange(99)}",
                         "namespace": ns, "labels": {"app": name, "v": rng.choice("ab")}},
                         "spec": {"containers": [{"name": "c", "image": "x"}]}})
    hosts = lambda ns: rng.choice([  # noqa: E731
        rng.choice(SERVICES), f"{rng.choice(SERVICES)}.{rng.choice(NAMESPACES)}",
        f"{rng.choice(SERVICES)}.{ns}.svc.cluster.local", "*.shop.svc.cluster.local", "*",
        "r*.default.svc.cluster.local"])
    for i in range(12):
        ns = rng.choice(NAMESPACES)
        spec = {"hosts": [hosts(ns) for _ in range(rng.randint(1, 2))],
                "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
        if rng.random() < 0.3:
            spec["gateways"] = rng.choice([["mesh"], ["some-gateway"], ["mesh", "some-gateway"]])
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": f"vs{i}", "namespace": ns}, "spec": spec})
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                     "metadata": {"name": f"dr{i}", "namespace": rng.choice(NAMESPACES)},
                     "spec": {"host": hosts(ns)}})
        parent = {"kind": "Service", "group": "", "name": rng.choice(SERVICES)}
        if rng.random() < 0.5:
            parent["namespace"] = rng.choice(NAMESPACES[:2])
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                     "metadata": {"name": f"route{i}", "namespace": rng.choice(NAMESPACES[:2])},
                     "spec": {"parentRefs": [parent], "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}})
    return yaml.safe_dump_all(docs)


def scan_virtual_services(view, svc, wp_ns):
    out = []
    for body in view.config.get("VirtualService", ()):
        meta = body["metadata"]
        if meta["namespace"] not in (svc.namespace, wp_ns) or "mesh" not in (body["spec"].get("gateways") or ["mesh"]):
            continue
        if any(fnmatch.fnmatchcase(svc.hostname, resolve_host(h, meta["namespace"])) for h in body["spec"]["hosts"]):
            out.append(meta["name"])
    return sorted(out)


def scan_destination_rule(view, svc, wp_ns):
    ranks = {svc.namespace: 0, wp_ns: 1, "istio-system": 2}
    found = [(ranks[b["metadata"]["namespace"]], b["metadata"]["creationTimestamp"], b["metadata"]["name"])
             for b in view.config.get("DestinationRule", ())
             if b["metadata"]["namespace"] in ranks
             and fnmatch.fnmatchcase(svc.hostname, resolve_host(b["spec"]["host"], b["metadata"]["namespace"]))]
    return min(found)[2] if found else None


class Waypoint:
    namespace = "default"


def test_index_lookups_equal_a_scan_of_everything(store):
    ready_pods = 0
    for seed in range(4):
        rng = random.Random(seed)
        apply(store, world(rng))
        for pod in store.list(find_kind("pod"), None):
            ready = "True" if rng.random() < 0.7 else "False"
            store.write_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"],
                               {"conditions": [{"type": "Ready", "status": ready}]})
        view = MeshView.build(store.snapshot(XDS_KINDS)[1])
        for svc in view.services.values():
            if svc.kind != "Service" or svc.namespace == "istio-system":
                continue
            assert sorted(v.name for v in find_virtual_services(view, svc, Waypoint)) == \
                scan_virtual_services(view, svc, "default"), (seed, svc.name, svc.namespace)
            rule = find_destination_rule(view, svc, Waypoint)
            assert (rule.name if rule else None) == scan_destination_rule(view, svc, "default"), (seed, svc.name)
            pods = [p.name for p in view.pods.values() if p.namespace == svc.namespace and p.ip and p.ready
                    and p.labels.get("app") == svc.selector["app"]]
            assert [p.name for p in find_service_pods(view, svc)] == sorted(pods)
            ready_pods += len(pods)
            if not find_virtual_services(view, svc, Waypoint):
                attached = [b for b in view.config.get("HTTPRoute", ())
                            for ref in b["spec"]["parentRefs"]
                            if ref["name"] == svc.name
                            and ref.get("namespace", b["metadata"]["namespace"]) == svc.namespace]
                assert len(find_routes_for(view, svc, Waypoint, 9080)) == len({b["metadata"]["name"] for b in attached})
        for kind in ("VirtualService", "DestinationRule", "HTTPRoute"):
            store.delete([(find_kind(kind), b["metadata"]["namespace"], b["metadata"]["name"])
                          for b in store.list(find_kind(kind), None)])
    assert ready_pods  # the pod lookups were exercised


def test_an_index_changed_in_place_equals_one_built_from_scratch(monkeypatch):
    """Objects modified in place swap their models in the index (no rebuild); any other change
    rebuilds it: either way the index, entry for entry and in order, is the one a build gives."""
    from meshway.mesh import index as module
    from meshway.mesh.index import ConfigIndex

    swaps = []
    real_swap, real_routes = module.HostIndex.with_swapped, module.swap_route_parents
    monkeypatch.setattr(module.HostIndex, "with_swapped", lambda self, *a: swaps.append(1) or real_swap(self, *a))
    monkeypatch.setattr(module, "swap_route_parents", lambda *a: swaps.append(2) or real_routes(*a))

    kinds = ("VirtualService", "DestinationRule", "HTTPRoute")
    rng = random.Random(7)
    rv = iter(range(1, 10**6))

    def meta(ns: str, name: str, uid: str) -> dict:
        return {"name": name, "namespace": ns, "uid": uid, "resourceVersion": str(next(rv)),
                "creationTimestamp": f"2026-01-01T00:00:{rng.randrange(60):02d}Z"}

    def vs(ns: str, name: str) -> dict:
        hosts = [rng.choice([name, f"{name}.shop", "*.shop.svc.cluster.local", rng.choice(SERVICES)])]
        spec = {"hosts": hosts, "http": [{"route": [{"destination": {"host": name}}],
                                          "timeout": f"{rng.randint(1, 9)}s"}]}
        if rng.random() < 0.2:
            spec["gateways"] = ["some-gateway"]
        return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": meta(ns, name, f"vs-{ns}-{name}"), "spec": spec}

    def dr(ns: str, name: str) -> dict:
        return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": meta(ns, name, f"dr-{ns}-{name}"),
                "spec": {"host": rng.choice([name, rng.choice(SERVICES), "*"]),
                         "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": rng.randint(1, 9)}}}}}

    def route(ns: str, name: str) -> dict:
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": meta(ns, name, f"rt-{ns}-{name}"),
                "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": rng.choice(SERVICES)}],
                         "rules": [{"backendRefs": [{"name": name, "port": 9080, "weight": rng.randint(1, 9)}]}]}}

    makers = {"VirtualService": vs, "DestinationRule": dr, "HTTPRoute": route}
    names = [(ns, f"o{i}") for ns in NAMESPACES for i in range(6)]
    config = {k: {key: makers[k](*key) for key in names} for k in kinds}
    index = ConfigIndex().with_config({k: tuple(v[key] for key in sorted(v)) for k, v in config.items()}, kinds)
    for step in range(200):
        kind = rng.choice(kinds)
        objects = config[kind]
        for _ in range(rng.choice([1, 1, 2, 40])):
            key = rng.choice(names)
            if rng.random() < 0.1 and key in objects:
                del objects[key]
            else:
                body = makers[kind](*key)
                old = objects.get(key)
                if old is not None and rng.random() < 0.7:  # most changes keep what the object names
                    body["spec"] = {**body["spec"], **{f: old["spec"][f] for f in ("hosts", "host", "parentRefs",
                                                                                    "gateways") if f in old["spec"]}}
                    if "gateways" not in old["spec"]:
                        body["spec"].pop("gateways", None)
                objects[key] = body
        lists = {k: tuple(v[key] for key in sorted(v)) for k, v in config.items()}
        index = index.with_config(lists, [kind])
        scratch = ConfigIndex().with_config(lists, kinds)
        assert index.virtual_services == scratch.virtual_services, f"step {step}"
        assert index.destination_rules == scratch.destination_rules, f"step {step}"
        assert index.http_routes == scratch.http_routes, f"step {step}"
    assert swaps.count(1) > 40 and swaps.count(2) > 20  # most changes were swapped in, not rebuilt
