"""The Kubernetes backend's pure decisions: relist diffs (no lost delete), watch events, the Lease
decision, what is watched, projections, which waypoint objects are applied and how statuses are
written. The real API server runs in tests/test_kube_controller_e2e.py."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from meshway import labels as L
from meshway.kube.client import ApiError, kind_path, parse_error
from meshway.kube.controller import (FIELD_MANAGER, POLICY_REPORTER, SERVICE_REPORTER, Apply, plan_status_writes,
                                     plan_waypoint_applies)
from meshway.kube.leader import decide_lease, format_micro_time
from meshway.kube.project import LAST_APPLIED, project, project_pod
from meshway.kube.reflector import apply_event, diff_relist, next_backoff
from meshway.kube.source import plan_watches
from meshway.mesh.status_plan import StatusUpdate
from meshway.mesh.waypoint_objects import build_waypoint_objects


def obj(name, rv="1", uid="u-", ns="default", **extra):
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "uid": uid + name}, **extra}


# -- relist and watch -------------------------------------------------------------------------------
def test_relist_synthesizes_deletes_and_skips_unchanged():
    held = {("default", "a"): obj("a"), ("default", "b"): obj("b"), ("default", "c"): obj("c")}
    listed = [obj("a"), obj("b", rv="7"), obj("d")]
    changes = [(t, b["metadata"]["name"]) for t, b in diff_relist(held, listed)]
    assert changes == [("MODIFIED", "b"), ("ADDED", "d"), ("DELETED", "c")]


def test_relist_sees_delete_and_recreate_under_one_name():
    held = {("default", "a"): obj("a")}
    changes = diff_relist(held, [obj("a", rv="9", uid="new-")])
    assert [(t, b["metadata"]["uid"]) for t, b in changes] == [("DELETED", "u-a"), ("ADDED", "new-a")]


@pytest.mark.parametrize("event,held_before,expected,held_after", [
    ("ADDED", {}, "ADDED", {"a"}),
    ("MODIFIED", {"a": "1"}, "MODIFIED", {"a"}),
    ("ADDED", {"a": "2"}, None, {"a"}),  # a replay of what is held (same resourceVersion)
    ("DELETED", {"a": "1"}, "DELETED", set()),
    ("DELETED", {}, None, set()),  # a delete of something never seen
])
def test_apply_event(event, held_before, expected, held_after):
    held = {("default", k): obj(k, rv=v) for k, v in held_before.items()}
    change = apply_event(held, event, obj("a", rv="2"))
    assert (change[0] if change else None) == expected
    assert {k[1] for k in held} == held_after


def test_bookmarks_change_nothing():
    held = {}
    assert apply_event(held, "BOOKMARK", obj("a")) is None and held == {}


def test_backoff_doubles_to_a_ceiling():
    delays = [0.0]
    for _ in range(12):
        delays.append(next_backoff(delays[-1]))
    assert delays[1] == 0.2 and delays[2] == 0.4 and max(delays) == 30.0


def test_errors_keep_the_status_fields():
    err = parse_error(410, b'{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version"}')
    assert err.gone and err.reason == "Expired" and "too old" in str(err)
    text = parse_error(502, b"bad gateway")
    assert text.status == 502 and text.message == "bad gateway" and not text.gone
    assert ApiError(404, "NotFound", "x").not_found and ApiError(409, "Conflict", "x").conflict


# -- what is watched and kept ---------------------------------------------------------------------
def test_watches_are_narrowed_where_the_mesh_reads_little():
    by_kind = {w.kind: w for w in plan_watches()}
    assert by_kind["ConfigMap"].path == "/api/v1/namespaces/istio-system/configmaps"
    assert by_kind["ConfigMap"].query == {"fieldSelector": "metadata.name=istio"}
    assert by_kind["ServiceAccount"].query == {"labelSelector": L.GATEWAY_NAME}
    assert by_kind["Gateway"].path == "/apis/gateway.networking.k8s.io/v1/gateways"
    assert by_kind["Pod"].path == "/api/v1/pods" and by_kind["Pod"].query == {}
    assert {"Namespace", "Service", "ServiceEntry", "VirtualService", "DestinationRule", "HTTPRoute",
            "AuthorizationPolicy", "Telemetry", "EnvoyFilter", "Deployment", "GatewayClass"} <= set(by_kind)


def test_pod_projection_keeps_what_the_mesh_reads():
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "default", "uid": "u", "resourceVersion": "5",
                        "labels": {"app": "reviews"}, "annotations": {LAST_APPLIED: "{...}", "a": "b"},
                        "managedFields": [{"manager": "kubectl"}], "ownerReferences": [{"kind": "ReplicaSet"}]},
           "spec": {"nodeName": "node-1", "serviceAccountName": "bookinfo-reviews", "volumes": [{"name": "v"}],
                    "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 9080}],
                                    "env": [{"name": "X", "value": "1"}]}]},
           "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}], "hostIP": "h",
                      "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t"}],
                      "containerStatuses": [{"name": "c"}]}}
    kept = project_pod(pod)
    assert kept["metadata"] == {"name": "p", "namespace": "default", "uid": "u", "resourceVersion": "5",
                                "labels": {"app": "reviews"}, "annotations": {"a": "b"},
                                "ownerReferences": [{"kind": "ReplicaSet"}]}
    assert kept["spec"] == {"nodeName": "node-1", "serviceAccountName": "bookinfo-reviews",
                            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 9080}]}]}
    assert kept["status"] == {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}],
                              "hostIP": "h", "conditions": [{"type": "Ready", "status": "True"}]}


def test_other_kinds_keep_their_body_without_managed_fields():
    body = {"apiVersion": "v1", "metadata": {"name": "s", "managedFields": [1]}, "spec": {"ports": []}}
    assert project("Service", body) == {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                                        "spec": {"ports": []}}


# -- leader election ------------------------------------------------------------------------------
NOW = datetime(2026, 12, 2, 18, 0, 0, tzinfo=timezone.utc)


def lease(holder, renewed, duration=15, transitions=0):
    return {"metadata": {"name": "meshway-controlplane", "namespace": "istio-system", "resourceVersion": "42"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": transitions,
                     "renewTime": format_micro_time(renewed), "acquireTime": format_micro_time(renewed)}}


def test_lease_is_created_when_missing():
    d = decide_lease(None, "me", NOW)
    assert d.action == "create" and d.body["spec"]["holderIdentity"] == "me"
    assert d.body["metadata"] == {"name": "meshway-controlplane", "namespace": "istio-system"}


def test_a_live_lease_of_another_is_respected():
    d = decide_lease(lease("other", NOW - timedelta(seconds=5)), "me", NOW)
    assert d.action == "wait" and d.holder == "other" and d.body is None


def test_an_expired_lease_is_taken_with_the_version_read():
    d = decide_lease(lease("other", NOW - timedelta(seconds=16), transitions=3), "me", NOW)
    assert d.action == "update" and d.body["metadata"]["resourceVersion"] == "42"
    assert d.body["spec"]["holderIdentity"] == "me" and d.body["spec"]["leaseTransitions"] == 4
    assert d.body["spec"]["acquireTime"] == format_micro_time(NOW)


def test_the_holder_renews_without_a_transition():
    old = NOW - timedelta(seconds=2)
    d = decide_lease(lease("me", old, transitions=3), "me", NOW)
    assert d.action == "update" and d.body["spec"]["leaseTransitions"] == 3
    assert d.body["spec"]["renewTime"] == format_micro_time(NOW)
    assert d.body["spec"]["acquireTime"] == format_micro_time(old)


def test_a_released_lease_is_free():
    d = decide_lease(lease("", NOW), "me", NOW)
    assert d.action == "update" and d.body["spec"]["holderIdentity"] == "me"


# -- waypoint objects -----------------------------------------------------------------------------
def gateway(name="waypoint", uid="gw-uid"):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 1},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


WAYPOINT_CLASS = {"metadata": {"name": "istio-waypoint"}, "spec": {"controllerName": "istio.io/mesh-controller"}}


def test_every_object_of_a_new_waypoint_is_applied_once():
    snap = {"Gateway": [gateway()], "GatewayClass": [WAYPOINT_CLASS]}
    applies, problems = plan_waypoint_applies(snap, {})
    assert [a.key for a in applies] == [("ServiceAccount", "default", "waypoint"),
                                         ("Deployment", "default", "waypoint"), ("Service", "default", "waypoint")]
    assert problems == []
    for a in applies:
        assert a.body["metadata"]["ownerReferences"] == [{"apiVersion": "gateway.networking.k8s.io/v1",
                                                          "kind": "Gateway", "name": "waypoint", "uid": "gw-uid"}]
    import json
    done = {a.key: json.dumps(a.body, sort_keys=True) for a in applies}
    live = {kind: [a.body for a in applies if a.kind == kind] for kind in ("ServiceAccount", "Deployment", "Service")}
    assert plan_waypoint_applies({**snap, **live}, done) == ([], [])


def test_a_deleted_waypoint_object_is_applied_again():
    import json
    applies, _ = plan_waypoint_applies({"Gateway": [gateway()], "GatewayClass": [WAYPOINT_CLASS]}, {})
    done = {a.key: json.dumps(a.body, sort_keys=True) for a in applies}
    live = {"ServiceAccount": [applies[0].body], "Service": [applies[2].body]}  # the Deployment was deleted
    again, _ = plan_waypoint_applies({"Gateway": [gateway()], "GatewayClass": [WAYPOINT_CLASS], **live}, done)
    assert [a.key for a in again] == [("Deployment", "default", "waypoint")]


def test_objects_not_managed_by_istio_are_never_overwritten():
    foreign = {"metadata": {"name": "waypoint", "namespace": "default", "labels": {"app": "mine"}}}
    applies, problems = plan_waypoint_applies({"Gateway": [gateway()], "GatewayClass": [WAYPOINT_CLASS],
                                               "Deployment": [foreign]}, {})
    assert ("Deployment", "default", "waypoint") not in [a.key for a in applies]
    assert problems == ["Deployment default/waypoint exists and is not managed by istio "
                        "(label gateway.istio.io/managed=istio.io-mesh-controller missing): not overwritten"]


def test_gateways_of_other_classes_get_nothing():
    gw = gateway()
    gw["spec"]["gatewayClassName"] = "istio"
    assert plan_waypoint_applies({"Gateway": [gw], "GatewayClass": [WAYPOINT_CLASS]}, {}) == ([], [])


# -- status writes --------------------------------------------------------------------------------
BOUND = {"type": "istio.io/WaypointBound", "status": "True", "reason": "WaypointAccepted", "message": "bound"}


def svc(status):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "default", "resourceVersion": "3"}, "status": status}


def test_waypoint_bound_is_applied_by_istiods_reporter_alone():
    other = {"type": "Other", "status": "True"}
    writes = plan_status_writes([StatusUpdate("Service", svc({"conditions": [other]}),
                                              {"conditions": [other, BOUND]})])
    assert len(writes) == 1
    w = writes[0]
    assert (w.method, w.manager) == ("apply", SERVICE_REPORTER)
    assert w.body == {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "default"},
                      "status": {"conditions": [BOUND]}}


def test_removing_waypoint_bound_applies_an_empty_list():
    writes = plan_status_writes([StatusUpdate("Service", svc({"conditions": [BOUND]}), {})])
    assert writes[0].body["status"] == {"conditions": []}


def test_unchanged_statuses_are_not_written():
    assert plan_status_writes([StatusUpdate("Service", svc({"conditions": [BOUND]}), {"conditions": [BOUND]})]) == []


def test_gateway_status_is_put_with_the_version_read():
    gw = {**gateway(), "status": {}}
    gw["metadata"]["resourceVersion"] = "17"
    status = {"conditions": [{"type": "Programmed", "status": "False"}]}
    (w,) = plan_status_writes([StatusUpdate("Gateway", gw, status)])
    assert w.method == "put" and w.body["metadata"] == {"name": "waypoint", "namespace": "default",
                                                         "resourceVersion": "17"}
    assert w.body["status"] == status


def test_policy_status_reporter():
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "p", "namespace": "default"}, "status": {}}
    (w,) = plan_status_writes([StatusUpdate("AuthorizationPolicy", ap, {"conditions": [{"type": "WaypointAccepted"}]})])
    assert w.manager == POLICY_REPORTER and w.body["status"] == {"conditions": [{"type": "WaypointAccepted"}]}


def test_paths():
    assert kind_path("Service", "default", "reviews", "status") == "/api/v1/namespaces/default/services/reviews/status"
    assert kind_path("GatewayClass", None, "istio-waypoint") == \
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/istio-waypoint"
    assert FIELD_MANAGER == "istio.io/gateway-controller"
    assert Apply("Service", build_waypoint_objects(gateway())[2][1]).key == ("Service", "default", "waypoint")


def test_service_entry_vips_are_applied_by_the_allocator_once():
    from meshway.kube.controller import ADDRESS_ALLOCATOR, plan_address_writes

    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "httpbin", "namespace": "egress"},
          "spec": {"hosts": ["httpbin.org", "*.example.com"], "resolution": "DNS"}}
    (w,) = plan_address_writes([se])
    assert (w.method, w.manager) == ("apply", ADDRESS_ALLOCATOR)
    assert w.body["status"] == {"addresses": [{"host": "httpbin.org", "value": "240.240.0.1"}]}
    assert plan_address_writes([{**se, "status": w.body["status"]}]) == []
    static = {**se, "spec": {**se["spec"], "addresses": ["10.9.9.9"]}}
    assert plan_address_writes([static]) == []
