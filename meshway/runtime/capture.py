"""Traffic capture for a node proxy: the iptables rules of one node's network namespace (pure
rules + a thin applier). Only pods in the ambient mesh are captured; everything else is untouched.

  PREROUTING  -s <mesh pod>                -> REDIRECT :15001  (its outbound traffic)
  PREROUTING  -d <mesh pod> --dport 15008  -> REDIRECT :15008  (HBONE for it)
  PREROUTING  -d <mesh pod>                -> REDIRECT :15006  (plaintext for it)
  OUTPUT      -d <mesh pod> --dport 15008  -> REDIRECT :15008  (HBONE from this node's own proxy)

kube-proxy's part for pods outside the mesh (service VIP -> one of its pods) runs in each such pod's
own namespace (OUTPUT, chain MESHWAY-SVC), so the connection leaves the pod already addressed to the
destination pod and meets the destination's capture (and L4 policy) on every node, the same node
included. A mesh pod gets the chain empty: its traffic to a VIP goes to its node proxy as is.

Guaranteed traversal for a pod outside the mesh (no node proxy sees its traffic): its own namespace
filters what arrives on a guarded port (filter table, INPUT, chain MESHWAY-GUARD), admitting only
the pods of its waypoints (and the pod itself, over lo: its probes); connections already open from
anyone else are closed at once (`ss -K`, `plan_guard_kills`).
"""
from __future__ import annotations

import subprocess

PRE, OUT, SVC, GUARD = "MESHWAY-PRE", "MESHWAY-OUT", "MESHWAY-SVC", "MESHWAY-GUARD"
Backends = tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]  # (VIP, port, ((pod IP, target port), ...))
Filters = tuple[tuple[int, tuple[str, ...]], ...]  # ((guarded port, (admitted address, ...)), ...)


def build_service_nat(backends: Backends) -> str:
    """iptables-restore input (nat table) for a pod outside the mesh: each service VIP:port is DNATed
    to one of its pods, chosen at random (`statistic` probabilities 1/n, 1/(n-1), ... 1); with no
    backends, the chain is emptied (a pod in the mesh)."""
    lines = ["*nat", f":{SVC} - [0:0]"]
    for vip, port, pods in backends:
        for i, (ip, target) in enumerate(pods):
            left = len(pods) - i
            chance = f"-m statistic --mode random --probability {1 / left:.5f} " if left > 1 else ""
            lines.append(f"-A {SVC} -d {vip}/32 -p tcp --dport {port} {chance}-j DNAT --to-destination {ip}:{target}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def build_capture_rules(mesh_pod_ips: list[str]) -> str:
    """iptables-restore input (nat table) that replaces the node's two chains."""
    lines = ["*nat", f":{PRE} - [0:0]", f":{OUT} - [0:0]"]
    for ip in sorted(mesh_pod_ips):
        lines.append(f"-A {PRE} -s {ip}/32 -p tcp -j REDIRECT --to-ports 15001")
    for ip in sorted(mesh_pod_ips):
        lines.append(f"-A {PRE} -d {ip}/32 -p tcp --dport 15008 -j REDIRECT --to-ports 15008")
        lines.append(f"-A {PRE} -d {ip}/32 -p tcp -j REDIRECT --to-ports 15006")
        lines.append(f"-A {OUT} -d {ip}/32 -p tcp --dport 15008 -j REDIRECT --to-ports 15008")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def build_guard_rules(filters: Filters) -> str:
    """iptables-restore input (filter table) for a pod outside the mesh: on each guarded port, TCP
    from an admitted address passes, from anyone else (in the connection's original direction: the
    pod's own outgoing connections are not touched) is answered with a reset; the pod's own traffic
    over lo (its probes) passes. No filters: the chain is emptied."""
    lines = ["*filter", f":{GUARD} - [0:0]"]
    if filters:
        lines.append(f"-A {GUARD} -i lo -j RETURN")
    for port, admitted in filters:
        for ip in admitted:
            lines.append(f"-A {GUARD} -s {ip}/32 -p tcp --dport {port} -j RETURN")
        lines.append(f"-A {GUARD} -p tcp --dport {port} -m conntrack --ctdir ORIGINAL "
                     "-j REJECT --reject-with tcp-reset")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def plan_guard_kills(before: Filters, after: Filters, by_address: bool = True) -> list[list[str]]:
    """`ss -K` commands (run in the pod's namespace) that close the established connections a
    change of guards now refuses: on a port newly guarded, or whose admitted set shrank, every
    connection from an address not admitted. `by_address` False (a mesh pod: what it admits are
    waypoint names, and every connection comes from its node proxy): every connection on the port."""
    old = dict(before)
    cmds = []
    for port, admitted in after:
        if port in old and set(old[port]) <= set(admitted):
            continue
        keep = " or ".join(f"dst {ip}" for ip in admitted) if by_address else ""
        expr = f"( sport = :{port} )" + (f" and not ( {keep} )" if keep else "")
        cmds.append(["ss", "-K", "-tn", "state", "established", expr])
    return cmds


def _restore(netns: str, rules: str, jumps: tuple[tuple[str, str], ...], table: str = "nat") -> None:
    """Replace meshway's chains in one atomic iptables-restore (other chains untouched), then add
    the jumps to them once."""
    prefix = ["ip", "netns", "exec", netns]
    subprocess.run(prefix + ["iptables-restore", "--noflush"], input=rules, text=True, check=True, capture_output=True)
    for chain, hook in jumps:
        check = subprocess.run(prefix + ["iptables", "-t", table, "-C", hook, "-j", chain], capture_output=True)
        if check.returncode != 0:
            subprocess.run(prefix + ["iptables", "-t", table, "-A", hook, "-j", chain], check=True,
                           capture_output=True)


def apply_service_nat(pod_netns: str, backends: Backends) -> None:
    """kube-proxy's rules in one pod's namespace (empty for a pod in the mesh)."""
    _restore(pod_netns, build_service_nat(backends), ((SVC, "OUTPUT"),))


def apply_capture_rules(netns: str, mesh_pod_ips: list[str]) -> None:
    """Install the capture rules in a node namespace (idempotent)."""
    _restore(netns, build_capture_rules(mesh_pod_ips), ((PRE, "PREROUTING"), (OUT, "OUTPUT")))


def apply_guard_rules(pod_netns: str, before: Filters, after: Filters) -> None:
    """A pod outside the mesh: its guard chain, then the connections it now refuses closed."""
    _restore(pod_netns, build_guard_rules(after), ((GUARD, "INPUT"),), table="filter")
    close_connections(pod_netns, plan_guard_kills(before, after))


def close_connections(pod_netns: str, cmds: list[list[str]]) -> None:
    for cmd in cmds:
        subprocess.run(["ip", "netns", "exec", pod_netns, *cmd], check=True, capture_output=True)
