"""Admission inside a write transaction: server-set metadata, defaults, ClusterIP and pod IP
allocation, scheduling, generation bumps, namespace cascade. Used by user writes and controllers."""
from __future__ import annotations

import copy
from collections import Counter
import json
import random
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from . import ipam
from .db import Txn
from .errors import Forbidden, Invalid
from .objects import set_defaults, spec_of

Body = dict[str, Any]
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_suffix() -> str:
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))


class Writer:
    def __init__(self, txn: Txn, now: str | None = None, random_suffix: Callable[[], str] = default_suffix,
                 full: bool = False):
        self.txn, self.now, self.random_suffix, self.full = txn, now or now_rfc3339(), random_suffix, full
        self._cluster_ips: set[str] | None = None  # loaded once per transaction, then kept current
        self._pods: dict[str, str | None] | None = None  # pod IP -> node
        self._load: Counter[str | None] | None = None  # pods per node

    def _used_cluster_ips(self) -> set[str]:
        if self._cluster_ips is None:
            self._cluster_ips = {r[0] for r in self.txn.conn.execute(
                "SELECT json_extract(body, '$.spec.clusterIP') FROM objects WHERE kind='Service'") if r[0]}
        return self._cluster_ips

    def _used_pod_ips(self) -> dict[str, str | None]:
        if self._pods is None:
            rows = self.txn.conn.execute("SELECT json_extract(body, '$.status.podIP'), "
                                         "json_extract(body, '$.spec.nodeName') FROM objects WHERE kind='Pod'")
            self._pods = {ip: node for ip, node in rows if ip}
        return self._pods

    # -- creation -------------------------------------------------------------------------------
    def create(self, kind: str, body: Body) -> Body:
        body = copy.deepcopy(body)
        body.setdefault("kind", kind)
        meta = body["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self.now
        meta["generation"] = 1
        if kind in ("Pod", "ServiceAccount", "Namespace"):
            meta.pop("generation")
        set_defaults(kind, body)
        if kind == "Service":
            self._assign_cluster_ip(body)
        elif kind == "Pod":
            self._schedule(body)
        return self.txn.put(kind, body, created=True)

    def _assign_cluster_ip(self, body: Body) -> None:
        spec = body["spec"]
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            return
        in_use = self._used_cluster_ips()
        try:
            if spec.get("clusterIP"):
                ipam.check_cluster_ip(spec["clusterIP"], in_use)
            else:
                ip, cursor = ipam.allocate_cluster_ip(in_use, int(self.txn.get_meta("cluster_ip_cursor", "0")))
                self.txn.set_meta("cluster_ip_cursor", str(cursor))
                spec["clusterIP"] = ip
        except ipam.AllocationError as exc:
            raise Invalid(f'Service "{body["metadata"]["name"]}" is invalid: {exc}') from None
        in_use.add(spec["clusterIP"])
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")

    def retype_service(self, body: Body) -> None:
        """On update, as the API server: an ExternalName Service drops its ClusterIP (freeing it), and
        a Service that now needs one gets one."""
        spec = body["spec"]
        if spec.get("type") == "ExternalName":
            if spec.get("clusterIP") not in (None, "None") and self._cluster_ips is not None:
                self._cluster_ips.discard(spec["clusterIP"])
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(key, None)
        elif not spec.get("clusterIP"):
            self._assign_cluster_ip(body)

    def _schedule(self, body: Body) -> None:
        """Place a pod on a node (the least loaded) and give it an address from that node's /24."""
        nodes = int(self.txn.get_meta("nodes", "1"))
        pods = self._used_pod_ips()
        names = [f"node-{i}" for i in range(1, nodes + 1)]
        spec = body["spec"]
        if spec.get("nodeName") not in names:
            if self._load is None:
                self._load = Counter(pods.values())
            spec["nodeName"] = min(names, key=lambda n: (self._load[n], n))
        index = int(spec["nodeName"].split("-")[1])
        try:
            ip = ipam.allocate_pod_ip(index, pods)
        except ipam.AllocationError as exc:
            raise Invalid(f'Pod "{body["metadata"]["name"]}" cannot be scheduled: {exc}') from None
        pods[ip] = spec["nodeName"]
        if self._load is not None:
            self._load[spec["nodeName"]] += 1
        body["status"] = {"phase": "Pending", "hostIP": f"10.244.{index}.1", "podIP": ip, "podIPs": [{"ip": ip}],
                          "startTime": self.now,
                          "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": self.now},
                                         {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                          "lastTransitionTime": self.now}]}

    # -- updates --------------------------------------------------------------------------------
    def update(self, kind: str, live: Body, new: Body) -> bool:
        """Write `new` over `live` if anything differs; bumps generation when the spec changed."""
        new = copy.deepcopy(new)
        new["metadata"]["resourceVersion"] = live["metadata"].get("resourceVersion")
        if new == live:
            return False
        if "generation" in live["metadata"] and spec_of(new) != spec_of(live):
            new["metadata"]["generation"] = live["metadata"]["generation"] + 1
        self.txn.put(kind, new, created=False)
        return True

    def set_status(self, kind: str, body: Body, status: Body, replace: bool = False) -> bool:
        current = self.txn.get(kind, body["metadata"].get("namespace", ""), body["metadata"]["name"])
        if current is None:
            return False
        merged = status if replace else {**(current.get("status") or {}), **status}
        if current.get("status") == merged:
            return False
        current["status"] = merged
        self.txn.put(kind, current, created=False)
        return True

    def ensure(self, kind: str, desired: Body) -> None:
        """Controller-owned object: create it, or bring labels/annotations/owner/spec back to `desired`."""
        meta = desired["metadata"]
        live = self.txn.get(kind, meta["namespace"], meta["name"])
        if live is None:
            self.create(kind, desired)
            return
        new = copy.deepcopy(live)
        for field in ("labels", "annotations", "ownerReferences"):
            if meta.get(field):
                new["metadata"][field] = {**new["metadata"].get(field, {}), **meta[field]} \
                    if isinstance(meta[field], dict) else meta[field]
        if "spec" in desired:
            spec = copy.deepcopy(desired["spec"])
            if kind == "Service":
                for keep in ("clusterIP", "clusterIPs", "ipFamilies"):
                    if keep in live["spec"]:
                        spec[keep] = live["spec"][keep]
            if kind == "Deployment" and "replicas" not in spec and "replicas" in live["spec"]:
                spec["replicas"] = live["spec"]["replicas"]  # not the controller's field: `scale` keeps it
            new["spec"] = spec
            set_defaults(kind, new)
        self.update(kind, live, new)

    # -- deletion -------------------------------------------------------------------------------
    def remove(self, kind: str, body: Body) -> None:
        meta = body["metadata"]
        if kind == "Pod" and self._pods is not None:
            node = self._pods.pop((body.get("status") or {}).get("podIP"), None)
            if self._load is not None and node:
                self._load[node] -= 1
        elif kind == "Service" and self._cluster_ips is not None:
            self._cluster_ips.discard((body.get("spec") or {}).get("clusterIP"))
        if kind == "Namespace":
            if meta["name"] in PROTECTED_NAMESPACES:
                raise Forbidden(f'namespaces "{meta["name"]}" is forbidden: this namespace may not be deleted')
            rows = self.txn.conn.execute("SELECT kind, body FROM objects WHERE namespace=? ORDER BY kind, name",
                                         (meta["name"],)).fetchall()
            for child_kind, text in rows:
                self.txn.delete(child_kind, json.loads(text))
        self.txn.delete(kind, body)
