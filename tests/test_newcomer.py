"""A newcomer's first run: `up -f` of a missing file starts nothing, unusable state folders are one
line naming the path, the daemon ignores the caller's cwd, `down` leaves no traceback and `status`
after it says the control plane is not running, `get -o json|yaml` of nothing is an empty List, a
node proxy's cluster names parse, `up --cluster` refuses instead of falling back, every option has
a description."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from meshway.cli import configdump as D
from meshway.cli.main import cli, main  # noqa: F401
from meshway.cli import (analyze, clustercmds, controlplane, explain, metrics, proxyconfig, up,  # noqa: F401
                         waypoint)
from meshway.cli.walkthrough import choose_mode
from meshway.runtime.daemon import python_module_args

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def run(state: Path, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["--state-dir", str(state), *args], input=input)


def meshway(state: Path, *args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*python_module_args("meshway"), "--state-dir", str(state), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# -- up -f ---------------------------------------------------------------------------------------
def test_up_with_a_missing_file_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "s"
    r = run(state, "up", "-f", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 1
    assert r.stderr == f"error: {tmp_path / 'missing.yaml'}: the path does not exist\n"
    assert r.stdout == ""
    assert not (state / "run").exists()  # no control plane, no cluster


def test_up_with_a_bad_file_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 70000}]}\n")
    r = run(tmp_path / "s", "up", "-f", str(bad))
    assert r.exit_code == 1 and r.stderr.startswith(f"error: {bad}: document 1") and r.stdout == ""
    assert not (tmp_path / "s" / "run").exists()


def test_up_cluster_refuses_instead_of_falling_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshway.runtime.netns as netns

    monkeypatch.setattr(netns, "detect_capability", lambda: "iptables not found on PATH")
    r = run(tmp_path / "s", "up", "--cluster")
    assert r.exit_code == 1 and "the cluster cannot run here: iptables not found on PATH" in r.stderr
    assert not (tmp_path / "s" / "run").exists()


def test_mode_is_said_with_its_reason() -> None:
    assert choose_mode(None, None) == (True, "cluster in network namespaces")
    cluster, line = choose_mode(None, "network namespaces need root")
    assert not cluster and line.startswith("LOOPBACK mode, not the cluster: network namespaces need root")
    assert "sudo ./scripts/up" in line
    assert choose_mode(False, None)[0] is False and "--loopback" in choose_mode(False, None)[1]
    with pytest.raises(click.ClickException):
        choose_mode(True, "network namespaces need root")


def _scripts_up(tmp_path: Path, uid: int) -> tuple[subprocess.CompletedProcess, str]:
    """scripts/up on a machine without ip, iptables, sysctl and setpriv: PATH holds only stubs (id, uname,
    dirname, an apt-get that records its arguments and fails the install so nothing else runs)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "apt.log"
    for name, body in {"id": f"echo {uid}", "uname": "echo Linux", "dirname": 'exec /usr/bin/dirname "$@"',
                       "apt-get": f'echo "$*" >> {log}; [ "$1" = install ] && exit 3; exit 0'}.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
        (stubs / name).chmod(0o755)
    r = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "up")], env={"PATH": str(stubs)},
                       capture_output=True, text=True, timeout=30)
    return r, log.read_text() if log.exists() else ""


def test_scripts_up_installs_the_tools_as_root(tmp_path: Path) -> None:
    r, apt = _scripts_up(tmp_path, 0)
    assert r.returncode == 3, r.stderr  # the stub apt-get's install failure stops it
    assert "installing iproute2 iptables procps util-linux" in r.stderr
    assert apt.splitlines() == ["update -qq", "install -y -qq iproute2 iptables procps util-linux"]


def test_scripts_up_without_root_names_the_one_command(tmp_path: Path) -> None:
    r, apt = _scripts_up(tmp_path, 1000)
    assert r.returncode == 1 and apt == ""
    assert "the cluster needs root" in r.stderr and "  sudo ./scripts/up\n" in r.stderr


# -- state folder --------------------------------------------------------------------------------
def test_state_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    for state in (f, f / "below"):
        r = meshway(state, "get", "ns")
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr == (f"error: cannot use the state folder {state}: {f} is a file, not a folder "
                            "(choose another with --state-dir or MESHWAY_STATE_DIR)\n")


def test_unwritable_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unwritable HOME (root is never refused here, so the refusal is simulated)."""
    home = tmp_path / "home"

    def refuse(self: Path, *args, **kwargs) -> None:
        raise PermissionError(13, "Permission denied", str(home / ".local"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MESHWAY_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    r = CliRunner().invoke(cli, ["get", "ns"])
    assert r.exit_code == 1
    assert r.stderr == (f"error: cannot use the state folder {home}/.local/state/meshway: permission denied on "
                        f"{home}/.local (choose another with --state-dir or MESHWAY_STATE_DIR)\n")


# -- get -o json|yaml ----------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["get", "svc"], ["get", "svc,deploy"], ["get", "vs", "-A"]])
def test_get_nothing_as_json_or_yaml_is_an_empty_list(tmp_path: Path, args: list[str]) -> None:
    r = run(tmp_path / "s", *args, "-o", "json")
    assert r.exit_code == 0 and r.stderr == ""
    assert json.loads(r.stdout) == {"apiVersion": "v1", "items": [], "kind": "List",
                                    "metadata": {"resourceVersion": ""}}
    r = run(tmp_path / "s", *args, "-o", "yaml")
    assert r.stdout == "apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  resourceVersion: ''\n"


def test_get_several_kinds_as_json_is_one_list(tmp_path: Path) -> None:
    r = run(tmp_path / "s", "get", "ns,gc", "-o", "json")
    items = json.loads(r.stdout)["items"]
    assert [i["kind"] for i in items] == ["Namespace"] * 4 + ["GatewayClass"]
    r = run(tmp_path / "s", "get", "ns,gc", "-o", "name")
    assert r.stdout.splitlines()[-1] == "gatewayclass.gateway.networking.k8s.io/istio-waypoint"


# -- proxy-config cluster on a node proxy ------------------------------------------------------
def test_node_proxy_cluster_names_parse() -> None:
    """A dump captured from node-1's proxy (`meshway pc all ztunnel-node-1.istio-system -o json`)."""
    assert D.parse_cluster_name("svc|384d28cf|reviews.default.svc.cluster.local|9080") == (
        "outbound", 9080, "", "reviews.default.svc.cluster.local")
    waypoint_cluster = "waypoint|384d28cf|default/waypoint"
    assert D.parse_cluster_name(waypoint_cluster) == ("", 0, "", waypoint_cluster)
    assert D.parse_cluster_name("inbound|default/curl-x") == ("", 0, "", "inbound|default/curl-x")
    r = CliRunner().invoke(cli, ["pc", "cluster", "-f", str(DATA / "ztunnel_clusters_config_dump.json")])
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0][:2] == ["SERVICE", "FQDN"]
    reviews = [row for row in rows if row[0] == "reviews.default.svc.cluster.local"]
    assert reviews and all(row[1:5] == ["9080", "-", "outbound", "STATIC"] for row in reviews)
    assert ["waypoint.default.svc.cluster.local", "15008", "-", "outbound", "STATIC", "-"] in rows
    names = {row[0] for row in rows}
    assert "passthrough" in names and any(n.startswith("hbone|") for n in names)
    assert not any(row[0].isdigit() or row[0].startswith("svc|") for row in rows[1:])  # nothing garbled
    r = CliRunner().invoke(cli, ["pc", "cluster", "-f", str(DATA / "ztunnel_clusters_config_dump.json"),
                                 "--fqdn", "ratings", "--port", "9080"])
    assert {line.split()[0] for line in r.stdout.splitlines()[1:]} == {"ratings.default.svc.cluster.local"}


# -- help texts ----------------------------------------------------------------------------------
def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


def test_every_command_and_option_has_a_description() -> None:
    seen = 0
    for path, cmd in _commands(cli):
        assert cmd.help, f"meshway {' '.join(path)} has no description"
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, f"meshway {' '.join(path)} {param.opts[0]} has no description"
        r = CliRunner().invoke(cli, [*path, "--help"])
        assert r.exit_code == 0 and "[default: w]" not in r.stdout
        seen += 1
    assert seen > 20
    top = CliRunner().invoke(cli, ["--help"]).stdout
    assert "proxy-config" in top and "\n  pc " not in top  # the alias works but is listed once
    delete_r = next(p for p in waypoint.waypoint.commands["delete"].params if "-r" in p.opts)
    apply_r = next(p for p in waypoint.waypoint.commands["apply"].params if "-r" in p.opts)
    assert delete_r.help != apply_r.help and "Delete" in delete_r.help


# -- the daemon, down, and what status says after it ----------------------------------------------
WAYPOINT = ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: default}\n"
            "spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n")


def test_daemon_ignores_cwd_down_is_clean_and_status_after_down(tmp_path: Path) -> None:
    """The control plane started from a folder that holds a `meshway/` package (which would shadow
    ours on sys.path), a waypoint it runs, then `down`: no traceback in its log, and every status
    command says the control plane is not running."""
    shadow = tmp_path / "shadow"
    (shadow / "meshway").mkdir(parents=True)
    (shadow / "meshway" / "__init__.py").write_text("raise ImportError('the wrong meshway')\n")
    state = tmp_path / "s"
    manifest = tmp_path / "wp.yaml"
    manifest.write_text(WAYPOINT)
    assert meshway(state, "apply", "-f", str(manifest), cwd=shadow).returncode == 0
    starter = ("import sys; from pathlib import Path; from meshway.runtime.daemon import start_controlplane; "
               "print(start_controlplane(Path(sys.argv[1])))")
    started = subprocess.run([*python_module_args("meshway")[:2], "-c", starter, str(state)], cwd=shadow,
                             capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr + (state / "run" / "controlplane.log").read_text()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ps = meshway(state, "proxy-status")
            if ps.returncode == 0 and "waypoint-" in ps.stdout and "STALE" not in ps.stdout and \
                    "SYNCED" in ps.stdout:
                break
            time.sleep(0.5)
        assert "SYNCED" in ps.stdout, ps.stdout + ps.stderr
        assert "running (pid" in meshway(state, "status").stdout
    finally:
        down = meshway(state, "down")
    assert down.returncode == 0 and "stopped controlplane" in down.stdout, down.stderr
    log = (state / "run" / "controlplane.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log, log

    status = meshway(state, "status")
    assert status.returncode == 0 and status.stdout.startswith("Control plane: not running\n")
    assert "SYNCED" not in status.stdout
    ps = meshway(state, "proxy-status")
    assert ps.returncode == 1 and ps.stderr.startswith("Error: unable to reach the control plane")
    wp = meshway(state, "waypoint", "status", "--no-wait")
    assert wp.returncode == 0 and "True" not in wp.stdout
    assert meshway(state, "waypoint", "status").returncode == 1
    explained = json.loads(meshway(state, "explain", "service/waypoint", "-o", "json").stdout)
    assert explained["control_plane"] == "not running"
