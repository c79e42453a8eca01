"""The proxies of a Kubernetes cluster as `meshway --kubeconfig … ztunnel-config` and `metrics` read
them: the running pods with a waypoint or node-proxy container (the ones the node agents run as
Envoy: `meshway.node.waypoint`, `meshway.node.nodeproxy`), and their Envoy admin (localhost:15000 in
the pod, Istio's) through the API server's port-forward (`meshway.kube.portforward`), as istioctl
reaches a proxy's admin; and the control plane's tally of their logs (request, tunnel and connection
series with the callers' labels) from its monitoring port, whose address it writes on its Lease
(`meshway.kube.xdsdebug`: it runs outside the cluster, like an external istiod, so there is no pod
to port-forward to)."""
from __future__ import annotations

from typing import Any, Callable

Body = dict[str, Any]
AdminFetch = Callable[[Body, str], bytes]  # (proxy entry, admin path) -> the answer


def find_kube_proxies(pods: list[Body]) -> dict[str, Body]:
    """`POD.NS` -> pod, namespace, type (waypoint | ztunnel), node; running pods only."""
    from ..node.nodeproxy import find_ztunnel_containers
    from ..node.waypoint import find_waypoint_containers

    out = {}
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        kind = "ztunnel" if find_ztunnel_containers(pod) else "waypoint" if find_waypoint_containers(pod) else None
        if kind:
            out[f"{meta['name']}.{meta.get('namespace')}"] = {
                "pod": meta["name"], "namespace": meta.get("namespace") or "", "type": kind,
                "node": (pod.get("spec") or {}).get("nodeName") or ""}
    return out


def fetch_kube_admin(api_client: Any) -> AdminFetch:
    """A proxy's admin through port-forward; ValueError naming the proxy when it cannot be reached."""
    from ..kube.portforward import PortForwardError, fetch_pod_admin

    def fetch(proxy: Body, path: str) -> bytes:
        try:
            return fetch_pod_admin(api_client, proxy["namespace"], proxy["pod"], path)
        except (PortForwardError, OSError) as exc:
            raise ValueError(f"{proxy['pod']}.{proxy['namespace']}: {exc}") from exc
    return fetch


def fetch_kube_tally(client: Any, timeout: float = 10.0) -> tuple[str | None, str]:
    """(the control plane's metrics as Prometheus text, "") or (None, why not)."""
    import urllib.error
    import urllib.request

    from ..kube.client import ApiError
    from ..kube.xdsdebug import NoControlPlane, fetch_metrics_address

    try:
        address = fetch_metrics_address(client)
    except (NoControlPlane, ApiError) as exc:
        return None, str(exc)
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as answer:  # noqa: S310
            return answer.read().decode(), ""
    except (urllib.error.URLError, OSError) as exc:
        return None, f"the control plane's monitoring port {address}: {exc}"
