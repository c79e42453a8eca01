"""Start and stop the one-host mesh's background processes (for `up` / `down`): the control plane
and, for the network-namespace cluster, one node agent per node (`meshway.runtime.nodeagent`), which
run the pods, the waypoints and the node proxies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    the store's nodes that runs none (`start_node_agents`). Without `secret_ttl`, the child reads
    the SECRET_TTL environment variable it inherits."""
    running = controlplane_pid(state_dir)
    if running is None:
        args = ["controlplane", "-v"] + (["--metrics-addr", metrics_addr] if metrics_addr else [])
        args += (["--secret-ttl", secret_ttl] if secret_ttl else []) + (["--cluster"] if cluster else [])
        running = _start(state_dir, "controlplane.log", args, lambda: controlplane_pid(state_dir), "the control plane")
    if cluster:
        start_node_agents(state_dir)
    return running


def start_node_agents(state_dir: Path) -> dict[str, int]:
    """`meshway node --local --name node-N` for each node of the store that has no running agent,
    logging to run/agents/node-N.log; node -> pid of every agent."""
    from ..store import Store

    store = Store(state_dir)
    try:
        count = store.node_count()
    finally:
        store.close()
    out = {}
    for n in range(1, count + 1):
        node = f"node-{n}"
        out[node] = node_agent_pid(state_dir, node) or _start(
            state_dir, f"agents/{node}.log", ["node", "--local", "--name", node, "-v"],
            lambda node=node: node_agent_pid(state_dir, node), f"the node agent of {node}")
    return out


def _start(state_dir: Path, log_name: str, args: list[str], started, what: str) -> int:
    """`meshway --state-dir S ARGS` in its own session; its pid once `started()` names it."""
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
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if started() == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}")
        time.sleep(0.05)
    proc.kill()  # not left half started
    proc.wait()
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT:g} s; see {log_path}")


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
