"""A cluster for a MeshConfig extension provider's `service` and `port` (tracing collectors, external
authorizers). Pure.

Istio's `model.LookupCluster`: `service` is `[namespace/]hostname`, the hostname a Service's FQDN or
one of a ServiceEntry's hosts; without a namespace it must be unique; the cluster is
`outbound|PORT||HOSTNAME`. The waypoint reaches a Service's ready pods directly (EDS endpoints at
`dial(pod_ip):targetPort`, plain TCP: collectors and authorizers live outside the mesh), and a
ServiceEntry host through DNS (STRICT_DNS).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ..mesh import providers
from ..mesh.view import MeshView, ServiceInfo
from .build_listeners import ADS
from .protos import typed
from .scope import cluster_name, find_service_pods, resolve_target_port

Body = dict[str, Any]
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class ProviderCluster(NamedTuple):
    hostname: str  # the service's hostname (the HTTP Host / gRPC authority Istio sends)
    cluster: Body
    endpoints: Body | None  # the EDS ClusterLoadAssignment; None when the cluster resolves DNS itself


def _same(ip: str) -> str:
    return ip


def find_provider_service(view: MeshView, service: str, port: int) -> ServiceInfo:
    """The Service or ServiceEntry that `[namespace/]hostname` names; LookupError (Istio's words) if none."""
    found, error = providers.find_provider_service(view, service, port)
    if found is None:
        raise LookupError(error)
    return found.service


def build_provider_endpoints(name: str, view: MeshView, svc: ServiceInfo, port: int,
                             dial: Callable[[str], str] = _same) -> Body:
    port_info = next((p for p in svc.ports if p.port == port), None)
    lb = []
    for pod in find_service_pods(view, svc):
        target = resolve_target_port(port_info, pod) if port_info else port
        if target is not None:
            lb.append({"endpoint": {"address": {"socket_address": {"address": dial(pod.ip), "port_value": target}}}})
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}] if lb else []}


def build_provider_cluster(view: MeshView, service: str, port: int, dial: Callable[[str], str] = _same,
                           http2: bool = False) -> ProviderCluster:
    """`outbound|PORT||HOST` for the provider's service (HTTP/2 for gRPC providers). LookupError when
    the service is not in the registry (Istio then leaves the feature that needs it out)."""
    svc = find_provider_service(view, service, port)
    host = service.rpartition("/")[2] if svc.kind == "ServiceEntry" else svc.hostname
    name = cluster_name(port, "", host, "outbound")
    cluster: Body = {"name": name, "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
                     "metadata": {"filter_metadata": {"istio": {"services": [
                         {"host": host, "name": svc.name, "namespace": svc.namespace}]}}}}
    if http2:
        cluster["typed_extension_protocol_options"] = {HTTP_OPTIONS: typed(
            HTTP_OPTIONS, explicit_http_config={"http2_protocol_options": {}})}
    if svc.kind == "ServiceEntry":
        cluster.update(type="STRICT_DNS", load_assignment={"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]})
        return ProviderCluster(host, cluster, None)
    cluster.update(type="EDS", eds_cluster_config={"service_name": name,
                                                    "eds_config": {**ADS, "initial_fetch_timeout": "0s"}})
    return ProviderCluster(host, cluster, build_provider_endpoints(name, view, svc, port, dial))
