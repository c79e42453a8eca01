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
