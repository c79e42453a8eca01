"""The node proxy's path to a bound waypoint (pure: store -> view -> ztunnel config): once a waypoint
has been ready it stays in the path when it loses its replicas, so no request bypasses its policy."""
from __future__ import annotations

from pathlib import Path

from conftest import apply, build_view, make_waypoint_ready, make_waypoint_unready, set_labels, waypoint_pods
from meshway.xds.build_ztunnel import NodeProxy, build_ztunnel_config

DEMO = Path(__file__).resolve().parents[1] / "meshway" / "demo"
WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"""
REVIEWS = "svc|default/reviews|9080"


def reviews_route(store) -> tuple[str, list[str]]:
    """(the cluster the node proxy sends reviews:9080 to, that cluster's endpoint addresses)."""
    view = build_view(store)
    curl = next(p for p in view.pods.values() if p.name.startswith("curl"))
    resources, _ = build_ztunnel_config(view, NodeProxy("ztunnel~test", curl.node))
    listener = resources["type.googleapis.com/envoy.config.listener.v3.Listener"]["ztunnel_outbound"]
    chain = next(c for c in listener["filter_chains"] if REVIEWS in c["name"])
    cluster_name = chain["filters"][-1]["typed_config"]["cluster"]
    cluster = resources["type.googleapis.com/envoy.config.cluster.v3.Cluster"][cluster_name]
    endpoints = [e["endpoint"]["address"].get("socket_address", {}).get("address")
                 for group in cluster.get("load_assignment", {}).get("endpoints", []) for e in group["lb_endpoints"]]
    return cluster_name, endpoints


def test_bound_waypoint_without_ready_replicas_stays_in_the_path(store):
    for name in ("bookinfo.yaml", "bookinfo-client.yaml"):
        apply(store, (DEMO / name).read_text())
    apply(store, WAYPOINT)
    set_labels(store, "namespace", None, "default", {"istio.io/dataplane-mode": "ambient",
                                                       "istio.io/use-waypoint": "waypoint"})
    cluster, _ = reviews_route(store)
    assert not cluster.startswith("waypoint|")  # never ready yet: direct, as Istio does

    make_waypoint_ready(store, "default", "waypoint")
    cluster, endpoints = reviews_route(store)
    replica_ips = [p["status"]["podIP"] for p in waypoint_pods(store, "default", "waypoint")]
    assert cluster.startswith("waypoint|") and cluster.endswith("|default/waypoint")
    assert endpoints == replica_ips

    make_waypoint_unready(store, "default", "waypoint")  # the replica crashed
    cluster, endpoints = reviews_route(store)
    assert cluster.startswith("waypoint|")  # not the direct path: requests wait or fail, never bypass
    assert endpoints == replica_ips  # the restarting replica takes connections as soon as it is up
