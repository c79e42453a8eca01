"""What a kubelet decides, as pure functions of what it read and what its runtime reports (no I/O):

- `build_node` / `build_node_status`: the Node it registers and the status it keeps current (the
  Ready condition and its heartbeat, capacity, addresses, pod CIDR, nodeInfo, kubelet endpoint);
- `build_lease`: its Lease in `kube-node-lease`, renewed every 10 s, which is what the
  node-lifecycle controller reads to keep the node Ready;
- `plan_pods`: which bound pods to start, which to stop, and which to delete from the API (stopped
  after their deletionTimestamp; `gracePeriodSeconds=0` with a UID precondition, as the kubelet's
  status manager does);
- `allocate_ip`: a pod's address from the node's CIDR (`meshway.store.ipam.node_cidr`);
- `build_pod_status`: phase, addresses, conditions and containerStatuses from a `PodRun`, the
  runtime's view of one pod's containers;
- `plan_log_request` / `select_log`: the kubelet API's `containerLogs` query and the bytes it answers.

The shell is `meshway.node.agent` (the watch, the runtime, the API writes) and `meshway.node.server`
(the HTTPS kubelet API)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from ..apps.images import find_repository
from ..store.ipam import AllocationError, allocate_pod_ip, node_cidr

Body = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
KUBELET_VERSION = "v1.37.2"  # the control plane's version: the scheduler and kubectl see a current kubelet
KUBELET_PORT = 10250
MAX_PODS = 110  # the kubelet's default --max-pods
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40  # seconds (the kubelet's nodeLeaseDurationSeconds)
LEASE_RENEW = 10.0  # seconds: a quarter of the duration, as the kubelet
CONDITION_TYPES = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")


def format_time(t: datetime) -> str:
    """RFC 3339 in seconds, UTC (metav1.Time)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(t: datetime) -> str:
    """RFC 3339 in microseconds, UTC (metav1.MicroTime: a Lease's renewTime)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_node_index(name: str) -> int:
    """`node-3` -> 3: the node's pod CIDR is 10.244.3.0/24, as on the one-host cluster."""
    prefix, _, number = name.rpartition("-")
    if prefix != "node" or not number.isdigit() or not 1 <= int(number) <= 254:
        raise ValueError(f"node name {name!r}: expected node-N with N from 1 to 254 (its pod CIDR is 10.244.N.0/24)")
    return int(number)


# -- the Node and its Lease -----------------------------------------------------------------------
@dataclass(frozen=True)
class NodeFacts:
    """What the node is: the inputs of its Node object."""

    name: str
    ip: str  # InternalIP: where the API server reaches the kubelet API
    port: int  # the kubelet API's port (daemonEndpoints.kubeletEndpoint.Port)
    cpu: int
    memory_kib: int
    pods: int = MAX_PODS
    kernel: str = ""
    os_image: str = ""
    architecture: str = "amd64"
    machine_id: str = ""
    boot_id: str = ""

    @property
    def pod_cidr(self) -> str:
        return str(node_cidr(parse_node_index(self.name)))


def build_node(facts: NodeFacts) -> Body:
    """The Node as the kubelet registers it (metadata and spec; the status follows on /status)."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": facts.name,
                         "labels": {"kubernetes.io/hostname": facts.name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": facts.architecture,
                                    "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": facts.architecture},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": facts.pod_cidr, "podCIDRs": [facts.pod_cidr]}}


def build_conditions(previous: Iterable[Body], now: datetime, ready: bool = True) -> list[Body]:
    """Ready plus the three pressure conditions, each with its heartbeat `now`; a transition time
    moves only when the status changes (the one held by `previous` is kept)."""
    before = {c.get("type"): c for c in previous}
    wanted = [("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
              ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
              ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
              ("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady",
               "kubelet is posting ready status" if ready else "kubelet is not ready")]
    out = []
    for kind, status, reason, message in wanted:
        old = before.get(kind) or {}
        moved = old.get("status") != status or not old.get("lastTransitionTime")
        out.append({"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": format_time(now),
                    "lastTransitionTime": format_time(now) if moved else old["lastTransitionTime"]})
    return out


def build_node_status(facts: NodeFacts, previous: Body | None, now: datetime) -> Body:
    """`status` of the Node (to PATCH on nodes/<name>/status), heartbeat `now`."""
    resources = {"cpu": str(facts.cpu), "memory": f"{facts.memory_kib}Ki", "pods": str(facts.pods),
                 "ephemeral-storage": "0"}
    return {"conditions": build_conditions(((previous or {}).get("conditions") or ()), now),
            "addresses": [{"type": "InternalIP", "address": facts.ip}, {"type": "Hostname", "address": facts.name}],
            "capacity": resources, "allocatable": dict(resources),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": facts.port}},
            "nodeInfo": {"machineID": facts.machine_id, "systemUUID": facts.machine_id, "bootID": facts.boot_id,
                         "kernelVersion": facts.kernel, "osImage": facts.os_image,
                         "containerRuntimeVersion": "meshway://netns", "kubeletVersion": KUBELET_VERSION,
                         "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": facts.architecture},
            "phase": "Running"}


def build_lease(node: str, node_uid: str, now: datetime, existing: Body | None) -> Body:
    """The node's Lease (a new one, or `existing` renewed), owned by its Node as the kubelet sets it."""
    meta: Body = {"name": node, "namespace": LEASE_NAMESPACE,
                  "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]}
    if existing is not None:
        meta["resourceVersion"] = existing["metadata"].get("resourceVersion")
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION,
                     "renewTime": format_micro_time(now)}}


# -- pods: what to do ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Held:
    """A pod the runtime holds: its uid and address, and whether it is being stopped."""

    uid: str
    ip: str
    stopping: bool = False


@dataclass(frozen=True)
class PodPlan:
    start: tuple[Key, ...] = ()  # bound, not held: give it a netns and an address, run it
    stop: tuple[Key, ...] = ()  # held, and deleted (deletionTimestamp), gone, or replaced by another uid
    delete: tuple[tuple[Key, str], ...] = ()  # (key, uid): stopped, so remove it from the API


def detect_terminal(pod: Body) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def plan_pods(bound: Mapping[Key, Body], held: Mapping[Key, Held]) -> PodPlan:
    """From the pods bound to this node (as watched) and the pods the runtime holds."""
    start, stop, delete = [], [], []
    for key, pod in sorted(bound.items()):
        meta = pod["metadata"]
        h = held.get(key)
        if h is not None and h.uid != meta.get("uid"):  # the name was reused: stop the old one first
            if not h.stopping:
                stop.append(key)
            continue
        if meta.get("deletionTimestamp"):
            if h is None:
                delete.append((key, meta.get("uid", "")))
            elif not h.stopping:
                stop.append(key)
        elif h is None and not detect_terminal(pod):
            start.append(key)
    stop += [key for key, h in sorted(held.items()) if key not in bound and not h.stopping]
    return PodPlan(tuple(start), tuple(stop), tuple(delete))


def allocate_ip(node: str, pod: Body, in_use: set[str]) -> str:
    """The pod's address: the one its status already has when it is in this node's CIDR and free
    (a restarted agent keeps it), else the lowest free address of the CIDR."""
    index = parse_node_index(node)
    ip = (pod.get("status") or {}).get("podIP") or ""
    try:
        if ip and ip not in in_use and ip.rsplit(".", 1)[0] == str(node_cidr(index).network_address).rsplit(".", 1)[0] \
                and 2 <= int(ip.rsplit(".", 1)[1]) <= 254:
            return ip
    except ValueError:
        pass
    try:
        return allocate_pod_ip(index, in_use)
    except AllocationError as exc:
        raise AllocationError(f"{exc} ({len(in_use)} pods run on {node})") from None


# -- pods: their status ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerRun:
    """The runtime's view of one container."""

    name: str
    state: str  # "running", "waiting" (backing off before a restart) or "terminated"
    ready: bool
    restarts: int
    started_at: float | None = None  # wall clock of the current (or last) start
    pid: int | None = None
    exit_code: int | None = None  # of the last exit; None: never exited, or unknown
    error: str | None = None


@dataclass(frozen=True)
class PodRun:
    """The runtime's view of one pod: its address and containers, or why they could not be created."""

    ip: str
    started_at: float  # wall clock: when the pod got its sandbox
    containers: tuple[ContainerRun, ...] = ()
    config_error: str | None = None


def _time(ts: float) -> str:
    return format_time(datetime.fromtimestamp(ts, timezone.utc))


def build_image_id(image: str) -> str:
    """A stable imageID: the image's repository, digested (no image is pulled)."""
    return f"meshway://{find_repository(image)}@sha256:{hashlib.sha256(find_repository(image).encode()).hexdigest()}"


def build_container_status(spec: Body, run: ContainerRun | None, uid: str, config_error: str | None) -> Body:
    image = spec.get("image") or ""
    body: Body = {"name": spec.get("name", ""), "image": image, "imageID": build_image_id(image),
                  "ready": False, "restartCount": 0, "started": False}
    if run is None:
        reason = "CreateContainerConfigError" if config_error else "ContainerCreating"
        body["state"] = {"waiting": {"reason": reason, **({"message": config_error} if config_error else {})}}
        return body
    body["restartCount"] = run.restarts
    if run.pid is not None:
        body["containerID"] = f"meshway://{hashlib.sha256(f'{uid}/{run.name}/{run.restarts}'.encode()).hexdigest()}"
    last = None
    if run.exit_code is not None or run.error:
        last = {"exitCode": run.exit_code if run.exit_code is not None else 137,
                "reason": "Completed" if run.exit_code == 0 else "Error" if run.exit_code is not None
                else "ContainerStatusUnknown", **({"message": run.error} if run.error else {})}
    if run.state == "running":
        body.update(ready=run.ready, started=True,
                    state={"running": {"startedAt": _time(run.started_at or 0.0)}})
        if last is not None and run.restarts:
            body["lastState"] = {"terminated": last}
    elif run.state == "waiting":
        body["state"] = {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": f"back-off restarting failed container {run.name}"}}
        if last is not None:
            body["lastState"] = {"terminated": last}
    else:
        body["state"] = {"terminated": last or {"exitCode": 0, "reason": "Completed"}}
    return body


def find_phase(containers: list[Body], restart_policy: str, config_error: str | None) -> str:
    if config_error or not containers:
        return "Pending"
    states = [c["state"] for c in containers]
    if any("running" in s for s in states):
        return "Running"
    if all("terminated" in s for s in states) and restart_policy != "Always":
        codes = [s["terminated"].get("exitCode") for s in states]
        if all(code == 0 for code in codes):
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
    return "Running" if any("waiting" in s and s["waiting"]["reason"] == "CrashLoopBackOff" for s in states) \
        else "Pending"


def build_condition(kind: str, true: bool, previous: Mapping[str, Body], now: str, reason: str = "",
                    message: str = "") -> Body:
    status = "True" if true else "False"
    old = previous.get(kind) or {}
    since = old["lastTransitionTime"] if old.get("status") == status and old.get("lastTransitionTime") else now
    out = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
    if not true and reason:
        out.update(reason=reason, message=message)
    return out


def build_pod_status(pod: Body, run: PodRun, host_ip: str, now: datetime) -> Body:
    """The pod's `status` as the kubelet writes it. Transition times already in the pod's status are
    kept while a condition holds, so writing the same state twice writes the same body."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    uid = pod["metadata"].get("uid", "")
    runs = {c.name: c for c in run.containers}
    containers = [build_container_status(c, runs.get(c.get("name", "")), uid, run.config_error)
                  for c in spec.get("containers") or []]
    not_ready = [c["name"] for c in containers if not c["ready"]]
    ready = bool(containers) and not not_ready
    gates = [g.get("conditionType") for g in spec.get("readinessGates") or []]
    previous = {c.get("type"): c for c in status.get("conditions") or []}
    gates_met = all((previous.get(g) or {}).get("status") == "True" for g in gates)
    stamp = format_time(now)
    why = f"containers with unready status: [{' '.join(not_ready)}]"
    conditions = [
        build_condition("PodReadyToStartContainers", True, previous, stamp),
        build_condition("Initialized", True, previous, stamp),
        build_condition("Ready", ready and gates_met, previous, stamp,
                        "ContainersNotReady" if not ready else "ReadinessGatesNotReady",
                        why if not ready else "the readiness gates are not all True"),
        build_condition("ContainersReady", ready, previous, stamp, "ContainersNotReady", why),
        build_condition("PodScheduled", True, previous, stamp),  # the scheduler's, kept as it wrote it
    ]
    conditions += [previous[g] for g in gates if g in previous and g not in CONDITION_TYPES]
    return {"phase": find_phase(containers, spec.get("restartPolicy") or "Always", run.config_error),
            "conditions": conditions,
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": run.ip, "podIPs": [{"ip": run.ip}],
            "startTime": status.get("startTime") or _time(run.started_at),
            "containerStatuses": containers}


def detect_status_change(current: Body | None, wanted: Body) -> bool:
    """Whether `wanted` differs from what the pod's status says (only the fields we write)."""
    current = current or {}
    return any(current.get(k) != v for k, v in wanted.items())


# -- the kubelet API: containerLogs ----------------------------------------------------------------
@dataclass(frozen=True)
class LogRequest:
    namespace: str
    pod: str
    container: str
    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    previous: bool = False


class LogRequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    return (query.get(name) or ["false"])[-1].lower() in ("true", "1")


def _count(query: Mapping[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    try:
        value = int(values[-1])
    except ValueError:
        raise LogRequestError(400, f"{name}: {values[-1]!r} is not an integer") from None
    if value < 0:
        raise LogRequestError(400, f"{name}: must be >= 0")
    return value


def plan_log_request(path: str, query: Mapping[str, list[str]]) -> LogRequest:
    """`/containerLogs/<ns>/<pod>/<container>` and its query (follow, tailLines, limitBytes, previous)."""
    parts = path.strip("/").split("/")
    if len(parts) != 4 or parts[0] != "containerLogs" or not all(parts[1:]):
        raise LogRequestError(404, f"{path}: not found (the kubelet API here serves "
                                   "/containerLogs/<namespace>/<pod>/<container>)")
    return LogRequest(parts[1], parts[2], parts[3], follow=_flag(query, "follow"),
                      tail_lines=_count(query, "tailLines"), limit_bytes=_count(query, "limitBytes"),
                      previous=_flag(query, "previous"))


def select_log(data: bytes, tail_lines: int | None, limit_bytes: int | None) -> bytes:
    """The last `tail_lines` lines of a log, then at most `limit_bytes` of them (the kubelet's order)."""
    if tail_lines is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[len(lines) - tail_lines:]) if tail_lines else b""
    if limit_bytes is not None:
        data = data[:limit_bytes]
    return data
