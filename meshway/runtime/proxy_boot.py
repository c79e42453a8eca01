"""Starting a waypoint replica's or a node proxy's Envoy, for whoever runs them (the control plane
in loopback mode, the node agent of the one-host cluster): the bootstrap that carries the proxy's
xDS credential, the restart backoff, and the check that an adopted Envoy can still connect."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import labels as L
from ..ca.tokens import TOKEN_METADATA, ProxyTokens
from ..xds.bootstrap import build_bootstrap
from .envoy import EnvoyPaths, read_pid, stop_envoy
from .placement import Replica, socket_dir

log = logging.getLogger("meshway.proxies")
NODE_PROXY_DRAIN = 30  # seconds: connections on a filter chain a config change replaced finish normally


def build_replica_bootstrap(replica: Replica, node_id: str, token: str, ads_socket: Path, admin: Path,
                            delta: bool) -> dict:
    r = replica
    return build_bootstrap(node_id, f"{r.service_account}.{r.namespace}", ads_socket, admin, delta=delta,
                           metadata={"NAMESPACE": r.namespace, "WORKLOAD_NAME": r.waypoint,
                                     "SERVICE_ACCOUNT": r.service_account, "NODE_TYPE": "waypoint",
                                     "INSTANCE_IPS": r.pod_ip, "POD_NAME": r.pod, TOKEN_METADATA: token})


def build_node_proxy_bootstrap(node: str, node_id: str, token: str, ads_socket: Path, admin: Path,
                               delta: bool) -> dict:
    return build_bootstrap(node_id, f"ztunnel.{L.ROOT_NAMESPACE}", ads_socket, admin, delta=delta,
                           metadata={"NODE_TYPE": "ztunnel", "NODE_NAME": node, TOKEN_METADATA: token})


def next_start_delay(failures: int) -> float:
    """Seconds before the next start of a proxy that started `failures` times without getting ready
    (Kubernetes' CrashLoopBackOff shape: 0.5 s doubling, at most 30 s)."""
    return min(30.0, 0.5 * 2 ** failures)


def stop_without_credential(paths: EnvoyPaths, node_id: str, tokens: ProxyTokens) -> None:
    """An adopted Envoy whose bootstrap lacks this node id's xDS token (started before tokens, or
    with another state folder's key) could never connect again: stop it, so it is restarted."""
    if read_pid(paths) is None:
        return
    try:
        metadata = json.loads(paths.bootstrap.read_text())["node"]["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        metadata = {}
    if not tokens.verify(node_id, str(metadata.get(TOKEN_METADATA, ""))):
        log.warning("restarting %s: its bootstrap has no valid xDS credential", node_id)
        stop_envoy(paths)


def node_proxy_paths(state_dir: Path, index: int) -> EnvoyPaths:
    """Where node-N's proxy keeps its bootstrap, log, pid and admin socket (what `proxy-status`,
    `proxy-config` and `metrics` read)."""
    return EnvoyPaths(Path(state_dir) / "run" / "nodes" / f"node-{index}", socket_dir(Path(state_dir)) / f"z{index}")


def problems_file(state_dir: Path, index: int) -> Path:
    return node_proxy_paths(state_dir, index).run_dir / "agent.json"


def read_agent_problems(state_dir: Path, index: int) -> list[list[str]]:
    """The problems node-N's agent reports on its node proxy (e.g. failed capture rules)."""
    try:
        return [list(p) for p in json.loads(problems_file(state_dir, index).read_text())["problems"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def agent_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "run" / "agents"


def agent_pid_file(state_dir: Path, node: str) -> Path:
    return agent_dir(state_dir) / f"{node}.pid"
