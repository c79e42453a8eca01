"""The controllers that run inside every write transaction, so that what a CLI call returns is
already consistent: waypoint objects for waypoint Gateways, garbage collection of owned objects,
the Deployment controller, and istiod's status (WaypointBound, Gateway Programmed).

Each step is a thin loop over pure builders in `meshway.mesh`; `Writer` does the admission work
shared with user writes (server metadata, defaults, address allocation).
"""
from __future__ import annotations

from typing import Any

from ..mesh.status_plan import STATUS_KINDS, plan_statuses
from ..mesh.view import detect_waypoint_class
from ..mesh.waypoint_objects import build_waypoint_objects
from ..mesh.workloads import build_deployment_status, plan_pods
from . import ipam
from .writer import Writer

Body = dict[str, Any]


def reconcile(w: Writer) -> None:
    _service_entry_addresses(w)
    _waypoint_objects(w)
    _collect_garbage(w)
    _deployments(w)
    _statuses(w)


def detect_needs_auto_address(se: Body) -> bool:
    """Istio auto-allocates a VIP per host for ServiceEntries without addresses (not for wildcards or
    resolution NONE), so that ztunnel can send their traffic to a waypoint."""
    spec = se.get("spec", {})
    return not spec.get("addresses") and spec.get("resolution", "NONE") != "NONE"


def plan_service_entry_addresses(entries: list[Body]) -> dict[tuple[str, str], list[Body]]:
    """{(namespace, name): status.addresses} for every ServiceEntry (pure): a VIP per host for those
    that need one (`detect_needs_auto_address`), keeping each host's VIP once given."""
    in_use = {a.get("value") for se in entries for a in (se.get("status") or {}).get("addresses") or []}
    out = {}
    for se in entries:
        old = {a["host"]: a["value"] for a in (se.get("status") or {}).get("addresses") or [] if "host" in a}
        hosts = [h for h in se["spec"].get("hosts", []) if "*" not in h] if detect_needs_auto_address(se) else []
        addresses = []
        for host in hosts:
            ip = old.get(host) or ipam.allocate_service_entry_ip(in_use)
            in_use.add(ip)
            addresses.append({"host": host, "value": ip})
        out[(se["metadata"]["namespace"], se["metadata"]["name"])] = addresses
    return out


def _changed_kinds(w: Writer) -> set[str] | None:
    """The kinds this transaction wrote so far; None for a full reconcile (everything)."""
    return None if w.full else {c.kind for c in w.txn.changed}


def _service_entry_addresses(w: Writer) -> None:
    kinds = _changed_kinds(w)
    if kinds is not None and "ServiceEntry" not in kinds:
        return  # the addresses read only ServiceEntries
    entries = w.txn.list("ServiceEntry")
    planned = plan_service_entry_addresses(entries)
    for se in entries:
        addresses = planned[(se["metadata"]["namespace"], se["metadata"]["name"])]
        status = {k: v for k, v in (se.get("status") or {}).items() if k != "addresses"}
        if addresses:
            status["addresses"] = addresses
        w.set_status("ServiceEntry", se, status, replace=True)


WAYPOINT_OBJECT_KINDS = frozenset({"Gateway", "GatewayClass", "ServiceAccount", "Deployment", "Service"})


def _waypoint_objects(w: Writer) -> None:
    """A waypoint Gateway's ServiceAccount, Deployment and Service, kept as built (recreated or
    restored when they are deleted or changed); only when the transaction wrote one of those kinds."""
    kinds = _changed_kinds(w)
    if kinds is not None and not kinds & WAYPOINT_OBJECT_KINDS:
        return
    classes = {b["metadata"]["name"]: b for b in w.txn.list("GatewayClass")}
    for gw in w.txn.list("Gateway"):
        if not detect_waypoint_class(gw["spec"]["gatewayClassName"], classes):
            continue
        for kind, desired in build_waypoint_objects(gw):
            w.ensure(kind, desired)


def _collect_garbage(w: Writer) -> None:
    """Objects whose owner is gone; only when the transaction deleted something or wrote an object
    that names an owner (which may not exist)."""
    if not w.full and not any(c.type == "DELETED" or (c.body.get("metadata") or {}).get("ownerReferences")
                              for c in w.txn.changed):
        return
    while True:
        orphans = w.txn.owners() - w.txn.uids()
        if not orphans:
            return
        for uid in orphans:
            for body in w.txn.owned_by(uid):
                w.remove(body["kind"], body)


def _dirty_deployments(w: Writer) -> list[Body]:
    if w.full:
        return w.txn.list("Deployment")
    keys = {(c.namespace, c.name) for c in w.txn.changed if c.kind == "Deployment" and c.type != "DELETED"}
    for change in w.txn.changed:
        if change.kind == "Pod":
            for ref in change.body["metadata"].get("ownerReferences") or []:
                if ref["kind"] == "Deployment":
                    keys.add((change.namespace, ref["name"]))
    found = (w.txn.get("Deployment", ns, name) for ns, name in sorted(keys))
    return [d for d in found if d is not None]


def _deployments(w: Writer) -> None:
    for dep in _dirty_deployments(w):
        pods = [p for p in w.txn.owned_by(dep["metadata"]["uid"]) if p["kind"] == "Pod"]
        create, delete = plan_pods(dep, pods, w.random_suffix)
        for pod in delete:
            w.remove("Pod", pod)
        for pod in create:
            w.create("Pod", pod)
        gone = {p["metadata"]["name"] for p in delete}
        live = [p for p in pods if p["metadata"]["name"] not in gone] + create
        w.set_status("Deployment", dep, build_deployment_status(dep, live), replace=True)


def _statuses(w: Writer) -> None:
    """istiod's status for every object whose status reads only STATUS_KINDS; skipped when the
    transaction changed none of those kinds (a route, rule or pod change cannot change them)."""
    if not w.full and not {c.kind for c in w.txn.changed} & set(STATUS_KINDS):
        return
    for update in plan_statuses({kind: w.txn.list(kind) for kind in STATUS_KINDS}, w.now):
        w.set_status(update.kind, update.body, update.status, replace=True)
