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
  but nodes may read only their own Leases (the Node authorizer)."""
from __future__ import annotations

from typing import Any

from ..apps.images import find_repository

Body = dict[str, Any]
ISTIOD_IMAGES = frozenset({"meshway/pilot"})
ISTIO_PILOT_IMAGE = "pilot"  # istio/pilot, gcr.io/istio-release/pilot, ...
XDS_POD_PORT = 15012  # istioctl's --xds-port default (istioctl/cmd/root.go)


def detect_istiod_container(container: Body) -> bool:
    repo = find_repository(container.get("image") or "")
    return repo in ISTIOD_IMAGES or repo.rsplit("/", 1)[-1] == ISTIO_PILOT_IMAGE


def find_istiod_containers(pod: Body) -> list[Body]:
    return [c for c in (pod.get("spec") or {}).get("containers") or [] if detect_istiod_container(c)]


def build_relay_container(container: Body, python: str, socket_path: str, port: int = XDS_POD_PORT) -> Body:
    """The container as the workload runtime runs it: the relay from `port` in the pod to the agent's
    socket (`python -m meshway.node.relay`), in place of `pilot-discovery discovery` (never pulled)."""
    return {**container, "command": [python, "-P", "-u", "-m", "meshway.node.relay", f"0.0.0.0:{port}", socket_path],
            "args": []}
