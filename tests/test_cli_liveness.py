"""After `meshway down`, or while the control plane is dead (a stale pid file), `status`,
`proxy-status`, `explain` and `waypoint status` do not present the last recorded state as live."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshway.cli import clustercmds, controlplane, explain, waypoint  # noqa: F401  (register commands)
from meshway.cli.main import cli
from meshway.model import find_kind
from meshway.store import Store

from conftest import apply, make_waypoint_ready

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

PROXY_STATUS = {"waypoint-x.default": {
    "namespace": "default", "pod": "waypoint-x", "type": "waypoint", "version": "0.1.0", "connected": True,
    "xds": {k: {"sent": True, "state": "SYNCED"} for k in ("Cluster", "Listener", "ClusterLoadAssignment", "Secret")}}}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A mesh whose store says: waypoint pods Ready, Gateway Programmed, proxies SYNCED."""
    s = tmp_path / "state"
    store = Store(s)
    try:
        apply(store, MESH)
        make_waypoint_ready(store, "default", "waypoint")
    finally:
        store.close()
    (s / "run").mkdir(parents=True, exist_ok=True)
    (s / "run" / "proxy-status.json").write_text(json.dumps(PROXY_STATUS))
    return s


def run(state: Path, *args: str):
    return CliRunner().invoke(cli, ["--state-dir", str(state), *args])


def set_pid(state: Path, pid: int | None) -> None:
    path = state / "run" / "controlplane.pid"
    if pid is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(f"{pid}\n")


def test_live_control_plane_shows_the_recorded_state(state: Path) -> None:
    set_pid(state, os.getpid())  # a live process: the control plane "runs"
    r = run(state, "status")
    assert r.exit_code == 0 and f"Control plane: running (pid {os.getpid()})" in r.stdout
    assert "Running" in r.stdout and "SYNCED" in r.stdout
    assert run(state, "proxy-status").stdout.splitlines()[1].split()[3] == "SYNCED"
    assert json.loads(run(state, "explain", "service/reviews", "-o", "json").stdout)["ready"] is True
    r = run(state, "waypoint", "status")
    assert r.exit_code == 0 and r.stdout.splitlines()[1].split()[:3] == ["waypoint", "True", "Programmed"]


@pytest.mark.parametrize("pid", ["stale", "none"], ids=["dead-control-plane", "after-down"])
def test_dead_control_plane_is_not_reported_as_live(state: Path, pid: str) -> None:
    set_pid(state, dead_pid() if pid == "stale" else None)

    r = run(state, "status")
    assert r.exit_code == 0
    assert r.stdout.startswith("Control plane: not running\n")
    assert "last recorded state" in r.stdout
    assert "Running" not in r.stdout and "SYNCED" not in r.stdout
    pod_row = next(line for line in r.stdout.splitlines() if line.startswith("default") and "waypoint-" in line)
    assert pod_row.split()[2:4] == ["0/1", "Unknown"]
    gw_row = next(line for line in r.stdout.splitlines() if "istio-waypoint" in line)
    assert gw_row.split()[4] == "Unknown"

    r = run(state, "proxy-status")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == "Error: unable to reach the control plane: it is not running (`meshway up` starts it)\n"

    r = run(state, "explain", "service/reviews")
    assert r.exit_code == 0
    assert "Waypoint:     default/waypoint (readiness Unknown: the control plane is not running" in r.stdout
    assert "(ready)" not in r.stdout and "Note: the control plane is not running" in r.stdout
    decision = json.loads(run(state, "explain", "service/reviews", "-o", "json").stdout)
    assert decision["ready"] is None and decision["control_plane"] == "not running"

    r = run(state, "waypoint", "status")  # waiting (the default) cannot succeed: an error, at once
    assert r.exit_code == 1
    assert r.stdout.splitlines()[1].split()[:4] == ["waypoint", "Unknown", "Programmed", "ControlPlaneNotRunning"]
    assert "Error: the control plane is not running" in r.stderr
    r = run(state, "waypoint", "status", "--no-wait")
    assert r.exit_code == 0 and "True" not in r.stdout and "last recorded" in r.stderr


def test_store_only_negative_state_is_unchanged(tmp_path: Path) -> None:
    """No control plane ever ran: a waypoint that is not ready is shown as not ready, as before."""
    s = tmp_path / "state"
    store = Store(s)
    try:
        apply(store, MESH)
    finally:
        store.close()
    r = run(s, "explain", "service/reviews")
    assert "default/waypoint (not ready)" in r.stdout and "Note:" not in r.stdout
    r = run(s, "waypoint", "status", "--no-wait")
    assert r.stdout.splitlines()[1].split()[:2] == ["waypoint", "False"]


def test_port_forward_after_down_refuses_at_once(state: Path) -> None:
    set_pid(state, None)
    store = Store(state)
    try:
        pod = store.list(find_kind("pod"), "default")[0]
    finally:
        store.close()
    name = pod["metadata"]["name"]
    for args in (["port-forward", name, "0:15008"], ["exec", name, "--", "true"]):
        r = run(state, *args)
        assert r.exit_code == 1 and r.stdout == ""
        assert r.stderr == (f"error: pod default/{name} is not running (the control plane is not running; "
                            "`meshway up` starts it)\n")


def test_waypoint_apply_wait_without_control_plane_fails_at_once(tmp_path: Path) -> None:
    r = run(tmp_path / "s", "waypoint", "apply", "-n", "default", "--wait")
    assert r.exit_code == 1 and "✅ waypoint default/waypoint applied" in r.stdout
    assert r.stderr == ("Error: the control plane is not running, so waypoint default/waypoint cannot become ready "
                        "(`meshway up` starts it)\n")
