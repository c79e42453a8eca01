"""`meshway scale` (kubectl scale) on the embedded store, and a waypoint's Deployment leaving its
replicas to whoever scales it unless its Gateway sets `meshway.io/replicas` (as istiod leaves them
to `kubectl scale` or an HPA)."""
from __future__ import annotations

from pathlib import Path

import pytest

from meshway.model import find_kind, load_yaml
from meshway.store import Store
from meshway.store.errors import Invalid, NotFound

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default%s}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"""
DEPLOY = find_kind("deploy")


def waypoint_pods(store: Store) -> list[str]:
    return sorted(p["metadata"]["name"] for p in store.list(find_kind("pod"), "default")
                  if p["metadata"]["name"].startswith("waypoint-"))


def test_scaling_a_waypoint_deployment_sticks_across_gateway_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.apply(load_yaml(GATEWAY % "", "gw.yaml"))
    assert store.get(DEPLOY, "default", "waypoint")["spec"]["replicas"] == 1  # defaulted when created
    assert len(waypoint_pods(store)) == 1
    result = store.scale(DEPLOY, "default", "waypoint", 2)
    assert str(result) == "deployment.apps/waypoint scaled"
    assert len(waypoint_pods(store)) == 2
    store.apply(load_yaml(GATEWAY % ", labels: {x: y}", "gw.yaml"))  # the controller rebuilds the Deployment
    assert store.get(DEPLOY, "default", "waypoint")["spec"]["replicas"] == 2
    assert str(store.scale(DEPLOY, "default", "waypoint", 2)) == "deployment.apps/waypoint not scaled"
    # the Gateway's annotation is the controller's to keep: it wins over a scale
    store.apply(load_yaml(GATEWAY % ', annotations: {meshway.io/replicas: "3"}', "gw.yaml"))
    assert len(waypoint_pods(store)) == 3
    store.scale(DEPLOY, "default", "waypoint", 1)
    store.apply(load_yaml(GATEWAY % ', annotations: {meshway.io/replicas: "3"}, labels: {x: z}', "gw.yaml"))
    assert store.get(DEPLOY, "default", "waypoint")["spec"]["replicas"] == 3


def test_scale_refuses_what_kubectl_refuses(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.apply(load_yaml(GATEWAY % "", "gw.yaml"))
    before = store.dump()
    with pytest.raises(NotFound, match='deployments.apps "ghost" not found'):
        store.scale(DEPLOY, "default", "ghost", 2)
    with pytest.raises(Invalid, match="spec.replicas: must be from 0 to 1000, not -1"):
        store.scale(DEPLOY, "default", "waypoint", -1)
    with pytest.raises(Invalid, match='cannot scale services "waypoint"'):
        store.scale(find_kind("svc"), "default", "waypoint", 2)
    assert store.dump() == before
