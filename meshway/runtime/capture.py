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
"""
from __future__ import annotations

import subprocess

PRE, OUT, SVC = "MESHWAY-PRE", "MESHWAY-OUT", "MESHWAY-SVC"
Backends = tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]  # (VIP, port, ((pod IP, target port), ...))


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


def _restore(netns: str, rules: str, jumps: tuple[tuple[str, str], ...]) -> None:
    """Replace meshway's chains in one atomic iptables-restore (other chains untouched), then add
    the jumps to them once."""
    prefix = ["ip", "netns", "exec", netns]
    subprocess.run(prefix + ["iptables-restore", "--noflush"], input=rules, text=True, check=True, capture_output=True)
    for chain, hook in jumps:
        check = subprocess.run(prefix + ["iptables", "-t", "nat", "-C", hook, "-j", chain], capture_output=True)
        if check.returncode != 0:
            subprocess.run(prefix + ["iptables", "-t", "nat", "-A", hook, "-j", chain], check=True,
                           capture_output=True)


def apply_service_nat(pod_netns: str, backends: Backends) -> None:
    """kube-proxy's rules in one pod's namespace (empty for a pod in the mesh)."""
    _restore(pod_netns, build_service_nat(backends), ((SVC, "OUTPUT"),))


def apply_capture_rules(netns: str, mesh_pod_ips: list[str]) -> None:
    """Install the capture rules in a node namespace (idempotent)."""
    _restore(netns, build_capture_rules(mesh_pod_ips), ((PRE, "PREROUTING"), (OUT, "OUTPUT")))
