"""Start and stop the one-host mesh's background processes (for `up` / `down`): the control plane
and, for the network-namespace cluster, one node agent per node (`meshway.runtime.nodeagent`), which
run the pods, the waypoints and the node proxies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..private import make_private_dir, open_private_log
from .envoy import EnvoyPaths, read_live_pid, stop_envoy
from .placement import Replica, replica_sock_dir
from .proxy_boot import agent_dir, agent_pid_file

START_TIMEOUT = 60.0  # seconds a started process has to write its pid file (a loaded machine is slow to start Python)


def controlplane_pid(state_dir: Path) -> int | None:
    return read_live_pid(state_dir / "run" / "controlplane.pid")


def python_module_args(module: str) -> list[str]:
    """`python -P -m MODULE`: run this interpreter's MODULE without the current folder on sys.path."""
    return [sys.executable, "-P", "-m", module]


def node_agent_pid(state_dir: Path, node: str) -> int | None:
    return read_live_pid(agent_pid_file(state_dir, node))


def start_controlplane(state_dir: Path, cluster: bool = False, metrics_addr: str | None = None,
                       secret_ttl: str | None = None) -> int:
    """`meshway controlplane [--cluster] [--metrics-addr HOST:PORT] [--secret-ttl D]` in its own
    session, logging to run/controlplane.log (0600), and with `cluster` a node agent for each of
    the store's nodes that runs none (`start_node_agents`), all started at once (each takes a
    second or two to import and open the store). Without `secret_ttl`, the child reads the
    SECRET_TTL environment variable it inherits."""
    running = controlplane_pid(state_dir)
    starting = []
    if running is None:
        args = ["controlplane", "-v"] + (["--metrics-addr", metrics_addr] if metrics_addr else [])
        args += (["--secret-ttl", secret_ttl] if secret_ttl else []) + (["--cluster"] if cluster else [])
        starting.append(_spawn(state_dir, "controlplane.log", args, lambda: controlplane_pid(state_dir),
                               "the control plane"))
    if cluster:
        starting += _spawn_node_agents(state_dir)
    pids = _await(starting)
    return running if running is not None else pids[0]


def start_node_agents(state_dir: Path) -> dict[str, int]:
    """`meshway node --local --name node-N` for each node of the store that has no running agent,
    logging to run/agents/node-N.log, started at once; node -> pid of every agent."""
    out = {node: pid for node, pid in _running_agents(state_dir).items() if pid}
    starting = _spawn_node_agents(state_dir)
    out.update(zip((s.what.rsplit(" ", 1)[-1] for s in starting), _await(starting)))
    return dict(sorted(out.items()))


def _running_agents(state_dir: Path) -> dict[str, int | None]:
    from ..store import Store

    store = Store(state_dir)
    try:
        count = store.node_count()
    finally:
        store.close()
    return {f"node-{n}": node_agent_pid(state_dir, f"node-{n}") for n in range(1, count + 1)}


def _spawn_node_agents(state_dir: Path) -> list["Starting"]:
    return [_spawn(state_dir, f"agents/{node}.log", ["node", "--local", "--name", node, "-v"],
                   lambda node=node: node_agent_pid(state_dir, node), f"the node agent of {node}")
            for node, pid in _running_agents(state_dir).items() if pid is None]


@dataclass
class Starting:
    """A process being started: it has started once `started()` names its pid."""
    proc: subprocess.Popen
    started: Callable[[], int | None]
    what: str
    log_path: Path


def _spawn(state_dir: Path, log_name: str, args: list[str], started, what: str) -> Starting:
    """`meshway --state-dir S ARGS` in its own session."""
    make_private_dir(Path(state_dir).resolve())  # a state path may be a link to the folder
    run = make_private_dir(state_dir / "run")
    log_path = run / log_name
    make_private_dir(log_path.parent)
    with open_private_log(log_path) as log:
        # -P and cwd: the caller's folder is not on sys.path (a `meshway/` folder there would shadow
        # the package), and nothing the daemon does depends on where `meshway up` was typed.
        argv = python_module_args("meshway") + ["--state-dir", str(Path(state_dir).resolve()), *args]
        proc = subprocess.Popen(argv, cwd=run, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    return Starting(proc, started, what, log_path)


def _await(starting: list[Starting]) -> list[int]:
    """The pids of processes being started, once each has written its pid file; one that exits or
    does not start in time fails the start, and every one not started yet is killed (not left half
    started)."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(starting)
    try:
        while waiting:
            for s in list(waiting):
                if s.started() == s.proc.pid:
                    waiting.remove(s)
                elif s.proc.poll() is not None:
                    raise RuntimeError(f"{s.what} exited with {s.proc.returncode}; see {s.log_path}")
            if waiting and time.monotonic() >= deadline:
                raise RuntimeError(f"{waiting[0].what} did not start within {START_TIMEOUT:g} s; "
                                   f"see {waiting[0].log_path}")
            if waiting:
                time.sleep(0.05)
    except RuntimeError:
        for s in waiting:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        raise
    return [s.proc.pid for s in starting]


def stop_process(pid: int, pid_file: Path, timeout: float) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while read_live_pid(pid_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    if read_live_pid(pid_file):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def stop_all(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop the node agents (first: they would start again what is stopped next), the control
    plane, then every proxy and pod left running. Returns what was stopped."""
    stopped = []
    agents = agent_dir(state_dir)
    for pid_file in sorted(agents.glob("*.pid")) if agents.exists() else []:
        pid = read_live_pid(pid_file)
        if pid:
            stop_process(pid, pid_file, timeout)
            stopped.append(f"node agent {pid_file.stem} (pid {pid})")
        pid_file.unlink(missing_ok=True)
    pid = controlplane_pid(state_dir)
    if pid:
        stop_process(pid, state_dir / "run" / "controlplane.pid", timeout)
        stopped.append(f"controlplane (pid {pid})")
    proxies = state_dir / "run" / "proxies"
    for folder in sorted(proxies.iterdir()) if proxies.exists() else []:
        ns, _, pod = folder.name.partition(".")
        paths = EnvoyPaths(folder, replica_sock_dir(state_dir, Replica(ns, pod, "", "", "")))
        if paths.pid_file.exists():
            stop_envoy(paths)
            stopped.append(f"proxy {pod}.{ns}")
    nodes = state_dir / "run" / "nodes"
    for folder in sorted(nodes.iterdir()) if nodes.exists() else []:
        paths = EnvoyPaths(folder, folder)
        if paths.pid_file.exists():
            stop_envoy(paths)
            stopped.append(f"node proxy {folder.name}")
    if (state_dir / "run" / "cluster.json").exists():
        from .netns import down

        down(state_dir)  # kills what still runs in the pod and node namespaces, then removes them
        stopped.append("cluster network namespaces")
    forget_processes(state_dir)
    return stopped


def forget_processes(state_dir: Path) -> None:
    """After `down` nothing runs: the next `up` starts every pod and proxy afresh, restart counts
    at 0 (the records a restarted node agent adopts from are only for a mesh that runs)."""
    run = state_dir / "run"
    for record in [*run.glob("pods/*/containers.json"), *run.glob("proxies/*/starts"), *run.glob("nodes/*/starts"),
                   *run.glob("nodes/*/agent.json")]:
        record.unlink(missing_ok=True)
