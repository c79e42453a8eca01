"""The local cluster's network: one netns per node and per pod, nodes joined through a fabric netns.

Layout (every address exists only inside namespaces made here; the host namespace gets no link,
address, route or iptables rule):

    fabric netns  mw<id>-fabric     bridge br0, one port per node
    node netns    mw<id>-node<N>    fab0 = 10.240.0.N/24 on br0; 10.244.M.0/24 via 10.240.0.M;
                                    one veth per pod, each with 10.244.N.1/32 and a /32 host route
    pod netns     mw<id>-<ns>-<pod> eth0 = <podIP>/32, default via 10.244.N.1

`<id>` is `cluster_id(state_dir)`, so two clusters (or two test runs) never share a name.

Pure `plan_*` functions return the commands (argv lists) that build each piece; `ClusterNet` is the
thin shell that records each piece in `<state_dir>/run/cluster.json` *before* running its plan
(write-ahead), so that `down(state_dir)` removes exactly what was made, even after a crash.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

from meshway.private import FILE_MODE, make_private_dir
from meshway.store.ipam import node_cidr

Cmd = list[str]

FABRIC_BRIDGE = "br0"
NODE_UPLINK = "fab0"  # the node's end of its veth to the fabric
POD_IFACE = "eth0"
FABRIC_NET = ipaddress.ip_network("10.240.0.0/24")
MAX_NODES = 254
ETC_NETNS = Path("/etc/netns")  # `ip netns exec NAME` bind-mounts /etc/netns/NAME/* over /etc/*
POD_HOMES = Path("/run/meshway")  # <here>/mw<id>/<pod netns>/<uid>: HOME of a pod's unprivileged users
NETNS_NAME_MAX = 63  # a netns name is a file name under /run/netns
IFNAME_MAX = 15  # IFNAMSIZ - 1
STATE_VERSION = 1


class NetnsError(RuntimeError):
    """A command failed; names the command and what it printed."""

    def __init__(self, message: str, cmd: Cmd | None = None, stderr: str = ""):
        super().__init__(message)
        self.cmd = cmd
        self.stderr = stderr


# -- names ---------------------------------------------------------------------------------------
def cluster_id(state_dir: Path) -> str:
    """4 hex characters from the resolved state folder: the prefix of every name we create."""
    return hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:4]


def _digest(*parts: str, size: int) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:size]


def fabric_netns_name(cluster: str) -> str:
    return f"mw{cluster}-fabric"


def node_netns_name(cluster: str, n: int) -> str:
    return f"mw{cluster}-node{n}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def pod_netns_name(cluster: str, namespace: str, pod: str) -> str:
    """`mw<id>-<ns>-<pod>`, or a truncated form ending in a hash of (ns, pod) when the plain form
    would be too long, would need characters replaced, or would be ambiguous (a `-` in the
    namespace: `a-b`/`c` and `a`/`b-c` must not meet)."""
    if not namespace or not pod:
        raise ValueError("pod namespace and name must not be empty")
    prefix = f"mw{cluster}-"
    body = f"{namespace}-{pod}"
    clean = _UNSAFE.sub("-", body)
    if clean == body and "-" not in namespace and len(prefix + body) <= NETNS_NAME_MAX:
        return prefix + body
    digest = _digest(namespace, pod, size=8)
    keep = NETNS_NAME_MAX - len(prefix) - 1 - len(digest)
    return f"{prefix}{clean[:keep]}-{digest}"


def fabric_veth_name(cluster: str, n: int) -> str:
    """The fabric-side end of node N's uplink (the node side is `fab0`)."""
    return f"m{cluster}{_digest('node', str(n), size=8)}"


def pod_veth_name(cluster: str, namespace: str, pod: str) -> str:
    """The node-side end of a pod's veth (the pod side is `eth0`)."""
    return f"m{cluster}{_digest('pod', namespace, pod, size=8)}"


def node_fabric_ip(n: int) -> str:
    return str(FABRIC_NET.network_address + n)


def node_gateway_ip(n: int) -> str:
    """The node's own address on the pod side: 10.244.N.1."""
    return str(node_cidr(n).network_address + 1)


# -- plans ---------------------------------------------------------------------------------------
def _ip(netns: str, *args: str) -> Cmd:
    return ["ip", "-n", netns, *args]


def _sysctl(netns: str, *settings: str) -> Cmd:
    return ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings]


def _check_node(n: int, node_count: int) -> None:
    if not 1 <= node_count <= MAX_NODES:
        raise ValueError(f"node count must be 1..{MAX_NODES}, got {node_count}")
    if not 1 <= n <= node_count:
        raise ValueError(f"node must be 1..{node_count}, got {n}")


def plan_fabric(cluster: str) -> list[Cmd]:
    fab = fabric_netns_name(cluster)
    return [["ip", "netns", "add", fab],
            _ip(fab, "link", "set", "lo", "up"),
            _ip(fab, "link", "add", FABRIC_BRIDGE, "type", "bridge"),
            _ip(fab, "link", "set", FABRIC_BRIDGE, "up")]


def plan_node(cluster: str, n: int, node_count: int) -> list[Cmd]:
    """Node N: its netns, forwarding on, rp_filter off, an uplink on the fabric bridge, and a route
    to every other node's pod /24 through that node's fabric address."""
    _check_node(n, node_count)
    node, fab, uplink = node_netns_name(cluster, n), fabric_netns_name(cluster), fabric_veth_name(cluster, n)
    return [["ip", "netns", "add", node],
            _ip(node, "link", "set", "lo", "up"),
            _sysctl(node, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0"),
            _ip(fab, "link", "add", uplink, "type", "veth", "peer", "name", NODE_UPLINK, "netns", node),
            _ip(fab, "link", "set", uplink, "master", FABRIC_BRIDGE),
            _ip(fab, "link", "set", uplink, "up"),
            _ip(node, "addr", "add", f"{node_fabric_ip(n)}/{FABRIC_NET.prefixlen}", "dev", NODE_UPLINK),
            _ip(node, "link", "set", NODE_UPLINK, "up"),
            *[_ip(node, "route", "add", str(node_cidr(m)), "via", node_fabric_ip(m), "dev", NODE_UPLINK)
              for m in range(1, node_count + 1) if m != n]]


def check_pod_ip(node: int, ip: str) -> None:
    addr, cidr = ipaddress.ip_address(ip), node_cidr(node)
    if addr not in cidr or int(addr) - int(cidr.network_address) < 2 or addr == cidr.broadcast_address:
        raise ValueError(f"pod IP {ip} is not a pod address of node {node} ({cidr}, .2 to .254)")


def plan_pod(cluster: str, node: int, pod_ns: str, pod: str, ip: str) -> list[Cmd]:
    """A pod on node N: low ports open to its users, a veth whose pod end is `eth0` (<ip>/32, default
    via 10.244.N.1) and whose node end carries 10.244.N.1/32 (so REDIRECT/TPROXY in the node netns
    have an address) and a /32 route back to the pod."""
    check_pod_ip(node, ip)
    netns, node_ns = pod_netns_name(cluster, pod_ns, pod), node_netns_name(cluster, node)
    veth, gateway = pod_veth_name(cluster, pod_ns, pod), node_gateway_ip(node)
    return [["ip", "netns", "add", netns],
            _ip(netns, "link", "set", "lo", "up"),
            # as containerd and Docker set them: a pod's unprivileged users may bind ports below 1024
            # (httpbin listens on 80) and ping, in the pod's own namespace only
            _sysctl(netns, "net.ipv4.ip_unprivileged_port_start=0", "net.ipv4.ping_group_range=0 2147483647"),
            _ip(node_ns, "link", "add", veth, "type", "veth", "peer", "name", POD_IFACE, "netns", netns),
            _sysctl(node_ns, f"net.ipv4.conf.{veth}.rp_filter=0"),
            _ip(node_ns, "addr", "add", f"{gateway}/32", "dev", veth),
            _ip(node_ns, "link", "set", veth, "up"),
            _ip(node_ns, "route", "add", f"{ip}/32", "dev", veth),
            _ip(netns, "addr", "add", f"{ip}/32", "dev", POD_IFACE),
            _ip(netns, "link", "set", POD_IFACE, "up"),
            _ip(netns, "route", "add", gateway, "dev", POD_IFACE, "scope", "link"),
            _ip(netns, "route", "add", "default", "via", gateway, "dev", POD_IFACE)]


def plan_remove_pod(cluster: str, node: int, pod_ns: str, pod: str) -> list[Cmd]:
    """The node end goes first: deleting it takes the pod's eth0 with it even if something still
    holds the pod netns open."""
    return [_ip(node_netns_name(cluster, node), "link", "del", pod_veth_name(cluster, pod_ns, pod)),
            ["ip", "netns", "del", pod_netns_name(cluster, pod_ns, pod)]]


def _unlink_fabric(cluster: str) -> list[Cmd]:
    return [_ip(fabric_netns_name(cluster), "link", "del", FABRIC_BRIDGE)]


def _unlink_node(cluster: str, n: int) -> list[Cmd]:
    return [_ip(fabric_netns_name(cluster), "link", "del", fabric_veth_name(cluster, n)),
            _ip(node_netns_name(cluster, n), "link", "del", NODE_UPLINK)]


def _unlink_pod(cluster: str, node: int, pod_ns: str, pod: str) -> list[Cmd]:
    return [_ip(node_netns_name(cluster, node), "link", "del", pod_veth_name(cluster, pod_ns, pod)),
            _ip(pod_netns_name(cluster, pod_ns, pod), "link", "del", POD_IFACE)]


# -- /etc/netns/<pod>/hosts ----------------------------------------------------------------------
def service_hostnames(name: str, namespace: str, client_namespace: str | None = None) -> list[str]:
    """The names a pod in `client_namespace` resolves a Service by, as the cluster DNS and the pod's
    search path (`<its namespace>.svc.cluster.local svc.cluster.local cluster.local`) give them: the
    short name only for a Service of its own namespace (None: every name)."""
    qualified = [f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    return ([name] if client_namespace in (None, namespace) else []) + qualified


def render_hosts(pod: str, ip: str, entries: list[tuple[str, list[str]]]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{ip}\t{pod}"]
    lines += [f"{address}\t{' '.join(names)}" for address, names in entries if names]
    return "\n".join(lines) + "\n"


# No DNS server runs in the cluster: names come from the hosts file. Without this file a pod would use
# the host's nameserver, which it cannot reach, and every lookup the hosts file does not answer
# (an IPv6 lookup of a service name, say) would stall for the resolver's 5 s timeout; 127.0.0.1
# refuses at once.
RESOLV_CONF = "# meshway: names come from /etc/hosts; no DNS server in the cluster\nnameserver 127.0.0.1\n"


def rewrite_in_place(path: Path, text: str) -> None:
    """Replace a file's content without replacing its inode.

    `ip netns exec` bind-mounts /etc/netns/NAME/hosts onto /etc/hosts; a rename would give running
    processes a stale view forever, so an existing file is overwritten in one write, padded with
    blank lines to at least the old length, then truncated: a reader sees the old text, or the new
    text (possibly followed by blank lines). A new file is written to a temporary name and renamed.
    """
    data = text.encode()
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # pods read it as their own users; only root writes it, whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.fchmod(fd, 0o644)
        padded = data + b"\n" * max(0, os.fstat(fd).st_size - len(data))
        written = 0
        while written < len(padded):
            written += os.pwrite(fd, padded[written:], written)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


# -- executor ------------------------------------------------------------------------------------
_GONE = ("No such file or directory", "Cannot find device", "does not exist")


def run(cmds: list[Cmd]) -> None:
    """Run commands in order; the first failure raises NetnsError naming the command and stderr."""
    for cmd in cmds:
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise NetnsError(f"`{shlex.join(cmd)}` failed: {cmd[0]} not found", cmd) from None
        except subprocess.CalledProcessError as e:
            err = (e.stderr or e.stdout or "").strip()
            raise NetnsError(f"`{shlex.join(cmd)}` failed (exit {e.returncode}): {err or 'no output'}",
                             cmd, err) from None


def run_missing_ok(cmds: list[Cmd]) -> list[NetnsError]:
    """Run every command; failures because the thing is already gone are ignored, others returned."""
    errors = []
    for cmd in cmds:
        try:
            run([cmd])
        except NetnsError as e:
            if not any(marker in e.stderr for marker in _GONE):
                errors.append(e)
    return errors


class Host(Protocol):
    """What the runtime needs from the machine (tests substitute a fake)."""

    def run(self, cmds: list[Cmd]) -> None: ...

    def run_missing_ok(self, cmds: list[Cmd]) -> list[NetnsError]: ...

    def netns_list(self) -> set[str]: ...

    def link_exists(self, netns: str, dev: str) -> bool: ...

    def netns_pids(self, netns: str) -> set[int]: ...

    def kill(self, pid: int, sig: int) -> None: ...


class System:
    """The real machine, through `ip`."""

    run = staticmethod(run)
    run_missing_ok = staticmethod(run_missing_ok)

    def netns_list(self) -> set[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def link_exists(self, netns: str, dev: str) -> bool:
        return subprocess.run(["ip", "-n", netns, "link", "show", "dev", dev], capture_output=True).returncode == 0

    def netns_pids(self, netns: str) -> set[int]:
        done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        return {int(p) for p in done.stdout.split()} if done.returncode == 0 else set()

    def kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_netns_processes(host: Host, names: list[str], grace: float = 2.0) -> None:
    """SIGTERM every process inside these namespaces, SIGKILL what is left after `grace` seconds."""
    def inside() -> set[int]:
        return {pid for name in names for pid in host.netns_pids(name)} - {os.getpid()}

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        pids = inside()
        if not pids:
            return
        for pid in pids:
            host.kill(pid, sig)
        deadline = time.monotonic() + wait
        while inside() and time.monotonic() < deadline:
            time.sleep(0.05)


def detect_capability() -> str | None:
    """None when netns + veth + iptables (nat REDIRECT) work here, else the reason they do not."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "sysctl", "setpriv"):  # setpriv: util-linux, runs pods unprivileged
        if not shutil.which(tool):
            return f"{tool} not found on PATH"
    name = f"mwcap-{os.getpid():x}-{secrets.token_hex(2)}"
    try:
        run([["ip", "netns", "add", name],
             _ip(name, "link", "add", "mwcap0", "type", "veth", "peer", "name", "mwcap1"),
             _ip(name, "link", "set", "mwcap0", "up"),
             ["ip", "netns", "exec", name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
              "--dport", "1", "-j", "REDIRECT", "--to-ports", "2"]])
    except NetnsError as e:
        return str(e)
    finally:
        run_missing_ok([["ip", "netns", "del", name]])
    return None


# -- state ---------------------------------------------------------------------------------------
def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / "run" / "cluster.json"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(path: Path, state: dict[str, Any]) -> None:
    """Atomically and durably, owner-only (0600 in a 0700 folder) whatever the umask."""
    make_private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), FILE_MODE)
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def recorded_node_count(state_dir: Path) -> int | None:
    """The node count of the cluster recorded in `state_dir`, if one is."""
    state = _load(state_path(state_dir))
    return int(state["node_count"]) if state else None


def _recorded_netns(state: dict[str, Any]) -> list[str]:
    """Pods first, then nodes, then the fabric: the order things are taken down in."""
    names = [p["netns"] for p in state["pods"].values()] + [n["netns"] for n in state["nodes"].values()]
    return names + ([state["fabric"]["netns"]] if state.get("fabric") else [])


def down(state_dir: Path, host: Host | None = None) -> None:
    """Remove exactly what `<state_dir>/run/cluster.json` records, tolerating what is already gone:
    processes inside our namespaces, veths, namespaces, /etc/netns folders; the file goes last."""
    path = state_path(state_dir)
    state = _load(path)
    if state is None:
        return
    host = host or System()
    names = _recorded_netns(state)
    present = host.netns_list()
    kill_netns_processes(host, [n for n in names if n in present])
    links = [_ip(p["node_netns"], "link", "del", p["host_veth"]) for p in state["pods"].values()]
    if state.get("fabric"):
        links += [_ip(state["fabric"]["netns"], "link", "del", n["fabric_veth"]) for n in state["nodes"].values()]
    cmds = [c for c in links if c[2] in present] + [["ip", "netns", "del", n] for n in names if n in present]
    errors = host.run_missing_ok(cmds)
    etc = Path(state["etc_netns"])
    for name in names:
        shutil.rmtree(etc / name, ignore_errors=True)
    if state.get("pod_homes"):
        shutil.rmtree(state["pod_homes"], ignore_errors=True)
    if state.get("etc_netns_created"):
        try:
            etc.rmdir()
        except OSError:  # not empty (another cluster uses it) or already gone
            pass
    if errors:
        raise NetnsError(f"down: {len(errors)} command(s) failed, state kept in {path}:\n"
                         + "\n".join(str(e) for e in errors))
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
    path.unlink()
    _fsync_dir(path.parent)


# -- the shell -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodNet:
    netns: str
    node_netns: str
    host_veth: str  # the node-side veth: match it with `-i` in node iptables rules


class ClusterNet:
    """The cluster's namespaces, recorded in `<state_dir>/run/cluster.json` before they are made.

    Several processes may share one state folder (the node agents of `meshway up --kubernetes`, one
    per node, on the network the cluster made): every read-modify-write of the state file holds an
    exclusive `flock` on `<state_dir>/run/cluster.lock` (re-entrant within a process)."""

    def __init__(self, state_dir: Path, nodes: int, *, host: Host | None = None, etc_netns: Path = ETC_NETNS,
                 pod_homes: Path = POD_HOMES):
        _check_node(1, nodes)
        self.state_dir = Path(state_dir)
        self.nodes = nodes
        self.id = cluster_id(self.state_dir)
        self.host: Host = host or System()
        self.etc_netns = Path(etc_netns)
        self.pod_homes = Path(pod_homes) / f"mw{self.id}"
        self.path = state_path(self.state_dir)
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                make_private_dir(self.path.parent)
                self._lock_fd = os.open(self.path.with_name("cluster.lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    # names
    def node_netns(self, n: int) -> str:
        _check_node(n, self.nodes)
        return node_netns_name(self.id, n)

    def pod_netns(self, namespace: str, pod: str) -> str:
        return pod_netns_name(self.id, namespace, pod)

    def exec_prefix(self, namespace: str, pod: str) -> list[str]:
        return ["ip", "netns", "exec", self.pod_netns(namespace, pod)]

    def pod_home(self, namespace: str, pod: str) -> Path:
        """Where the pod's unprivileged users get their HOME (made by the pod's runtime, removed with
        the pod and by `down`); outside the state folder, which they cannot enter."""
        return self.pod_homes / self.pod_netns(namespace, pod)

    # state
    def _state(self) -> dict[str, Any]:
        state = _load(self.path)
        if state is None:
            return {"version": STATE_VERSION, "cluster": self.id, "node_count": self.nodes,
                    "etc_netns": str(self.etc_netns), "etc_netns_created": False, "pod_homes": str(self.pod_homes),
                    "fabric": None, "nodes": {}, "pods": {}}
        state.setdefault("pod_homes", str(self.pod_homes))  # recorded by an older meshway without it
        if state["node_count"] != self.nodes:
            raise NetnsError(f"the cluster in {self.path} has {state['node_count']} nodes, not {self.nodes}: "
                             "run `meshway down` first")
        return state

    def _claim(self, name: str, present: set[str], recorded: bool) -> None:
        if name in present and not recorded:
            raise NetnsError(f"network namespace {name} exists but is not recorded in {self.path}: it belongs "
                             f"to another cluster or to a run whose state was lost (remove it: ip netns del {name})")

    def _realize(self, state: dict[str, Any], rec: dict[str, Any], plan: list[Cmd], unlink: list[Cmd],
                 present: set[str]) -> None:
        """Write-ahead: record the piece as not ready, then build it (in its existing netns if there
        is one, so processes inside keep running), then record it ready."""
        rec["ready"] = False
        _save(self.path, state)
        if rec["netns"] in present:
            self.host.run_missing_ok(unlink)
            plan = [c for c in plan if c[:3] != ["ip", "netns", "add"]]
        self.host.run(plan)
        rec["ready"] = True
        _save(self.path, state)

    # lifecycle
    def up(self) -> None:
        with self._locked():
            return self._up()

    def _up(self) -> None:
        """Make the fabric and the nodes; pieces already made and intact are kept, broken or
        half-made ones (a crash) are rebuilt."""
        state = self._state()
        present = self.host.netns_list()
        fab = fabric_netns_name(self.id)
        self._claim(fab, present, state["fabric"] is not None)
        fabric_fresh = not (state["fabric"] and state["fabric"]["ready"] and fab in present
                            and self.host.link_exists(fab, FABRIC_BRIDGE))
        if fabric_fresh:
            state["fabric"] = {"netns": fab}
            self._realize(state, state["fabric"], plan_fabric(self.id), _unlink_fabric(self.id), present)
        for n in range(1, self.nodes + 1):
            name, rec = node_netns_name(self.id, n), state["nodes"].get(str(n))
            self._claim(name, present, rec is not None)
            if fabric_fresh or not (rec and rec["ready"] and name in present
                                    and self.host.link_exists(name, NODE_UPLINK)):
                rec = state["nodes"][str(n)] = {"netns": name, "fabric_veth": fabric_veth_name(self.id, n)}
                self._realize(state, rec, plan_node(self.id, n, self.nodes), _unlink_node(self.id, n), present)
        for rec in list(state["pods"].values()):
            if not self._pod_intact(rec, present):
                self._realize(state, rec, plan_pod(self.id, rec["node"], rec["namespace"], rec["pod"], rec["ip"]),
                              _unlink_pod(self.id, rec["node"], rec["namespace"], rec["pod"]), present)

    def _pod_intact(self, rec: dict[str, Any], present: set[str]) -> bool:
        return (rec.get("ready", False) and rec["netns"] in present and self.host.link_exists(rec["netns"], POD_IFACE)
                and self.host.link_exists(rec["node_netns"], rec["host_veth"]))

    def add_pod(self, namespace: str, pod: str, ip: str, node: int) -> PodNet:
        with self._locked():
            return self._add_pod(namespace, pod, ip, node)

    def _add_pod(self, namespace: str, pod: str, ip: str, node: int) -> PodNet:
        """Give a pod its netns, veth and address on `node` (kept if already there), and its
        /etc/netns files (hosts, resolv.conf), so that processes started with `exec_prefix` see
        them from the start (`ip netns exec` mounts them only when a process starts)."""
        _check_node(node, self.nodes)
        check_pod_ip(node, ip)
        state = self._state()
        if not state["fabric"]:
            raise NetnsError("add_pod before up()")
        key, name = f"{namespace}/{pod}", pod_netns_name(self.id, namespace, pod)
        rec = state["pods"].get(key)
        if rec and (rec["ip"], rec["node"]) != (ip, node):
            raise NetnsError(f"pod {key} already has {rec['ip']} on node {rec['node']}: remove_pod first")
        if any(other["netns"] == name for k, other in state["pods"].items() if k != key):
            raise NetnsError(f"pod {key}: network namespace name {name} is taken by another pod")
        present = self.host.netns_list()
        self._claim(name, present, rec is not None)
        if rec is None:
            rec = state["pods"][key] = {"namespace": namespace, "pod": pod, "ip": ip, "node": node, "netns": name,
                                        "node_netns": node_netns_name(self.id, node),
                                        "host_veth": pod_veth_name(self.id, namespace, pod)}
        if not self._pod_intact(rec, present):
            try:
                self._realize(state, rec, plan_pod(self.id, node, namespace, pod, ip),
                              _unlink_pod(self.id, node, namespace, pod), present)
            except Exception:  # leave nothing half-made behind (a crash is left to up() or down())
                with contextlib.suppress(NetnsError):
                    self.remove_pod(namespace, pod)
                raise
        if not (self.etc_netns / name / "hosts").exists():
            self.write_hosts(namespace, pod, ip, [])
        if not (self.etc_netns / name / "resolv.conf").exists():
            rewrite_in_place(self.etc_netns / name / "resolv.conf", RESOLV_CONF)
        return PodNet(rec["netns"], rec["node_netns"], rec["host_veth"])

    def recorded_pods(self, node: int | None = None) -> list[tuple[str, str]]:
        """(namespace, pod) of every pod recorded in the state file (on `node`, if given)."""
        state = _load(self.path)
        return sorted((r["namespace"], r["pod"]) for r in (state or {}).get("pods", {}).values()
                      if node is None or r["node"] == node)

    def remove_pod(self, namespace: str, pod: str) -> None:
        with self._locked():
            return self._remove_pod(namespace, pod)

    def _remove_pod(self, namespace: str, pod: str) -> None:
        """Kill what runs in the pod's netns, remove its veth, netns and /etc/netns folder."""
        state = self._state()
        rec = state["pods"].get(f"{namespace}/{pod}")
        if rec is None:
            return
        kill_netns_processes(self.host, [rec["netns"]])
        errors = self.host.run_missing_ok(plan_remove_pod(self.id, rec["node"], namespace, pod))
        if errors:
            raise errors[0]
        shutil.rmtree(self.etc_netns / rec["netns"], ignore_errors=True)
        shutil.rmtree(self.pod_homes / rec["netns"], ignore_errors=True)
        del state["pods"][f"{namespace}/{pod}"]
        _save(self.path, state)

    def write_hosts(self, namespace: str, pod: str, ip: str, entries: list[tuple[str, list[str]]]) -> Path:
        with self._locked():
            return self._write_hosts(namespace, pod, ip, entries)

    def _write_hosts(self, namespace: str, pod: str, ip: str, entries: list[tuple[str, list[str]]]) -> Path:
        """(Re)write the pod's /etc/hosts: localhost, itself, and `entries` (address, names), e.g.
        `(vip, service_hostnames("reviews", "default"))`. Running processes see the change."""
        state = self._state()
        rec = state["pods"].get(f"{namespace}/{pod}")
        if rec is None:
            raise NetnsError(f"write_hosts: pod {namespace}/{pod} was not added")
        if not self.etc_netns.exists():
            state["etc_netns_created"] = True
            _save(self.path, state)
            self.etc_netns.mkdir(parents=True, exist_ok=True)
            os.chmod(self.etc_netns, 0o755)
        folder = self.etc_netns / rec["netns"]
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)  # a pod's users read its hosts and resolv.conf; only root writes them
        rewrite_in_place(folder / "hosts", render_hosts(pod, ip, entries))
        return folder / "hosts"

    def down(self) -> None:
        down(self.state_dir, self.host)
