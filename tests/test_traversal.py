"""Guaranteed waypoint traversal (`meshway.io/waypoint-traversal: required`), pure: the decision per
service and the guards per pod as tables; the node proxy's chains (a refused service chain instead of
the direct path, HBONE only from the waypoints' identities, no plaintext) accepted by
`envoy --mode validate`; `explain` and `explain --request` reading the same config."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import apply, make_waypoint_ready, set_labels, waypoint_pods
from xds_support import ENVOY, view_of

from meshway.ca import CertificateAuthority
from meshway.ca.sds import SDS_ROOT, build_certificate_secret, build_root_secret
from meshway.cli.explain import decision_json, write_decision
from meshway.cli.explain_request import write_simulation
from meshway.mesh.explain import find_decision, find_traversal
from meshway.mesh.request import parse_request
from meshway.mesh.traversal import Guard, decide_traversal, find_outside_guards, find_traversal_guards, \
    find_waypoint_addresses, plan_outside_filters
from meshway.xds import protos as P
from meshway.xds.build_traversal import REFUSED_CLUSTER
from meshway.xds.build_ztunnel import NodeProxy, build_ztunnel_config
from meshway.xds.simulate import simulate
from meshway.xds.validate import run_validate

T = "meshway.io/waypoint-traversal"
MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: foo}
spec: {selector: {app: a}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: foo}
spec: {selector: {app: b}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a-1, namespace: foo, labels: {app: a}}
spec: {containers: [{name: a, image: echo, ports: [{containerPort: 8080}, {containerPort: 9090}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b-1, namespace: foo, labels: {app: b}}
spec: {containers: [{name: b, image: echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c-1, namespace: foo, labels: {app: c}}
spec: {containers: [{name: c, image: curlimages/curl}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: outside}
spec: {containers: [{name: c, image: curlimages/curl}]}
"""
OTHER_WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: foo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: a-admin, namespace: foo, labels: {istio.io/use-waypoint: other}}
spec: {selector: {app: a}, ports: [{name: admin, port: 91, targetPort: 8080}, {name: metrics, port: 92, targetPort: 9090}]}
"""


def mark_pods_ready(store) -> None:
    for ns in ("foo", "outside"):
        for pod in store.list(P_KIND, ns):
            if "gateway.networking.k8s.io/gateway-name" not in (pod["metadata"].get("labels") or {}):
                store.write_status("Pod", ns, pod["metadata"]["name"],
                                   {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})


from meshway.model import find_kind  # noqa: E402

P_KIND = find_kind("pod")


@pytest.fixture(name="mesh")
def mesh_fixture(store):
    apply(store, MESH)
    mark_pods_ready(store)
    return store


def traversal(store, name: str = "a"):
    view = view_of(store)
    return decide_traversal(view, view.services[("Service", "foo", name)])


def label(store, kind: str, name: str, labels: dict, remove: tuple = ()) -> None:
    set_labels(store, kind, "foo", name, labels, list(remove), overwrite=True)


# (case, labels on service a, labels on namespace foo, waypoint ready) ->
# (mode, enforced, refused, what the source/why/note says)
DECISIONS = [
    ("no label: Istio's behaviour", {}, {}, True, ("optional", False, None, "no meshway.io/waypoint-traversal")),
    ("service required, waypoint ready", {T: "required"}, {}, True, ("required", True, None, "on service foo/a")),
    ("namespace required", {}, {T: "required"}, True, ("required", True, None, "on namespace foo")),
    ("service optional over namespace required", {T: "optional"}, {T: "required"}, True,
     ("optional", False, None, "on service foo/a")),
    ("required, waypoint never ready", {T: "required"}, {}, False,
     ("required", True, "WaypointIsNotReady", "waypoint foo/waypoint is not ready")),
    ("required, waypoint missing", {T: "required", "istio.io/use-waypoint": "ghost"}, {}, True,
     ("required", True, "WaypointNotFound", "waypoint foo/ghost does not exist")),
    ("required, opted out", {T: "required", "istio.io/use-waypoint": "none"}, {}, True,
     ("required", False, None, "no waypoint is requested (OptedOut)")),
    ("invalid value ignored", {T: "yes"}, {}, True, ("optional", False, None, "'yes', not one of required, optional")),
]


@pytest.mark.parametrize("case,svc_labels,ns_labels,ready,expected", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_decide_traversal(mesh, case, svc_labels, ns_labels, ready, expected) -> None:
    if ready:
        make_waypoint_ready(mesh, "foo", "waypoint")
    if svc_labels:
        label(mesh, "svc", "a", svc_labels)
    if ns_labels:
        set_labels(mesh, "namespace", None, "foo", ns_labels, overwrite=True)
    t = traversal(mesh)
    mode, enforced, refused, text = expected
    assert (t.mode, t.enforced, t.refused) == (mode, enforced, refused), t
    assert text in f"{t.source} {t.why} {t.note}", t


def test_no_waypoint_requested_is_not_enforced(mesh) -> None:
    set_labels(mesh, "namespace", None, "foo", {}, ["istio.io/use-waypoint"])
    label(mesh, "svc", "a", {T: "required"})
    t = traversal(mesh)
    assert (t.mode, t.enforced) == ("required", False) and "NoWaypoint" in t.note


def test_a_waypoints_own_service_is_never_enforced(mesh) -> None:
    make_waypoint_ready(mesh, "foo", "waypoint")
    set_labels(mesh, "namespace", None, "foo", {T: "required"}, overwrite=True)
    t = traversal(mesh, "waypoint")
    assert not t.enforced and "waypoint's own service" in t.note
    assert all(not n.startswith("waypoint") for _, n in find_traversal_guards(view_of(mesh)))


def guards(store) -> dict[str, tuple[Guard, ...]]:
    return {name: g for (_, name), g in find_traversal_guards(view_of(store)).items()}


def test_guards_admit_the_waypoints_of_every_service_on_the_port(mesh) -> None:
    make_waypoint_ready(mesh, "foo", "waypoint")
    assert guards(mesh) == {}  # optional everywhere: nothing guarded
    label(mesh, "svc", "a", {T: "required"})
    assert guards(mesh) == {"a-1": (Guard(8080, ("Service foo/a",), ("foo/waypoint",), (("foo", "waypoint"),)),)}
    apply(mesh, OTHER_WAYPOINT)  # a-admin (not required) reaches a-1:8080 through waypoint `other`, :9090 too
    make_waypoint_ready(mesh, "foo", "other")
    assert guards(mesh) == {"a-1": (Guard(8080, ("Service foo/a",), ("foo/other", "foo/waypoint"),
                                          (("foo", "other"), ("foo", "waypoint"))),)}  # 9090 is not guarded
    label(mesh, "svc", "a", {"istio.io/use-waypoint": "ghost"})  # the waypoint it asks for is missing
    assert guards(mesh) == {"a-1": (Guard(8080, ("Service foo/a",), ("foo/other",), (("foo", "other"),)),)}


def test_a_pod_outside_the_mesh_is_guarded_by_its_own_filter(mesh) -> None:
    make_waypoint_ready(mesh, "foo", "waypoint")
    label(mesh, "svc", "a", {T: "required"})
    label(mesh, "pod", "a-1", {"istio.io/dataplane-mode": "none"})
    assert guards(mesh) == {}  # no node proxy sees its traffic
    view = view_of(mesh)
    guard = Guard(8080, ("Service foo/a",), ("foo/waypoint",), (("foo", "waypoint"),))
    assert find_outside_guards(view) == {("foo", "a-1"): (guard,)}
    ips = tuple(sorted(p["status"]["podIP"] for p in waypoint_pods(mesh, "foo", "waypoint")))
    assert ips and find_waypoint_addresses(view) == {"foo/waypoint": ips}
    assert plan_outside_filters((guard,), find_waypoint_addresses(view)) == ((8080, ips),)
    assert plan_outside_filters((guard,), {}) == ((8080, ()),)  # no waypoint pod yet: nobody
    report = find_traversal(view, find_decision(view, "service/a", "foo"))
    assert report.outside == (("a-1", guard),) and report.guards == ()
    assert find_traversal(view, find_decision(view, "pod/a-1", "foo")).outside == (("a-1", guard),)
    label(mesh, "svc", "a", {T: "optional"})
    assert find_outside_guards(view_of(mesh)) == {}


def node_config(store, pod: str = "a-1") -> dict:
    view = view_of(store)
    return build_ztunnel_config(view, NodeProxy("ztunnel~test", view.pods[("foo", pod)].node))[0]


def outbound_chain(resources: dict, service: str) -> dict:
    listener = resources[P.LISTENER]["ztunnel_outbound"]
    return next(c for c in listener["filter_chains"] if f"|svc|foo/{service}|80" in c["name"])


def test_a_required_service_without_its_waypoint_is_refused_not_direct(mesh) -> None:
    chain = outbound_chain(node_config(mesh, "c-1"), "a")
    assert chain["filters"][-1]["typed_config"]["cluster"].startswith("svc|")  # optional: direct, as Istio
    label(mesh, "svc", "a", {T: "required"})
    resources = node_config(mesh, "c-1")
    chain = outbound_chain(resources, "a")
    assert chain["name"].endswith("|refused")
    assert [f["name"] for f in chain["filters"]] == ["envoy.filters.network.tcp_proxy"]
    tcp = chain["filters"][0]["typed_config"]
    assert tcp["cluster"] == REFUSED_CLUSTER and resources[P.CLUSTER][REFUSED_CLUSTER]["load_assignment"][
        "endpoints"] == []
    log = tcp["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert log["reason"] == "waypoint traversal required: waypoint foo/waypoint is not ready (WaypointIsNotReady)"
    assert "|refused" not in outbound_chain(resources, "b")["name"]  # b is not required
    make_waypoint_ready(mesh, "foo", "waypoint")
    assert outbound_chain(node_config(mesh, "c-1"), "a")["name"].endswith("|waypoint")


def inbound_filters(resources: dict, pod: str) -> tuple[list, list]:
    """(HTTP filters of the pod's HBONE chain, network filters of its plaintext chain)."""
    hbone = {c["name"]: c for c in resources[P.LISTENER]["ztunnel_inbound"]["filter_chains"]}[f"inbound|foo/{pod}"]
    plain = {c["name"]: c for c in resources[P.LISTENER]["ztunnel_inbound_plaintext"]["filter_chains"]}[
        f"plaintext|foo/{pod}"]
    return hbone["filters"][0]["typed_config"]["http_filters"], plain["filters"]


def test_the_destinations_node_proxy_admits_only_the_waypoint(mesh) -> None:
    make_waypoint_ready(mesh, "foo", "waypoint")
    before = node_config(mesh)
    label(mesh, "svc", "a", {T: "required"})
    after = node_config(mesh)
    http, plain = inbound_filters(after, "a-1")
    assert http[0]["typed_config"]["rules"] == {"action": "DENY", "policies": {
        "ns[foo]-policy[waypoint-traversal-required]-rule[0]": {
            "permissions": [{"header": {"name": ":authority", "string_match": {"suffix": ":8080"}}}],
            "principals": [{"not_id": {"or_ids": {"ids": [{"authenticated": {"principal_name": {
                "exact": "spiffe://cluster.local/ns/foo/sa/waypoint"}}}]}}}]}}}
    assert plain[0]["typed_config"]["rules"] == {"action": "DENY", "policies": {
        "ns[foo]-policy[waypoint-traversal-required]-rule[0]": {
            "permissions": [{"destination_port": 8080}], "principals": [{"any": True}]}}}
    # the pod's route carries the same rules (every tunnel of every connection reads it at once),
    # b-1's turns the guard off; b-1 (another service, optional) is untouched
    routes = after[P.ROUTE]
    per_route = routes["inbound|foo/a-1"]["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"]
    assert per_route["meshway.waypoint_traversal"]["rbac"]["rules"] == http[0]["typed_config"]["rules"]
    assert http[0]["name"] == "meshway.waypoint_traversal"
    off = routes["inbound|foo/b-1"]["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"]
    assert off["meshway.waypoint_traversal"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"}
    assert inbound_filters(after, "b-1") == inbound_filters(before, "b-1")
    assert routes["inbound|foo/b-1"] == before[P.ROUTE]["inbound|foo/b-1"]


def test_envoy_accepts_the_node_proxy_config(mesh, tmp_path: Path) -> None:
    apply(mesh, OTHER_WAYPOINT)
    make_waypoint_ready(mesh, "foo", "other")
    label(mesh, "svc", "a", {T: "required"})  # waypoint not ready: refused chain; a-1 guarded
    label(mesh, "svc", "b", {T: "required", "istio.io/use-waypoint": "ghost"})  # b-1: no identity admitted
    resources = node_config(mesh)
    assert any(c["name"].endswith("|refused") for c in resources[P.LISTENER]["ztunnel_outbound"]["filter_chains"])
    ca = CertificateAuthority(tmp_path / "ca")
    messages = {t: {n: P.to_dict(P.to_message(t, r)) for n, r in items.items()} for t, items in resources.items()}
    view = view_of(mesh)
    identities = {f"spiffe://cluster.local/ns/{p.namespace}/sa/{p.service_account}" for p in view.pods.values()
                  if p.namespace == "foo" and "gateway.networking.k8s.io/gateway-name" not in p.labels}
    secrets = {}
    for identity in identities:
        ns, sa = identity.split("/ns/", 1)[1].split("/sa/")
        secret = build_certificate_secret(ca.issue(ns, sa))
        secret.name = identity
        secrets[identity] = P.to_dict(secret)
    secrets[SDS_ROOT] = P.to_dict(build_root_secret(ca.root_pem()))
    messages[P.SECRET] = secrets
    ok, output = run_validate(messages, ENVOY)
    assert ok, output


def outcome(store, source: str, url: str) -> dict:
    view = view_of(store)
    pod = next(p for p in view.pods.values() if p.name == source)
    return simulate(view, parse_request(f"GET {url}"), pod, time.time())


def test_request_simulation_agrees(mesh) -> None:
    view = view_of(mesh)
    ip = view.pods[("foo", "a-1")].ip
    assert outcome(mesh, "c-1", "http://a.foo/")["outcome"]["result"] == "allowed"  # optional: direct
    label(mesh, "svc", "a", {T: "required"})
    doc = outcome(mesh, "c-1", "http://a.foo/")
    assert (doc["node_proxy"]["path"], doc["outcome"]["result"]) == ("refused", "refused")
    assert "waypoint foo/waypoint is not ready" in write_simulation(doc)
    make_waypoint_ready(mesh, "foo", "waypoint")
    via = outcome(mesh, "c-1", "http://a.foo/")
    assert via["outcome"]["result"] == "allowed" and via["waypoint"]["name"] == "foo/waypoint"
    assert [d["l4"] for d in via["outcome"]["destinations"]] == ["allow"]  # the waypoint's identity is admitted
    for source, url in (("c-1", f"http://{ip}:8080/"), ("outsider", "http://a.foo/"),
                        ("outsider", f"http://{ip}:8080/")):
        denied = outcome(mesh, source, url)["outcome"]
        assert denied["result"] == "denied", (source, url, denied)
        assert "guaranteed waypoint traversal" in denied["by"]
        assert denied["decided_by"]["policy"] == "foo/waypoint-traversal-required"
    assert outcome(mesh, "c-1", f"http://{ip}:9090/")["outcome"]["result"] == "allowed"  # not a service port


def test_explain_shows_the_mode_and_what_it_refuses(mesh) -> None:
    def explain(target: str) -> tuple[str, dict]:
        view = view_of(mesh)
        decision = find_decision(view, target, "foo")
        report = find_traversal(view, decision)
        return write_decision(decision, traversal=report), decision_json(decision, traversal=report)

    text, doc = explain("service/a")
    assert "Traversal:    optional (default: Istio's behaviour, no meshway.io/waypoint-traversal label)" in text
    assert "bypasses:   as in Istio: pod-IP clients" in text and doc["traversal"]["mode"] == "optional"
    label(mesh, "svc", "a", {T: "required"})
    text, doc = explain("service/a")
    assert [line for line in text.splitlines() if line.startswith("  ") and not line[2].isdigit()] == [
        "  refused:    every connection to the service from the mesh: waypoint foo/waypoint is not ready "
        "(WaypointIsNotReady)",
        "  refused:    HBONE to a-1 port 8080 except from waypoint foo/waypoint (clients addressing the pod IP)",
        "  refused:    plaintext to a-1 port 8080 (clients outside the mesh)",
        "  closed:     connections opened before the binding, by the pods' node agents within seconds"]
    assert "Traversal:    required (label meshway.io/waypoint-traversal=required on service foo/a)" in text
    assert doc["traversal"]["refused"] == "WaypointIsNotReady"
    assert text.endswith("Traffic addressed to service/a is refused: waypoint foo/waypoint is not ready, and "
                         "meshway.io/waypoint-traversal=required on service foo/a forbids the direct path.\n")
    assert doc["traversal"]["guards"] == [{"pod": "a-1", "port": 8080, "services": ["Service foo/a"],
                                           "waypoints": ["foo/waypoint"], "identities": ["foo/waypoint"]}]
    text, _ = explain("pod/a-1")
    assert "Traversal:    required (by its services)" in text
    label(mesh, "pod", "a-1", {"istio.io/dataplane-mode": "none"})
    text, doc = explain("service/a")
    assert "  refused:    TCP to a-1 port 8080 except from the pods of waypoint foo/waypoint (outside the mesh: " \
           "the pod's own packet filter)" in text and "HBONE to" not in text
    assert doc["traversal"]["outside"] == [{"pod": "a-1", "port": 8080, "services": ["Service foo/a"],
                                            "waypoints": ["foo/waypoint"]}] and doc["traversal"]["guards"] == []
    text, doc = explain("service/b")
    assert "optional" in text and "traversal" in doc
