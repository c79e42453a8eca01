"""Start and stop the background control plane and the proxies it runs (for `up` / `down`)."""
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


def controlplane_pid(state_dir: Path) -> int | None:
    return read_live_pid(state_dir / "run" / "controlplane.pid")


def python_module_args(module: str) -> list[str]:
    """`python -P -m MODULE`: run this interpreter's MODULE without the current folder on sys.path."""
    return [sys.executable, "-P", "-m", module]


def start_controlplane(state_dir: Path, cluster: bool = False, metrics_addr: str | None = None,
                       secret_ttl: str | None = None) -> int:
    """`meshway controlplane [--cluster] [--metrics-addr HOST:PORT] [--secret-ttl D]` in its own
    session, logging to run/controlplane.log (0600). Without `secret_ttl`, the child reads the
    SECRET_TTL environment variable it inherits."""
    running = controlplane_pid(state_dir)
    if running:
        return running
    make_private_dir(Path(state_dir).resolve())  # a state path may be a link to the folder
    run = make_private_dir(state_dir / "run")
    with open_private_log(run / "controlplane.log") as log:
        # -P and cwd: the caller's folder is not on sys.path (a `meshway/` folder there would shadow
        # the package), and nothing the daemon does depends on where `meshway up` was typed.
        args = python_module_args("meshway") + ["--state-dir", str(Path(state_dir).resolve()), "controlplane", "-v"]
        args += ["--metrics-addr", metrics_addr] if metrics_addr else []
        args += ["--secret-ttl", secret_ttl] if secret_ttl else []
        proc = subprocess.Popen(args + (["--cluster"] if cluster else []), cwd=run,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if controlplane_pid(state_dir) == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"the control plane exited with {proc.returncode}; see {run / 'controlplane.log'}")
        time.sleep(0.05)
    raise RuntimeError(f"the control plane did not start; see {run / 'controlplane.log'}")


def stop_all(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop the control plane, then every proxy it left running. Returns what was stopped."""
    stopped = []
    pid = controlplane_pid(state_dir)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while controlplane_pid(state_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        if controlplane_pid(state_dir):
            os.kill(pid, signal.SIGKILL)
        (state_dir / "run" / "controlplane.pid").unlink(missing_ok=True)
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
    at 0 (the records a restarted control plane adopts from are only for a mesh that runs)."""
    run = state_dir / "run"
    for record in [*run.glob("pods/*/containers.json"), *run.glob("proxies/*/starts"), *run.glob("nodes/*/starts")]:
        record.unlink(missing_ok=True)
