"""MeshView: a store snapshot as plain frozen records plus the indexes selection needs.

Built from the store's dicts without re-validating them (the store only holds validated objects).
Per-kind indexes are independent, so `with_changes` rebuilds only the kinds that changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from .. import labels as L
from .index import ConfigIndex

Body = dict[str, Any]


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class PortInfo:
    name: str
    port: int
    target_port: int | str
    protocol: str
    app_protocol: str | None


@dataclass(frozen=True)
class ServiceInfo:
    """A Kubernetes Service or an Istio ServiceEntry: a destination addressed as a service."""

    kind: str  # Service | ServiceEntry
    namespace: str
    name: str
    labels: Mapping[str, str]
    addresses: tuple[str, ...]
    ports: tuple[PortInfo, ...]
    selector: Mapping[str, str] | None
    hosts: tuple[str, ...]
    namespace_private: bool
    created: str

    @property
    def hostname(self) -> str:
        return self.hosts[0] if self.hosts else f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: str | None
    service_account: str
    node: str | None
    ready: bool
    named_ports: Mapping[str, int] = field(default_factory=dict)
    created: str = ""


@dataclass(frozen=True)
class WaypointInfo:
    """A Gateway of a waypoint class, with what selection needs to know about it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    class_name: str
    traffic_type: str
    traffic_type_source: str
    allowed_from: str
    allowed_selector: Body | None
    service_name: str
    ready: bool  # a replica is ready now
    uid: str
    # Destinations bind once the waypoint has been ready (its Gateway has status.addresses, which are
    # never removed), as Istio binds by the Gateway's addresses: losing every replica afterwards does
    # not unbind anything, so traffic waits or fails at the waypoint instead of bypassing its policy.
    bound: bool = False
    valid: bool = True  # it has the one listener a waypoint needs (15008/HBONE)
    service_account: str = ""  # its pods' service account (the SA override annotation, else service_name)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def hostname(self) -> str:
        return f"{self.service_name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class GatewayInfo:
    namespace: str
    name: str
    class_name: str


def _frozen(d: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(d or {}))


def build_namespace(body: Body) -> NamespaceInfo:
    return NamespaceInfo(body["metadata"]["name"], _frozen(body["metadata"].get("labels")))


def build_service(body: Body) -> ServiceInfo:
    meta, spec = body["metadata"], body.get("spec", {})
    if body["kind"] == "ServiceEntry":
        ports = tuple(PortInfo(p["name"], p["number"], p.get("targetPort") or p["number"],
                               "TCP", (p.get("protocol") or "").lower() or None) for p in spec.get("ports", []))
        addrs = tuple(spec.get("addresses") or ()) + tuple(
            a["value"] for a in (body.get("status") or {}).get("addresses", []) if a.get("value"))
        export = spec.get("exportTo")
        private = bool(export) and all(e in (".", meta["namespace"]) for e in export)
        return ServiceInfo("ServiceEntry", meta["namespace"], meta["name"], _frozen(meta.get("labels")), addrs, ports,
                           None, tuple(spec.get("hosts", ())), private, meta.get("creationTimestamp", ""))
    ports = tuple(PortInfo(p.get("name", ""), p["port"], p.get("targetPort", p["port"]), p.get("protocol", "TCP"),
                           p.get("appProtocol")) for p in spec.get("ports", []))
    ips = tuple(ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None")
    return ServiceInfo("Service", meta["namespace"], meta["name"], _frozen(meta.get("labels")), ips, ports,
                       _frozen(spec.get("selector")) if spec.get("selector") is not None else None,
                       (), False, meta.get("creationTimestamp", ""))


def build_pod(body: Body) -> PodInfo:
    meta, spec, status = body["metadata"], body.get("spec", {}), body.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    named = {p["name"]: p["containerPort"] for c in spec.get("containers", []) for p in c.get("ports") or []
             if p.get("name")}
    return PodInfo(meta["namespace"], meta["name"], _frozen(meta.get("labels")), status.get("podIP"),
                   spec.get("serviceAccountName") or "default", spec.get("nodeName"), ready, _frozen(named),
                   meta.get("creationTimestamp", ""))


def build_label_index(pods: Iterable[PodInfo]) -> dict[tuple[str, str, str], frozenset[tuple[str, str]]]:
    index: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
    for pod in pods:
        for key, value in pod.labels.items():
            index.setdefault((pod.namespace, key, value), set()).add((pod.namespace, pod.name))
    return {k: frozenset(v) for k, v in index.items()}


def detect_waypoint_class(class_name: str, classes: Mapping[str, Body]) -> bool:
    if class_name == L.WAYPOINT_CLASS:
        return True
    cls = classes.get(class_name)
    return bool(cls) and cls.get("spec", {}).get("controllerName") == L.MESH_CONTROLLER


def find_hbone_listener(gateway: Body) -> Body | None:
    for listener in gateway.get("spec", {}).get("listeners", []):
        if listener.get("protocol") == "HBONE" and listener.get("port") == L.HBONE_PORT:
            return listener
    return None


def build_waypoint(gateway: Body, classes: Mapping[str, Body], ready: bool) -> WaypointInfo:
    meta, spec = gateway["metadata"], gateway["spec"]
    labels = meta.get("labels") or {}
    class_labels = (classes.get(spec["gatewayClassName"], {}).get("metadata", {}).get("labels") or {})
    if L.WAYPOINT_FOR in labels:
        traffic, source = labels[L.WAYPOINT_FOR], f"Gateway label {L.WAYPOINT_FOR}={labels[L.WAYPOINT_FOR]}"
    elif L.WAYPOINT_FOR in class_labels:
        traffic = class_labels[L.WAYPOINT_FOR]
        source = f"GatewayClass {spec['gatewayClassName']} label {L.WAYPOINT_FOR}={traffic}"
    else:
        traffic, source = L.DEFAULT_WAYPOINT_FOR, f"default ({L.WAYPOINT_FOR} not set on the Gateway or its class)"
    if traffic not in L.TRAFFIC_TYPES:
        traffic = L.DEFAULT_WAYPOINT_FOR
    listener = find_hbone_listener(gateway) or {}
    namespaces = (listener.get("allowedRoutes") or {}).get("namespaces") or {}
    annotations = meta.get("annotations") or {}
    valid = bool(listener)
    ready = ready and valid
    bound = valid and (ready or bool((gateway.get("status") or {}).get("addresses")))
    return WaypointInfo(meta["namespace"], meta["name"], _frozen(labels), spec["gatewayClassName"], traffic, source,
                        namespaces.get("from", "Same"), namespaces.get("selector"),
                        annotations.get(L.NAME_OVERRIDE, meta["name"]), ready, meta.get("uid", ""), bound, valid,
                        annotations.get(L.SERVICE_ACCOUNT_OVERRIDE, annotations.get(L.NAME_OVERRIDE, meta["name"])))


def detect_deployment_ready(deployment: Body | None) -> bool:
    return bool(deployment) and (deployment.get("status") or {}).get("readyReplicas", 0) > 0


@dataclass(frozen=True)
class MeshView:
    namespaces: Mapping[str, NamespaceInfo] = field(default_factory=dict)
    services: Mapping[tuple[str, str, str], ServiceInfo] = field(default_factory=dict)
    services_by_ip: Mapping[str, ServiceInfo] = field(default_factory=dict)
    pods: Mapping[tuple[str, str], PodInfo] = field(default_factory=dict)
    pods_by_ip: Mapping[str, PodInfo] = field(default_factory=dict)
    waypoints: Mapping[tuple[str, str], WaypointInfo] = field(default_factory=dict)
    gateways: Mapping[tuple[str, str], GatewayInfo] = field(default_factory=dict)
    # Routing config, as stored (validated) bodies, by kind: VirtualService, DestinationRule, HTTPRoute.
    config: Mapping[str, tuple[Body, ...]] = field(default_factory=dict)
    index: ConfigIndex = field(default_factory=ConfigIndex)  # the config parsed once, by host and parent
    # Pods by (namespace, label key, label value): a Service's pods are the intersection for its selector.
    pods_by_label: Mapping[tuple[str, str, str], frozenset[tuple[str, str]]] = field(default_factory=dict)
    # Derived results computed at most once per view (e.g. which services each waypoint serves).
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def build(snapshot: Mapping[str, Iterable[Body]]) -> "MeshView":
        return MeshView().with_changes(snapshot)

    def with_changes(self, snapshot: Mapping[str, Iterable[Body]]) -> "MeshView":
        """A new view where the indexes of the kinds present in `snapshot` are rebuilt from it
        (`snapshot[kind]` is the complete, current list of that kind); other indexes are shared.
        Kinds that one index is built from together must come together: see `expand_kinds`."""
        view = self
        if "Namespace" in snapshot:
            view = replace(view, namespaces={b["metadata"]["name"]: build_namespace(b) for b in snapshot["Namespace"]})
        if "Service" in snapshot or "ServiceEntry" in snapshot:
            kept = {k: v for k, v in view.services.items()
                    if not (k[0] in snapshot and k[0] in ("Service", "ServiceEntry"))}
            for kind in ("Service", "ServiceEntry"):
                for body in snapshot.get(kind, ()):
                    info = build_service(body)
                    kept[(kind, info.namespace, info.name)] = info
            by_ip = {ip: s for s in kept.values() for ip in s.addresses}
            view = replace(view, services=kept, services_by_ip=by_ip)
        if "Pod" in snapshot:
            pods = {(b["metadata"]["namespace"], b["metadata"]["name"]): build_pod(b) for b in snapshot["Pod"]}
            view = replace(view, pods=pods, pods_by_ip={p.ip: p for p in pods.values() if p.ip},
                           pods_by_label=build_label_index(pods.values()))
        if {"Gateway", "GatewayClass", "Deployment"} & set(snapshot):
            view = view._with_gateways(snapshot)
        if set(CONFIG_KINDS) & set(snapshot):
            config = dict(view.config)
            config.update({k: tuple(b for b in snapshot[k] if detect_config(k, b)) if k == "ConfigMap"
                           else tuple(snapshot[k]) for k in CONFIG_KINDS if k in snapshot})
            view = replace(view, config=config, index=view.index.with_config(config, snapshot))
        if view is self:
            return view
        changed = set(snapshot)  # derived results that read none of the changed kinds carry over
        return replace(view, memo={k: v for k, v in self.memo.items() if not v[0] & changed})

    def remember(self, key: Any, compute: Callable[[], Any], reads: Iterable[str] | None = None) -> Any:
        """`compute()` once per view (views are immutable, so a derived result stays valid), and
        carried over to the next view when none of the kinds it `reads` changed (default: any kind)."""
        if key not in self.memo:
            self.memo[key] = (frozenset(XDS_KINDS if reads is None else reads), compute())
        return self.memo[key][1]

    def _with_gateways(self, snapshot: Mapping[str, Iterable[Body]]) -> "MeshView":
        classes = {b["metadata"]["name"]: b for b in snapshot.get("GatewayClass", ())}
        deployments = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in snapshot.get("Deployment", ())}
        waypoints, gateways = {}, {}
        for gw in snapshot.get("Gateway", ()):
            meta = gw["metadata"]
            key = (meta["namespace"], meta["name"])
            gateways[key] = GatewayInfo(meta["namespace"], meta["name"], gw["spec"]["gatewayClassName"])
            if detect_waypoint_class(gw["spec"]["gatewayClassName"], classes):
                name = (meta.get("annotations") or {}).get(L.NAME_OVERRIDE, meta["name"])
                ready = detect_deployment_ready(deployments.get((meta["namespace"], name)))
                waypoints[key] = build_waypoint(gw, classes, ready)
        return replace(self, waypoints=waypoints, gateways=gateways)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        ns = self.namespaces.get(namespace)
        return ns.labels if ns else MappingProxyType({})


CONFIG_KINDS = ("VirtualService", "DestinationRule", "HTTPRoute", "AuthorizationPolicy", "Telemetry", "ConfigMap",
                "EnvoyFilter", "RequestAuthentication", "PeerAuthentication", "WasmPlugin")
# The waypoint index is built from these three together.
GATEWAY_KINDS = frozenset({"Gateway", "GatewayClass", "Deployment"})


def detect_config(kind: str, body: Body) -> bool:
    """Of the ConfigMaps only the mesh config (`istio` in the root namespace) is proxy config."""
    return kind != "ConfigMap" or (body["metadata"]["name"], body["metadata"].get("namespace")) == \
        ("istio", L.ROOT_NAMESPACE)


def expand_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """The kinds to re-read for a change to `kinds`, so that `with_changes` sees whole index inputs."""
    out = set(kinds)
    if out & GATEWAY_KINDS:
        out |= GATEWAY_KINDS
    return tuple(sorted(out))
SNAPSHOT_KINDS = ("Namespace", "Service", "ServiceEntry", "Pod", "Gateway", "GatewayClass", "Deployment")
XDS_KINDS = SNAPSHOT_KINDS + CONFIG_KINDS
