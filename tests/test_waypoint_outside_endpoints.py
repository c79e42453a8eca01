"""A waypoint reaches a pod outside the mesh in plain TCP (Istio: an endpoint without tunnel
support), and a pod in the mesh over HBONE through `connect_originate` (pure; the config goes
through Envoy's protobuf types here, and real traffic through it in tests/test_traversal_e2e.py)."""
from __future__ import annotations

from pathlib import Path

from xds_support import BOOKINFO, build_store, plain, translate
from meshway.model import find_kind

EXTRA = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Pod
metadata: {name: details-plain, namespace: default, labels: {app: details-plain, istio.io/dataplane-mode: none}}
spec: {containers: [{name: details, image: docker.io/istio/examples-bookinfo-details-v1:1.20.2,
                     ports: [{name: web, containerPort: 9080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: details-plain, namespace: default}
spec: {selector: {app: details-plain}, ports: [{name: http, port: 80, targetPort: web}]}
"""


def endpoints(config: dict, cluster: str) -> list[dict]:
    cla = config["ClusterLoadAssignment"][cluster]
    return [lb for group in cla.get("endpoints", []) for lb in group["lb_endpoints"]]


def pod_ip(store, name: str) -> str:
    return next(p["status"]["podIP"] for p in store.list(find_kind("pod"), "default")
                if p["metadata"]["name"].startswith(name))


def test_outside_pods_get_plain_tcp_and_mesh_pods_hbone(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text(EXTRA)
    store = build_store(tmp_path / "s", [BOOKINFO, tmp_path / "extra.yaml"])
    config = plain(translate(store, "default"))
    [plain_ep] = endpoints(config, "inbound-vip|80|http|details-plain.default.svc.cluster.local")
    assert plain_ep["endpoint"]["address"] == {"socket_address": {"address": pod_ip(store, "details-plain"),
                                                                  "port_value": 9080}}  # the named targetPort
    assert plain_ep["metadata"]["filter_metadata"] == {"istio": {"workload": "details-plain;default"}}
    [mesh_ep] = endpoints(config, "inbound-vip|9080|http|details.default.svc.cluster.local")
    ip = pod_ip(store, "details-v1")
    assert mesh_ep["endpoint"]["address"] == {"envoy_internal_address": {
        "server_listener_name": "connect_originate", "endpoint_id": f"{ip}:9080"}}
    assert mesh_ep["metadata"]["filter_metadata"]["envoy.filters.listener.original_dst"] == {"local": f"{ip}:9080"}


def test_a_pod_leaving_the_mesh_switches_its_endpoint(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text(EXTRA)
    store = build_store(tmp_path / "s", [BOOKINFO, tmp_path / "extra.yaml"])
    name = next(p["metadata"]["name"] for p in store.list(find_kind("pod"), "default")
                if p["metadata"]["name"].startswith("details-v1"))
    store.label(find_kind("pod"), "default", [name], None, {"istio.io/dataplane-mode": "none"}, [], False)
    [ep] = endpoints(plain(translate(store, "default")), "inbound-vip|9080|http|details.default.svc.cluster.local")
    assert "socket_address" in ep["endpoint"]["address"]
