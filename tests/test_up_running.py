"""`meshway up` on a mesh that is already running starts nothing a second time: it says so,
applies the -f manifests and exits 0."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner

from meshway.cli.main import cli
from meshway.cli import controlplane, up  # noqa: F401  (register the commands)
from meshway.model import find_kind
from meshway.store import Store

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: default}
spec: {selector: {app: extra}, ports: [{port: 80}]}
"""


def test_up_on_a_running_mesh_starts_nothing_and_applies_the_manifests(tmp_path: Path, monkeypatch) -> None:
    state = tmp_path / "state"
    Store(state).set_nodes(3)
    (state / "run").mkdir(parents=True, exist_ok=True)
    (state / "run" / "controlplane.pid").write_text(f"{os.getpid()}\n")  # a live process: "running"

    def no_second_control_plane(*args, **kwargs):
        raise AssertionError("up started a second control plane")

    monkeypatch.setattr("meshway.runtime.daemon.start_controlplane", no_second_control_plane)
    manifest = tmp_path / "extra.yaml"
    manifest.write_text(SERVICE)
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "up", "--nodes", "2", "-f", str(manifest)])
    assert result.exit_code == 0, result.output
    assert f"the mesh is already running (control plane pid {os.getpid()}" in result.output
    assert "--nodes 2 ignored: the running cluster has 3" in result.output
    store = Store(state)
    assert store.get(find_kind("svc"), "default", "extra")["metadata"]["name"] == "extra"
    assert store.node_count() == 3
    assert (state / "run" / "controlplane.pid").read_text() == f"{os.getpid()}\n"


def test_down_forgets_the_process_records(tmp_path: Path) -> None:
    from meshway.runtime.daemon import stop_all

    run = tmp_path / "state" / "run"
    records = [run / "pods" / "default.web" / "containers.json", run / "proxies" / "default.waypoint-0" / "starts",
               run / "nodes" / "node-1" / "starts"]
    for path in records:
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    (run / "pods" / "default.web" / "app.log").write_text("kept\n")
    stop_all(tmp_path / "state")
    assert not any(p.exists() for p in records)
    assert (run / "pods" / "default.web" / "app.log").exists()


def test_a_second_control_plane_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(state)
    (state / "run").mkdir(parents=True, exist_ok=True)
    other = subprocess.Popen(["sleep", "30"])
    try:
        (state / "run" / "controlplane.pid").write_text(f"{other.pid}\n")
        result = CliRunner().invoke(cli, ["--state-dir", str(state), "controlplane"])
        assert result.exit_code == 1
        assert f"a control plane already runs for {state} (pid {other.pid})" in result.output
    finally:
        other.kill()
        other.wait()


def test_a_killed_orphan_is_not_running_even_unreaped(tmp_path: Path) -> None:
    """A control plane started by `meshway up` is an orphan once up exits; killed, it may stay a
    zombie (an init that does not reap): that is not a running control plane."""
    from meshway.runtime.daemon import controlplane_pid

    spawn = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    orphan = int(spawn.stdout)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "controlplane.pid").write_text(f"{orphan}\n")
    assert controlplane_pid(tmp_path) == orphan
    os.kill(orphan, 9)
    deadline = time.monotonic() + 5
    while controlplane_pid(tmp_path) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert controlplane_pid(tmp_path) is None


def test_up_after_a_crash_keeps_the_recorded_node_count(tmp_path: Path, monkeypatch) -> None:
    state = tmp_path / "state"
    Store(state).set_nodes(3)
    (state / "run").mkdir(parents=True, exist_ok=True)
    (state / "run" / "cluster.json").write_text('{"node_count": 3, "pods": {}, "nodes": {}}')

    def no_control_plane(*args, **kwargs):
        raise AssertionError("started a control plane for a cluster it cannot adopt")

    monkeypatch.setattr("meshway.runtime.daemon.start_controlplane", no_control_plane)
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "up", "--nodes", "2"])
    assert result.exit_code == 1
    assert "has 3 nodes, not 2: `meshway down` first" in result.output
    assert Store(state).node_count() == 3
