"""Where a waypoint replica runs: the seam between the control plane and the machine.

`LoopbackPlacement` (the default until the network-namespace cluster exists) runs each replica on
the host with its HBONE listener on a loopback address derived from its pod IP (10.244.1.8 ->
127.X.1.8, X one byte per state folder, so two meshes on one host never share an address: Envoy
binds listeners with SO_REUSEPORT and two waypoints on one address would split each other's
traffic), so no root is needed. Where node agents run the replicas as pods (the one-host cluster,
Kubernetes), the control plane uses `PodPlacement`: each listens on its own pod IP.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .. import labels as L
from ..mesh.view import MeshView


@dataclass(frozen=True)
class Replica:
    namespace: str
    pod: str
    pod_ip: str
    service_account: str
    waypoint: str  # Gateway name


def find_replicas(view: MeshView) -> list[Replica]:
    """Pods of waypoint Deployments that have an address (scheduled); once per view while no pod
    or waypoint changed."""
    def build() -> list[Replica]:
        out = []
        for pod in view.pods.values():
            gw = pod.labels.get(L.GATEWAY_NAME)
            if gw and pod.ip and pod.labels.get(L.GATEWAY_CLASS_NAME) == L.WAYPOINT_CLASS \
                    and (pod.namespace, gw) in view.waypoints:
                out.append(Replica(pod.namespace, pod.name, pod.ip, pod.service_account, gw))
        return sorted(out, key=lambda r: (r.namespace, r.pod))
    return list(view.remember("replicas", build, ("Pod", "Gateway", "GatewayClass", "Deployment")))


def loopback_octet(state_dir: Path) -> int:
    """The second byte of a mesh's loopback aliases: 128-247, from the resolved state folder."""
    return 128 + int(hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:6], 16) % 120


class LoopbackPlacement:
    name = "loopback"

    def __init__(self, octet: int = 244):
        self.octet = octet

    @classmethod
    def for_state(cls, state_dir: Path) -> "LoopbackPlacement":
        return cls(loopback_octet(state_dir))

    def listen_address(self, replica: Replica) -> str:
        return self.dial(replica.pod_ip)

    def dial(self, pod_ip: str) -> str:
        """The loopback alias of a pod address: 10.244.1.8 -> 127.<octet>.1.8."""
        return f"127.{self.octet}." + ".".join(pod_ip.split(".")[2:])

    def command_prefix(self, replica: Replica) -> list[str]:
        return []


def socket_dir(state_dir: Path) -> Path:
    """A folder for Unix sockets whose paths stay under the 107-byte limit. Whoever binds in it
    creates it with `meshway.private.make_private_dir` (0700), which refuses a folder someone else
    planted first (under /tmp the name is predictable)."""
    run = state_dir.resolve() / "run"
    if len(str(run)) <= 60:
        return run / "sock"
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"meshway-{digest}"


def replica_dir_name(replica: Replica) -> str:
    return f"{replica.namespace}.{replica.pod}"


def replica_sock_dir(state_dir: Path, replica: Replica) -> Path:
    digest = hashlib.sha1(replica_dir_name(replica).encode()).hexdigest()[:10]
    return socket_dir(state_dir) / digest


class PodPlacement:
    """Replicas are pods that a node agent runs (Kubernetes): they listen on their pod IP."""

    name = "pod"

    def listen_address(self, replica: Replica) -> str:
        return "0.0.0.0"

    def command_prefix(self, replica: Replica) -> list[str]:
        return []

    @staticmethod
    def dial(pod_ip: str) -> str:
        return pod_ip
