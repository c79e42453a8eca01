"""The `istiod` pod on a node (pure): how `istioctl` finds the control plane without `--xds-address`.

istioctl's `proxy-status` (and every command that asks istiod over xDS) lists the Running pods
labelled `app=istiod` in istio-system, port-forwards to each one's port 15012 (`--xds-port`) and
speaks xDS over TLS there with a token of `istio-system/default` (`istioctl/pkg/multixds`,
`queryEachShard`). meshway's control plane runs outside the cluster, so `meshway install` deploys
the pod istioctl looks for (Deployment `istiod`, as Istio's chart names and labels it) and the node
agent that runs it makes its container a relay: 15012 inside the pod, each connection copied byte
for byte to the control plane's xDS port (through the agent's relay socket: a pod's network
namespace has no route to the host's). TLS and the token check run end to end between istioctl and
the control plane; the relay sees ciphertext only.

- **The container**: image `meshway/pilot` (what `meshway install` writes) or Istio's `pilot`.
- **Where to**: the node agent's `--xds-address` (`meshway up --kubernetes` gives every agent the
  control plane's). Without it the pod does not start: the control plane's Lease names the address,
  but nodes may read only their own Leases (the Node authorizer).
- **The monitoring port**: `istioctl version` port-forwards to the pod's monitoring port too (its
  `prometheus.io/port` annotation, else 15014: `FindIstiodMonitoringPort`) for `/version` and
  `/debug/syncz` (`meshway.xds.debug_http`). With the agent's `--monitoring-address` (the control
  plane's `--metrics-addr`, which `meshway up --kubernetes` gives both) the container relays that
  port too, on the pod's loopback only: port-forward arrives there, and istiod answers its debug
  paths without a token only to localhost (the relay makes every caller the control plane's
  localhost, so another pod must not reach it). Without the flag the port is not served."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..apps.images import find_repository

Body = dict[str, Any]
ISTIOD_IMAGES = frozenset({"meshway/pilot"})
ISTIO_PILOT_IMAGE = "pilot"  # istio/pilot, gcr.io/istio-release/pilot, ...
XDS_POD_PORT = 15012  # istioctl's --xds-port default (istioctl/cmd/root.go)
MONITORING_POD_PORT = 15014  # istiod's --monitoringAddr, what istioctl asks without the annotation
MONITORING_PORT_ANNOTATION = "prometheus.io/port"


@dataclass(frozen=True)
class RelayPort:
    listen: str  # HOST:PORT inside the pod
    upstream: str  # HOST:PORT of the control plane (through the agent's socket for it)


def detect_istiod_container(container: Body) -> bool:
    repo = find_repository(container.get("image") or "")
    return repo in ISTIOD_IMAGES or repo.rsplit("/", 1)[-1] == ISTIO_PILOT_IMAGE


def find_istiod_containers(pod: Body) -> list[Body]:
    return [c for c in (pod.get("spec") or {}).get("containers") or [] if detect_istiod_container(c)]


def find_monitoring_port(pod: Body) -> int:
    """The port istioctl asks for `/version` and `/debug/syncz` (`FindIstiodMonitoringPort`)."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(MONITORING_PORT_ANNOTATION)
    try:
        return int(value)
    except (TypeError, ValueError):
        return MONITORING_POD_PORT


def plan_istiod_relays(pod: Body, xds_address: str, monitoring_address: str | None) -> list[RelayPort]:
    """What the istiod container relays: xDS on every address of the pod (istioctl and pods alike
    authenticate there), the monitoring port on its loopback only, when the agent knows where to."""
    relays = [RelayPort(f"0.0.0.0:{XDS_POD_PORT}", xds_address)]
    if monitoring_address:
        relays.append(RelayPort(f"127.0.0.1:{find_monitoring_port(pod)}", monitoring_address))
    return relays


def build_relay_container(container: Body, python: str, relays: list[tuple[str, str]]) -> Body:
    """The container as the workload runtime runs it: the relay from each (HOST:PORT in the pod,
    agent's socket) pair (`python -m meshway.node.relay LISTEN SOCKET...`), in place of
    `pilot-discovery discovery` (never pulled)."""
    pairs = [arg for listen, socket_path in relays for arg in (listen, socket_path)]
    return {**container, "command": [python, "-P", "-u", "-m", "meshway.node.relay", *pairs], "args": []}
