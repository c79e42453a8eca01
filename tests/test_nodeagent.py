"""The one-host mesh's node agent (`meshway.runtime.nodeagent`): what it takes on from the store,
what it writes, and how its problems reach proxy-status. The processes themselves are exercised
end to end by the cluster suites (tests/test_cluster_e2e.py, test_restart_e2e.py, test_faults_e2e.py)."""
from __future__ import annotations

from pathlib import Path

from meshway.mesh.view import MeshView
from meshway.model import load_yaml
from meshway.runtime.nodeagent import (LocalNodeAgent, build_pod_status, build_replica_pod_status,
                                       find_node_replicas)
from meshway.runtime.proxy_boot import read_agent_problems
from meshway.store import Store
from meshway.xds.proxy import build_node_id, build_node_proxy_id

WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"""
LABELS = {"gateway.networking.k8s.io/gateway-name": "waypoint",
          "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint"}


def pod(name: str, ip: str, node: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "default", "name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "serviceAccountName": "waypoint", "containers": [{"name": "c"}]},
            "status": {"podIP": ip}}


def view_of(*pods: dict) -> MeshView:
    gateways = [m.body for m in load_yaml(WAYPOINT, "w.yaml")]
    return MeshView.build({"Gateway": gateways, "Pod": list(pods),
                           "GatewayClass": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                                             "metadata": {"name": "istio-waypoint"},
                                             "spec": {"controllerName": "istio.io/mesh-controller"}}]})


def test_an_agent_takes_on_the_waypoint_replicas_bound_to_its_node_only() -> None:
    view = view_of(pod("waypoint-a", "10.244.1.3", "node-1", LABELS), pod("waypoint-b", "10.244.2.3", "node-2", LABELS),
                   pod("reviews-v1-x", "10.244.1.4", "node-1"))
    mine = find_node_replicas(view, "node-1")
    assert list(mine) == [build_node_id("waypoint", "10.244.1.3", "waypoint-a", "default")]
    assert [r.pod for r in mine.values()] == ["waypoint-a"]
    assert [r.pod for r in find_node_replicas(view, "node-2").values()] == ["waypoint-b"]
    assert find_node_replicas(view, "node-3") == {}


def test_the_pod_status_an_agent_writes() -> None:
    assert build_replica_pod_status(True, 2) == {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "istio-proxy", "ready": True, "restartCount": 2}]}
    assert build_replica_pod_status(False, 0)["phase"] == "Pending"
    status = build_pod_status(False, {"containerStatuses": [{"name": "app"}]})
    assert status["conditions"][1] == {"type": "Ready", "status": "False"}
    assert status["containerStatuses"] == [{"name": "app"}]


def test_failed_capture_rules_reach_the_node_proxys_proxy_status(tmp_path: Path) -> None:
    """The agent writes its node proxy's problems beside it; the control plane that serves that
    node proxy shows them in proxy-status (`meshway proxy-status`), and drops them once fixed."""
    from meshway.runtime.controlplane import ControlPlane

    state = tmp_path / "state"
    store = Store(state)
    store.set_nodes(1)
    agent = LocalNodeAgent(state, "node-1", store=store)
    agent.capture_error = "capture rules: iptables-restore: line 3 failed"
    agent.write_problems()
    assert read_agent_problems(state, 1) == [["capture", "capture rules: iptables-restore: line 3 failed"]]
    cp = ControlPlane(state, run_proxies=False, nodes=1, store=store)
    cp._sync_nodes()
    status = cp.proxy_status()[build_node_proxy_id(1)]
    assert status["pod"] == "ztunnel-node-1" and status["admin"].endswith("z1/admin.sock")
    assert ["capture", "capture rules: iptables-restore: line 3 failed"] in status["problems"]
    agent.capture_error = ""
    agent.write_problems()
    assert cp.proxy_status()[build_node_proxy_id(1)]["problems"] == []


def test_a_node_agent_never_removes_pods_recorded_on_other_nodes(tmp_path: Path) -> None:
    """A restarted agent removes the pods of its node deleted while it was away, and leaves the
    other nodes' pods (their agents') alone."""
    from test_netns import FakeHost

    from meshway.runtime.cluster import ClusterRuntime
    from meshway.runtime.netns import ClusterNet

    host = FakeHost()

    def runtime(node: int | None) -> ClusterRuntime:
        net = ClusterNet(tmp_path / "state", 2, host=host, etc_netns=tmp_path / "etc", pod_homes=tmp_path / "homes")
        return ClusterRuntime(tmp_path / "state", 2, net, node=node)

    first = runtime(None)
    first.up()
    one, two = pod("waypoint-a", "10.244.1.3", "node-1", LABELS), pod("waypoint-b", "10.244.2.3", "node-2", LABELS)
    first.sync_pods([one, two], MeshView())
    agent = runtime(1)
    agent.up()
    agent.sync_pods([], MeshView())  # waypoint-a was deleted while node-1's agent was away
    assert agent.net.recorded_pods() == [("default", "waypoint-b")]


def test_an_agent_whose_store_was_removed_stops(tmp_path: Path) -> None:
    """A mesh folder deleted under a running agent (e.g. a test's temporary folder cleaned up)
    leaves nothing for it to run: it stops instead of starting proxies from a half-gone folder."""
    import threading

    from test_netns import FakeHost

    from meshway.runtime.cluster import ClusterRuntime
    from meshway.runtime.netns import ClusterNet

    state = tmp_path / "state"
    store = Store(state)
    store.set_nodes(1)
    net = ClusterNet(state, 1, host=FakeHost(), etc_netns=tmp_path / "etc", pod_homes=tmp_path / "homes")
    agent = LocalNodeAgent(state, "node-1", store=store, runtime=ClusterRuntime(state, 1, net, node=1))
    for db_file in state.glob("store.db*"):
        if not db_file.name.startswith("store.db-notify"):
            db_file.unlink()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    runner.join(10)
    try:
        assert not runner.is_alive()
        assert not (state / "run" / "agents" / "node-1.pid").exists()
    finally:
        agent.stop()
