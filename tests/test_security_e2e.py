"""The control plane as a local attacker meets it, with real Envoy on loopback (no network namespaces):

- started under `umask 000` (store, CLI and daemon alike), everything in the state folder and the
  socket folder is owner-only: folders 0700, files and sockets 0600; another user cannot even
  connect to the ADS socket; a process that claims the waypoint's node id without its token is
  refused (PERMISSION_DENIED, logged), while the waypoint's own Envoy is connected and SYNCED;
- SECRET_TTL reaches the control plane through the daemon, and with a 4 s lifetime the real loop
  renews the waypoint's certificate at half life, before it expires, as Envoy's /certs shows.
"""
from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest

from conftest import PROJECT_ROOT, subprocess_env
from test_xds_auth import MANIFESTS, ask_secrets, identity_of
from xds_support import live_controlplane, wait_programmed

from meshway.ca import cert_from_pem
from meshway.ca.tokens import TOKEN_METADATA
from meshway.model import load_yaml
from meshway.runtime.daemon import stop_all
from meshway.runtime.envoy import read_pid, stop_envoy
from meshway.runtime.envoy_admin import fetch_admin
from meshway.runtime.placement import socket_dir
from meshway.store import Store
from meshway.xds import protos as P

UMASK_000_DAEMON = """
import os, sys
from pathlib import Path
os.umask(0)
from meshway.runtime.daemon import start_controlplane
print(start_controlplane(Path(sys.argv[1])))
"""


def run_umask_000(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
                          preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def wait_for(what: str, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def waypoint_synced(state: Path) -> dict | None:
    try:
        status = json.loads((state / "run" / "proxy-status.json").read_text())
    except (OSError, ValueError):
        return None
    for node_id, proxy in status.items():
        if proxy["type"] == "waypoint" and proxy["connected"] \
                and proxy["xds"].get("Listener", {}).get("state") == "SYNCED":
            return {"node_id": node_id, **proxy}
    return None


def find_loose_modes(*roots: Path) -> tuple[list[str], set[str]]:
    """(every path under `roots` that is not 0700 (folders) / 0600 (files, sockets), the names seen)."""
    loose, names = [], set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files, *([""] if folder == str(root) else [])]:
                path = os.path.join(folder, name) if name else folder
                info = os.lstat(path)
                names.add(os.path.basename(path))
                mode = stat.S_IMODE(info.st_mode)
                if stat.S_ISLNK(info.st_mode):
                    loose.append(f"{path}: a symbolic link")
                elif stat.S_ISDIR(info.st_mode) and mode != 0o700 or not stat.S_ISDIR(info.st_mode) and mode != 0o600:
                    loose.append(f"{path}: {oct(mode)}")
    return loose, names


def test_owner_only_under_umask_000_and_only_the_started_envoy_is_served(tmp_path: Path) -> None:
    state = tmp_path / "state"
    manifests = tmp_path / "mesh.yaml"
    manifests.write_text(MANIFESTS)
    env = {**subprocess_env(), "SECRET_TTL": "90s"}
    run_umask_000([sys.executable, "-m", "meshway", "--state-dir", str(state), "apply", "-f", str(manifests)], env)
    try:
        run_umask_000([sys.executable, "-c", UMASK_000_DAEMON, str(state)], env)
        waypoint = wait_for("the waypoint Envoy to connect and ACK", lambda: waypoint_synced(state))
        sockets = socket_dir(state)

        loose, names = find_loose_modes(state, sockets)
        assert not loose, "\n".join(loose)
        assert {"store.db", "root-key.pem", "root-cert.pem", "xds-token.key", "controlplane.log", "controlplane.pid",
                "proxy-status.json", "bootstrap.json", "envoy.log", "envoy.pid", "xds.sock", "admin.sock"} <= names

        xds_socket = sockets / "xds.sock"
        if os.geteuid() == 0:  # another user cannot even connect
            probe = subprocess.run(["/usr/bin/python3", "-c", "import socket, sys\n"
                                    "s = socket.socket(socket.AF_UNIX)\n"
                                    "try: s.connect(sys.argv[1])\n"
                                    "except PermissionError: sys.exit(3)\n", str(xds_socket)],
                                   preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)), timeout=30)
            assert probe.returncode == 3

        bootstrap = json.loads(next((state / "run" / "proxies").glob("*/bootstrap.json")).read_text())
        token = bootstrap["node"]["metadata"][TOKEN_METADATA]
        node_id = waypoint["node_id"]
        assert bootstrap["node"]["id"] == node_id

        async def attempts():
            return [await ask_secrets(xds_socket, node_id, None, ["default", "ROOTCA"], True),
                    await ask_secrets(xds_socket, node_id, token[::-1], ["default", "ROOTCA"], False),
                    await ask_secrets(xds_socket, node_id, token, ["default", "ROOTCA"], True)]

        refused, forged, own = asyncio.run(attempts())
        assert refused == forged == (grpc.StatusCode.PERMISSION_DENIED, {})
        assert own[0] is None and set(own[1]) == {"default", "ROOTCA"}
        cert = cert_from_pem(own[1]["default"].tls_certificate.certificate_chain.inline_bytes)
        assert identity_of(own[1]["default"]).endswith("/ns/default/sa/waypoint")
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=90)  # SECRET_TTL=90s
        log = (state / "run" / "controlplane.log").read_text()
        assert log.count(f"refused an xDS stream claiming node {node_id!r}") == 2
        assert token not in log
        assert waypoint_synced(state)  # the real waypoint stays connected and in sync
    finally:
        stop_all(state)


def envoy_certs(admin: Path) -> list[dict]:
    try:
        certs = json.loads(fetch_admin(admin, "/certs"))["certificates"]
    except (OSError, ValueError):
        return []
    return [c for entry in certs for c in entry.get("cert_chain") or []]


def test_short_secret_ttl_is_renewed_at_half_life_by_the_running_control_plane(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store(state)
    store.apply(load_yaml(MANIFESTS, "mesh.yaml"))
    ttl = timedelta(seconds=4)
    with live_controlplane(state, secret_ttl=ttl) as cp:
        assert cp.resync <= ttl.total_seconds() / 4
        assert wait_programmed(store, "default", timeout=30)
        [replica] = cp.replicas.values()
        issued = cert_from_pem(cp.cache.get(replica.node_id).resources(P.SECRET)["default"]
                               .tls_certificate.certificate_chain.inline_bytes)
        assert issued.not_valid_after_utc - issued.not_valid_before_utc == ttl
        generations: dict[str, tuple[datetime, datetime]] = {}
        samples = []
        deadline = time.monotonic() + 11
        while time.monotonic() < deadline:
            now = datetime.now().astimezone()
            for c in envoy_certs(replica.paths.admin):
                valid = (datetime.fromisoformat(c["valid_from"]), datetime.fromisoformat(c["expiration_time"]))
                generations.setdefault(c["serial_number"], valid)
                samples.append((now, valid))
            time.sleep(0.2)
    starts = sorted(generations.values())
    assert len(starts) >= 3, starts  # 11 s of 4 s certificates renewed every ~2-3 s
    for start, end in starts:
        assert end - start == ttl
    for (previous, expiry), (renewed, _) in zip(starts, starts[1:]):
        assert ttl / 2 <= renewed - previous < ttl, starts  # at half life, before it expires
    # Envoy always held a certificate that had not expired (X.509 times are whole seconds).
    assert all(now < end + timedelta(seconds=1) for now, (_, end) in samples)


def test_a_restarted_control_plane_accepts_the_envoys_it_adopts(tmp_path: Path) -> None:
    """Tokens are derived from the state folder's key, so the Envoy a dead control plane started is
    accepted by the next one as it is (same process); an Envoy whose bootstrap has no valid token
    (started before tokens existed) is restarted with one instead of being refused forever."""
    state = tmp_path / "state"
    store = Store(state)
    store.apply(load_yaml(MANIFESTS, "mesh.yaml"))

    def connected(cp) -> bool:
        replica = next(iter(cp.replicas.values()), None)
        if replica is None or cp.cache.get(replica.node_id) is None:
            return False
        acked = cp.cache.status.get(replica.node_id, {}).get(P.LISTENER, {}).get("version")
        return replica.node_id in cp.server.connected and acked == cp.cache.get(replica.node_id).version(P.LISTENER)

    with live_controlplane(state, stop_proxies=False) as first:
        assert wait_programmed(store, "default", timeout=30)
        [replica] = first.replicas.values()
        paths, pid = replica.paths, read_pid(replica.paths)
    assert pid and read_pid(paths) == pid  # the Envoy outlives its control plane
    try:
        with live_controlplane(state, stop_proxies=False) as second:
            wait_for("the adopted Envoy to reconnect", lambda: connected(second))
            assert read_pid(paths) == pid and not second.server.denied
        bootstrap = json.loads(paths.bootstrap.read_text())
        del bootstrap["node"]["metadata"][TOKEN_METADATA]
        paths.bootstrap.write_text(json.dumps(bootstrap))
        with live_controlplane(state) as third:
            wait_for("a restarted Envoy to connect", lambda: connected(third))
            assert read_pid(paths) not in (None, pid)
            assert TOKEN_METADATA in json.loads(paths.bootstrap.read_text())["node"]["metadata"]
    finally:
        stop_envoy(paths)
