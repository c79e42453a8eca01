"""The control plane's tally of waypoints' request logs and node proxies' tunnel and connection logs
(thin: the counting is `meshway.observe.requests` and `meshway.observe.tunnels`).

`record` runs on the event loop (the access log service), `families` on the metrics server's thread,
hence the lock. Each proxy's counts live under its node id and are labelled with its pod and
namespace (`parse_node_id`). Source labels come from the current mesh view (`find_view`), looked up
once per caller (identity and address) and view; a waypoint's destination labels from its own
clusters in its current snapshot (`find_snapshot`), read once per snapshot, a node proxy's from the
tags of its log. `meshway metrics` (another process) reads `request-metrics.prom`, the same series as
Prometheus text, rewritten at most every `write_every` seconds after a change.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..labels import CLUSTER_DOMAIN
from ..mesh.view import MeshView
from ..observe.metrics import Family, write_text
from ..observe.requests import FILE_NAME, MAX_SERIES, RequestCounts, build_request_families, build_request_labels, \
    find_caller_labels, find_source_labels, read_entry
from ..observe.tunnels import TunnelCounts, build_tunnel_families, build_tunnel_labels, read_connection_entry, \
    read_tunnel_entry
from ..private import write_private
from ..xds.proxy import parse_node_id
from ..xds.stat_tags import build_workload_tags, parse_stat_name

log = logging.getLogger(__name__)
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
FORGET_AFTER = 600.0  # seconds: a proxy gone from the status this long is forgotten


class RequestMetrics:
    def __init__(self, find_view: Callable[[], MeshView], find_snapshot: Callable[[str], Any],
                 path: Path | None = None, write_every: float = 0.25, max_series: int = MAX_SERIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.find_view, self.find_snapshot, self.path = find_view, find_snapshot, path
        self.write_every, self.max_series, self.clock = write_every, max_series, clock
        self._lock = threading.Lock()
        self._counts: dict[str, RequestCounts] = {}
        self._tunnels: dict[str, TunnelCounts] = {}
        self._seen: dict[str, float] = {}
        # (id of the view's pods, the pods by IP, labels by (principal, address))
        self._sources: tuple[int, dict[str, Any], dict[tuple[str, str], dict[str, str]]] = (0, {}, {})
        self._clusters: dict[str, tuple[int, dict[str, dict[str, str]]]] = {}  # node id -> (id of snapshot, tags)
        self._written = 0.0
        self._pending: asyncio.TimerHandle | None = None

    def _source(self, principal: str, address: str = "") -> dict[str, str]:
        """The caller's labels: of its pod if `address` is one of the identity's pods, else of the identity."""
        pods, by_ip, cache = self._current_pods()
        if (principal, address) not in cache:
            cache[(principal, address)] = (find_caller_labels(pods.values(), by_ip, principal, address) if address
                                           else find_source_labels(pods.values(), principal)) if principal else {}
        return cache[(principal, address)]

    def _current_pods(self) -> tuple:
        """The view's pods, the same by IP, and the callers' labels found in this view so far."""
        pods = self.find_view().pods
        key, by_ip, cache = self._sources
        if key != id(pods):
            by_ip, cache = {p.ip: p for p in pods.values() if p.ip}, {}
            self._sources = (id(pods), by_ip, cache)
        return pods, by_ip, cache

    def _destination(self, record) -> dict[str, str] | None:
        """The workload labels of the pod a direct connection went to (by its original destination
        address), when the chain's tags name no workload; its identity in the caller's trust domain."""
        if not record.destination or "destination_workload" in record.tags:
            return None
        _, by_ip, cache = self._current_pods()
        trust_domain = record.principal.removeprefix("spiffe://").split("/", 1)[0] or CLUSTER_DOMAIN
        key = ("destination", record.destination, trust_domain)  # found once per view, as the callers
        if key not in cache:
            pod = by_ip.get(record.destination)
            cache[key] = build_workload_tags(pod, f"spiffe://{trust_domain}/ns/{pod.namespace}/sa/"
                                                  f"{pod.service_account}") if pod else None
        return cache[key]

    def _cluster_tags(self, node_id: str) -> dict[str, dict[str, str]]:
        snapshot = self.find_snapshot(node_id)
        have = self._clusters.get(node_id)
        if have is None or have[0] != id(snapshot):
            clusters = snapshot.get(CLUSTER_TYPE, {}) if snapshot is not None else {}
            have = (id(snapshot), {name: parse_stat_name(c.alt_stat_name) for name, c in clusters.items()
                                   if c.alt_stat_name})
            self._clusters[node_id] = have
        return have[1]

    def record(self, node_id: str, entries: list) -> None:
        """Count one message's entries of a waypoint's request log or a node proxy's tunnel log (on
        the event loop)."""
        parts = parse_node_id(node_id)
        if parts is None or parts.kind not in ("waypoint", "ztunnel"):
            return
        if parts.kind == "ztunnel":  # its tunnel log (HTTP entries) or its connection log (TCP entries)
            read = read_connection_entry if entries and entries[0].DESCRIPTOR.name == "TCPAccessLogEntry" \
                else read_tunnel_entry
            tunnels = [(build_tunnel_labels(t, self._source(t.principal, t.address), self._destination(t)), t)
                       for t in map(read, entries)]
            with self._lock:
                counts = self._tunnels.setdefault(node_id, TunnelCounts(self.max_series))
                for labels, t in tunnels:
                    counts.add(labels, t)
                self._seen[node_id] = self.clock()
            self._schedule_write()
            return
        clusters = self._cluster_tags(node_id)
        labelled = [(build_request_labels(r, self._source(r.principal, r.forwarded), clusters), r)
                    for r in map(read_entry, entries)]
        with self._lock:
            counts = self._counts.setdefault(node_id, RequestCounts(self.max_series))
            for labels, r in labelled:
                counts.add(labels, r)
            self._seen[node_id] = self.clock()
        self._schedule_write()

    def families(self, node_ids: Iterable[str] | None = None) -> list[Family]:
        """The Istio families of the proxies named (all if None); proxies gone for long are forgotten."""
        with self._lock:
            if node_ids is not None:
                keep = set(node_ids)
                now = self.clock()
                for gone in [n for n in self._seen if n not in keep and now - self._seen[n] > FORGET_AFTER]:
                    del self._seen[gone]
                    for table in (self._counts, self._tunnels, self._clusters):
                        table.pop(gone, None)

            def chosen(counts: dict) -> list:
                return [({"pod": p.pod, "namespace": p.namespace}, c) for n, c in sorted(counts.items())
                        if (node_ids is None or n in keep) and (p := parse_node_id(n))]
            return build_request_families(chosen(self._counts)) + build_tunnel_families(chosen(self._tunnels))

    # -- the file `meshway metrics` reads ---------------------------------------------------------
    def _schedule_write(self) -> None:
        if self.path is None or self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.write()
            return
        delay = max(0.0, self._written + self.write_every - self.clock())
        self._pending = loop.call_later(delay, self._write_now)

    def _write_now(self) -> None:
        self._pending = None
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        self._written = self.clock()
        try:
            write_private(self.path, write_text(self.families()))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
