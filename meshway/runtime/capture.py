"""Traffic capture for a node proxy: the iptables rules of one node's network namespace (pure
rules + a thin applier). Only pods in the ambient mesh are captured; everything else is untouched.

  PREROUTING  -s <mesh pod>                -> REDIRECT :15001  (its outbound traffic)
  PREROUTING  -d <mesh pod> --dport 15008  -> REDIRECT :15008  (HBONE for it)
  PREROUTING  -d <mesh pod>                -> REDIRECT :15006  (plaintext for it)
  OUTPUT      -d <mesh pod> --dport 15008  -> REDIRECT :15008  (HBONE from this node's own proxy)
"""
from __future__ import annotations

import subprocess

PRE, OUT = "MESHWAY-PRE", "MESHWAY-OUT"
Backends = tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]  # (VIP, port, ((pod IP, target port), ...))


def build_service_nat(backends: Backends) -> list[str]:
    """kube-proxy's part for pods outside the mesh: a service VIP:port is DNATed to one of its pods,
    chosen at random (`statistic` probabilities 1/n, 1/(n-1), ... 1)."""
    lines = []
    for vip, port, pods in backends:
        for i, (ip, target) in enumerate(pods):
            left = len(pods) - i
            chance = f"-m statistic --mode random --probability {1 / left:.5f} " if left > 1 else ""
            lines.append(f"-A {PRE} -d {vip}/32 -p tcp --dport {port} {chance}-j DNAT --to-destination {ip}:{target}")
    return lines


def build_capture_rules(mesh_pod_ips: list[str], backends: Backends = ()) -> str:
    """iptables-restore input (nat table) that replaces meshway's two chains. Mesh pods' own traffic
    is captured first, so the service DNAT only ever applies to pods outside the mesh."""
    lines = ["*nat", f":{PRE} - [0:0]", f":{OUT} - [0:0]"]
    for ip in sorted(mesh_pod_ips):
        lines.append(f"-A {PRE} -s {ip}/32 -p tcp -j REDIRECT --to-ports 15001")
    lines += build_service_nat(backends)
    for ip in sorted(mesh_pod_ips):
        lines.append(f"-A {PRE} -d {ip}/32 -p tcp --dport 15008 -j REDIRECT --to-ports 15008")
        lines.append(f"-A {PRE} -d {ip}/32 -p tcp -j REDIRECT --to-ports 15006")
        lines.append(f"-A {OUT} -d {ip}/32 -p tcp --dport 15008 -j REDIRECT --to-ports 15008")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def apply_capture_rules(netns: str, mesh_pod_ips: list[str], backends: Backends = ()) -> None:
    """Install the rules in a node namespace (idempotent; the jumps are added once)."""
    prefix = ["ip", "netns", "exec", netns]
    subprocess.run(prefix + ["iptables-restore", "--noflush"], input=build_capture_rules(mesh_pod_ips, backends),
                   text=True, check=True, capture_output=True)
    for chain, hook in ((PRE, "PREROUTING"), (OUT, "OUTPUT")):
        check = subprocess.run(prefix + ["iptables", "-t", "nat", "-C", hook, "-j", chain], capture_output=True)
        if check.returncode != 0:
            subprocess.run(prefix + ["iptables", "-t", "nat", "-A", hook, "-j", chain], check=True,
                           capture_output=True)
