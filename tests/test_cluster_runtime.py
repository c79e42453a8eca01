"""The local kubelet's pure parts: containerStatuses as Kubernetes writes them."""
from __future__ import annotations

from pathlib import Path

import pytest

from meshway.runtime.cluster import build_container_statuses
from meshway.runtime.workload import ContainerStatus

LOG = Path("/tmp/x.log")


@pytest.mark.parametrize("status,expected", [
    (ContainerStatus("app", "running", True, 0, 10, None, None, LOG),
     {"name": "app", "ready": True, "restartCount": 0, "started": True, "state": {"running": {}}}),
    (ContainerStatus("app", "running", False, 3, 10, 1, None, LOG),
     {"name": "app", "ready": False, "restartCount": 3, "started": True, "state": {"running": {}},
      "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}),
    (ContainerStatus("app", "waiting", False, 4, None, None, "pid 9 (adopted) exited: exit code unknown", LOG),
     {"name": "app", "ready": False, "restartCount": 4, "started": False,
      "state": {"waiting": {"reason": "CrashLoopBackOff"}},
      "lastState": {"terminated": {"reason": "ContainerStatusUnknown",
                                   "message": "pid 9 (adopted) exited: exit code unknown"}}}),
    (ContainerStatus("job", "terminated", False, 0, None, 0, None, LOG),
     {"name": "job", "ready": False, "restartCount": 0, "started": False,
      "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}),
])
def test_container_statuses(status: ContainerStatus, expected: dict) -> None:
    assert build_container_statuses([status]) == [expected]


def waypoint_pod(name: str, ip: str, node: str) -> dict:
    return {"metadata": {"namespace": "default", "name": name, "labels": {
        "gateway.networking.k8s.io/gateway-name": "waypoint",
        "gateway.istio.io/managed": "istio.io-mesh-controller",
        "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint"}},
        "spec": {"nodeName": node}, "status": {"podIP": ip}}


def test_a_restarted_runtime_keeps_recorded_pods_and_removes_those_deleted_meanwhile(tmp_path: Path) -> None:
    from test_netns import FakeHost

    from meshway.mesh.view import MeshView
    from meshway.runtime.cluster import ClusterRuntime, detect_waypoint_pod
    from meshway.runtime.netns import ClusterNet

    host = FakeHost()

    def net() -> ClusterNet:
        return ClusterNet(tmp_path / "state", 2, host=host, etc_netns=tmp_path / "etc-netns")

    kept, gone = waypoint_pod("waypoint-a", "10.244.1.2", "node-1"), waypoint_pod("waypoint-b", "10.244.2.2", "node-2")
    assert detect_waypoint_pod(kept)
    first = ClusterRuntime(tmp_path / "state", 2, net())
    first.up()
    first.sync_pods([kept, gone], MeshView())
    count = len(host.log)
    again = ClusterRuntime(tmp_path / "state", 2, net())  # the control plane restarted; waypoint-b was deleted
    again.up()
    again.sync_pods([kept], MeshView())
    redone = host.log[count:]
    assert ["ip", "netns", "del", again.net.pod_netns("default", "waypoint-b")] in redone
    assert not any(again.net.pod_netns("default", "waypoint-a") in " ".join(cmd) for cmd in redone)
    assert again.net.recorded_pods() == [("default", "waypoint-a")]


def test_a_pod_whose_containers_cannot_be_created_reports_create_container_config_error(tmp_path: Path) -> None:
    from test_netns import FakeHost

    from meshway.mesh.view import MeshView
    from meshway.runtime.cluster import ClusterRuntime
    from meshway.runtime.netns import ClusterNet

    net = ClusterNet(tmp_path / "state", 1, host=FakeHost(), etc_netns=tmp_path / "etc-netns",
                     pod_homes=tmp_path / "homes")
    runtime = ClusterRuntime(tmp_path / "state", 1, net)
    runtime.up()
    pod = {"metadata": {"namespace": "default", "name": "root-app"},
           "spec": {"nodeName": "node-1", "securityContext": {"runAsNonRoot": True, "runAsUser": 0},
                    "containers": [{"name": "app", "command": ["true"]}]},
           "status": {"podIP": "10.244.1.2"}}
    runtime.sync_pods([pod], MeshView())
    (ns, name, ready, extra), = runtime.poll()
    assert (ns, name, ready) == ("default", "root-app", False)
    (status,) = extra["containerStatuses"]
    assert status["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    assert "runAsNonRoot is set and the container would run as root" in status["state"]["waiting"]["message"]
    assert runtime.poll() == []  # reported once
