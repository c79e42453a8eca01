"""A waypoint pod on a node (pure): which container is the waypoint's proxy, where it dials the
control plane, and the Envoy it runs instead of Istio's `pilot-agent proxy waypoint`.

- **The container**: image `meshway/waypoint-envoy` (what meshway's controller writes) or Istio's
  `proxyv2` with the args `proxy waypoint` (what istiod's template writes).
- **The control plane**: the container's `CA_ADDR` (istiod's template: `istiod.istio-system.svc:15012`),
  unless the node agent was given `--xds-address` (this host has no cluster DNS; in a real cluster
  that name is the istiod Service).
- **The Envoy**: `build_mtls_bootstrap` dialling that address with the pod's certificate (the node
  agent writes it, `meshway.node.identity`), node id `waypoint~<pod IP>~<pod>.<ns>~<ns>.svc.cluster.local`
  and the node metadata the control plane's translation reads (as the one-host runtime passes them).
  The admin listens on 127.0.0.1:15000 inside the pod, as Istio's.
- **Readiness**: Istio's agent answers `GET /healthz/ready` on 15021 once Envoy is LIVE and has
  received its clusters and listeners. Here Envoy answers it itself: a static listener on 15021
  whose only route answers 200. Envoy accepts on its listeners only once its workers start, which is
  after its initial CDS and LDS were received and applied; `initial_fetch_timeout: 0s` makes it wait
  for them as long as it takes (the default 15 s would start the workers, and so pass the probe,
  without config). So the pod's own probe (`httpGet :15021/healthz/ready`, as the Deployment
  declares it) passes exactly when the proxy has its config, with no process of ours in the pod.
"""
from __future__ import annotations

import os
from typing import Any

from .. import labels as L
from ..apps.images import find_repository
from ..xds.bootstrap import XdsCertFiles, build_mtls_bootstrap
from ..xds.istiod import XDS_SNI, XDS_TLS_PORT
from ..xds.proxy import build_node_id

Body = dict[str, Any]
WAYPOINT_IMAGES = frozenset({"meshway/waypoint-envoy"})
ISTIO_PROXY_IMAGE = "proxyv2"  # istio/proxyv2, gcr.io/istio-release/proxyv2, ...
DEFAULT_CA_ADDRESS = f"{XDS_SNI}:{XDS_TLS_PORT}"
STATUS_PORT = 15021
ADMIN_PORT = 15000
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"


def detect_waypoint_container(container: Body) -> bool:
    repo = find_repository(container.get("image") or "")
    if repo in WAYPOINT_IMAGES:
        return True
    args = [str(a) for a in container.get("args") or []]
    return repo.rsplit("/", 1)[-1] == ISTIO_PROXY_IMAGE and args[:2] == ["proxy", "waypoint"]


def find_waypoint_containers(pod: Body) -> list[Body]:
    return [c for c in (pod.get("spec") or {}).get("containers") or [] if detect_waypoint_container(c)]


def find_ca_address(container: Body, override: str | None) -> str:
    """Where the proxy reaches the control plane (xDS and CA): `--xds-address`, else `CA_ADDR`."""
    if override:
        return override
    for var in container.get("env") or []:
        if var.get("name") == "CA_ADDR" and var.get("value"):
            return str(var["value"])
    return DEFAULT_CA_ADDRESS


def find_service_account(pod: Body) -> str:
    spec = pod.get("spec") or {}
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def build_status_listener(port: int = STATUS_PORT) -> Body:
    """Istio's readiness endpoint, answered by Envoy once its workers run (see the module's notes)."""
    routes = [{"match": {"path": "/healthz/ready"},
               "direct_response": {"status": 200, "body": {"inline_string": "LIVE\n"}}}]
    hcm = {"@type": f"type.googleapis.com/{HCM}", "stat_prefix": "status_port",
           "route_config": {"name": "status", "virtual_hosts": [{"name": "status", "domains": ["*"],
                                                                 "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": f"type.googleapis.com/{ROUTER}"}}]}
    return {"name": "status_port", "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def build_waypoint_bootstrap(pod: Body, pod_ip: str, xds_address: str, certs: XdsCertFiles,
                             sds_file: str | os.PathLike[str], delta: bool = True) -> Body:
    """The bootstrap of a waypoint pod's Envoy (node id and metadata as the control plane's
    translation expects them; see the module's notes)."""
    meta = pod["metadata"]
    namespace, name = meta.get("namespace") or "default", meta["name"]
    service_account = find_service_account(pod)
    waypoint = (meta.get("labels") or {}).get(L.GATEWAY_NAME, "")
    node_id = build_node_id("waypoint", pod_ip, name, namespace)
    bootstrap = build_mtls_bootstrap(
        node_id, f"{service_account}.{namespace}", xds_address, certs, sds_file, "/unused", delta=delta,
        metadata={"NAMESPACE": namespace, "WORKLOAD_NAME": waypoint, "SERVICE_ACCOUNT": service_account,
                  "NODE_TYPE": "waypoint", "INSTANCE_IPS": pod_ip, "POD_NAME": name})
    bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}}
    bootstrap["static_resources"]["listeners"] = [build_status_listener()]
    for kind in ("cds_config", "lds_config"):
        bootstrap["dynamic_resources"][kind]["initial_fetch_timeout"] = "0s"
    return bootstrap


def build_envoy_container(container: Body, envoy: str, bootstrap: str | os.PathLike[str]) -> Body:
    """The container as the workload runtime runs it: Envoy with the bootstrap, in place of
    `pilot-agent proxy waypoint …` (the image is never pulled)."""
    return {**container, "command": [envoy, "-c", str(bootstrap), "--disable-hot-restart", "--concurrency", "2",
                                      "-l", "warning", "--drain-time-s", "5", "--parent-shutdown-time-s", "6"],
            "args": []}
