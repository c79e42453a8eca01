"""The network-namespace cluster runtime.

Plan tests (names, commands, hosts files, write-ahead state with a fake host) run anywhere. The
end-to-end tests build real namespaces and need root, `ip` and `iptables`: without them they skip,
or fail when MESHWAY_REQUIRE_E2E=1 (CI as root).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshway.runtime import netns as N
from meshway.runtime.netns import ClusterNet, NetnsError

CID = "ab12"
IFNAME = re.compile(r"^[a-z0-9]{1,15}$")


# -- names ---------------------------------------------------------------------------------------
def test_cluster_id_is_four_hex_chars_of_the_resolved_state_dir(tmp_path: Path):
    a = N.cluster_id(tmp_path / "state")
    assert re.fullmatch(r"[0-9a-f]{4}", a)
    assert N.cluster_id(tmp_path / "x" / ".." / "state") == a
    assert N.cluster_id(tmp_path / "other") != a


@pytest.mark.parametrize("namespace, pod, expected", [
    ("default", "reviews-v1-abc", "mwab12-default-reviews-v1-abc"),
    ("bookinfo", "productpage.v1", "mwab12-bookinfo-productpage.v1"),
])
def test_pod_netns_name_is_readable_when_it_can_be(namespace, pod, expected):
    assert N.pod_netns_name(CID, namespace, pod) == expected


def test_pod_netns_names_stay_short_valid_and_distinct():
    long_pod = "p" * 253
    names = [N.pod_netns_name(CID, "default", long_pod), N.pod_netns_name(CID, "default", long_pod[:-1] + "q"),
             N.pod_netns_name(CID, "a-b", "c"), N.pod_netns_name(CID, "a", "b-c"),
             N.pod_netns_name(CID, "Weird ns", "x/y"), N.pod_netns_name(CID, "weird-ns", "x-y")]
    assert len(set(names)) == len(names)
    for name in names:
        assert len(name) <= 63 and re.fullmatch(r"mwab12-[A-Za-z0-9_.-]+", name), name
    assert N.pod_netns_name(CID, "default", long_pod) == names[0]  # deterministic


def test_node_and_fabric_names():
    assert N.fabric_netns_name(CID) == "mwab12-fabric"
    assert N.node_netns_name(CID, 3) == "mwab12-node3"


def test_interface_names_fit_ifnamsiz_and_do_not_collide():
    pods = {N.pod_veth_name(CID, "default", f"pod-{i}") for i in range(500)}
    nodes = {N.fabric_veth_name(CID, n) for n in range(1, 255)}
    assert len(pods) == 500 and len(nodes) == 254 and not pods & nodes
    for name in pods | nodes:
        assert IFNAME.match(name) and name.startswith(f"m{CID}"), name
    assert N.pod_veth_name(CID, "default", "pod-1") == N.pod_veth_name(CID, "default", "pod-1")


# -- plans ---------------------------------------------------------------------------------------
def test_plan_fabric():
    assert N.plan_fabric(CID) == [
        ["ip", "netns", "add", "mwab12-fabric"],
        ["ip", "-n", "mwab12-fabric", "link", "set", "lo", "up"],
        ["ip", "-n", "mwab12-fabric", "link", "add", "br0", "type", "bridge"],
        ["ip", "-n", "mwab12-fabric", "link", "set", "br0", "up"],
    ]


def test_plan_node_links_to_the_fabric_and_routes_to_every_other_node():
    uplink = N.fabric_veth_name(CID, 2)
    assert N.plan_node(CID, 2, 3) == [
        ["ip", "netns", "add", "mwab12-node2"],
        ["ip", "-n", "mwab12-node2", "link", "set", "lo", "up"],
        ["ip", "netns", "exec", "mwab12-node2", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
         "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"],
        ["ip", "-n", "mwab12-fabric", "link", "add", uplink, "type", "veth", "peer", "name", "fab0",
         "netns", "mwab12-node2"],
        ["ip", "-n", "mwab12-fabric", "link", "set", uplink, "master", "br0"],
        ["ip", "-n", "mwab12-fabric", "link", "set", uplink, "up"],
        ["ip", "-n", "mwab12-node2", "addr", "add", "10.240.0.2/24", "dev", "fab0"],
        ["ip", "-n", "mwab12-node2", "link", "set", "fab0", "up"],
        ["ip", "-n", "mwab12-node2", "route", "add", "10.244.1.0/24", "via", "10.240.0.1", "dev", "fab0"],
        ["ip", "-n", "mwab12-node2", "route", "add", "10.244.3.0/24", "via", "10.240.0.3", "dev", "fab0"],
    ]


def test_plan_node_rejects_nodes_out_of_range():
    with pytest.raises(ValueError):
        N.plan_node(CID, 3, 2)
    with pytest.raises(ValueError):
        N.plan_node(CID, 1, 255)


def test_plan_pod():
    veth = N.pod_veth_name(CID, "default", "a")
    pod, node = "mwab12-default-a", "mwab12-node2"
    assert N.plan_pod(CID, 2, "default", "a", "10.244.2.7") == [
        ["ip", "netns", "add", pod],
        ["ip", "-n", pod, "link", "set", "lo", "up"],
        ["ip", "netns", "exec", pod, "sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=0",
         "net.ipv4.ping_group_range=0 2147483647"],
        ["ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod],
        ["ip", "netns", "exec", node, "sysctl", "-q", "-w", f"net.ipv4.conf.{veth}.rp_filter=0"],
        ["ip", "-n", node, "addr", "add", "10.244.2.1/32", "dev", veth],
        ["ip", "-n", node, "link", "set", veth, "up"],
        ["ip", "-n", node, "route", "add", "10.244.2.7/32", "dev", veth],
        ["ip", "-n", pod, "addr", "add", "10.244.2.7/32", "dev", "eth0"],
        ["ip", "-n", pod, "link", "set", "eth0", "up"],
        ["ip", "-n", pod, "route", "add", "10.244.2.1", "dev", "eth0", "scope", "link"],
        ["ip", "-n", pod, "route", "add", "default", "via", "10.244.2.1", "dev", "eth0"],
    ]


@pytest.mark.parametrize("ip", ["10.244.1.7", "10.244.2.0", "10.244.2.1", "10.244.2.255", "10.96.0.5"])
def test_plan_pod_rejects_addresses_that_are_not_pod_addresses_of_the_node(ip):
    with pytest.raises(ValueError):
        N.plan_pod(CID, 2, "default", "a", ip)


def test_plan_remove_pod_deletes_the_node_end_first():
    assert N.plan_remove_pod(CID, 1, "default", "a") == [
        ["ip", "-n", "mwab12-node1", "link", "del", N.pod_veth_name(CID, "default", "a")],
        ["ip", "netns", "del", "mwab12-default-a"],
    ]


def test_no_plan_touches_the_host_namespace():
    plans = [*N.plan_fabric(CID), *N.plan_node(CID, 1, 3), *N.plan_node(CID, 3, 3),
             *N.plan_pod(CID, 1, "istio-system", "ztunnel-x", "10.244.1.9"),
             *N.plan_remove_pod(CID, 1, "istio-system", "ztunnel-x")]
    for cmd in plans:
        assert cmd[0] == "ip", cmd
        target = cmd[2] if cmd[1] == "-n" else cmd[3]
        assert cmd[1] in ("-n", "netns") and target.startswith(f"mw{CID}-"), cmd


def test_hosts_file():
    text = N.render_hosts("a", "10.244.1.2", [("10.96.0.5", N.service_hostnames("reviews", "default", "default"))])
    assert text == ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.244.1.2\ta\n"
                    "10.96.0.5\treviews reviews.default reviews.default.svc reviews.default.svc.cluster.local\n")


def test_a_short_name_resolves_only_in_its_own_namespace():
    """As the cluster DNS with a pod's search path: `reviews` from namespace `other` is not
    default's reviews; the qualified names are the same everywhere."""
    assert N.service_hostnames("reviews", "default", "other") == [
        "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local"]
    from meshway.node.nodeproxy import build_service_hosts
    services = [{"metadata": {"name": "reviews", "namespace": ns}, "spec": {"clusterIP": ip}}
                for ns, ip in (("default", "10.96.0.5"), ("other", "10.96.0.6"))]
    for client, short in (("default", "10.96.0.5"), ("other", "10.96.0.6"), ("third", None)):
        entries = dict(build_service_hosts(services, client))
        assert [ip for ip, names in entries.items() if "reviews" in names] == ([short] if short else []), client
        assert "reviews.default" in entries["10.96.0.5"] and "reviews.other" in entries["10.96.0.6"]


def test_rewrite_in_place_keeps_the_inode(tmp_path: Path):
    """A bind mount pins the inode: a rename would leave running processes with the old file."""
    path = tmp_path / "hosts"
    N.rewrite_in_place(path, "first line\nsecond line\n")
    inode = path.stat().st_ino
    N.rewrite_in_place(path, "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode
    N.rewrite_in_place(path, "a much longer text than before\n" * 3)
    assert path.read_text() == "a much longer text than before\n" * 3 and path.stat().st_ino == inode


# -- executor ------------------------------------------------------------------------------------
def test_run_names_the_failed_command_and_its_stderr():
    with pytest.raises(NetnsError) as err:
        N.run([["true"], ["sh", "-c", "echo boom >&2; exit 3"], ["true"]])
    assert "sh -c 'echo boom >&2; exit 3'" in str(err.value) and "exit 3" in str(err.value)
    assert "boom" in str(err.value) and err.value.stderr == "boom"
    with pytest.raises(NetnsError, match="not found"):
        N.run([["meshway-no-such-program"]])


def test_run_missing_ok_ignores_only_things_already_gone():
    errors = N.run_missing_ok([["sh", "-c", "echo 'Cannot find device \"x\"' >&2; exit 1"],
                               ["sh", "-c", "echo 'RTNETLINK answers: Operation not permitted' >&2; exit 2"]])
    assert [e.stderr for e in errors] == ["RTNETLINK answers: Operation not permitted"]


# -- the shell, against a fake machine -----------------------------------------------------------
class Crash(BaseException):
    """A crash: not an Exception, so no rollback runs."""


class FakeHost:
    """Models namespaces and links (veth pairs die together); records every command."""

    def __init__(self, crash_at: int | None = None, on_run=None):
        self.netns: set[str] = set()
        self.links: set[tuple[str, str]] = set()
        self.peers: dict[tuple[str, str], tuple[str, str]] = {}
        self.log: list[list[str]] = []
        self.crash_at, self.on_run = crash_at, on_run

    def _drop(self, link):
        self.links.discard(link)
        peer = self.peers.pop(link, None)
        if peer:
            self.peers.pop(peer, None)
            self.links.discard(peer)

    def run(self, cmds):
        for cmd in cmds:
            if self.crash_at is not None and len(self.log) >= self.crash_at:
                raise Crash(cmd)
            if self.on_run:
                self.on_run(cmd)
            self.log.append(cmd)
            match cmd:
                case ["ip", "netns", "add", name]:
                    self.netns.add(name)
                case ["ip", "netns", "del", name]:
                    self.netns.discard(name)
                    for link in [link for link in self.links if link[0] == name]:
                        self._drop(link)
                case ["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", other]:
                    self.links |= {(ns, dev), (other, peer)}
                    self.peers[(ns, dev)], self.peers[(other, peer)] = (other, peer), (ns, dev)
                case ["ip", "-n", ns, "link", "add", dev, "type", "bridge"]:
                    self.links.add((ns, dev))
                case ["ip", "-n", ns, "link", "del", dev]:
                    self._drop((ns, dev))

    def run_missing_ok(self, cmds):
        self.run(cmds)
        return []

    def netns_list(self):
        return set(self.netns)

    def link_exists(self, netns, dev):
        return (netns, dev) in self.links

    def netns_pids(self, netns):
        return set()

    def kill(self, pid, sig):
        raise AssertionError("no processes in a fake cluster")


def fake_cluster(tmp_path: Path, host: FakeHost, nodes: int = 2) -> ClusterNet:
    return ClusterNet(tmp_path / "state", nodes, host=host, etc_netns=tmp_path / "etc-netns")


def test_every_piece_is_recorded_before_its_first_command(tmp_path: Path):
    path = N.state_path(tmp_path / "state")

    def check(cmd):
        target = cmd[2] if cmd[1] == "-n" else cmd[3]
        assert target in N._recorded_netns(json.loads(path.read_text())), cmd

    cluster = fake_cluster(tmp_path, FakeHost(on_run=check))
    cluster.up()
    cluster.add_pod("default", "a", "10.244.1.2", 1)
    cluster.add_pod("default", "b", "10.244.2.2", 2)
    state = json.loads(path.read_text())
    assert all(p["ready"] for p in state["pods"].values()) and state["fabric"]["ready"]


def test_up_and_add_pod_are_idempotent(tmp_path: Path):
    host = FakeHost()
    cluster = fake_cluster(tmp_path, host)
    cluster.up()
    first = cluster.add_pod("default", "a", "10.244.1.2", 1)
    count = len(host.log)
    cluster.up()
    assert cluster.add_pod("default", "a", "10.244.1.2", 1) == first
    assert len(host.log) == count
    with pytest.raises(NetnsError, match="remove_pod first"):
        cluster.add_pod("default", "a", "10.244.1.3", 1)


def test_a_new_cluster_net_on_a_recorded_cluster_adopts_it(tmp_path: Path):
    """A restarted control plane builds a new ClusterNet: it reuses every namespace, link and
    /etc/netns file recorded, running no command and tearing nothing down."""
    host = FakeHost()
    first = fake_cluster(tmp_path, host)
    first.up()
    first.add_pod("default", "a", "10.244.1.2", 1)
    first.write_hosts("default", "a", "10.244.1.2", [("10.96.0.10", ["reviews"])])
    hosts = (tmp_path / "etc-netns" / first.pod_netns("default", "a") / "hosts").read_text()
    state, count = N.state_path(tmp_path / "state").read_text(), len(host.log)
    again = fake_cluster(tmp_path, host)
    again.up()
    again.add_pod("default", "a", "10.244.1.2", 1)
    assert host.log[count:] == []
    assert N.state_path(tmp_path / "state").read_text() == state
    assert (tmp_path / "etc-netns" / first.pod_netns("default", "a") / "hosts").read_text() == hosts


def test_a_lost_link_is_rebuilt_inside_the_existing_netns(tmp_path: Path):
    host = FakeHost()
    cluster = fake_cluster(tmp_path, host)
    cluster.up()
    cluster.add_pod("default", "a", "10.244.1.2", 1)
    host.run([["ip", "-n", cluster.node_netns(1), "link", "del", "fab0"]])
    count = len(host.log)
    cluster.up()
    redone = host.log[count:]
    assert ["ip", "netns", "add", cluster.node_netns(1)] not in redone  # processes inside keep running
    assert ["ip", "-n", cluster.node_netns(1), "addr", "add", "10.240.0.1/24", "dev", "fab0"] in redone
    assert not any(cluster.pod_netns("default", "a") in cmd for cmd in redone)  # the pod was intact


def test_a_failed_add_pod_leaves_nothing_behind(tmp_path: Path):
    def fail_on_address(cmd):
        if cmd[3:5] == ["addr", "add"] and cmd[-1] == "eth0":
            raise NetnsError("`ip addr add` failed: RTNETLINK answers: Permission denied", cmd)

    host = FakeHost()
    cluster = fake_cluster(tmp_path, host)
    cluster.up()
    host.on_run = fail_on_address
    with pytest.raises(NetnsError, match="Permission denied"):
        cluster.add_pod("default", "a", "10.244.1.2", 1)
    assert json.loads(N.state_path(tmp_path / "state").read_text())["pods"] == {}
    assert cluster.pod_netns("default", "a") not in host.netns
    assert not any(link[1] == N.pod_veth_name(cluster.id, "default", "a") for link in host.links)


def test_up_refuses_a_namespace_it_did_not_record(tmp_path: Path):
    host = FakeHost()
    cluster = fake_cluster(tmp_path, host)
    host.netns.add(N.fabric_netns_name(cluster.id))
    with pytest.raises(NetnsError, match="not recorded"):
        cluster.up()
    assert host.log == []


def test_a_crash_midway_is_repaired_by_up_and_removed_by_down(tmp_path: Path):
    host = FakeHost()
    fake_cluster(tmp_path, host).up()
    host.crash_at = len(host.log) + 4
    with pytest.raises(Crash):
        fake_cluster(tmp_path, host).add_pod("default", "a", "10.244.1.2", 1)
    state = json.loads(N.state_path(tmp_path / "state").read_text())
    assert state["pods"]["default/a"]["ready"] is False
    host.crash_at = None
    fake_cluster(tmp_path, host).up()
    assert json.loads(N.state_path(tmp_path / "state").read_text())["pods"]["default/a"]["ready"] is True
    N.down(tmp_path / "state", host)
    assert host.netns == set() and host.links == set()
    assert not N.state_path(tmp_path / "state").exists()


def test_down_keeps_the_state_when_something_could_not_be_removed(tmp_path: Path):
    class Stubborn(FakeHost):
        def run_missing_ok(self, cmds):
            return [NetnsError("`ip netns del x` failed: Device or resource busy")]

    host = Stubborn()
    cluster = fake_cluster(tmp_path, host)
    cluster.up()
    with pytest.raises(NetnsError, match="state kept"):
        cluster.down()
    assert N.state_path(tmp_path / "state").exists()


def test_down_without_state_does_nothing(tmp_path: Path):
    host = FakeHost()
    N.down(tmp_path / "state", host)
    assert host.log == []


def test_down_removes_the_etc_netns_folders_it_made(tmp_path: Path):
    cluster = fake_cluster(tmp_path, FakeHost())
    cluster.up()
    cluster.add_pod("default", "a", "10.244.1.2", 1)
    hosts = cluster.write_hosts("default", "a", "10.244.1.2", [("10.96.0.5", ["reviews"])])
    assert hosts == tmp_path / "etc-netns" / cluster.pod_netns("default", "a") / "hosts"
    cluster.down()
    assert not (tmp_path / "etc-netns").exists()


# -- end to end: real namespaces -----------------------------------------------------------------
@pytest.fixture(scope="module")
def netns_capable():
    reason = N.detect_capability()
    if reason:
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(f"network-namespace cluster unavailable: {reason}")
        pytest.skip(f"network-namespace cluster unavailable: {reason}")


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def host_view() -> dict[str, str]:
    """What the host namespace looks like: links, routes (every table), iptables rules."""
    rules = "\n".join(line.split(" [")[0] for line in sh("iptables-save").splitlines() if not line.startswith("#"))
    return {"links": sh("ip", "-o", "link"), "routes": sh("ip", "-o", "route", "show", "table", "all"),
            "rules": rules}


def ours(cluster_id: str) -> list[str]:
    netns = [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]
    folders = os.listdir(N.ETC_NETNS) if N.ETC_NETNS.exists() else []
    return [name for name in netns + folders if name.startswith(f"mw{cluster_id}-")]


# Replies "<who> <peer address> <local address> <original destination>" to every connection.
SERVER = r"""
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(16)
while True:
    c, peer = s.accept()
    try:
        raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
        port, addr = struct.unpack("!2xH4s8x", raw)
        orig = f"{socket.inet_ntoa(addr)}:{port}"
    except OSError:
        orig = "-"
    c.sendall(f"{sys.argv[1]} {peer[0]} {c.getsockname()[0]} {orig}\n".encode())
    c.close()
"""

CLIENT = r"""
import socket, sys, time
deadline = time.monotonic() + 5
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
            print(s.makefile().readline().strip())
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"connect {sys.argv[1]}:{sys.argv[2]}: {e}")
        time.sleep(0.05)
"""

PORT = 7070


def ask(prefix: list[str], ip: str, port: int = PORT) -> list[str]:
    done = subprocess.run([*prefix, sys.executable, "-c", CLIENT, ip, str(port)], capture_output=True, text=True,
                          timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def serve(prefix: list[str], who: str, port: int = PORT) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-c", SERVER, who, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


PODS = {"a": ("10.244.1.2", 1), "b": ("10.244.1.3", 1), "c": ("10.244.2.2", 2)}


def test_two_node_cluster_end_to_end(tmp_path: Path, netns_capable):
    before = host_view()
    state_dir = tmp_path / "state"
    cluster = ClusterNet(state_dir, 2)
    procs: list[subprocess.Popen] = []
    try:
        cluster.up()
        nets = {pod: cluster.add_pod("default", pod, ip, node) for pod, (ip, node) in PODS.items()}
        assert host_view() == before  # nothing of the cluster is visible from the host namespace
        for address in ("10.244.1.2", "10.244.2.2", "10.96.0.5"):
            route = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True).stdout
            assert not any(net.host_veth in route for net in nets.values()) and "10.240." not in route

        servers = {pod: serve(cluster.exec_prefix("default", pod), pod) for pod in PODS}
        procs += servers.values()
        for src in PODS:  # every pod reaches every other, across the fabric too, without NAT
            for dst, (dst_ip, _) in PODS.items():
                if dst != src:
                    assert ask(cluster.exec_prefix("default", src), dst_ip)[:3] == [dst, PODS[src][0], dst_ip]

        cluster.up()  # idempotent: nothing rebuilt, running servers still reachable
        assert ask(cluster.exec_prefix("default", "a"), "10.244.2.2")[0] == "c"

        # Service names resolve from /etc/hosts, also for processes already running.
        vip_names = N.service_hostnames("reviews", "default")
        cluster.write_hosts("default", "a", "10.244.1.2", [("10.96.0.5", vip_names)])
        inside = sh(*cluster.exec_prefix("default", "a"), "cat", "/etc/hosts")
        assert "10.96.0.5\treviews reviews.default reviews.default.svc reviews.default.svc.cluster.local" in inside
        for name in ("reviews", "reviews.default", "reviews.default.svc.cluster.local"):
            assert sh(*cluster.exec_prefix("default", "a"), "getent", "hosts", name).split()[0] == "10.96.0.5"
        started = time.monotonic()  # a name nobody knows fails at once (no DNS timeout)
        assert subprocess.run([*cluster.exec_prefix("default", "a"), "getent", "hosts", "nosuch.example.com"],
                              capture_output=True).returncode != 0
        assert time.monotonic() - started < 1
        cluster.write_hosts("default", "a", "10.244.1.2", [("10.96.0.9", vip_names)])
        running = Path(f"/proc/{servers['a'].pid}/root/etc/hosts").read_text()
        assert "10.96.0.9\treviews " in running and "10.96.0.5" not in running

        # REDIRECT in a node netns lands on the node's pod-side address and keeps the original
        # destination (what the node proxy will need).
        node1 = ["ip", "netns", "exec", cluster.node_netns(1)]
        procs.append(serve(node1, "node1", 15001))
        sh(*node1, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", nets["a"].host_veth, "-p", "tcp",
           "--dport", "9999", "-j", "REDIRECT", "--to-ports", "15001")
        assert ask(cluster.exec_prefix("default", "a"), "10.244.2.2", 9999) == \
            ["node1", "10.244.1.2", "10.244.1.1", "10.244.2.2:9999"]

        # Removing a pod takes its netns, veth and hosts folder and leaves its neighbours working.
        cluster.remove_pod("default", "b")
        assert servers["b"].wait(timeout=5) is not None
        assert cluster.pod_netns("default", "b") not in ours(cluster.id)
        assert nets["b"].host_veth not in sh("ip", "-n", cluster.node_netns(1), "-o", "link")
        assert ask(cluster.exec_prefix("default", "a"), "10.244.2.2")[0] == "c"
        assert ask(cluster.exec_prefix("default", "c"), "10.244.1.2")[0] == "a"

        cluster.down()  # also stops the processes still running inside
        for proc in procs:
            assert proc.wait(timeout=5) is not None
    finally:
        N.down(state_dir)
        stop(procs)
    assert ours(cluster.id) == []
    assert not N.state_path(state_dir).exists()
    assert host_view() == before


def test_down_after_a_crash_removes_everything(tmp_path: Path, netns_capable):
    before = host_view()
    state_dir = tmp_path / "state"
    sleeper = None
    decoy = f"mw{N.cluster_id(state_dir)}-default-decoy"  # our prefix, but never recorded: down leaves it

    class CrashingSystem(N.System):
        def __init__(self, after: int):
            self.left = after

        def run(self, cmds):
            for cmd in cmds:
                if self.left == 0:
                    raise Crash(cmd)
                self.left -= 1
                N.run([cmd])

    etc_existed = N.ETC_NETNS.exists()
    try:
        sh("ip", "netns", "add", decoy)
        (N.ETC_NETNS / decoy).mkdir(parents=True)
        cluster = ClusterNet(state_dir, 2)
        cluster.up()
        cluster.add_pod("default", "a", "10.244.1.2", 1)
        sleeper = subprocess.Popen([*cluster.exec_prefix("default", "a"), "sleep", "60"])
        with pytest.raises(Crash):  # dies after the pod's netns and veth exist, before its address
            ClusterNet(state_dir, 2, host=CrashingSystem(after=4)).add_pod("default", "b", "10.244.1.3", 1)
        with pytest.raises(Crash):  # and a second cluster dies halfway through building node 2
            ClusterNet(tmp_path / "other", 2, host=CrashingSystem(after=len(N.plan_fabric("x")) + 12)).up()
        del cluster
        assert cluster_pieces_exist(state_dir) and cluster_pieces_exist(tmp_path / "other")

        N.down(state_dir)
        N.down(tmp_path / "other")
        assert sleeper.wait(timeout=5) is not None
        assert ours(N.cluster_id(state_dir)) == [decoy, decoy]  # the netns and its /etc/netns folder
    finally:
        N.down(state_dir)
        N.down(tmp_path / "other")
        if sleeper:
            stop([sleeper])
        subprocess.run(["ip", "netns", "del", decoy], capture_output=True)
        if (N.ETC_NETNS / decoy).exists():
            (N.ETC_NETNS / decoy).rmdir()
            if not etc_existed and not os.listdir(N.ETC_NETNS):
                N.ETC_NETNS.rmdir()
    assert ours(N.cluster_id(state_dir)) == [] and ours(N.cluster_id(tmp_path / "other")) == []
    assert host_view() == before


def cluster_pieces_exist(state_dir: Path) -> bool:
    """Some namespace of this cluster exists, and the state file records at least one that is not ready."""
    state = json.loads(N.state_path(state_dir).read_text())
    pieces = [state["fabric"], *state["nodes"].values(), *state["pods"].values()]
    return bool(ours(N.cluster_id(state_dir))) and any(not p["ready"] for p in pieces)


def test_request_simulation_resolves_as_the_callers_hosts_file(tmp_path: Path):
    """`explain --request` resolves a name as the caller's own /etc/hosts does."""
    from conftest import apply
    from meshway.mesh.request import parse_request
    from meshway.mesh.view import XDS_KINDS, MeshView
    from meshway.store import Store
    from meshway.xds.simulate import resolve_name

    store = Store(tmp_path / "s")
    apply(store, """
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
""")
    view = MeshView.build(store.snapshot(XDS_KINDS)[1])
    vip = view.services[("Service", "default", "reviews")].addresses[0]
    short, qualified = parse_request("GET http://reviews:9080/"), parse_request("GET http://reviews.default:9080/")
    assert resolve_name(view, short, "default")["address"] == vip
    assert resolve_name(view, short, "other")["error"].startswith("could not resolve host 'reviews'")
    assert resolve_name(view, qualified, "other")["address"] == vip
