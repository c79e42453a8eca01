"""One pod's containers as local processes: what to run (pure), when to restart it and whether it
is ready (pure), and a thin supervisor that starts, polls, probes and stops the processes.

- `build_container_command(container, pod)`: Kubernetes `command`/`args` semantics with `$(VAR)`
  expansion, or the built-in app that stands in for the image (`meshway.apps.images`); the
  environment is the container's `env` (values and `fieldRef`s) plus POD_NAME, POD_NAMESPACE,
  POD_IP, SERVICE_ACCOUNT, HOSTNAME, and PATH/HOME from the parent.
- `PodProcesses(pod, prefix, log_dir, home_root=...)`: each container runs as `prefix + argv` (the
  cluster passes `ip netns exec <pod netns>`) in its own session, logging to
  `<log_dir>/<container>.log` (the folder 0700, logs 0600: they are read through meshway, as root);
  with `home_root`, as the user its `securityContext` names (`meshway.runtime.runas`: 65532 when
  none, root only when asked), privileges dropped by `setpriv` once inside the namespace (after
  bind-mounting the interpreter and meshway where that user can read them, if it cannot where they
  are), HOME a folder of its own under `home_root`, the cwd `workingDir` or `/`;
  `poll()` restarts exited containers after 1 s, 2 s, 4 s ... (at most 30 s; a container that ran
  for 60 s starts over at 1 s: Kubernetes' 10 s / 5 min / 10 min scaled down tenfold);
  `check_ready()` runs `readinessProbe` (httpGet, tcpSocket, exec; grpc as tcpSocket) inside the
  pod's namespace; `stop()` sends SIGTERM to each process group, then SIGKILL after the grace.
- Restarts adopt: every container's process (pid, its /proc start time, argv, phase, restart
  count, start time, readiness) is recorded in `<log_dir>/containers.json`, written atomically
  before and after each start and on every exit. The first `start()` of a new `PodProcesses` for
  the same pod (a restarted control plane) decides per container with `decide_adoption` (pure):
  a live recorded process with the same pid, start time and command is adopted, not started
  twice (one started but not yet recorded is found by its command, own session and log file). An
  adopted process is not our child: /proc says whether it lives, and its exit code is unknown.
  Restart counts live in the record, so they survive the supervisor.

`python -m meshway.runtime.workload probe PROBE_JSON HOST` runs one probe and exits 0 when it
passes: that is how a probe reaches a pod IP that only exists inside the pod's namespace. It runs as
root, as the kubelet's probes do; exec probes run as the container's user. `-P` everywhere: a
`meshway/` folder in the working directory never shadows the package.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..apps.images import resolve_image
from ..private import make_private_dir, open_private_log, write_private
from .runas import (Interpreter, RunAs, RunAsError, build_mount_prefix, build_setpriv_prefix, find_interpreter,
                    find_run_as, make_home)

Body = dict[str, Any]
log = logging.getLogger("meshway.workload")
DEFAULT_GRACE = 10.0  # seconds, when the pod sets no terminationGracePeriodSeconds
PARENT_ENV = ("PATH", "HOME")
VAR_REF = re.compile(r"\$(\$|\(([^)]*)\))")
LABEL_REF = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")


class ContainerConfigError(ValueError):
    """The container cannot be run as given (Kubernetes' CreateContainerConfigError)."""


# -- what to run (pure) ----------------------------------------------------------------------
def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes expansion: `$(VAR)` becomes VAR's value when defined and stays as written when
    not; `$$` is a literal `$` (so `$$(VAR)` is the text `$(VAR)`)."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        return env.get(m.group(2), m.group(0))
    return VAR_REF.sub(sub, text)


def find_pod_ip(pod: Body) -> str:
    return (pod.get("status") or {}).get("podIP") or ""


def find_service_account(pod: Body) -> str:
    spec = pod.get("spec") or {}
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def find_field(pod: Body, field_path: str) -> str | None:
    """The value a `fieldRef` names, or None when meshway does not support that field."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if m := LABEL_REF.fullmatch(field_path):
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    fields: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace") or "default",
        "metadata.uid": lambda: meta.get("uid", ""),
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: find_service_account(pod),
        "status.podIP": lambda: find_pod_ip(pod),
        "status.podIPs": lambda: ",".join(i.get("ip", "") for i in status.get("podIPs") or []) or find_pod_ip(pod),
        "status.hostIP": lambda: status.get("hostIP", ""),
    }
    getter = fields.get(field_path)
    return getter() if getter else None


def build_env_value(var: Body, pod: Body, env: Mapping[str, str], where: str) -> str | None:
    """One `env` entry's value; None for an optional reference meshway cannot resolve."""
    source = var.get("valueFrom")
    if not source:
        return expand_vars(var.get("value") or "", env)
    if "fieldRef" in source:
        path = (source["fieldRef"] or {}).get("fieldPath", "")
        value = find_field(pod, path)
        if value is None:
            raise ContainerConfigError(f"{where}: env {var['name']}: fieldRef {path!r} is not supported "
                                       "(supported: metadata.name/namespace/uid/labels/annotations, "
                                       "spec.nodeName/serviceAccountName, status.podIP/podIPs/hostIP)")
        return value
    ref = next(iter(source), "")
    if (source.get(ref) or {}).get("optional"):
        return None
    raise ContainerConfigError(f"{where}: env {var['name']}: valueFrom.{ref} is not supported (only fieldRef)")


def build_env(container: Body, pod: Body, image_env: Mapping[str, str],
              parent_env: Mapping[str, str]) -> dict[str, str]:
    """Parent PATH/HOME < the image's app settings < the pod's identity < the container's `env`."""
    meta = pod.get("metadata") or {}
    env = {k: parent_env[k] for k in PARENT_ENV if k in parent_env}
    env.update(image_env)
    env.update({"POD_NAME": meta.get("name", ""), "POD_NAMESPACE": meta.get("namespace") or "default",
                "POD_IP": find_pod_ip(pod), "SERVICE_ACCOUNT": find_service_account(pod),
                "HOSTNAME": meta.get("name", "")})
    where = describe(pod, container)
    for var in container.get("env") or []:
        value = build_env_value(var, pod, env, where)
        if value is not None:
            env[var["name"]] = value
    return env


def describe(pod: Body, container: Body) -> str:
    meta = pod.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name", "?")
    return f"pod {namespace}/{name} container {container.get('name', '?')!r}"


def build_container_command(container: Body, pod: Body, parent_env: Mapping[str, str] | None = None,
                            interpreter: Interpreter | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, env) for one container. `command` replaces the image's entrypoint and `args` its
    default arguments; without `command` the image must be one a built-in app stands in for, run
    by `interpreter` (default: this Python) with the PYTHONPATH it needs in the image's env."""
    interpreter = interpreter or Interpreter(sys.executable)
    app = resolve_image(container.get("image"), interpreter.python)
    command, args = container.get("command"), container.get("args")
    if app is not None and interpreter.path and not command:
        extra = {"PYTHONPATH": os.pathsep.join(interpreter.path)}
        if interpreter.library_path:
            extra["LD_LIBRARY_PATH"] = interpreter.library_path
        app = replace(app, env={**app.env, **extra})
    if not command and app is None:
        raise ContainerConfigError(
            f"{describe(pod, container)}: no `command` and image {container.get('image')!r} is not one meshway "
            "runs (Istio's bookinfo images, echo/httpbin images, curl/sleep images); give the container a "
            "`command` to run locally")
    env = build_env(container, pod, app.env if app else {}, os.environ if parent_env is None else parent_env)
    given = [expand_vars(str(a), env) for a in [*(command or []), *(args or [])]]
    argv = given if command else [*app.argv, *given]  # type: ignore[union-attr]
    return argv, env


# -- restarts and readiness (pure) -----------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0  # a run this long counts as healthy: the next delay is `initial` again

    def delay(self, failures: int) -> float:
        """Wait before restarting after the `failures`-th consecutive exit (1 -> initial)."""
        return min(self.cap, self.initial * 2 ** max(0, failures - 1))


def detect_restart(restart_policy: str, exit_code: int | None) -> bool:
    """Whether an exited container restarts; an unknown exit code (a process we adopted) counts as
    a failure."""
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


@dataclass(frozen=True)
class Probe:
    kind: str  # "http", "tcp", "exec", or "none" (always passes)
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    sticky: bool = False  # once passed, ready until the process exits (the implicit probe)
    startup_period: float | None = None  # while not ready: the startupProbe's period (istiod's waypoint: 1 s)


@dataclass(frozen=True)
class Readiness:
    ready: bool = False
    successes: int = 0
    failures: int = 0
    last_probe: float | None = None


def find_container_port(port: int | str, container: Body, where: str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ContainerConfigError(f"{where}: readinessProbe port {port!r} names no port of the container")


def build_probe(container: Body, pod: Body) -> Probe:
    """The container's readiness probe; without one, ready 0.5 s after start once the first
    declared port (if any) accepts TCP connections. A `startupProbe` lends its period while the
    container is not ready (so a proxy whose readiness is probed every 15 s is Ready within a
    second of passing: the startup probe's job on Kubernetes)."""
    spec = container.get("readinessProbe")
    ports = container.get("ports") or []
    if not spec:
        first = int(ports[0]["containerPort"]) if ports else 0
        return Probe("tcp" if first else "none", port=first, initial_delay=0.5, period=0.5, timeout=1.0,
                     failure_threshold=1, sticky=True)
    where = describe(pod, container)
    startup = container.get("startupProbe") or {}
    timing = {"initial_delay": float(spec.get("initialDelaySeconds") or 0),
              "startup_period": float(startup.get("periodSeconds") or 10) if startup else None,
              "period": float(spec.get("periodSeconds") or 10), "timeout": float(spec.get("timeoutSeconds") or 1),
              "success_threshold": int(spec.get("successThreshold") or 1),
              "failure_threshold": int(spec.get("failureThreshold") or 3)}
    if get := spec.get("httpGet"):
        headers = tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or [])
        return Probe("http", port=find_container_port(get["port"], container, where), path=get.get("path") or "/",
                     scheme=(get.get("scheme") or "HTTP").upper(), host=get.get("host"), headers=headers, **timing)
    for kind in ("tcpSocket", "grpc"):
        if sock := spec.get(kind):
            port = find_container_port(sock["port"], container, where)
            return Probe("tcp", port=port, host=sock.get("host"), **timing)
    if run := spec.get("exec"):
        return Probe("exec", command=tuple(run.get("command") or []), **timing)
    raise ContainerConfigError(f"{where}: readinessProbe needs httpGet, tcpSocket, grpc or exec")


def detect_probe_due(probe: Probe, state: Readiness, started_at: float, now: float) -> bool:
    if probe.sticky and state.ready:
        return False
    if now < started_at + probe.initial_delay:
        return False
    period = probe.startup_period if probe.startup_period and not state.ready else probe.period
    return state.last_probe is None or now - state.last_probe >= period


def next_readiness(probe: Probe, state: Readiness, passed: bool, now: float) -> Readiness:
    """Ready after `success_threshold` passes in a row; unready after `failure_threshold` failures."""
    if passed:
        successes = state.successes + 1
        return Readiness(state.ready or successes >= probe.success_threshold, successes, 0, now)
    failures = state.failures + 1
    return Readiness(state.ready and failures < probe.failure_threshold, 0, failures, now)


# -- adoption (pure) --------------------------------------------------------------------------
STATE_FILE = "containers.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class ProcessRecord:
    """What `containers.json` keeps of one container between supervisors."""
    phase: str = "starting"  # "starting" (about to start: no pid yet), "running", "exited", "stopped"
    pid: int | None = None
    start_ticks: int | None = None  # /proc/<pid>/stat starttime: a reused pid has another one
    argv: tuple[str, ...] = ()  # as started, prefix included
    restarts: int = 0  # Kubernetes' restartCount: monotonic, never reset by readiness
    started_at: float = 0.0  # wall clock
    ready: bool = False
    exit_code: int | None = None
    restart_due: bool = False  # exited and the restart policy restarts it
    prefix_len: int | None = None  # launcher part of argv (`ip netns exec NS`, `setpriv ... --`); None: older
    # records, whose launcher was the netns prefix alone


@dataclass(frozen=True)
class ProcInfo:
    """What /proc says about a pid."""
    start_ticks: int
    cmdline: tuple[str, ...]
    zombie: bool  # exited, not yet reaped (an orphan's parent may never reap it)


@dataclass(frozen=True)
class Adoption:
    action: str  # "adopt", "start", "replace" (stop the recorded process, then start) or "leave"
    restarts: int  # the container's restart count once the action is done
    reason: str


def detect_alive(info: ProcInfo | None, start_ticks: int | None) -> bool:
    return info is not None and not info.zombie and info.start_ticks == start_ticks


def detect_same_command(cmdline: tuple[str, ...], argv: tuple[str, ...], prefix_len: int) -> bool:
    """The process runs `argv`: as started, as the launcher (`ip netns exec NS`, `setpriv ... --`)
    left it after its execs, or caught between two of them (`setpriv ... -- app`)."""
    return bool(argv) and any(cmdline == argv[i:] for i in range(min(prefix_len, len(argv) - 1) + 1))


def detect_started_process(info: ProcInfo | None, session: int, pid: int, stdout: str,
                           argv: tuple[str, ...], prefix_len: int, log_path: str) -> bool:
    """Whether a process is the container a supervisor started but died before recording: its
    command, a session of its own (`start_new_session`) and its stdout on the container's log file
    (replicas of one Deployment, or the same pod of another cluster, run the same command)."""
    return info is not None and not info.zombie and session == pid and stdout == log_path \
        and detect_same_command(info.cmdline, argv, prefix_len)


def decide_adoption(record: ProcessRecord | None, info: ProcInfo | None, argv: tuple[str, ...],
                    prefix_len: int, restart_policy: str, same_pod: bool = True) -> Adoption:
    """What a new supervisor does with a container an earlier one recorded. `info` is /proc's view
    of the recorded pid; `argv` the command it would start now; `prefix_len` the launcher's length
    for records that do not say; `same_pod` False when the record belongs to an earlier pod of the
    same name (another uid)."""
    if record is None:
        return Adoption("start", 0, "nothing recorded")
    launcher = prefix_len if record.prefix_len is None else record.prefix_len
    ours = record.pid is not None and detect_alive(info, record.start_ticks) \
        and detect_same_command(info.cmdline, record.argv, launcher)  # type: ignore[union-attr]
    if not same_pod:
        if ours:
            return Adoption("replace", 0, f"pid {record.pid} belongs to an earlier pod of this name")
        return Adoption("start", 0, "the record belongs to an earlier pod of this name")
    if record.phase == "starting":
        return Adoption("start", record.restarts, "the previous supervisor stopped before recording the start")
    if record.phase == "exited":
        if record.restart_due:
            return Adoption("start", record.restarts + 1, f"exited with {record.exit_code}, restart was due")
        return Adoption("leave", record.restarts,
                        f"exited with {record.exit_code}; restartPolicy {restart_policy} does not restart it")
    if record.phase == "stopped":
        return Adoption("start", record.restarts + 1, "stopped by the previous supervisor")
    if ours and record.argv != argv:
        return Adoption("replace", record.restarts + 1, f"pid {record.pid} runs a command the pod no longer has")
    if ours:
        return Adoption("adopt", record.restarts, f"pid {record.pid} still runs")
    if info is None or info.zombie or info.start_ticks != record.start_ticks:
        why = f"pid {record.pid} exited while unsupervised" if info is None or info.zombie \
            else f"pid {record.pid} now belongs to another process"
    else:
        why = f"pid {record.pid} now runs another command"
    if not detect_restart(restart_policy, None):
        return Adoption("leave", record.restarts, f"{why}; restartPolicy {restart_policy} does not restart it")
    return Adoption("start", record.restarts + 1, why)


def parse_proc_stat(text: str) -> tuple[str, int]:
    """(state letter, starttime in clock ticks) from /proc/<pid>/stat (the name may hold spaces and ')')."""
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def build_state(pod_uid: str, records: Mapping[str, ProcessRecord]) -> Body:
    return {"version": STATE_VERSION, "podUID": pod_uid,
            "containers": {name: {**asdict(r), "argv": list(r.argv)} for name, r in sorted(records.items())}}


def parse_state(data: Body) -> tuple[str, dict[str, ProcessRecord]]:
    """(pod uid, records by container name); an unreadable or foreign file reads as empty."""
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return "", {}
    records = {}
    for name, fields in (data.get("containers") or {}).items():
        try:
            records[name] = ProcessRecord(**{**fields, "argv": tuple(fields.get("argv") or ())})
        except TypeError:
            continue
    return str(data.get("podUID") or ""), records


# -- probing (I/O) ---------------------------------------------------------------------------
def run_probe(probe: Probe, host: str, env: Mapping[str, str] | None = None) -> bool:
    """Run one probe from this process's network namespace."""
    target = probe.host or host
    try:
        if probe.kind == "tcp":
            socket.create_connection((target, probe.port), timeout=probe.timeout).close()
            return True
        if probe.kind == "http":
            return run_http_probe(probe, target)
        if probe.kind == "exec":
            done = subprocess.run(list(probe.command), env=dict(env) if env is not None else None,
                                  timeout=probe.timeout, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            return done.returncode == 0
    except (OSError, http.client.HTTPException, subprocess.TimeoutExpired):
        return False
    return probe.kind == "none"


def run_http_probe(probe: Probe, host: str) -> bool:
    if probe.scheme == "HTTPS":  # like the kubelet, no certificate verification
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, probe.port, timeout=probe.timeout, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, probe.port, timeout=probe.timeout)
    try:
        headers = {"User-Agent": "kube-probe/meshway", "Accept": "*/*", **dict(probe.headers)}
        conn.request("GET", probe.path, headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    return 200 <= status < 400


def run_probe_in(prefix: list[str], probe: Probe, host: str, env: Mapping[str, str],
                 user_prefix: list[str] | tuple[str, ...] = ()) -> bool:
    """Run a probe inside the pod: in this process when there is no prefix, else as
    `prefix + python -P -m meshway.runtime.workload probe ...` as root, like the kubelet (exec
    probes as `prefix + user_prefix + command`: as the container's user)."""
    if probe.kind == "none" or not prefix and (probe.kind != "exec" or not user_prefix):
        return run_probe(probe, host, env)
    if probe.kind == "exec":
        argv, timeout = [*prefix, *user_prefix, *probe.command], probe.timeout
    else:
        argv = [*prefix, sys.executable, "-P", "-m", "meshway.runtime.workload", "probe", json.dumps(asdict(probe)),
                host]
        timeout = probe.timeout + 5  # interpreter start-up; the probe keeps its own timeout
    try:
        done = subprocess.run(argv, env=dict(env) if probe.kind == "exec" else None, timeout=timeout,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# -- processes (I/O) -------------------------------------------------------------------------
def read_proc(pid: int) -> ProcInfo | None:
    """/proc's view of a pid, or None when there is no such process."""
    try:
        state, ticks = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    cmdline = tuple(os.fsdecode(a) for a in raw.removesuffix(b"\0").split(b"\0")) if raw else ()
    return ProcInfo(ticks, cmdline, state in ("Z", "X"))


def find_started_process(argv: tuple[str, ...], prefix_len: int, log_path: Path) -> tuple[int, int] | None:
    """(pid, start ticks) of the process `detect_started_process` recognises, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        info = read_proc(pid)
        if info is None or not detect_same_command(info.cmdline, argv, prefix_len):
            continue
        try:
            session, stdout = os.getsid(pid), os.readlink(f"/proc/{pid}/fd/1")
        except OSError:
            continue
        if detect_started_process(info, session, pid, stdout, argv, prefix_len, str(log_path)):
            return pid, info.start_ticks  # type: ignore[union-attr]
    return None


def read_state(path: Path) -> tuple[str, dict[str, ProcessRecord]]:
    try:
        return parse_state(json.loads(path.read_text()))
    except (OSError, ValueError):
        return "", {}


def write_state(path: Path, data: Body) -> None:
    """Atomically (a supervisor killed mid-write leaves the old file or the new one), owner-only."""
    make_private_dir(path.parent)
    write_private(path, json.dumps(data, indent=1, sort_keys=True))


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    state: str  # "running", "waiting" (backing off before a restart) or "terminated"
    ready: bool
    restart_count: int
    pid: int | None
    last_exit_code: int | None  # None: never exited, or exited while adopted (the code is unknown)
    last_error: str | None
    log: Path
    adopted: bool = False  # started by an earlier supervisor


def nothing() -> None:
    pass


@dataclass
class ContainerProcess:
    """One container's process and its restart and readiness bookkeeping."""
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    probe: Probe
    restart_policy: str = "Always"
    cwd: str | None = None
    prefix_len: int = 0  # launcher part of argv: after the execs, /proc shows argv[prefix_len:]
    user_prefix: tuple[str, ...] = ()  # `[mounts] setpriv ... --`: exec probes run as the container does
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[], None] = nothing  # records the container (PodProcesses.save)
    proc: subprocess.Popen[bytes] | None = None  # our child, when this supervisor started it
    pid: int | None = None  # the running process, ours or adopted
    start_ticks: int | None = None
    adopted: bool = False
    pgid: int | None = None
    started_at: float = 0.0  # on `clock`
    started_wall: float = 0.0
    restarts: int = 0  # restartCount: never reset
    failures: int = 0  # consecutive short runs, for the backoff (which does reset)
    next_start_at: float | None = None
    last_exit_code: int | None = None
    last_error: str | None = None
    readiness: Readiness = field(default_factory=Readiness)
    stopping: bool = False
    phase: str = "starting"

    def start(self) -> None:
        self.started_at, self.started_wall = self.clock(), time.time()
        self.next_start_at = None
        self.readiness = Readiness()
        self.phase, self.pid, self.start_ticks, self.adopted = "starting", None, None, False
        self.on_change()  # write-ahead: a supervisor that dies now makes its successor start it
        make_private_dir(self.log_path.parent)
        with open_private_log(self.log_path) as log:
            try:
                self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:  # e.g. the command does not exist: back off like a crash
                self.last_error = f"cannot start {self.argv[0]!r}: {exc}"
                log.write(f"meshway: {self.last_error}\n".encode())
                self.proc = None
                self.exited(128, self.clock())
                return
        self.pid = self.pgid = self.proc.pid
        info = read_proc(self.pid)
        self.start_ticks = info.start_ticks if info else None
        self.phase = "running"
        self.on_change()

    def adopt(self, record: ProcessRecord) -> None:
        """Take over a live process an earlier supervisor started (its group: `start_new_session`)."""
        self.proc, self.adopted, self.phase = None, True, "running"
        self.pid = self.pgid = record.pid
        self.start_ticks = record.start_ticks
        self.started_wall = record.started_at
        self.started_at = self.clock() - max(0.0, time.time() - record.started_at)
        self.readiness = Readiness(ready=record.ready)
        self.next_start_at = None

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and detect_alive(read_proc(self.pid), self.start_ticks)

    def poll(self) -> bool:
        """Notice an exit and restart when the backoff has passed; True when started now."""
        if self.stopping:
            return False
        now = self.clock()
        if self.pid is not None:
            if self.running():
                return False
            if self.proc is not None:
                self.exited(self.proc.poll(), now)
            else:
                self.last_error = f"pid {self.pid} (adopted from an earlier supervisor) exited: exit code unknown"
                self.exited(None, now)
        if self.next_start_at is None or now < self.next_start_at:
            return False
        self.restarts += 1
        self.start()
        return True

    def exited(self, code: int | None, now: float) -> None:
        self.kill_group(signal.SIGKILL)  # whatever the process left behind in its group
        self.proc, self.pid, self.pgid, self.start_ticks, self.adopted = None, None, None, None, False
        self.last_exit_code, self.phase = code, "exited"
        self.readiness = Readiness()
        self.failures = 1 if now - self.started_at >= self.backoff.reset_after else self.failures + 1
        restart = detect_restart(self.restart_policy, code)
        self.next_start_at = now + self.backoff.delay(self.failures) if restart else None
        self.on_change()

    def kill_group(self, sig: signal.Signals) -> None:
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def record(self) -> ProcessRecord:
        return ProcessRecord(self.phase, self.pid, self.start_ticks, tuple(self.argv), self.restarts,
                             self.started_wall, self.readiness.ready, self.last_exit_code,
                             self.next_start_at is not None, self.prefix_len)

    def status(self) -> ContainerStatus:
        running = self.running()
        state = "running" if running else "waiting" if self.next_start_at is not None else "terminated"
        return ContainerStatus(self.name, state, running and self.readiness.ready, self.restarts,
                               self.pid if running else None, self.last_exit_code, self.last_error,
                               self.log_path, running and self.adopted)


class PodProcesses:
    """The processes of one pod. `probe_host` is the address probes connect to (a string or a
    function returning one; default the pod IP, or 127.0.0.1 when the pod has none).
    `home_root` set (the cluster, as root): containers run as their securityContext's user, with
    HOME `<home_root>/<uid>`; None: as this process's user (tests, loopback).
    The first `start()` (or a `stop()` before any) adopts what `<log_dir>/containers.json` records."""

    def __init__(self, pod: Body, prefix: list[str], log_dir: Path,
                 probe_host: str | Callable[[], str] | None = None, *, backoff: Backoff = Backoff(),
                 parent_env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic,
                 home_root: Path | None = None) -> None:
        self.pod = pod
        self.prefix = list(prefix)
        self.home_root = home_root
        self.log_dir = Path(log_dir)
        self.state_path = self.log_dir / STATE_FILE
        self.probe_host = probe_host
        self.clock = clock
        self.adopting = True  # until the recorded processes are adopted: saving now would lose them
        self.leftovers: list[ContainerProcess] = []
        self.decisions: dict[str, Adoption] = {}
        spec = pod.get("spec") or {}
        policy = spec.get("restartPolicy") or "Always"
        self.containers = [self.build_container(c, policy, backoff, parent_env) for c in spec.get("containers") or []]

    def build_container(self, container: Body, policy: str, backoff: Backoff,
                        parent_env: Mapping[str, str] | None) -> ContainerProcess:
        workdir = container.get("workingDir")
        cwd = workdir if workdir and os.path.isdir(workdir) else None
        user_prefix: list[str] = []  # setpriv ... --
        launcher: list[str] = []  # the interpreter's mounts (as root, before setpriv), then user_prefix
        interpreter = None
        if self.home_root is not None:
            run_as = self.find_user(container)
            user_prefix = build_setpriv_prefix(run_as)
            if user_prefix:
                interpreter = self.find_interpreter(container, run_as)
                launcher = build_mount_prefix(interpreter.mounts) if interpreter else []
                launcher += user_prefix
                home = make_home(self.home_root / str(run_as.uid), run_as.uid, run_as.gid)
                parent_env = {**(os.environ if parent_env is None else parent_env), "HOME": str(home)}
                cwd = cwd or "/"  # as a container without WORKDIR; the supervisor's cwd may be closed to it
        argv, env = build_container_command(container, self.pod, parent_env, interpreter)
        return ContainerProcess(
            name=container["name"], argv=[*self.prefix, *launcher, *argv], env=env,
            log_path=self.log_dir / f"{container['name']}.log", probe=build_probe(container, self.pod),
            restart_policy=policy, cwd=cwd, prefix_len=len(self.prefix) + len(launcher),
            user_prefix=tuple(launcher), backoff=backoff, clock=self.clock, on_change=self.save)

    def find_user(self, container: Body) -> RunAs:
        try:
            return find_run_as(container, self.pod, describe(self.pod, container))
        except RunAsError as exc:
            raise ContainerConfigError(str(exc)) from None

    def find_interpreter(self, container: Body, run_as: RunAs) -> Interpreter | None:
        """The Python the user runs a built-in app with; None for a container with a `command`."""
        if container.get("command") or resolve_image(container.get("image")) is None:
            return None
        try:
            return find_interpreter(run_as.uid, (run_as.gid, *run_as.groups))
        except RunAsError as exc:
            raise ContainerConfigError(f"{describe(self.pod, container)}: {exc}") from None

    def uid(self) -> str:
        return str((self.pod.get("metadata") or {}).get("uid") or "")

    def host(self) -> str:
        if callable(self.probe_host):
            return self.probe_host()
        return self.probe_host or find_pod_ip(self.pod) or "127.0.0.1"

    def save(self) -> None:
        if not self.adopting:
            write_state(self.state_path, build_state(self.uid(), {c.name: c.record() for c in self.containers}))

    def adopt(self) -> dict[str, Adoption]:
        """Decide for every container what to do with its recorded process; adopt the live ones and
        record the decisions. Containers to (re)start are left to `start()`."""
        recorded_uid, records = read_state(self.state_path)
        same_pod = not recorded_uid or not self.uid() or recorded_uid == self.uid()
        for c in self.containers:
            record = records.get(c.name)
            if record is not None and record.phase == "starting" and same_pod:
                record = self.find_started(c, record)
            info = read_proc(record.pid) if record and record.pid else None
            decision = decide_adoption(record, info, tuple(c.argv), len(self.prefix), c.restart_policy, same_pod)
            self.decisions[c.name] = decision
            c.restarts = decision.restarts
            if decision.action in ("adopt", "replace"):
                c.adopt(record)  # type: ignore[arg-type]
            elif decision.action == "leave":
                c.phase, c.last_exit_code = "exited", record.exit_code  # type: ignore[union-attr]
                c.last_error = decision.reason
            if record is not None:
                log.info("pod %s container %s: %s (%s)", self.log_dir.name, c.name, decision.action, decision.reason)
        self.leftovers = self.find_leftovers(records)
        self.adopting = False
        self.save()
        return self.decisions

    def find_leftovers(self, records: Mapping[str, ProcessRecord]) -> list[ContainerProcess]:
        """Live recorded processes of containers this pod does not have (an earlier pod of the same
        name had them), adopted only to be stopped."""
        names, out = {c.name for c in self.containers}, []
        for name, record in records.items():
            info = read_proc(record.pid) if record.pid and name not in names else None
            launcher = len(self.prefix) if record.prefix_len is None else record.prefix_len
            if info and detect_alive(info, record.start_ticks) \
                    and detect_same_command(info.cmdline, record.argv, launcher):
                gone = ContainerProcess(name, list(record.argv), {}, self.log_dir / f"{name}.log", Probe("none"))
                gone.adopt(record)
                out.append(gone)
        return out

    def find_started(self, c: ContainerProcess, record: ProcessRecord) -> ProcessRecord:
        """The previous supervisor died between starting `c` and recording its pid: the process, if
        it runs, as a running record (adopted like any other), else the record as it was."""
        found = find_started_process(tuple(c.argv), c.prefix_len, c.log_path.resolve())
        if found is None:
            return record
        return replace(record, phase="running", pid=found[0], start_ticks=found[1], argv=tuple(c.argv))

    def start(self) -> None:
        """Start what is not running; the first call adopts recorded processes instead."""
        if self.adopting:
            self.adopt()
            replacing = [c for c in self.containers if self.decisions[c.name].action == "replace"]
            self._terminate(replacing + self.leftovers, self.grace_period())
            self.leftovers = []
            todo = [c for c in self.containers if self.decisions[c.name].action in ("start", "replace")]
        else:
            todo = [c for c in self.containers if not c.running()]
        for c in todo:
            c.stopping = False
            c.start()

    def poll(self) -> list[str]:
        """Restart what exited and whose backoff has passed; the names of containers started now."""
        return [c.name for c in self.containers if c.poll()]

    def check_ready(self) -> bool:
        """Run the probes that are due; True when every container runs and is ready."""
        host = self.host()
        before = [c.readiness.ready for c in self.containers]
        for c in self.containers:
            if not c.running():
                c.readiness = Readiness()
                continue
            now = self.clock()
            if detect_probe_due(c.probe, c.readiness, c.started_at, now):
                passed = run_probe_in(self.prefix, c.probe, host, c.env, c.user_prefix)
                c.readiness = next_readiness(c.probe, c.readiness, passed, now)
        if before != [c.readiness.ready for c in self.containers]:
            self.save()  # a successor starts from the last readiness, not from "not ready"
        return all(c.running() and c.readiness.ready for c in self.containers)

    def grace_period(self) -> float:
        value = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return DEFAULT_GRACE if value is None else float(value)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every container's process group (adopted ones included); SIGKILL what is left
        after the grace period."""
        if self.adopting:
            self.adopt()
        grace = self.grace_period() if grace is None else grace
        live = [c for c in self.containers if c.running()] + self.leftovers
        self.leftovers = []
        for c in self.containers:
            c.stopping, c.next_start_at = True, None
        self._terminate(live, grace)
        for c in self.containers:
            c.phase = "stopped"
        self.save()

    def _terminate(self, live: list[ContainerProcess], grace: float) -> None:
        for c in live:
            c.kill_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.running() for c in live) and time.monotonic() < deadline:
            time.sleep(0.02)
        for c in live:
            c.kill_group(signal.SIGKILL)  # the leader, or children it left behind
            if c.proc is not None:
                c.last_exit_code = c.proc.wait()
            else:  # adopted: not our child, so no exit code; wait for /proc to let go of it
                c.last_exit_code = None
                end = time.monotonic() + 2.0
                while c.running() and time.monotonic() < end:
                    time.sleep(0.02)
            c.proc, c.pid, c.pgid, c.start_ticks, c.adopted, c.readiness = None, None, None, None, False, Readiness()

    def statuses(self) -> list[ContainerStatus]:
        return [c.status() for c in self.containers]


# -- `python -m meshway.runtime.workload probe PROBE_JSON HOST` ------------------------------
def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "probe":
        print("usage: python -m meshway.runtime.workload probe PROBE_JSON HOST", file=sys.stderr)
        return 2
    fields = json.loads(argv[1])
    fields["headers"] = tuple(tuple(h) for h in fields.get("headers") or ())
    fields["command"] = tuple(fields.get("command") or ())
    return 0 if run_probe(Probe(**fields), argv[2]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
