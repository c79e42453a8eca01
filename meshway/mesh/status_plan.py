"""istiod's status for the objects it reports on, as a pure plan: from the objects of
`STATUS_KINDS` (with their current status) to the status each should have now. Both backends use
it: the embedded store inside each write transaction (`meshway.store.reconcile`), the Kubernetes
controller after each change it watches (`meshway.kube.controller`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from ..model.extensions import WasmPlugin
from ..model.istio import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from . import status as S
from .policy_status import build_peer_authn_conditions, build_policy_conditions, build_request_authn_conditions
from .selection import decide_service
from .wasm_status import build_wasm_plugin_conditions
from .view import MeshView, detect_waypoint_class

Body = dict[str, Any]
STATUS_KINDS = ("Namespace", "Service", "ServiceEntry", "Gateway", "GatewayClass", "Deployment",
                "AuthorizationPolicy", "RequestAuthentication", "WasmPlugin", "PeerAuthentication",
                "ConfigMap")  # ConfigMap: the MeshConfig's providers (CUSTOM policies)


@dataclass(frozen=True)
class StatusUpdate:
    kind: str
    body: Body  # the object as read (its status is the old one)
    status: Body  # the whole status it should have

    @property
    def changed(self) -> bool:
        return (self.body.get("status") or {}) != self.status


def plan_statuses(snapshot: Mapping[str, list[Body]], now: str) -> list[StatusUpdate]:
    """Every status istiod would write for these objects; `changed` tells which differ."""
    view = MeshView.build(snapshot)
    services = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in snapshot.get("Service", ())}
    return [*_bound_statuses(view, snapshot, now), *_gateway_statuses(view, snapshot, services, now),
            *_policy_statuses(view, snapshot, now), *_class_statuses(snapshot, now)]


def _bound_statuses(view: MeshView, snapshot: Mapping[str, list[Body]], now: str) -> list[StatusUpdate]:
    out = []
    for kind in ("Service", "ServiceEntry"):
        for body in snapshot.get(kind, ()):
            meta = body["metadata"]
            svc = view.services[(kind, meta["namespace"], meta["name"])]
            decision = decide_service(view, svc)
            cond = S.build_bound_condition(decision, svc, view.namespace_labels(svc.namespace))
            old = (body.get("status") or {}).get("conditions") or []
            conds = S.merge_conditions(old, [cond] if cond else [], now, None, drop=(S.WAYPOINT_BOUND,))
            status = {**(body.get("status") or {}), "conditions": conds}
            if not conds:
                status.pop("conditions")
            out.append(StatusUpdate(kind, body, status))
    return out


def _gateway_statuses(view: MeshView, snapshot: Mapping[str, list[Body]], services: dict, now: str) -> list[StatusUpdate]:
    out = []
    for gw in snapshot.get("Gateway", ()):
        wp = view.waypoints.get((gw["metadata"]["namespace"], gw["metadata"]["name"]))
        if wp is None:
            continue
        conds, rest = S.build_gateway_status(wp, gw, services.get((wp.namespace, wp.service_name)))
        old = (gw.get("status") or {}).get("conditions") or []
        generation = gw["metadata"].get("generation")
        listeners = [{**li, "conditions": S.merge_conditions(_old_listener(gw, li["name"]), li["conditions"], now,
                                                             generation)}
                     for li in rest["listeners"]]
        status = {**rest, "listeners": listeners, "conditions": S.merge_conditions(old, conds, now, generation)}
        out.append(StatusUpdate("Gateway", gw, status))
    return out


def _policy_statuses(view: MeshView, snapshot: Mapping[str, list[Body]], now: str) -> list[StatusUpdate]:
    out = []
    for body in snapshot.get("AuthorizationPolicy", ()):
        policy = AuthorizationPolicy.model_validate(body, strict=False)
        old = (body.get("status") or {}).get("conditions") or []
        conds = S.merge_conditions(old, build_policy_conditions(policy, view), now,
                                   body["metadata"].get("generation"), drop=("ZtunnelAccepted", "WaypointAccepted"))
        out.append(StatusUpdate("AuthorizationPolicy", body, {**(body.get("status") or {}), "conditions": conds}))
    for body in snapshot.get("RequestAuthentication", ()):
        authn = RequestAuthentication.model_validate(body, strict=False)
        old = (body.get("status") or {}).get("conditions") or []
        conds = S.merge_conditions(old, build_request_authn_conditions(authn, view), now,
                                   body["metadata"].get("generation"), drop=("WaypointAccepted",))
        out.append(StatusUpdate("RequestAuthentication", body, {**(body.get("status") or {}), "conditions": conds}))
    for body in snapshot.get("WasmPlugin", ()):
        plugin = WasmPlugin.model_validate(body, strict=False)
        old = (body.get("status") or {}).get("conditions") or []
        conds = S.merge_conditions(old, build_wasm_plugin_conditions(plugin, view), now,
                                   body["metadata"].get("generation"), drop=("WaypointAccepted",))
        out.append(StatusUpdate("WasmPlugin", body, {**(body.get("status") or {}), "conditions": conds}))
    bodies = list(snapshot.get("PeerAuthentication", ()))
    peer_authns = [PeerAuthentication.model_validate(body, strict=False) for body in bodies]
    for body, peer_authn in zip(bodies, peer_authns):
        old = (body.get("status") or {}).get("conditions") or []
        conds = S.merge_conditions(old, build_peer_authn_conditions(peer_authn, peer_authns), now,
                                   body["metadata"].get("generation"), drop=("ZtunnelAccepted",))
        out.append(StatusUpdate("PeerAuthentication", body, {**(body.get("status") or {}), "conditions": conds}))
    return out


def _class_statuses(snapshot: Mapping[str, list[Body]], now: str) -> list[StatusUpdate]:
    out = []
    for gc in snapshot.get("GatewayClass", ()):
        if detect_waypoint_class(gc["metadata"]["name"], {gc["metadata"]["name"]: gc}):
            old = (gc.get("status") or {}).get("conditions") or []
            conds = S.merge_conditions(old, S.build_gateway_class_conditions(), now, gc["metadata"].get("generation"))
            out.append(StatusUpdate("GatewayClass", gc, {**(gc.get("status") or {}), "conditions": conds}))
    return out


def _old_listener(gw: Body, name: str) -> list[Body]:
    for li in (gw.get("status") or {}).get("listeners") or []:
        if li.get("name") == name:
            return copy.deepcopy(li.get("conditions") or [])
    return []
