"""The node proxy (ztunnel) and traffic capture on a Kubernetes node (pure): what the node agent
decides about them. The agent (`meshway.node.agent`) reads, runs and writes.

- **The ztunnel pod**: `meshway install` deploys the `ztunnel` DaemonSet in istio-system, as
  `istioctl install --set profile=ambient` does; the DaemonSet controller makes one pod per node and
  this node's agent runs it: Envoy in the node's network namespace (the pod has `hostNetwork`), with
  the bootstrap below and a certificate of the pod's service account (`ztunnel`), so the control
  plane, which sees that identity over mTLS, serves it node-N's node-proxy config
  (`meshway.xds.peer`, `meshway.xds.build_ztunnel`). A container is the node proxy when its image is
  `meshway/ztunnel` or Istio's `ztunnel`.
- **Capture** (istio-cni's job): the node's iptables rules (`meshway.runtime.capture`) capture the
  node's pods that are in the ambient mesh, by istio-cni's enablement rule
  (`meshway.mesh.enrollment.decide_ambient`) read from the pods' and their namespaces' labels.
- **Names** (what a cluster DNS and a pod's search path do): each pod's /etc/hosts lists every
  Service's ClusterIP under its qualified names, and under its short name when it is in the pod's
  own namespace.
- **kube-proxy's part** for pods outside the mesh: each Service port's ClusterIP DNATed to its ready
  endpoints, read from the EndpointSlices (`meshway.runtime.capture.build_service_nat`).
- **Guaranteed traversal** on pods outside the mesh admits the waypoints' pods: their addresses are
  the endpoints of each waypoint's Service (`find_waypoint_slice_addresses`).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from .. import labels as L
from ..apps.images import find_repository
from ..mesh.enrollment import decide_ambient
from ..mesh.view import MeshView
from ..runtime.netns import service_hostnames
from ..xds.bootstrap import XdsCertFiles, build_mtls_bootstrap
from ..xds.proxy import build_node_proxy_id
from .waypoint import ADMIN_PORT, build_status_listener

Body = dict[str, Any]
SERVICE_NAME = "kubernetes.io/service-name"  # an EndpointSlice's Service
ZTUNNEL_IMAGES = frozenset({"meshway/ztunnel"})
ISTIO_ZTUNNEL_IMAGE = "ztunnel"  # istio/ztunnel, gcr.io/istio-release/ztunnel, ...
Backends = tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]


def detect_ztunnel_container(container: Body) -> bool:
    repo = find_repository(container.get("image") or "")
    return repo in ZTUNNEL_IMAGES or repo.rsplit("/", 1)[-1] == ISTIO_ZTUNNEL_IMAGE


def find_ztunnel_containers(pod: Body) -> list[Body]:
    return [c for c in (pod.get("spec") or {}).get("containers") or [] if detect_ztunnel_container(c)]


def detect_host_network(pod: Body) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def build_ztunnel_bootstrap(node: str, index: int, xds_address: str, certs: XdsCertFiles,
                            sds_file: str | os.PathLike[str], delta: bool = True) -> Body:
    """The node proxy's Envoy: node-N's node id and metadata (as the one-host runtime gives its
    node proxies), the control plane over TCP + mTLS, admin on 127.0.0.1:15000 and readiness on
    :15021 in the node's namespace (served once its workers run, i.e. once it has its config)."""
    bootstrap = build_mtls_bootstrap(build_node_proxy_id(index), f"ztunnel.{L.ROOT_NAMESPACE}", xds_address, certs,
                                     sds_file, "/unused", delta=delta,
                                     metadata={"NODE_TYPE": "ztunnel", "NODE_NAME": node})
    bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}}
    bootstrap["static_resources"]["listeners"] = [build_status_listener()]
    for kind in ("cds_config", "lds_config"):
        bootstrap["dynamic_resources"][kind]["initial_fetch_timeout"] = "0s"
    return bootstrap


# -- capture ---------------------------------------------------------------------------------------
def _labels(body: Body | None) -> Mapping[str, str]:
    return ((body or {}).get("metadata") or {}).get("labels") or {}


def find_captured_ips(pods: Iterable[Body], namespaces: Mapping[str, Body]) -> tuple[str, ...]:
    """The addresses of the pods (this node's) that the node proxy captures: in the ambient mesh, with
    an address of their own (not host-network), not finished."""
    out = set()
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or detect_host_network(pod) or status.get("phase") in ("Succeeded", "Failed"):
            continue
        if decide_ambient(_labels(pod), _labels(namespaces.get(meta.get("namespace") or "default"))):
            out.add(ip)
    return tuple(sorted(out))


# -- names and kube-proxy --------------------------------------------------------------------------
def _cluster_ip(svc: Body) -> str | None:
    ip = (svc.get("spec") or {}).get("clusterIP")
    return ip if ip and ip != "None" else None


def build_service_hosts(services: Iterable[Body], namespace: str) -> list[tuple[str, list[str]]]:
    """(ClusterIP, names) of every Service with a ClusterIP, in name order, as a pod in `namespace`
    resolves them (short names for its own namespace's only)."""
    entries = []
    for svc in sorted(services, key=lambda s: (s["metadata"].get("namespace") or "", s["metadata"]["name"])):
        ip = _cluster_ip(svc)
        if ip:
            entries.append((ip, service_hostnames(svc["metadata"]["name"], svc["metadata"].get("namespace") or "default",
                                                  namespace)))
    return entries


def find_service_backends(services: Iterable[Body], slices: Iterable[Body]) -> Backends:
    """kube-proxy's table: for each Service port with a ClusterIP, the ready endpoints of its
    EndpointSlices (matched by the port's name, as kube-proxy does)."""
    by_service: dict[tuple[str, str], list[Body]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME)
        if owner:
            by_service.setdefault((meta.get("namespace") or "default", owner), []).append(s)
    out = []
    for svc in sorted(services, key=lambda s: (s["metadata"].get("namespace") or "", s["metadata"]["name"])):
        vip = _cluster_ip(svc)
        if not vip:
            continue
        key = (svc["metadata"].get("namespace") or "default", svc["metadata"]["name"])
        for port in (svc.get("spec") or {}).get("ports") or []:
            if (port.get("protocol") or "TCP") != "TCP":
                continue
            pods = set()
            for s in by_service.get(key, ()):
                target = next((p.get("port") for p in s.get("ports") or []
                               if (p.get("name") or "") == (port.get("name") or "")), None)
                if target is None:
                    continue
                for ep in s.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready", True):
                        pods.update((addr, int(target)) for addr in ep.get("addresses") or [])
            if pods:
                out.append((vip, int(port["port"]), tuple(sorted(pods))))
    return tuple(out)


def find_waypoint_slice_addresses(view: MeshView, slices: Iterable[Body]) -> dict[str, tuple[str, ...]]:
    """"ns/name" of each waypoint -> the addresses in its Service's EndpointSlices, ready or not (a
    waypoint pod that becomes ready must not wait for a filter change)."""
    owners = {(wp.namespace, wp.service_name): f"{wp.namespace}/{wp.name}" for wp in view.waypoints.values()}
    out: dict[str, set[str]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        owner = owners.get((meta.get("namespace") or "default", (meta.get("labels") or {}).get(SERVICE_NAME)))
        if owner:
            for ep in s.get("endpoints") or []:
                out.setdefault(owner, set()).update(ep.get("addresses") or [])
    return {k: tuple(sorted(v)) for k, v in out.items()}
