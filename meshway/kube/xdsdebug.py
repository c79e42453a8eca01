"""`meshway --kubeconfig FILE proxy-status`: ask the control plane for `istio.io/debug/syncz` over its
xDS port, as `istioctl proxy-status --xds-address` asks istiod (`meshway.xds.debug`).

- **Where**: `--xds-address`, else the address the control plane holding the Lease
  `istio-system/meshway-controlplane` writes on it (annotation `meshway.io/xds-address`; meshway's
  control plane runs outside the cluster, like an external istiod, so there is no istiod pod to
  port-forward to).
- **As whom**: a token of `istio-system/default` for audience `istio-ca` (a TokenRequest with the
  kubeconfig's credentials; istioctl's `xds.DialOptions` asks for the same one), so the answer lists
  every proxy.
- `meshway --kubeconfig FILE metrics` finds the control plane's monitoring port the same way
  (annotation `meshway.io/metrics-address`, written when it serves one: `--metrics-addr`).
- **Trust**: the server must chain to the mesh root the control plane publishes in every namespace
  (ConfigMap `istio-ca-root-cert`) and carry istiod's name (istioctl skips this check)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .. import labels as L
from ..xds.istiod import XDS_SNI
from .client import ApiError, KubeClient
from .leader import LEASE_NAME, find_live_holder, lease_path

XDS_ADDRESS_ANNOTATION = "meshway.io/xds-address"
METRICS_ADDRESS_ANNOTATION = "meshway.io/metrics-address"  # its monitoring port (`meshway metrics`)
ROOT_CONFIGMAP, ROOT_KEY = "istio-ca-root-cert", "root-cert.pem"
DEBUG_CLIENT_NODE = f"sidecar~127.0.0.1~meshway-proxy-status.{L.ROOT_NAMESPACE}~{L.ROOT_NAMESPACE}.svc.{L.CLUSTER_DOMAIN}"
Body = dict[str, Any]


class NoControlPlane(LookupError):
    pass


def find_advertised_address(bound: str, xds_ips: tuple[str, ...]) -> str:
    """The address to write on the Lease: the bound one, or for a wildcard bind the first `--xds-ip`."""
    host, _, port = bound.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::") and xds_ips:
        ip = xds_ips[0]
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return bound


def find_xds_address(lease: Body | None, now: datetime) -> str:
    """The xDS address of the control plane that holds the Lease now; NoControlPlane saying why not."""
    if lease is None or not find_live_holder(lease, now):
        raise NoControlPlane("the control plane is not running (no live holder of the Lease "
                             f"{L.ROOT_NAMESPACE}/{LEASE_NAME}; `meshway controlplane --kubeconfig FILE --xds-addr …` "
                             "starts it)")
    address = ((lease.get("metadata") or {}).get("annotations") or {}).get(XDS_ADDRESS_ANNOTATION)
    if not address:
        raise NoControlPlane(f"the control plane {lease['spec']['holderIdentity']} serves no xDS port "
                             "(started without --xds-addr)")
    return address


def find_metrics_address(lease: Body | None, now: datetime) -> str:
    """The monitoring address (HOST:PORT of /metrics) of the control plane that holds the Lease now."""
    if lease is None or not find_live_holder(lease, now):
        raise NoControlPlane(f"the control plane is not running (no live holder of the Lease "
                             f"{L.ROOT_NAMESPACE}/{LEASE_NAME})")
    address = ((lease.get("metadata") or {}).get("annotations") or {}).get(METRICS_ADDRESS_ANNOTATION)
    if not address:
        raise NoControlPlane(f"the control plane {lease['spec']['holderIdentity']} serves no monitoring port "
                             "(started without --metrics-addr)")
    return address


def fetch_lease(client: KubeClient) -> Body | None:
    try:
        return client.get(lease_path(name=LEASE_NAME))
    except ApiError as exc:
        if not exc.not_found:
            raise
        return None


def fetch_xds_address(client: KubeClient) -> str:
    return find_xds_address(fetch_lease(client), datetime.now(timezone.utc))


def fetch_metrics_address(client: KubeClient) -> str:
    return find_metrics_address(fetch_lease(client), datetime.now(timezone.utc))


def fetch_debug_token(client: KubeClient, namespace: str = L.ROOT_NAMESPACE, account: str = "default") -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["istio-ca"], "expirationSeconds": 600}}
    answer = client.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body)
    return (answer.get("status") or {})["token"]


def fetch_mesh_root(client: KubeClient) -> str:
    cm = client.get(f"/api/v1/namespaces/{L.ROOT_NAMESPACE}/configmaps/{ROOT_CONFIGMAP}")
    return (cm.get("data") or {})[ROOT_KEY]


def fetch_syncz(address: str, token: str, root_pem: str, timeout: float = 10.0) -> Any:
    """The control plane's syncz answer (a DiscoveryResponse); grpc.RpcError when it refuses or is away."""
    import grpc
    from envoy.config.core.v3.base_pb2 import Node
    from envoy.service.discovery.v3 import ads_pb2_grpc
    from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

    from ..xds.debug import SYNCZ

    credentials = grpc.ssl_channel_credentials(root_certificates=root_pem.encode())
    with grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", XDS_SNI)]) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        request = DiscoveryRequest(node=Node(id=DEBUG_CLIENT_NODE), type_url=SYNCZ)
        call = stub.StreamAggregatedResources(iter([request]), metadata=[("authorization", f"Bearer {token}")],
                                              timeout=timeout)
        for response in call:
            if response.type_url == SYNCZ:
                call.cancel()
                return response
    raise ConnectionError(f"the control plane at {address} closed the stream without an answer")
