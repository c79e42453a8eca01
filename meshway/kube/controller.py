"""istiod's controllers on a Kubernetes API (what `meshway.store.reconcile` does inside the
embedded store's transactions): the `istio-waypoint` GatewayClass created if missing; for each
waypoint Gateway its ServiceAccount, Deployment and Service server-side applied with istiod's field
manager `istio.io/gateway-controller` (owned by the Gateway: the API server's garbage collector
removes them with it); and the statuses of `meshway.mesh.status_plan`, written as istiod writes
them (Gateway and GatewayClass: PUT on /status with the resourceVersion read; WaypointBound on
Service and ServiceEntry: server-side apply on /status by the reporter `istio-ambient-service`;
AuthorizationPolicy: by `istio-ambient-waypoint-policy`).

The plans are pure (`plan_waypoint_applies`, `plan_status_writes`); `KubeController.reconcile` is
the thin shell. A write that fails is logged and retried at the next reconcile; it never stops
the others."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import labels as L
from ..mesh import status as S
from ..mesh.status_plan import STATUS_KINDS, StatusUpdate, plan_statuses
from ..mesh.view import detect_waypoint_class
from ..mesh.waypoint_objects import build_waypoint_objects
from ..store.reconcile import plan_service_entry_addresses
from ..store.writer import now_rfc3339
from .cacert import ROOT_CONFIGMAP, plan_root_configmaps
from .client import ApiError, KubeClient, kind_path

log = logging.getLogger("meshway.kube.controller")
Body = dict[str, Any]
FIELD_MANAGER = "istio.io/gateway-controller"
SERVICE_REPORTER = "istio-ambient-service"
POLICY_REPORTER = "istio-ambient-waypoint-policy"
ADDRESS_ALLOCATOR = "istio.io/ip-autoallocate"  # ServiceEntry status.addresses
CONTROLLER_KINDS = tuple(dict.fromkeys(STATUS_KINDS + ("ServiceAccount",)))
WAYPOINT_CLASS = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
    "metadata": {"name": L.WAYPOINT_CLASS},
    "spec": {"controllerName": "istio.io/mesh-controller", "description": "The default Istio waypoint GatewayClass"},
}


@dataclass(frozen=True)
class Apply:
    kind: str
    body: Body

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.body["metadata"]["namespace"], self.body["metadata"]["name"]


def _index(objects: list[Body]) -> dict[tuple[str, str], Body]:
    return {(b["metadata"].get("namespace") or "", b["metadata"]["name"]): b for b in objects}


def detect_foreign(kind: str, live: Body | None) -> bool:
    """istiod's canManage: an existing Deployment or Service without the managed label belongs to
    someone else and is never overwritten."""
    if live is None or kind == "ServiceAccount":
        return False
    return (live["metadata"].get("labels") or {}).get(L.MANAGED) != L.MANAGED_VALUE


def plan_waypoint_applies(snapshot: Mapping[str, list[Body]], applied: Mapping[tuple, str]) -> tuple[list[Apply], list[str]]:
    """(the applies needed, problems): each waypoint Gateway's objects whose desired form changed
    since last applied (`applied`: key -> JSON of what was applied) or that do not exist."""
    classes = {b["metadata"]["name"]: b for b in snapshot.get("GatewayClass", ())}
    live = {kind: _index(snapshot.get(kind, [])) for kind in ("ServiceAccount", "Deployment", "Service")}
    out, problems = [], []
    for gw in snapshot.get("Gateway", ()):
        if not detect_waypoint_class(gw["spec"]["gatewayClassName"], classes) or not gw["metadata"].get("uid"):
            continue
        for kind, desired in build_waypoint_objects(gw):
            a = Apply(kind, desired)
            current = live[kind].get(a.key[1:])
            if detect_foreign(kind, current):
                problems.append(f"{kind} {a.key[1]}/{a.key[2]} exists and is not managed by istio "
                                f"(label {L.MANAGED}={L.MANAGED_VALUE} missing): not overwritten")
                continue
            if current is None or applied.get(a.key) != json.dumps(desired, sort_keys=True):
                out.append(a)
    return out, problems


@dataclass(frozen=True)
class StatusWrite:
    kind: str
    namespace: str
    name: str
    method: str  # "put" | "apply"
    body: Body
    manager: str = ""


def _bound_conditions(status: Body) -> list[Body]:
    return [c for c in status.get("conditions") or () if c.get("type") == S.WAYPOINT_BOUND]


def plan_status_writes(updates: list[StatusUpdate]) -> list[StatusWrite]:
    """How each changed status is written, as istiod writes it."""
    out = []
    for u in updates:
        if not u.changed:
            continue
        meta = u.body["metadata"]
        ns, name = meta.get("namespace") or "", meta["name"]
        head = {"apiVersion": u.body["apiVersion"], "kind": u.kind}
        if u.kind in ("Gateway", "GatewayClass"):
            body = {**head, "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta},
                    "status": u.status}
            out.append(StatusWrite(u.kind, ns, name, "put", body))
        elif u.kind in ("Service", "ServiceEntry"):
            old, new = _bound_conditions(u.body.get("status") or {}), _bound_conditions(u.status)
            if old == new:
                continue  # only istiod's own condition is written (ServiceEntry addresses: `plan_addresses`)
            out.append(StatusWrite(u.kind, ns, name, "apply",
                                   {**head, "metadata": {"name": name, "namespace": ns},
                                    "status": {"conditions": new}}, SERVICE_REPORTER))
        elif u.kind in ("AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication", "WasmPlugin"):
            out.append(StatusWrite(u.kind, ns, name, "apply",
                                   {**head, "metadata": {"name": name, "namespace": ns},
                                    "status": {"conditions": u.status.get("conditions") or []}}, POLICY_REPORTER))
    return out


def plan_address_writes(entries: list[Body]) -> list[StatusWrite]:
    """ServiceEntry VIPs (status.addresses), applied by the allocator where they differ."""
    out = []
    planned = plan_service_entry_addresses(entries)
    for se in entries:
        ns, name = se["metadata"]["namespace"], se["metadata"]["name"]
        addresses = planned[(ns, name)]
        if ((se.get("status") or {}).get("addresses") or []) != addresses:
            out.append(StatusWrite("ServiceEntry", ns, name, "apply",
                                   {"apiVersion": se["apiVersion"], "kind": "ServiceEntry",
                                    "metadata": {"name": name, "namespace": ns}, "status": {"addresses": addresses}},
                                   ADDRESS_ALLOCATOR))
    return out


@dataclass
class KubeController:
    client: KubeClient
    applied: dict[tuple, str] = field(default_factory=dict)  # what was last applied, per object
    problems: list[str] = field(default_factory=list)
    writes: int = 0
    root_pem: str | None = None  # the mesh root, published to every namespace (`meshway.kube.cacert`)
    roots_applied: dict[str, str] = field(default_factory=dict)  # namespace -> the root applied there

    def reconcile(self, snapshot: Mapping[str, list[Body]], now: str | None = None) -> None:
        """One pass over a consistent snapshot of CONTROLLER_KINDS (from `KubeSource.snapshot`)."""
        self._gateway_class(snapshot)
        self._waypoint_objects(snapshot)
        self._root_configmaps(snapshot)
        self._statuses(snapshot, now or now_rfc3339())

    def _root_configmaps(self, snapshot: Mapping[str, list[Body]]) -> None:
        if not self.root_pem:
            return
        for body in plan_root_configmaps(snapshot.get("Namespace", ()), self.root_pem, self.roots_applied):
            ns = body["metadata"]["namespace"]
            if self._guard(f"apply ConfigMap {ns}/{ROOT_CONFIGMAP}", lambda body=body, ns=ns: self.client.apply(
                    kind_path("ConfigMap", ns, ROOT_CONFIGMAP), body, FIELD_MANAGER), ok_not_found=True):
                self.roots_applied[ns] = self.root_pem

    def _gateway_class(self, snapshot: Mapping[str, list[Body]]) -> None:
        if any(b["metadata"]["name"] == L.WAYPOINT_CLASS for b in snapshot.get("GatewayClass", ())):
            return
        self._guard("create GatewayClass istio-waypoint",
                    lambda: self.client.create(kind_path("GatewayClass"), WAYPOINT_CLASS), ok_conflict=True)

    def _waypoint_objects(self, snapshot: Mapping[str, list[Body]]) -> None:
        applies, self.problems = plan_waypoint_applies(snapshot, self.applied)
        for a in applies:
            path = kind_path(a.kind, a.key[1], a.key[2])
            if self._guard(f"apply {a.kind} {a.key[1]}/{a.key[2]}",
                           lambda a=a, path=path: self.client.apply(path, a.body, FIELD_MANAGER)):
                self.applied[a.key] = json.dumps(a.body, sort_keys=True)

    def _statuses(self, snapshot: Mapping[str, list[Body]], now: str) -> None:
        writes = plan_address_writes(list(snapshot.get("ServiceEntry", ())))
        for w in writes + plan_status_writes(plan_statuses(snapshot, now)):
            path = kind_path(w.kind, w.namespace or None, w.name, "status")
            if w.method == "put":
                action = lambda w=w, path=path: self.client.replace(path, w.body)  # noqa: E731
            else:
                action = lambda w=w, path=path: self.client.apply(path, w.body, w.manager)  # noqa: E731
            self._guard(f"status of {w.kind} {w.namespace}/{w.name}", action, ok_not_found=True, ok_conflict=True)

    def _guard(self, what: str, action, ok_not_found: bool = False, ok_conflict: bool = False) -> bool:
        try:
            action()
        except ApiError as exc:
            if (ok_not_found and exc.not_found) or (ok_conflict and exc.conflict):
                log.debug("%s: %s (the next change retries)", what, exc)
                return False
            log.warning("%s failed: %s", what, exc)
            return False
        except Exception as exc:  # noqa: BLE001: unreachable API etc.: retried at the next reconcile
            log.warning("%s failed: %s", what, exc)
            return False
        self.writes += 1
        return True
