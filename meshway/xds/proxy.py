"""The proxy a snapshot is built for: its node id, address and identity."""
from __future__ import annotations

import re
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


def build_node_proxy_id(index: int) -> str:
    """The node id of node-N's node proxy (ztunnel), in both run modes: its address is the node's
    gateway in its pod CIDR (10.244.N.1), its pod name `ztunnel-node-N`, in the root namespace."""
    return build_node_id("ztunnel", f"10.244.{index}.1", f"ztunnel-node-{index}", L.ROOT_NAMESPACE)


@dataclass(frozen=True)
class NodeIdParts:
    kind: str  # waypoint, ztunnel
    ip: str
    pod: str
    namespace: str


_NODE_ID = re.compile(
    r"(?P<kind>[a-z]{1,40})~(?P<ip>[0-9a-fA-F.:]{1,45})~"
    r"(?P<pod>[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?)\.(?P<namespace>[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)"
    rf"~(?P=namespace)\.svc\.{re.escape(L.CLUSTER_DOMAIN)}")


def parse_node_id(node_id: str) -> NodeIdParts | None:
    """`build_node_id` read back; None for anything it could not have built from Kubernetes names
    (a pod name is a DNS subdomain, a namespace a DNS label): the node id is the caller's word."""
    match = _NODE_ID.fullmatch(node_id)
    if match is None:
        return None
    return NodeIdParts(match["kind"], match["ip"], match["pod"], match["namespace"])
