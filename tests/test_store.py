"""The embedded store's Kubernetes API semantics, atomicity, garbage collection, the Deployment
controller, watch across processes, and durability against SIGKILL and concurrent writers."""
from __future__ import annotations

import ipaddress
import os
import random
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import PYTHON, apply, make_waypoint_ready, set_labels, set_pods_ready, subprocess_env, waypoint_pods
from meshway.model import InputError, find_kind
from meshway.store import Forbidden, Invalid, LabelConflict, NotFound, Store

SVC = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
"""

DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx:1}]}
"""

WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
POD_CIDR = ipaddress.ip_network("10.244.1.0/24")
SAFE = "bcdfghjklmnpqrstvwxz2456789"


def svc(name: str, ns: str = "default", cluster_ip: str | None = None, port: int = 80, labels: str = "") -> str:
    ip = f"\n  clusterIP: {cluster_ip}" if cluster_ip else ""
    meta_labels = f", labels: {{{labels}}}" if labels else ""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}{meta_labels}}}
spec:
  ports: [{{name: http, port: {port}}}]{ip}
---"""


def get(store, kind: str, name: str, ns: str = "default"):
    return store.get(find_kind(kind), ns, name)


def names(store, kind: str, ns: str | None = "default") -> set[str]:
    return {b["metadata"]["name"] for b in store.list(find_kind(kind), ns)}


# -- apply: results, resourceVersion, generation, server metadata -----------------------------------
def test_apply_created_unchanged_configured(store):
    (r,) = apply(store, SVC)
    assert (r.action, str(r)) == ("created", "service/web created")
    (r,) = apply(store, SVC)
    assert (r.action, str(r)) == ("unchanged", "service/web unchanged")
    (r,) = apply(store, SVC.replace("port: 80", "port: 81"))
    assert (r.action, str(r)) == ("configured", "service/web configured")
    (r,) = apply(store, WAYPOINT)
    assert str(r) == "gateway.gateway.networking.k8s.io/waypoint created"


@pytest.mark.parametrize("manifest", [SVC, DEPLOY, WAYPOINT, """
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {a: b}}
""", """
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default}
spec: {containers: [{name: c, image: x}]}
""", """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec: {hosts: [example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
"""], ids=["service", "deployment", "gateway", "namespace", "pod", "serviceentry"])
def test_reapply_same_manifest_is_unchanged(store, manifest):
    apply(store, manifest)
    before = store.dump()
    assert [r.action for r in apply(store, manifest)] == ["unchanged"]
    assert store.dump() == before


def test_resource_version_increases(store):
    apply(store, SVC)
    rv1 = int(get(store, "svc", "web")["metadata"]["resourceVersion"])
    apply(store, SVC)  # unchanged: no new version
    assert int(get(store, "svc", "web")["metadata"]["resourceVersion"]) == rv1
    set_labels(store, "svc", "default", "web", {"tier": "front"})
    rv2 = int(get(store, "svc", "web")["metadata"]["resourceVersion"])
    apply(store, SVC.replace("port: 80", "port: 81"))
    rv3 = int(get(store, "svc", "web")["metadata"]["resourceVersion"])
    assert rv1 < rv2 < rv3
    assert rv3 <= store.db.current_rv()
    changes = store.db.changes_since(0)
    assert [c.rv for c in changes] == sorted({c.rv for c in changes})


def test_generation_bumps_on_spec_change_only(store):
    apply(store, SVC)
    body = get(store, "svc", "web")
    assert body["metadata"]["generation"] == 1
    set_labels(store, "svc", "default", "web", {"tier": "front"})
    assert get(store, "svc", "web")["metadata"]["generation"] == 1
    apply(store, SVC.replace("labels: {app: web}", "labels: {app: web, version: v2}"))  # metadata only
    assert get(store, "svc", "web")["metadata"]["generation"] == 1
    apply(store, SVC.replace("port: 80", "port: 81"))
    assert get(store, "svc", "web")["metadata"]["generation"] == 2
    apply(store, SVC.replace("port: 80", "port: 81"))
    assert get(store, "svc", "web")["metadata"]["generation"] == 2


def test_generation_not_bumped_by_status_or_labels_on_gateway_and_deployment(store):
    apply(store, WAYPOINT + "---" + DEPLOY)
    assert get(store, "gateway", "waypoint")["metadata"]["generation"] == 1
    set_labels(store, "gateway", "default", "waypoint", {"team": "a"})
    make_waypoint_ready(store, "default", "waypoint")  # status writes on pods, Deployment, Gateway
    assert get(store, "gateway", "waypoint")["metadata"]["generation"] == 1
    assert get(store, "deploy", "waypoint")["metadata"]["generation"] == 1
    apply(store, DEPLOY.replace("nginx:1", "nginx:2"))
    assert get(store, "deploy", "web")["metadata"]["generation"] == 2
    assert get(store, "deploy", "web")["status"]["observedGeneration"] == 2


def test_uid_and_creation_timestamp_stable(store):
    apply(store, SVC)
    first = get(store, "svc", "web")["metadata"]
    time.sleep(1.05)  # creationTimestamp has second resolution
    set_labels(store, "svc", "default", "web", {"tier": "front"})
    apply(store, SVC.replace("port: 80", "port: 81"))
    last = get(store, "svc", "web")["metadata"]
    assert (last["uid"], last["creationTimestamp"]) == (first["uid"], first["creationTimestamp"])
    assert last["resourceVersion"] != first["resourceVersion"]


def test_recreated_object_gets_new_uid(store):
    apply(store, SVC)
    uid = get(store, "svc", "web")["metadata"]["uid"]
    store.delete([(find_kind("svc"), "default", "web")])
    apply(store, SVC)
    assert get(store, "svc", "web")["metadata"]["uid"] != uid


# -- ClusterIP --------------------------------------------------------------------------------------
def test_cluster_ip_allocated_from_service_cidr_and_stable(store):
    apply(store, "".join(svc(f"s{i}") for i in range(5)))
    ips = {}
    for i in range(5):
        spec = get(store, "svc", f"s{i}")["spec"]
        ip = ipaddress.ip_address(spec["clusterIP"])
        assert ip in SERVICE_CIDR
        assert str(ip) not in ("10.96.0.0", "10.96.0.1", "10.96.0.10", "10.96.255.255")
        assert spec["clusterIPs"] == [spec["clusterIP"]]
        ips[f"s{i}"] = spec["clusterIP"]
    assert len(set(ips.values())) == 5
    apply(store, "".join(svc(f"s{i}", port=81) for i in range(5)))  # re-apply with a spec change
    assert {f"s{i}": get(store, "svc", f"s{i}")["spec"]["clusterIP"] for i in range(5)} == ips


def test_explicit_cluster_ip(store):
    apply(store, svc("fixed", cluster_ip="10.96.100.100"))
    assert get(store, "svc", "fixed")["spec"]["clusterIP"] == "10.96.100.100"
    apply(store, svc("fixed", cluster_ip="10.96.100.100", port=81))
    assert get(store, "svc", "fixed")["spec"]["clusterIP"] == "10.96.100.100"


def test_explicit_cluster_ip_in_use_refused(store):
    apply(store, SVC)
    taken = get(store, "svc", "web")["spec"]["clusterIP"]
    before = store.dump()
    with pytest.raises(Invalid) as exc:
        apply(store, svc("other", cluster_ip=taken))
    assert "already allocated" in str(exc.value)
    assert str(exc.value).startswith("Error from server (Invalid):")
    assert store.dump() == before


def test_explicit_cluster_ip_out_of_range_refused(store):
    with pytest.raises(Invalid) as exc:
        apply(store, svc("other", cluster_ip="192.168.0.10"))
    assert "not in the valid range" in str(exc.value)


def test_changing_cluster_ip_refused(store):
    apply(store, SVC)
    ip = get(store, "svc", "web")["spec"]["clusterIP"]
    other = "10.96.200.200" if ip != "10.96.200.200" else "10.96.200.201"
    before = store.dump()
    with pytest.raises(Invalid) as exc:
        apply(store, svc("web", cluster_ip=other))
    assert "field is immutable" in str(exc.value)
    assert store.dump() == before
    # Naming the address it already has is fine.
    assert [r.action for r in apply(store, svc("web", cluster_ip=ip))] == ["configured"]
    assert get(store, "svc", "web")["spec"]["clusterIP"] == ip


EXTERNAL = """
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.com}
"""
PLAIN = """
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {ports: [{name: http, port: 80}]}
"""


def test_externalname_to_clusterip_allocates_cluster_ip(store):
    apply(store, EXTERNAL)
    assert "clusterIP" not in get(store, "svc", "ext")["spec"]
    assert [r.action for r in apply(store, PLAIN)] == ["configured"]
    spec = get(store, "svc", "ext")["spec"]
    assert spec["type"] == "ClusterIP"
    assert ipaddress.ip_address(spec.get("clusterIP", "0.0.0.0")) in SERVICE_CIDR


def test_clusterip_to_externalname_releases_cluster_ip(store):
    apply(store, PLAIN)
    ip = get(store, "svc", "ext")["spec"]["clusterIP"]
    apply(store, EXTERNAL)
    spec = get(store, "svc", "ext")["spec"]
    assert spec["type"] == "ExternalName"
    assert "clusterIP" not in spec and "clusterIPs" not in spec
    # The address is free again: it can be requested explicitly.
    apply(store, svc("reuse", cluster_ip=ip))


def test_headless_service_gets_no_cluster_ip(store):
    apply(store, svc("headless", cluster_ip="None"))
    assert get(store, "svc", "headless")["spec"]["clusterIP"] == "None"


# -- three-way merge --------------------------------------------------------------------------------
def test_labels_added_with_label_survive_reapply(store):
    apply(store, SVC)
    set_labels(store, "svc", "default", "web", {"istio.io/use-waypoint": "waypoint"})
    assert [r.action for r in apply(store, SVC)] == ["unchanged"]
    assert get(store, "svc", "web")["metadata"]["labels"] == {"app": "web", "istio.io/use-waypoint": "waypoint"}
    # A spec change keeps them too.
    apply(store, SVC.replace("port: 80", "port: 81"))
    assert get(store, "svc", "web")["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"


def test_label_dropped_from_manifest_is_removed_but_kubectl_label_kept(store):
    apply(store, SVC.replace("labels: {app: web}", "labels: {app: web, version: v1}"))
    set_labels(store, "svc", "default", "web", {"extra": "yes"})
    apply(store, SVC)
    assert get(store, "svc", "web")["metadata"]["labels"] == {"app": "web", "extra": "yes"}


def test_namespace_labels_survive_reapply(store):
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n"
    apply(store, ns)
    set_labels(store, "ns", None, "team", {"istio.io/use-waypoint": "waypoint"})
    assert [r.action for r in apply(store, ns)] == ["unchanged"]
    labels = get(store, "ns", "team", ns="")["metadata"]["labels"]
    assert labels == {"istio.io/use-waypoint": "waypoint", "kubernetes.io/metadata.name": "team"}


# -- atomicity ----------------------------------------------------------------------------------------
BAD_SECOND_DOCUMENTS = {
    "missing-namespace": svc("lost", ns="nowhere"),
    "cluster-ip-in-use": svc("dup", cluster_ip="10.96.50.50"),
    "cluster-ip-out-of-range": svc("far", cluster_ip="172.16.0.1"),
    "cluster-ip-immutable": svc("existing", cluster_ip="10.96.77.77"),
    "invalid-document": """
apiVersion: v1
kind: Service
metadata: {name: Not_Valid, namespace: default}
spec: {ports: [{port: 80}]}
---""",
    "unknown-kind": """
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: default}
---""",
}


SETUP = svc("holder", cluster_ip="10.96.50.50") + svc("existing") + DEPLOY


@pytest.mark.parametrize("bad", list(BAD_SECOND_DOCUMENTS), ids=list(BAD_SECOND_DOCUMENTS))
def test_failed_multi_document_apply_changes_nothing(store, tmp_path, bad):
    apply(store, SETUP)
    before = store.dump()
    rv = store.db.current_rv()
    first = (svc("first") + "\napiVersion: v1\nkind: Namespace\nmetadata: {name: new-ns}\n---"
             + svc("existing", port=8080) + DEPLOY.replace("nginx:1", "nginx:2") + "---")
    with pytest.raises((NotFound, Invalid, InputError)):
        apply(store, first + BAD_SECOND_DOCUMENTS[bad])
    assert store.dump() == before
    assert store.db.current_rv() == rv
    assert store.db.changes_since(rv) == []
    # The rolled-back transaction did not move the ClusterIP allocator either: the next Service
    # gets the address it gets in a store where the failed apply never happened.
    control = Store(tmp_path / "control")
    try:
        apply(control, SETUP)
        apply(control, svc("after"))
        expected = get(control, "svc", "after")["spec"]["clusterIP"]
    finally:
        control.close()
    apply(store, svc("after"))
    assert get(store, "svc", "after")["spec"]["clusterIP"] == expected


def test_failed_apply_of_first_document_changes_nothing(store):
    before = store.dump()
    with pytest.raises(NotFound) as exc:
        apply(store, svc("lost", ns="nowhere") + svc("ok"))
    assert 'namespaces "nowhere" not found' in str(exc.value)
    assert store.dump() == before


# -- label ---------------------------------------------------------------------------------------------
def test_label_conflict_without_overwrite(store):
    apply(store, SVC)
    set_labels(store, "svc", "default", "web", {"tier": "front"})
    before = store.dump()
    with pytest.raises(LabelConflict) as exc:
        set_labels(store, "svc", "default", "web", {"tier": "back"})
    assert "'tier' already has a value (front), and --overwrite is false" in str(exc.value)
    assert store.dump() == before
    # The same value again is not a conflict; --overwrite changes it.
    assert [r.action for r in set_labels(store, "svc", "default", "web", {"tier": "front"})] == ["not labeled"]
    assert [r.action for r in set_labels(store, "svc", "default", "web", {"tier": "back"}, overwrite=True)] == \
        ["labeled"]
    assert get(store, "svc", "web")["metadata"]["labels"]["tier"] == "back"


def test_label_conflict_on_second_target_changes_nothing(store):
    apply(store, svc("a", labels="group: g") + svc("b", labels="group: g, tier: x"))
    before = store.dump()
    from meshway.model.selectors import parse_selector

    with pytest.raises(LabelConflict):
        store.label(find_kind("svc"), "default", [], parse_selector("group=g"), {"tier": "y", "new": "1"}, [])
    assert store.dump() == before


def test_label_status_side_effects_roll_back_on_conflict(store):
    """A label write that would bind a Service to a waypoint, then conflicts, leaves no status behind."""
    apply(store, WAYPOINT + "---" + SVC)
    set_labels(store, "ns", None, "default", {"team": "a"})
    before = store.dump()
    with pytest.raises(LabelConflict):
        set_labels(store, "ns", None, "default", {"istio.io/use-waypoint": "waypoint", "team": "b"})
    assert store.dump() == before


def test_label_missing_object_not_found(store):
    before = store.dump()
    with pytest.raises(NotFound) as exc:
        set_labels(store, "svc", "default", "ghost", {"a": "b"})
    assert str(exc.value) == 'Error from server (NotFound): services "ghost" not found'
    with pytest.raises(NotFound):
        set_labels(store, "ns", None, "ghost", {"a": "b"})
    assert store.dump() == before


def test_label_invalid_key_or_value(store):
    apply(store, SVC)
    with pytest.raises(Invalid):
        set_labels(store, "svc", "default", "web", {"bad key": "x"})
    with pytest.raises(Invalid):
        set_labels(store, "svc", "default", "web", {"ok": "bad value!"})


def test_label_remove(store):
    apply(store, SVC)
    set_labels(store, "svc", "default", "web", {"x": "1"})
    assert [r.action for r in set_labels(store, "svc", "default", "web", {}, remove=["x"])] == ["labeled"]
    assert get(store, "svc", "web")["metadata"]["labels"] == {"app": "web"}
    assert [r.action for r in set_labels(store, "svc", "default", "web", {}, remove=["x"])] == ["not labeled"]


# -- deletion and garbage collection --------------------------------------------------------------
def test_delete_namespace_deletes_its_objects(store):
    team = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---"
    apply(store, team + svc("web", ns="team") + DEPLOY.replace("default", "team") + "---"
          + WAYPOINT.replace("default", "team") + "---" + svc("web"))
    assert names(store, "pod", "team")
    store.delete([(find_kind("ns"), "", "team")])
    assert "team" not in names(store, "ns", None)
    for kind in ("svc", "deploy", "pod", "sa", "gateway"):
        assert names(store, kind, "team") == set(), kind
    assert names(store, "svc", "default") == {"web"}
    with pytest.raises(NotFound):
        get(store, "ns", "team", ns="")
    assert not [b for b in store.dump() if b[1] == "team"]


def test_protected_namespace_cannot_be_deleted(store):
    before = store.dump()
    with pytest.raises(Forbidden):
        store.delete([(find_kind("ns"), "", "default")])
    assert store.dump() == before


def test_delete_missing_object(store):
    with pytest.raises(NotFound):
        store.delete([(find_kind("svc"), "default", "ghost")])
    assert store.delete([(find_kind("svc"), "default", "ghost")], ignore_not_found=True) == []


def test_deleting_waypoint_gateway_collects_owned_objects(store):
    apply(store, WAYPOINT + "---" + SVC)
    gw_uid = get(store, "gateway", "waypoint")["metadata"]["uid"]
    for kind in ("svc", "deploy", "sa"):
        refs = get(store, kind, "waypoint")["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs] == [gw_uid]
    pods = waypoint_pods(store, "default", "waypoint")
    assert len(pods) == 1
    dep_uid = get(store, "deploy", "waypoint")["metadata"]["uid"]
    assert pods[0]["metadata"]["ownerReferences"][0]["uid"] == dep_uid

    store.delete([(find_kind("gateway"), "default", "waypoint")])
    for kind in ("svc", "deploy", "sa"):
        assert "waypoint" not in names(store, kind), kind
    assert waypoint_pods(store, "default", "waypoint") == []
    assert names(store, "svc") == {"web"}
    deleted = {(c.kind, c.name) for c in store.db.changes_since(0) if c.type == "DELETED"}
    assert {("Gateway", "waypoint"), ("Service", "waypoint"), ("Deployment", "waypoint"),
            ("ServiceAccount", "waypoint"), ("Pod", pods[0]["metadata"]["name"])} <= deleted


def test_deleting_deployment_collects_pods(store):
    apply(store, DEPLOY)
    assert len(names(store, "pod")) == 3
    store.delete([(find_kind("deploy"), "default", "web")])
    assert names(store, "pod") == set()


def test_deleted_waypoint_objects_are_recreated_by_the_controller(store):
    apply(store, WAYPOINT)
    old = get(store, "deploy", "waypoint")["metadata"]["uid"]
    store.delete([(find_kind("deploy"), "default", "waypoint")])
    assert get(store, "deploy", "waypoint")["metadata"]["uid"] != old
    assert len(waypoint_pods(store, "default", "waypoint")) == 1


# -- Deployment controller ---------------------------------------------------------------------------
POD_NAME = re.compile(rf"^web-([{SAFE}]{{10}})-[{SAFE}]{{5}}$")


def deployment_pods(store, name: str = "web"):
    return [p for p in store.list(find_kind("pod"), "default")
            if any(r["kind"] == "Deployment" and r["name"] == name for r in p["metadata"].get("ownerReferences", []))]


def test_deployment_creates_pods(store):
    apply(store, DEPLOY)
    dep = get(store, "deploy", "web")
    pods = deployment_pods(store)
    assert len(pods) == 3
    ips = set()
    hashes = set()
    for pod in pods:
        m = POD_NAME.match(pod["metadata"]["name"])
        assert m, pod["metadata"]["name"]
        hashes.add(m.group(1))
        assert pod["metadata"]["labels"] == {"app": "web", "pod-template-hash": m.group(1)}
        (ref,) = pod["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Deployment", "web",
                                                                             dep["metadata"]["uid"], True)
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip in POD_CIDR and str(ip) not in ("10.244.1.0", "10.244.1.1", "10.244.1.255")
        ips.add(str(ip))
        assert pod["spec"]["nodeName"] == "node-1"
        assert pod["spec"]["containers"][0]["image"] == "nginx:1"
    assert len(ips) == 3 and len(hashes) == 1
    assert dep["status"]["replicas"] == 3 and dep["status"]["updatedReplicas"] == 3


def test_deployment_template_change_replaces_pods(store):
    apply(store, DEPLOY)
    old = {p["metadata"]["name"] for p in deployment_pods(store)}
    old_hash = POD_NAME.match(next(iter(old))).group(1)
    apply(store, DEPLOY.replace("nginx:1", "nginx:2"))
    new_pods = deployment_pods(store)
    new = {p["metadata"]["name"] for p in new_pods}
    assert len(new) == 3 and not (old & new)
    new_hashes = {POD_NAME.match(n).group(1) for n in new}
    assert len(new_hashes) == 1 and old_hash not in new_hashes
    assert {p["spec"]["containers"][0]["image"] for p in new_pods} == {"nginx:2"}
    assert len({p["status"]["podIP"] for p in new_pods}) == 3


def test_deployment_metadata_change_keeps_pods(store):
    apply(store, DEPLOY)
    old = {p["metadata"]["name"] for p in deployment_pods(store)}
    set_labels(store, "deploy", "default", "web", {"team": "a"})
    apply(store, DEPLOY)
    assert {p["metadata"]["name"] for p in deployment_pods(store)} == old


def test_deployment_scale(store):
    apply(store, DEPLOY)
    apply(store, DEPLOY.replace("replicas: 3", "replicas: 5"))
    assert len(deployment_pods(store)) == 5
    apply(store, DEPLOY.replace("replicas: 3", "replicas: 1"))
    assert len(deployment_pods(store)) == 1
    apply(store, DEPLOY.replace("replicas: 3", "replicas: 0"))
    assert deployment_pods(store) == []
    assert get(store, "deploy", "web")["status"]["replicas"] == 0


def test_deployment_ready_replicas_follow_pods(store):
    apply(store, DEPLOY)
    pods = deployment_pods(store)
    set_pods_ready(store, "default", pods[:2], True)
    status = get(store, "deploy", "web")["status"]
    assert (status["readyReplicas"], status["availableReplicas"]) == (2, 2)
    assert status.get("unavailableReplicas", 0) == 1


def test_deployment_ready_replicas_drop_to_zero(store):
    apply(store, DEPLOY)
    pods = deployment_pods(store)
    set_pods_ready(store, "default", pods, True)
    assert get(store, "deploy", "web")["status"]["readyReplicas"] == 3
    set_pods_ready(store, "default", pods, False)
    status = get(store, "deploy", "web")["status"]
    assert status.get("readyReplicas", 0) == 0
    assert status.get("availableReplicas", 0) == 0


def test_deployment_unavailable_replicas_cleared_when_all_ready(store):
    apply(store, DEPLOY)
    assert get(store, "deploy", "web")["status"]["unavailableReplicas"] == 3
    set_pods_ready(store, "default", deployment_pods(store), True)
    assert get(store, "deploy", "web")["status"].get("unavailableReplicas", 0) == 0


def test_deployment_ready_replicas_reset_by_template_change(store):
    apply(store, DEPLOY)
    set_pods_ready(store, "default", deployment_pods(store), True)
    apply(store, DEPLOY.replace("nginx:1", "nginx:2"))  # fresh, not-ready pods
    assert get(store, "deploy", "web")["status"].get("readyReplicas", 0) == 0


def test_deployment_ready_replicas_drop_when_ready_pod_deleted(store):
    apply(store, DEPLOY.replace("replicas: 3", "replicas: 1"))
    (pod,) = deployment_pods(store)
    set_pods_ready(store, "default", [pod], True)
    store.delete([(find_kind("pod"), "default", pod["metadata"]["name"])])
    (replacement,) = deployment_pods(store)  # the controller replaced it with a pod that is not ready
    assert replacement["metadata"]["name"] != pod["metadata"]["name"]
    assert get(store, "deploy", "web")["status"].get("readyReplicas", 0) == 0


def test_deleted_pod_is_replaced(store):
    apply(store, DEPLOY)
    pods = deployment_pods(store)
    victim = pods[0]["metadata"]["name"]
    store.delete([(find_kind("pod"), "default", victim)])
    after = {p["metadata"]["name"] for p in deployment_pods(store)}
    assert len(after) == 3 and victim not in after
    assert {p["metadata"]["name"] for p in pods[1:]} <= after


def test_pods_get_distinct_ips_across_deployments(store):
    apply(store, DEPLOY + "---" + DEPLOY.replace("name: web", "name: api").replace("app: web", "app: api"))
    ips = [p["status"]["podIP"] for p in store.list(find_kind("pod"), "default")]
    assert len(ips) == 6 and len(set(ips)) == 6
    assert all(ipaddress.ip_address(ip) in POD_CIDR for ip in ips)


# -- watch across processes -------------------------------------------------------------------------
WRITER_CHILD = textwrap.dedent("""
    import sys, time
    from meshway.model import find_kind, load_yaml
    from meshway.store import Store
    store = Store(sys.argv[1])
    time.sleep(0.2)
    store.apply(load_yaml('''
    apiVersion: v1
    kind: Service
    metadata: {name: from-child, namespace: default}
    spec: {ports: [{port: 80}]}
    ''', "child.yaml"))
    store.label(find_kind("svc"), "default", ["from-child"], None, {"seen": "yes"}, [])
    store.delete([(find_kind("svc"), "default", "from-child")])
""")


def test_watch_sees_changes_written_by_another_process(store, state_dir):
    rv = store.db.current_rv()
    proc = subprocess.Popen([PYTHON, "-c", WRITER_CHILD, str(state_dir)], env=subprocess_env())
    try:
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen += store.db.changes_since(seen[-1].rv if seen else rv)
            if any(c.type == "DELETED" and c.name == "from-child" for c in seen):
                break
            time.sleep(0.02)
    finally:
        assert proc.wait(timeout=30) == 0
    mine = [(c.type, c.kind, c.name) for c in seen if c.name == "from-child"]
    assert mine[0] == ("ADDED", "Service", "from-child")
    assert ("MODIFIED", "Service", "from-child") in mine
    assert mine[-1] == ("DELETED", "Service", "from-child")
    labelled = [c for c in seen if c.type == "MODIFIED" and c.name == "from-child"
                and (c.body["metadata"].get("labels") or {}).get("seen") == "yes"]
    assert labelled
    assert [c.rv for c in seen] == sorted(c.rv for c in seen) and seen[0].rv > rv
    assert all(int(c.body["metadata"]["resourceVersion"]) == c.rv for c in seen if c.type != "DELETED")


def test_watch_generator_across_processes(store, state_dir):
    rv = store.db.current_rv()
    proc = subprocess.Popen([PYTHON, "-c", WRITER_CHILD, str(state_dir)], env=subprocess_env())
    deadline = time.monotonic() + 30
    got = []
    try:
        for batch in store.watch(rv, poll=0.02, stop=lambda: time.monotonic() > deadline):
            got += batch
            if any(c.type == "DELETED" and c.name == "from-child" for c in got):
                break
    finally:
        assert proc.wait(timeout=30) == 0
    assert ("ADDED", "from-child") in {(c.type, c.name) for c in got}
    assert ("DELETED", "from-child") in {(c.type, c.name) for c in got}


# -- durability: SIGKILL in the middle of a big apply ------------------------------------------------
BULK = 3000
BULK_CHILD = textwrap.dedent("""
    import sys, time
    import meshway.store.writer as writer
    from meshway.model import load_yaml, parse_object
    from meshway.store import Store
    state, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    store = Store(state)
    text = open(path).read()
    try:  # libyaml parses the 3000 documents ~8x faster than load_yaml's pure-Python loader
        import yaml
        docs = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
        manifests = [parse_object(doc, path, i) for i, doc in enumerate(docs, 1) if doc is not None]
    except AttributeError:
        manifests = load_yaml(text, path)
    if mode.startswith("hold:"):
        # Stop inside the write transaction once that many Services are written (none committed).
        target, seen, create = int(mode[5:]), [0], writer.Writer.create
        def counting_create(self, kind, body):
            out = create(self, kind, body)
            if kind == "Service":
                seen[0] += 1
                if seen[0] == target:
                    print("holding", flush=True)
                    time.sleep(120)
            return out
        writer.Writer.create = counting_create
    print("applying", flush=True)
    store.apply(manifests)
    print("done", flush=True)
""")


def _bulk_file(path: Path) -> Path:
    path.write_text("".join(
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: bulk-{i}, namespace: default}}\n"
        f"spec: {{ports: [{{name: http, port: 80}}]}}\n" for i in range(BULK)))
    return path


def _kill_during_bulk_apply(state: Path, bulk: Path, mode: str, delay: float) -> dict:
    Store(state).close()  # bootstrapped before the child starts
    wal = state / "store.db-wal"
    proc = subprocess.Popen([PYTHON, "-c", BULK_CHILD, str(state), str(bulk), mode], env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    outcome = {"mode": mode, "mid_transaction": False}
    try:
        wanted = "holding" if mode.startswith("hold:") else "applying"
        line = proc.stdout.readline().strip()
        while line and line != wanted:
            line = proc.stdout.readline().strip()
        assert line == wanted, f"child exited early ({proc.wait()})"
        if mode == "wal":
            base = wal.stat().st_size if wal.exists() else 0
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if (wal.stat().st_size if wal.exists() else 0) > base:
                    break
                time.sleep(0.002)
        elif mode == "delay":
            time.sleep(delay)
        alive = proc.poll() is None  # (reaps the child if it already finished: then it cannot be killed)
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=30)
        rest = proc.stdout.read()
        outcome["mid_transaction"] = alive and rc == -signal.SIGKILL and "done" not in rest
        outcome["rc"] = rc
        outcome["acknowledged"] = "done" in rest  # apply() returned: the commit must survive the kill
        if not alive:
            assert rc == 0 and "done" in rest, (rc, rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    reopened = Store(state)
    try:
        assert reopened.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        bulk_names = {b["metadata"]["name"] for b in reopened.list(find_kind("svc"), "default")
                      if b["metadata"]["name"].startswith("bulk-")}
        outcome["count"] = len(bulk_names)
        # The store still works after recovery.
        apply(reopened, svc("after-crash"))
        assert get(reopened, "svc", "after-crash")["spec"]["clusterIP"]
    finally:
        reopened.close()
    return outcome


def test_sigkill_during_big_apply_is_all_or_nothing(tmp_path):
    bulk = _bulk_file(tmp_path / "bulk.yaml")
    rng = random.Random(20240611)
    attempts = [("hold:600", 0.0), ("wal", 0.0), ("delay", rng.uniform(0.02, 0.3)),
                ("delay", rng.uniform(0.3, 0.8)), ("delay", rng.uniform(0.8, 1.5))]
    outcomes = [_kill_during_bulk_apply(tmp_path / f"state-{i}", bulk, mode, delay)
                for i, (mode, delay) in enumerate(attempts)]
    for outcome in outcomes:
        assert outcome["count"] in (0, BULK), outcome
        if outcome["acknowledged"]:
            assert outcome["count"] == BULK, outcome
    # The first child held its transaction open after writing 600 Services: nothing was committed.
    assert outcomes[0]["mid_transaction"] and outcomes[0]["count"] == 0, outcomes[0]
    assert any(o["mid_transaction"] for o in outcomes), outcomes


# -- durability: concurrent writers ---------------------------------------------------------------------
LABEL_CHILD = textwrap.dedent("""
    import os, sys, time
    from meshway.model import find_kind
    from meshway.store import Store
    state, prefix, go = sys.argv[1], sys.argv[2], sys.argv[3]
    store = Store(state)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    for i in range(20):
        (result,) = store.label(find_kind("namespace"), None, ["default"], None, {f"{prefix}-{i}": "v"}, [])
        assert result.action == "labeled", result
    print("ok", flush=True)
""")


def test_concurrent_label_calls_lose_nothing(store, state_dir, tmp_path):
    apply(store, WAYPOINT + "---" + SVC)  # some reconcile work in every write
    go = tmp_path / "go"
    procs = [subprocess.Popen([PYTHON, "-c", LABEL_CHILD, str(state_dir), prefix, str(go)], env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True) for prefix in ("alpha", "beta")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    labels = get(store, "ns", "default", ns="")["metadata"]["labels"]
    expected = {f"{prefix}-{i}" for prefix in ("alpha", "beta") for i in range(20)}
    assert expected <= set(labels)
    assert len(labels) == 41  # + kubernetes.io/metadata.name
    # Every label call is its own committed change of the Namespace.
    ns_changes = [c for c in store.db.changes_since(0) if c.kind == "Namespace" and c.name == "default"]
    assert len([c for c in ns_changes if c.type == "MODIFIED"]) >= 40


def test_a_route_write_runs_no_controller_that_cannot_be_affected(store, monkeypatch):
    """The waypoint-object, garbage and ServiceEntry-address controllers run only for transactions
    that wrote a kind they read (or deleted something, or named an owner): a VirtualService apply
    lists no Gateway, no ServiceEntry and no object's uid."""
    from meshway.store.db import Txn

    apply(store, WAYPOINT)
    listed = []
    real_list, real_uids = Txn.list, Txn.uids
    monkeypatch.setattr(Txn, "list", lambda self, kind, *a, **k: listed.append(kind) or real_list(self, kind, *a, **k))
    monkeypatch.setattr(Txn, "uids", lambda self, *a, **k: listed.append("uids") or real_uids(self, *a, **k))
    apply(store, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
""")
    assert not {"Gateway", "GatewayClass", "ServiceEntry", "uids"} & set(listed), listed
