"""The kubelet of the local cluster: realise the store's pods as network namespaces and processes,
keep their /etc/hosts current, and report their readiness and restart counts. Waypoint pods get a
namespace only: their Envoy is started by the node agent (`meshway.runtime.nodeagent`).

A new runtime on a running cluster (a restarted node agent) adopts what is there: the
namespaces recorded in run/cluster.json (`ClusterNet`) and each pod's running containers recorded
in run/pods/<ns>.<pod>/containers.json (`PodProcesses`); nothing is started twice.

Containers run as the user their securityContext names (65532 when none; root only when asked):
they cannot read the state folder, the CA key or the ADS socket (`meshway.runtime.runas`)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import labels as L
from ..mesh.view import MeshView
from .netns import ClusterNet, service_hostnames
from .workload import ContainerStatus, PodProcesses

log = logging.getLogger("meshway.cluster")
Body = dict[str, Any]


def node_index(node_name: str) -> int:
    return int(node_name.rsplit("-", 1)[1])


def detect_waypoint_pod(pod: Body) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return L.GATEWAY_NAME in labels and labels.get(L.GATEWAY_CLASS_NAME) == L.WAYPOINT_CLASS


def build_host_entries(view: MeshView, namespace: str) -> list[tuple[str, list[str]]]:
    """/etc/hosts entries of a pod in `namespace`: Services (short names of its own namespace's only)
    and ServiceEntries' hosts at their addresses."""
    entries = []
    for svc in sorted(view.services.values(), key=lambda s: (s.namespace, s.name)):
        if svc.kind == "Service" and svc.addresses:
            entries.append((svc.addresses[0], service_hostnames(svc.name, svc.namespace, namespace)))
        elif svc.kind == "ServiceEntry":
            for ip in svc.addresses:
                entries.append((ip, list(svc.hosts)))
    return entries


def build_container_statuses(statuses: list[ContainerStatus]) -> list[Body]:
    """`status.containerStatuses` as Kubernetes writes them (restartCount never resets)."""
    out = []
    for s in statuses:
        if s.state == "running":
            state: Body = {"running": {}}
        elif s.state == "waiting":
            state = {"waiting": {"reason": "CrashLoopBackOff"}}
        else:
            state = {"terminated": build_termination(s)}
        body = {"name": s.name, "ready": s.ready, "restartCount": s.restart_count, "started": s.state == "running",
                "state": state}
        if s.state != "terminated" and (s.last_exit_code is not None or s.last_error):
            body["lastState"] = {"terminated": build_termination(s)}
        out.append(body)
    return out


def build_config_error_statuses(body: Body, error: str) -> list[Body]:
    """Containers that could not be created (a securityContext meshway cannot honour, an image
    without a command, a user that cannot reach the interpreter), as the kubelet reports them."""
    return [{"name": c.get("name", ""), "ready": False, "restartCount": 0, "started": False,
             "state": {"waiting": {"reason": "CreateContainerConfigError", "message": error}}}
            for c in (body.get("spec") or {}).get("containers") or []]


def build_termination(s: ContainerStatus) -> Body:
    if s.last_exit_code is None:  # exited while adopted: the code is not ours to know
        return {"reason": "ContainerStatusUnknown", "message": s.last_error or "exit code unknown"}
    return {"exitCode": s.last_exit_code, "reason": "Completed" if s.last_exit_code == 0 else "Error"}


@dataclass
class PodState:
    body: Body
    processes: PodProcesses | None = None
    ready: bool | None = None
    reported: tuple | None = None  # (ready, restart counts) last written
    last_probe: float = 0.0
    hosts: str = field(default="")
    error: str | None = None  # why the containers could not be created


class ClusterRuntime:
    def __init__(self, state_dir: Path, nodes: int, net: ClusterNet | None = None, node: int | None = None):
        """`node`: the runtime of that node only (its agent's): the pods given to `sync_pods` are
        that node's, and pods recorded on other nodes are not its to remove."""
        self.state_dir = Path(state_dir)
        self.nodes = nodes
        self.node = node
        self.net = net or ClusterNet(self.state_dir, nodes)
        self.pods: dict[tuple[str, str], PodState] = {}
        self.log_dir = self.state_dir / "run" / "pods"
        self.reconciled = False  # the recorded pods have been compared with the store once

    def up(self) -> None:
        self.net.up()

    def sync_pods(self, bodies: list[Body], view: MeshView) -> None:
        wanted = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies
                  if (b.get("status") or {}).get("podIP") and b["spec"].get("nodeName")}
        for key in [k for k in self.pods if k not in wanted]:
            self._remove(key)
        if not self.reconciled:  # pods an earlier runtime made that were deleted while none ran
            self.reconciled = True
            for ns, name in self.net.recorded_pods(self.node):
                if (ns, name) not in wanted:
                    log.info("removing pod %s/%s: deleted while no node agent ran", ns, name)
                    try:
                        self.net.remove_pod(ns, name)
                    except Exception as exc:  # noqa: BLE001 (the rest of the cluster still runs)
                        log.warning("cannot remove pod %s/%s: %s", ns, name, exc)
        entries: dict[str, list] = {}  # namespace -> its pods' host entries
        for key, body in wanted.items():
            state = self.pods.get(key)
            if state is None:
                state = self.pods[key] = PodState(body)
                self._create(key, state)
            state.body = body
            if key[0] not in entries:
                entries[key[0]] = build_host_entries(view, key[0])
            self.net.write_hosts(key[0], key[1], body["status"]["podIP"], entries[key[0]])

    def _create(self, key: tuple[str, str], state: PodState) -> None:
        ns, name = key
        body = state.body
        self.net.add_pod(ns, name, body["status"]["podIP"], node_index(body["spec"]["nodeName"]))
        if detect_waypoint_pod(body):
            return
        try:
            state.processes = PodProcesses(body, self.net.exec_prefix(ns, name), self.log_dir / f"{ns}.{name}",
                                           home_root=self.net.pod_home(ns, name))
            state.processes.start()
        except Exception as exc:  # a container we cannot run: the pod stays not ready, with the reason logged
            log.warning("cannot start pod %s/%s: %s", ns, name, exc)
            state.processes, state.error = None, str(exc)

    def _remove(self, key: tuple[str, str]) -> None:
        state = self.pods.pop(key)
        if state.processes is not None:
            state.processes.stop()
        self.net.remove_pod(*key)

    def poll(self, period: float = 0.5) -> list[tuple[str, str, bool, Body]]:
        """Restart exited containers; return the pods whose readiness or restart counts changed
        (ns, name, ready, {"containerStatuses": ...})."""
        now = time.monotonic()
        changed = []
        for (ns, name), state in self.pods.items():
            if state.processes is None:
                if state.error and state.reported is None:
                    state.reported = (False, ())
                    changed.append((ns, name, False,
                                    {"containerStatuses": build_config_error_statuses(state.body, state.error)}))
                continue
            restarted = state.processes.poll()
            if now - state.last_probe < period and state.ready is not None and not restarted:
                continue
            state.last_probe = now
            ready = bool(state.processes.check_ready())
            statuses = state.processes.statuses()
            reported = (ready, tuple(s.restart_count for s in statuses))
            state.ready = ready
            if reported != state.reported:
                state.reported = reported
                changed.append((ns, name, ready, {"containerStatuses": build_container_statuses(statuses)}))
        return changed

    def stop(self) -> None:
        for key in list(self.pods):
            state = self.pods.pop(key)
            if state.processes is not None:
                state.processes.stop()

    def down(self) -> None:
        self.stop()
        self.net.down()
