"""The proxy a snapshot is built for: its node id, address and identity."""
from __future__ import annotations

from dataclasses import dataclass

from .. import labels as L


@dataclass(frozen=True)
class Proxy:
    node_id: str  # waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local
    ip: str  # where connect_terminate listens (0.0.0.0 inside a pod's own network namespace)
    namespace: str
    service_account: str
    waypoint: str  # the Gateway's name
    trust_domain: str = L.CLUSTER_DOMAIN

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def build_node_id(kind: str, ip: str, pod: str, namespace: str) -> str:
    return f"{kind}~{ip}~{pod}.{namespace}~{namespace}.svc.{L.CLUSTER_DOMAIN}"


@dataclass(frozen=True)
class NodeIdParts:
    kind: str  # waypoint, ztunnel
    ip: str
    pod: str
    namespace: str


def parse_node_id(node_id: str) -> NodeIdParts | None:
    """`build_node_id` read back; None for anything it could not have built (the caller's word)."""
    parts = node_id.split("~")
    if len(parts) != 4 or not all(parts):
        return None
    kind, ip, pod_dot_ns, domain = parts
    pod, dot, namespace = pod_dot_ns.rpartition(".")
    if not dot or not pod or domain != f"{namespace}.svc.{L.CLUSTER_DOMAIN}":
        return None
    return NodeIdParts(kind, ip, pod, namespace)
