"""Pods run unprivileged: the user a container runs as (securityContext, as a table), the setpriv
prefix, who can reach a file (fake stat), and, as root, real containers that run as 65532 with a
HOME of their own, owner-only logs and state under `umask 000`, and adoption across supervisors."""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshway.runtime import netns
from meshway.runtime.runas import (NONROOT, Interpreter, RunAs, RunAsError, build_setpriv_prefix, detect_allowed,
                                   find_denied, find_interpreter, find_run_as, make_home)
from meshway.runtime.workload import (STATE_FILE, Adoption, ContainerConfigError, PodProcesses, ProcInfo,
                                      ProcessRecord, build_container_command, decide_adoption)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing users needs root")


def pod(*containers: dict[str, Any], **security: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers) or [{"name": "c", "command": ["true"]}]}
    if security:
        spec["securityContext"] = security
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "spec": spec, "status": {}}


# -- the user (pure) ---------------------------------------------------------------------------
@pytest.mark.parametrize("pod_sc,container_sc,expected", [
    ({}, {}, RunAs(NONROOT, NONROOT)),
    ({"runAsUser": 1000}, {}, RunAs(1000, 1000)),
    ({"runAsUser": 1000, "runAsGroup": 3000}, {}, RunAs(1000, 3000)),
    ({"runAsUser": 1000, "runAsGroup": 3000}, {"runAsUser": 2000}, RunAs(2000, 3000)),
    ({"runAsUser": 1000}, {"runAsGroup": 5}, RunAs(1000, 5)),
    ({}, {"runAsUser": 0}, RunAs(0, 0)),
    ({"runAsUser": 0}, {"runAsUser": 7}, RunAs(7, 7)),
    ({"runAsNonRoot": True}, {}, RunAs(NONROOT, NONROOT)),
    ({"runAsNonRoot": True, "runAsUser": 0}, {"runAsNonRoot": False}, RunAs(0, 0)),
    ({"supplementalGroups": [4, 2, 1000], "fsGroup": 9, "runAsUser": 1000}, {}, RunAs(1000, 1000, (2, 4, 9))),
    ({}, {"allowPrivilegeEscalation": True}, RunAs(NONROOT, NONROOT, no_new_privs=False)),
    ({}, {"allowPrivilegeEscalation": False}, RunAs(NONROOT, NONROOT)),
    ({"runAsUser": None}, {"runAsUser": None}, RunAs(NONROOT, NONROOT)),
])
def test_find_run_as(pod_sc: dict, container_sc: dict, expected: RunAs) -> None:
    container = {"name": "c", "securityContext": container_sc} if container_sc else {"name": "c"}
    assert find_run_as(container, pod(**pod_sc)) == expected


@pytest.mark.parametrize("pod_sc,container_sc,message", [
    ({"runAsNonRoot": True, "runAsUser": 0}, {}, "runAsNonRoot is set and the container would run as root"),
    ({}, {"runAsNonRoot": True, "runAsUser": 0}, "runAsNonRoot"),
    ({"runAsNonRoot": True}, {"runAsUser": 0}, "runAsNonRoot"),
    ({}, {"runAsUser": -1}, r"runAsUser must be an integer from 0"),
    ({}, {"runAsUser": "1000"}, r"runAsUser must be an integer"),
    ({}, {"runAsGroup": True}, r"runAsGroup must be an integer"),
    ({"supplementalGroups": ["x"]}, {}, r"supplementalGroups must be an integer"),
])
def test_find_run_as_refuses(pod_sc: dict, container_sc: dict, message: str) -> None:
    with pytest.raises(RunAsError, match=message):
        find_run_as({"name": "c", "securityContext": container_sc}, pod(**pod_sc), "pod ns/p container 'c'")


@pytest.mark.parametrize("run_as,prefix", [
    (RunAs(NONROOT, NONROOT), ["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all",
                               "--bounding-set=-all", "--no-new-privs", "--"]),
    (RunAs(1000, 3000, (4, 9), no_new_privs=False),
     ["setpriv", "--reuid=1000", "--regid=3000", "--groups=4,9", "--inh-caps=-all", "--bounding-set=-all", "--"]),
    (RunAs(0, 0), []),
    (RunAs(0, 0, no_new_privs=False), []),
    (RunAs(0, 5), ["setpriv", "--reuid=0", "--regid=5", "--clear-groups", "--no-new-privs", "--"]),
])
def test_build_setpriv_prefix(run_as: RunAs, prefix: list[str]) -> None:
    assert build_setpriv_prefix(run_as) == prefix


# -- who can reach a file (fake stat) -----------------------------------------------------------
def fake_stat(tree: dict[str, tuple[int, int, int]]):
    """path -> (mode with type bits, uid, gid)."""
    def stat_fn(path: str) -> os.stat_result:
        if path not in tree:
            raise FileNotFoundError(path)
        mode, uid, gid = tree[path]
        return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    return stat_fn


D, F = stat.S_IFDIR, stat.S_IFREG
TREE = {"/": (D | 0o755, 0, 0), "/root": (D | 0o700, 0, 0), "/root/py": (D | 0o755, 0, 0),
        "/root/py/python": (F | 0o755, 0, 0), "/work": (D | 0o755, 0, 0), "/work/app": (D | 0o750, 0, 50),
        "/work/app/x.py": (F | 0o644, 0, 50), "/work/open.py": (F | 0o600, 7, 0), "/work/mine": (D | 0o700, 7, 7)}


@pytest.mark.parametrize("path,uid,gids,denied", [
    ("/root/py/python", NONROOT, (NONROOT,), "/root"),
    ("/root/py/python", 0, (0,), None),
    ("/work/app/x.py", NONROOT, (NONROOT,), "/work/app"),
    ("/work/app/x.py", NONROOT, (NONROOT, 50), None),
    ("/work/open.py", 7, (7,), None),
    ("/work/open.py", 8, (0,), "/work/open.py"),
    ("/work/mine", 7, (7,), None),
    ("/work/missing", NONROOT, (NONROOT,), "/work/missing"),
])
def test_find_denied(path: str, uid: int, gids: tuple, denied: str | None) -> None:
    assert find_denied(path, uid, gids, fake_stat(TREE)) == denied


def test_owner_bits_decide_for_the_owner_even_when_others_may() -> None:
    info = os.stat_result((F | 0o077, 0, 0, 1, 7, 7, 0, 0, 0, 0))
    assert not detect_allowed(info, 7, (7,), 4) and detect_allowed(info, 8, (9,), 4)


def test_root_keeps_this_interpreter() -> None:
    assert find_interpreter(0, (0,)) == Interpreter(sys.executable)


def test_an_interpreter_with_a_python_path_puts_it_in_the_image_env() -> None:
    container = {"name": "c", "image": "curlimages/curl"}
    argv, env = build_container_command(container, pod(container), {}, Interpreter("/usr/bin/python3.11", ("/a", "/b")))
    assert argv == ["/usr/bin/python3.11", "-P", "-u", "-m", "meshway.apps.sleep"]
    assert env["PYTHONPATH"] == "/a:/b"
    mine = {**container, "env": [{"name": "PYTHONPATH", "value": "/mine"}]}
    assert build_container_command(mine, pod(mine), {}, Interpreter("py", ("/a",)))[1]["PYTHONPATH"] == "/mine"
    own = {"name": "c", "image": "curlimages/curl", "command": ["/bin/sleep", "1"]}
    assert "PYTHONPATH" not in build_container_command(own, pod(own), {}, Interpreter("py", ("/a",)))[1]


# -- adoption with a launcher of its own length (pure) ------------------------------------------
NETNS = ("ip", "netns", "exec", "ns")
SETPRIV = tuple(build_setpriv_prefix(RunAs(NONROOT, NONROOT)))
APP = ("/usr/bin/python3", "-P", "-m", "app")


@pytest.mark.parametrize("record_argv,record_len,now_argv,expected", [
    # recorded with setpriv, still the same command: adopted (/proc shows the app's argv)
    (NETNS + SETPRIV + APP, len(NETNS + SETPRIV), NETNS + SETPRIV + APP, "adopt"),
    # an older supervisor ran it as root (no setpriv, no prefix_len recorded): replaced, not doubled
    (NETNS + APP, None, NETNS + SETPRIV + APP, "replace"),
])
def test_decide_adoption_with_setpriv(record_argv, record_len, now_argv, expected) -> None:
    record = ProcessRecord("running", 42, 7, record_argv, 0, 0.0, True, prefix_len=record_len)
    info = ProcInfo(7, APP, False)
    assert decide_adoption(record, info, now_argv, len(NETNS), "Always").action == expected


# -- owner-only files (umask 000) ---------------------------------------------------------------
@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


def test_cluster_state_is_owner_only_and_hosts_readable_under_umask_000(tmp_path: Path, umask_000) -> None:
    path = netns.state_path(tmp_path)
    netns._save(path, {"x": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    hosts = tmp_path / "hosts"
    netns.rewrite_in_place(hosts, "a\n")
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o644  # pods' users read it; only root writes it
    hosts.chmod(0o666)
    netns.rewrite_in_place(hosts, "b\n")
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o644 and hosts.read_text() == "b\n"


# -- real containers (root) -----------------------------------------------------------------------
def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def proc_ids(pid: int) -> tuple[int, int]:
    lines = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(lines["Uid"].split()[0]), int(lines["Gid"].split()[0])


@as_root
def test_containers_run_as_their_users_with_a_home_and_private_logs(tmp_path: Path, umask_000) -> None:
    script = "import os; print(os.getuid(), os.getgid(), os.getgroups(), os.environ['HOME'], os.getcwd(), flush=True)"
    containers = [{"name": "plain", "command": ["/bin/sh", "-c", "id -u; id -g; echo $HOME; pwd"]},
                  {"name": "thousand", "command": ["/bin/sh", "-c", "id -u; id -g; id -G"],
                   "securityContext": {"runAsUser": 1000, "runAsGroup": 3000}},
                  {"name": "root", "command": ["/bin/sh", "-c", "id -u"], "securityContext": {"runAsUser": 0}}]
    body = pod(*containers, supplementalGroups=[44])
    body["spec"]["restartPolicy"] = "Never"
    homes = tmp_path / "homes"
    logs = tmp_path / "run" / "pods" / "ns.p"
    pods = PodProcesses(body, [], logs, home_root=homes)
    pods.start()
    try:
        assert wait_for(lambda: all(s.state == "terminated" for s in pods.statuses()), 10)
    finally:
        pods.stop(grace=1)
    assert (logs / "plain.log").read_text().split() == ["65532", "65532", str(homes / "65532"), "/"]
    assert (logs / "thousand.log").read_text().split() == ["1000", "3000", "3000", "44"]
    assert (logs / "root.log").read_text().split() == ["0"]
    home = homes / "65532"
    assert (home.stat().st_uid, stat.S_IMODE(home.stat().st_mode)) == (65532, 0o700)
    assert stat.S_IMODE(homes.stat().st_mode) == 0o711
    for path in (logs, logs.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (logs / "plain.log", logs / STATE_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@as_root
def test_an_unprivileged_container_is_adopted_by_a_new_supervisor(tmp_path: Path) -> None:
    body = pod({"name": "s", "command": ["/bin/sleep", "30"]})
    first = PodProcesses(body, ["env"], tmp_path / "logs", home_root=tmp_path / "homes")
    first.start()
    pid = first.statuses()[0].pid
    try:
        assert wait_for(lambda: proc_ids(pid) == (NONROOT, NONROOT), 5)
        assert wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes() == b"/bin/sleep\x0030\x00", 5)
        recorded = json.loads((tmp_path / "logs" / STATE_FILE).read_text())["containers"]["s"]
        assert recorded["argv"][:2] == ["env", "setpriv"] and recorded["prefix_len"] == 1 + len(SETPRIV)
        second = PodProcesses(body, ["env"], tmp_path / "logs", home_root=tmp_path / "homes")
        second.start()
        assert second.decisions["s"] == Adoption("adopt", 0, f"pid {pid} still runs")
        assert second.statuses()[0].pid == pid
        second.stop(grace=1)
    finally:
        first.stop(grace=1)


@as_root
def test_exec_probes_run_as_the_container_user(tmp_path: Path) -> None:
    container = {"name": "s", "command": ["/bin/sleep", "30"],
                 "readinessProbe": {"exec": {"command": ["/bin/sh", "-c", "test $(id -u) = 65532"]},
                                    "periodSeconds": 1}}
    pods = PodProcesses(pod(container), [], tmp_path / "logs", home_root=tmp_path / "homes")
    pods.start()
    try:
        assert wait_for(pods.check_ready, 5)
    finally:
        pods.stop(grace=1)


@as_root
def test_run_as_non_root_with_uid_0_is_a_container_config_error(tmp_path: Path) -> None:
    body = pod({"name": "c", "command": ["true"]}, runAsNonRoot=True, runAsUser=0)
    with pytest.raises(ContainerConfigError, match="runAsNonRoot"):
        PodProcesses(body, [], tmp_path / "logs", home_root=tmp_path / "homes")


@as_root
def test_make_home_takes_back_a_folder_and_refuses_a_link(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h" / "1000", 1000, 1000)
    home.chmod(0o777)
    make_home(home, 2000, 2000)
    assert (home.stat().st_uid, stat.S_IMODE(home.stat().st_mode)) == (2000, 0o700)
    (tmp_path / "h" / "7").symlink_to(tmp_path)
    with pytest.raises(RunAsError, match="must be a folder"):
        make_home(tmp_path / "h" / "7", 7, 7)


# -- the interpreter a pod's user runs the built-in apps with ------------------------------------
@pytest.fixture
def open_dir():
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="mw-open-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_folders_the_user_cannot_reach_are_mounted_where_it_can(tmp_path: Path, monkeypatch) -> None:
    from meshway.runtime import runas
    closed = tmp_path / "root"  # as /root: 0700 (so is pytest's own folder)
    (closed / "clone").mkdir(parents=True)
    (closed / "site").mkdir()
    closed.chmod(0o700)
    needs = (sysconfig_stdlib(), str(closed / "clone"), [str(closed / "site")])
    monkeypatch.setattr(runas, "_own_needs", lambda: needs)
    image = tmp_path / "image"
    got = runas.find_interpreter.__wrapped__(NONROOT, (NONROOT,), image)
    assert got.path == (str(image / "src"), str(image / "site0"))
    assert (str(closed / "clone"), str(image / "src")) in got.mounts and \
        (str(closed / "site"), str(image / "site0")) in got.mounts
    mounted_python = find_denied(sys.executable, NONROOT, (NONROOT,)) is not None
    assert got.python.startswith(str(image / "python")) is mounted_python
    assert bool(got.library_path) is mounted_python
    prefix = runas.build_mount_prefix(got.mounts)
    assert prefix[:3] == ["unshare", "--mount", "sh"] and prefix[-1] == "--"
    assert runas.build_mount_prefix(()) == []


def sysconfig_stdlib() -> str:
    import sysconfig
    return sysconfig.get_paths()["stdlib"]


@as_root
def test_a_checkout_under_a_closed_folder_runs_its_built_in_apps_as_nonroot(tmp_path: Path, monkeypatch) -> None:
    """As a CI clone under /root (0700): meshway and its packages are mounted read-only for the pod."""
    import shutil

    import meshway
    from meshway.runtime import runas
    closed = tmp_path / "root"
    clone = closed / "clone"
    shutil.copytree(Path(meshway.__file__).parent, clone / "meshway", ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "meshway" / "apps" / "sleep.py").write_text(
        "import os, signal, sys\nprint('clone app as', os.getuid(), __file__, flush=True)\nsignal.pause()\n")
    closed.chmod(0o700)
    stdlib, _, sites = runas._own_needs()
    monkeypatch.setattr(runas, "_own_needs", lambda: (stdlib, str(clone), sites))
    runas.find_interpreter.cache_clear()
    container = {"name": "app", "image": "curlimages/curl"}
    pods = PodProcesses(pod(container), [], tmp_path / "logs", home_root=tmp_path / "homes")
    try:
        pods.start()
        log = tmp_path / "logs" / "app.log"
        assert wait_for(lambda: "clone app as" in log.read_text(), 10), log.read_text()
        assert log.read_text().split()[3:5] == [str(NONROOT), "/run/meshway/image/src/meshway/apps/sleep.py"]
        assert pods.statuses()[0].state == "running"
    finally:
        pods.stop(grace=1)
        runas.find_interpreter.cache_clear()


def test_a_meshway_folder_in_the_working_directory_does_not_shadow_the_package(tmp_path: Path) -> None:
    """Built-in apps run `python -P -m meshway.apps...`: the cwd is not on sys.path."""
    trap = tmp_path / "work"
    (trap / "meshway").mkdir(parents=True)
    (trap / "meshway" / "__init__.py").write_text("raise SystemExit('shadowed by the cwd')\n")
    container = {"name": "app", "image": "curlimages/curl", "workingDir": str(trap)}
    pods = PodProcesses(pod(container), [], tmp_path / "logs")
    pods.start()
    try:
        time.sleep(1.5)
        assert pods.statuses()[0].state == "running", (tmp_path / "logs" / "app.log").read_text()
    finally:
        pods.stop(grace=1)
    assert "shadowed" not in (tmp_path / "logs" / "app.log").read_text()
