"""Address allocation: Service ClusterIPs from 10.96.0.0/16 and pod IPs from 10.244.<node>.0/24.

Pure functions over the set of addresses in use. ClusterIPs are handed out from a cursor that
moves forward, so a just-freed address is not handed out again at once (stale DNS caches and
connections to it drain first); an address in use is never handed out.
"""
from __future__ import annotations

import ipaddress
from typing import Container

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
# 10.96.0.1 is the `kubernetes` Service's address in every cluster; 10.96.0.10 is kube-dns.
RESERVED = {ipaddress.ip_address("10.96.0.1"), ipaddress.ip_address("10.96.0.10")}
POD_SUPERNET = "10.244.{node}.0/24"


class AllocationError(ValueError):
    pass


def check_cluster_ip(ip: str, in_use: set[str]) -> None:
    addr = ipaddress.ip_address(ip)
    if addr not in SERVICE_CIDR or addr in (SERVICE_CIDR.network_address, SERVICE_CIDR.broadcast_address):
        raise AllocationError(f"spec.clusterIPs: Invalid value: [{ip!r}]: failed to allocate IP {ip}: "
                              f"the provided IP ({ip}) is not in the valid range. The range of valid IPs is {SERVICE_CIDR}")
    if ip in in_use:
        raise AllocationError(f"spec.clusterIPs: Invalid value: [{ip!r}]: failed to allocate IP {ip}: "
                              "provided IP is already allocated")


def allocate_cluster_ip(in_use: set[str], cursor: int) -> tuple[str, int]:
    """The next free address after `cursor` (an offset into the range); returns (ip, new cursor)."""
    size = SERVICE_CIDR.num_addresses
    base = int(SERVICE_CIDR.network_address)
    for step in range(1, size):
        offset = (cursor + step) % size
        addr = ipaddress.ip_address(base + offset)
        if offset in (0, size - 1) or addr in RESERVED or str(addr) in in_use:
            continue
        return str(addr), offset
    raise AllocationError(f"failed to allocate a cluster IP: range {SERVICE_CIDR} is full")


def node_cidr(node_index: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(POD_SUPERNET.format(node=node_index))


def allocate_pod_ip(node_index: int, in_use: Container[str]) -> str:
    """Lowest free host address in the node's /24 (.1 is the node's own gateway address)."""
    prefix = str(node_cidr(node_index).network_address).rsplit(".", 1)[0]
    for host in range(2, 255):
        if f"{prefix}.{host}" not in in_use:
            return f"{prefix}.{host}"
    raise AllocationError(f"node {node_index} has no free pod addresses in {node_cidr(node_index)}")


SERVICE_ENTRY_CIDR = ipaddress.ip_network("240.240.0.0/16")


def allocate_service_entry_ip(in_use: Container[str]) -> str:
    """Istio's auto-allocated ServiceEntry VIPs (status.addresses) come from 240.240.0.0/16."""
    base = int(SERVICE_ENTRY_CIDR.network_address)
    for offset in range(1, SERVICE_ENTRY_CIDR.num_addresses - 1):
        ip = str(ipaddress.ip_address(base + offset))
        if ip not in in_use:
            return ip
    raise AllocationError(f"failed to allocate a ServiceEntry address: range {SERVICE_ENTRY_CIDR} is full")
