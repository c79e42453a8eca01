"""Pods run unprivileged, end to end (root, Linux; run in CI): in the network-namespace cluster every
container of bookinfo and the curl pod runs as 65532 without capabilities, bookinfo still serves
through the waypoint, and a process in a pod's namespace as the pod's user (the command the runtime
builds: `ip netns exec NS [mounts] setpriv ... --`, the pod's interpreter and environment) gets EACCES
for the CA key, the xDS token key and the ADS socket."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

from cluster_support import Mesh, cluster_fixture, via_waypoint
from meshway.ca.authority import ROOT_KEY_FILE
from meshway.ca.tokens import TOKEN_KEY_FILE
from meshway.runtime.placement import socket_dir
from meshway.runtime.runas import NONROOT, detect_allowed

mesh = cluster_fixture()

ATTEMPT = textwrap.dedent('''
    import errno, json, os, socket, sys
    def attempt(action):
        try:
            action()
            return "ok"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc.errno))
    def connect(path):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
    print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                      "home": os.environ.get("HOME"), "home_writable": os.access(os.environ.get("HOME", "/"), os.W_OK),
                      "ca_key": attempt(lambda: open(sys.argv[1], "rb").read()),
                      "token_key": attempt(lambda: open(sys.argv[2], "rb").read()),
                      "ads": attempt(lambda: connect(sys.argv[3])),
                      "hosts": attempt(lambda: open("/etc/hosts").read())}))
''')


def containers(mesh: Mesh, pod: dict) -> dict[str, dict]:
    path = mesh.state / "run" / "pods" / f"default.{pod['metadata']['name']}" / "containers.json"
    return json.loads(path.read_text())["containers"]


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def app_pods(mesh: Mesh) -> list[dict]:
    return [p for p in mesh.pods() if "gateway.networking.k8s.io/gateway-name" not in p["metadata"].get("labels", {})]


def test_every_container_runs_as_nonroot_without_capabilities(mesh: Mesh) -> None:
    seen = 0
    for pod in app_pods(mesh):
        for name, record in containers(mesh, pod).items():
            status = proc_status(record["pid"])
            where = f"{pod['metadata']['name']}/{name}"
            assert status["Uid"].split() == [str(NONROOT)] * 4, (where, status["Uid"])
            assert status["Gid"].split() == [str(NONROOT)] * 4, (where, status["Gid"])
            assert status["Groups"].split() == [], (where, status["Groups"])
            assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == int(status["CapBnd"], 16) == 0, where
            assert status["NoNewPrivs"].strip() == "1", where
            seen += 1
    assert seen >= 7  # productpage, details, ratings, reviews v1-v3, curl


def test_bookinfo_serves_as_nonroot_through_the_waypoint(mesh: Mesh) -> None:
    page = mesh.requests("productpage", 5, "/productpage")
    assert all(r[0] == 200 and via_waypoint(r) for r in page), page
    reviews = mesh.requests("reviews", 20)
    assert all(r[0] == 200 and via_waypoint(r) for r in reviews), reviews


def test_a_pod_process_cannot_read_the_ca_key_or_reach_the_ads_socket(mesh: Mesh) -> None:
    ca_key, token_key = mesh.state / "ca" / ROOT_KEY_FILE, mesh.state / "ca" / TOKEN_KEY_FILE
    ads = socket_dir(mesh.state) / "xds.sock"
    for path in (ca_key, token_key, ads):
        info = os.stat(path)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600), path
        # the file itself, not only a folder on the way, refuses the pod's user
        assert not detect_allowed(info, NONROOT, (NONROOT,), 4), path
    assert stat.S_IMODE(os.stat(ads.parent).st_mode) == 0o700
    # the launcher the runtime built for reviews (mounts if any, then setpriv), its interpreter and
    # environment; in the curl pod too (it runs /bin/sleep, as the same user)
    app = containers(mesh, mesh.pod("reviews-v1"))["reviews"]
    launcher, python = app["argv"][4:app["prefix_len"]], app["argv"][app["prefix_len"]]
    assert "setpriv" in launcher and app["argv"][:3] == ["ip", "netns", "exec"]
    for prefix in ("reviews-v1", "curl"):
        pod = mesh.pod(prefix)
        record = next(iter(containers(mesh, pod).values()))
        env = {**proc_environ(app["pid"]), "HOME": proc_environ(record["pid"])["HOME"]}
        cmd = ["ip", "netns", "exec", mesh.netns(pod), *launcher, python, "-P", "-c", ATTEMPT,
               str(ca_key), str(token_key), str(ads)]
        out = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout)
        assert (seen["uid"], seen["euid"], seen["gid"], seen["groups"]) == (NONROOT, NONROOT, NONROOT, []), seen
        assert (seen["ca_key"], seen["token_key"], seen["ads"]) == ("EACCES", "EACCES", "EACCES"), seen
        assert seen["hosts"] == "ok" and seen["home_writable"], seen
        assert env["HOME"].startswith("/run/meshway/"), env["HOME"]




def test_runtime_files_are_owner_only_and_pod_files_readable(mesh: Mesh) -> None:
    """Modes are set, not left to the umask: the pods' folders, logs and records and cluster.json are
    root's alone; the pod's /etc/hosts and resolv.conf are readable by its users (written only by root)."""
    def mode(path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    pods_dir = mesh.state / "run" / "pods"
    assert mode(pods_dir) == 0o700 and mode(mesh.state / "run" / "cluster.json") == 0o600
    for pod in app_pods(mesh):
        folder = pods_dir / f"default.{pod['metadata']['name']}"
        assert mode(folder) == 0o700, folder
        for path in folder.iterdir():
            assert mode(path) == 0o600, path
        etc = Path("/etc/netns") / mesh.netns(pod)
        assert mode(etc) == 0o755 and mode(etc / "hosts") == 0o644 and mode(etc / "resolv.conf") == 0o644, etc
