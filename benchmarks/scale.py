#!/usr/bin/env python
"""Control plane at scale: change -> Envoy ACK at 3,000 routes, incremental translation, cold start,
memory and idle CPU per connected proxy, in one run, each figure beside its goal (issue 10).

    python benchmarks/scale.py            # full: 1,000 services per topology, N=30 changes
    python benchmarks/scale.py --quick    # smoke run (100 services, 5 changes), well under a minute
    python benchmarks/scale.py --only memory   # one part; the others are kept from the results file

Writes benchmarks/results/scale.{json,md} (`--quick`: scale-quick.{json,md}). Measures whatever
meshway is checked out; meshway's own code is only wrapped (ControlPlane.sync timed as
dataplane.py's bench_ack does), never changed. All traffic stays on 127.0.0.0/8 and Unix sockets.
See benchmarks/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):  # meshway from this checkout; the other benchmarks beside us
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from dataplane import SHORT, percentile, tool_versions  # noqa: E402
from selection import fmt_time, machine_info  # noqa: E402

from meshway import labels as L  # noqa: E402
from meshway.model.parse import parse_object  # noqa: E402
from meshway.model.registry import BY_KIND  # noqa: E402
from meshway.runtime.controlplane import ControlPlane  # noqa: E402
from meshway.runtime.envoy import find_envoy  # noqa: E402
from meshway.store import Store  # noqa: E402
from meshway.xds import protos as P  # noqa: E402
from meshway.xds.cache import NACKED, SYNCED  # noqa: E402

Body = dict[str, Any]
RESULTS = Path(__file__).resolve().parent / "results"
PORT = 9080
ROUTES = 3  # per service: 3 prefix-match routes (one VirtualService, or 3 HTTPRoutes)
PODS = 2  # per service
ANCHORS = "Istio 120–300 ms; Agentgateway 10–30 ms"
GOALS = {  # issue 10, "Done means"
    "ack_p50_s": 0.030, "ack_p99_s": 0.100, "change_cpu_s": 0.050, "cold_translation_s": 1.0,
    "cold_start_s": 3.0, "rss_per_proxy_bytes": 0.3e6, "idle_cpu_ms_per_s": 10.0, "get_pods_cpu_ms": 120.0,
}
READY = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"},
                                            {"type": "Ready", "status": "True"}]}
XDS_NAMES = {P.CLUSTER: "CDS", P.ENDPOINT: "EDS", P.LISTENER: "LDS", P.ROUTE: "RDS", P.SECRET: "SDS"}
SLEEP_S = 1800  # a stand-in proxy (below) sleeps at most this long


# == topology =====================================================================================

def ns_name(i: int) -> str:
    return f"scale-{i:03d}"


def vs_body(ns: str, svc: str, variant: int) -> Body:
    """The service's own VirtualService: 3 prefix-match routes; `variant` flips route r1's timeout."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": svc, "namespace": ns},
            "spec": {"hosts": [svc], "http": [
                {"name": f"r{k}", "match": [{"uri": {"prefix": f"/r{k}"}}],
                 "route": [{"destination": {"host": svc, "port": {"number": PORT}}}],
                 "timeout": f"{1 + (variant if k == 1 else 0)}s"} for k in range(ROUTES)]}}


def httproute_body(ns: str, svc: str, k: int, variant: int) -> Body:
    """HTTPRoute k of a service, attached to the Service by parentRefs; `variant` flips its timeout."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"{svc}-r{k}", "namespace": ns},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": svc, "port": PORT}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/r{k}"}}],
                                "backendRefs": [{"name": svc, "port": PORT}],
                                "timeouts": {"request": f"{1 + variant}s"}}]}}


def route_bodies(routes: str, ns: str, svc: str, variant: int = 0) -> list[Body]:
    if routes == "vs":
        return [vs_body(ns, svc, variant)]
    return [httproute_body(ns, svc, k, variant) for k in range(ROUTES)]


def changed_route(routes: str, ns: str, svc: str, variant: int) -> Body:
    """What one change applies: the VirtualService (route r1's timeout) or HTTPRoute r1."""
    return vs_body(ns, svc, variant) if routes == "vs" else httproute_body(ns, svc, 1, variant)


def topology(namespaces: int, services: int, routes: str) -> list[Body]:
    """`namespaces` namespaces enrolled to their own waypoint, `services` Services in all (spread
    evenly), each with 2 pods and its routes ("vs": its own VirtualService with 3 prefix routes;
    "httproute": 3 HTTPRoutes attached to the Service by parentRefs)."""
    out: list[Body] = []
    per_ns = services // namespaces
    for n in range(1, namespaces + 1):
        ns = ns_name(n)
        out.append({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": {L.USE_WAYPOINT: "waypoint"}}})
        out.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": "waypoint", "namespace": ns},
                    "spec": {"gatewayClassName": L.WAYPOINT_CLASS,
                             "listeners": [{"name": "mesh", "port": L.HBONE_PORT, "protocol": "HBONE"}]}})
        for s in range(per_ns):
            svc = f"svc-{s:04d}"
            out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": ns},
                        "spec": {"selector": {"app": svc}, "ports": [{"name": "http", "port": PORT}]}})
            for p in range(PODS):
                out.append({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": f"{svc}-{p}", "namespace": ns,
                                         "labels": {"app": svc, "version": "v1"}},
                            "spec": {"serviceAccountName": "default",
                                     "containers": [{"name": "app", "image": "app"}]}})
            out.extend(route_bodies(routes, ns, svc))
    return out


def describe(namespaces: int, services: int, routes: str) -> str:
    per_ns = services // namespaces
    what = (f"{services:,} services x {ROUTES} VirtualService routes (each service its own VirtualService with "
            f"{ROUTES} prefix-match routes)" if routes == "vs" else
            f"{services * ROUTES:,} HTTPRoutes ({services:,} services x {ROUTES} HTTPRoutes attached by parentRefs "
            "to the Service, one PathPrefix rule each)")
    where = ("one waypoint (1 namespace)" if namespaces == 1 else
             f"{namespaces} waypoints ({namespaces} namespaces, {per_ns} services each)")
    return f"{what}, {PODS} pods per service, {where}"


def load_store(state: Path, bodies: list[Body], ready_waypoints: Callable[[str], bool]) -> tuple[Store, float]:
    """A fresh store holding `bodies`, every app pod Ready (the runtime's job, written in one
    transaction) and the waypoint pods of the namespaces `ready_waypoints` accepts Ready too, as a
    control plane restarting over a running mesh finds them. Returns the store and the apply time."""
    store = Store(state)
    pods = sum(1 for b in bodies if b["kind"] == "Pod") + sum(1 for b in bodies if b["kind"] == "Gateway")
    store.set_nodes(max(1, math.ceil(pods / 200)))
    manifests = [parse_object(b, "scale.yaml", i + 1) for i, b in enumerate(bodies)]
    t0 = time.perf_counter()
    store.apply(manifests)
    took = time.perf_counter() - t0
    ready = [("Pod", b["metadata"]["namespace"], b["metadata"]["name"], READY)
             for b in store.list(BY_KIND["Pod"], None)
             if L.GATEWAY_NAME not in (b["metadata"].get("labels") or {})
             or ready_waypoints(b["metadata"]["namespace"])]
    if hasattr(store, "write_statuses"):  # one transaction (the runtime's batch)
        store.write_statuses(ready)
    else:  # a checkout from before Store.write_statuses
        for kind, ns, name, status in ready:
            store.write_status(kind, ns, name, status)
    return store, took


def envoy_wrapper(folder: Path, envoy: str, real: Callable[[str], bool], namespaces: list[str]) -> Path:
    """The `envoy` the control plane starts: the real Envoy for the waypoints of the namespaces
    `real` accepts; for the others a stand-in that keeps the bootstrap path in its command line (so
    the control plane sees a live proxy and does not restart it) and sleeps, bounded, until SIGTERM."""
    cases = "".join(f'  *"/proxies/{ns}."*) exec "{envoy}" "$@" ;;\n' for ns in namespaces if real(ns))
    script = folder / "envoy-or-standin"
    script.write_text("#!/bin/sh\n"
                      f'case "$*" in\n{cases}esac\n'
                      "trap 'kill $! 2>/dev/null; exit 0' TERM INT\n"
                      f"sleep {SLEEP_S} &\nwait\n")
    script.chmod(0o700)
    return script


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def malloc_in_use() -> int | None:
    """Bytes glibc's malloc has handed out and not got back (`mallinfo2`: uordblks + hblkhd); None
    off glibc. Protobuf (upb) messages and gRPC's buffers live here, Python's small objects in
    pymalloc's arenas do not."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return None
    return info.uordblks + info.hblkhd


def stop_leftovers(state: Path) -> int:
    """Stop every proxy process the run left (by the pid in its pid file, only if its command line
    still names its own bootstrap): the real Envoys and the stand-ins."""
    stopped = 0
    for pid_file in (state / "run").glob("*/*/envoy.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            if str(pid_file.parent / "bootstrap.json") not in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
                continue
            os.kill(pid, signal.SIGTERM)
            stopped += 1
        except (OSError, ValueError, IndexError):
            continue
    return stopped


def stats(values: list[float]) -> Body:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "n": len(values)}


# == changes from another process ================================================================

def apply_server(state: Path) -> int:
    """`--apply-server STATE` (internal): one JSON object a line on stdin, each parsed and then applied
    (`Store.apply`) in its own transaction; answers with the perf_counter (CLOCK_MONOTONIC, shared by
    processes) before and after the apply. A user's `meshway apply` writes from another process too,
    so the control plane under test shares no interpreter lock with the writer."""
    store = Store(state)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        manifest = parse_object(json.loads(line), "change.yaml")
        start = time.perf_counter()
        store.apply([manifest])
        print(json.dumps({"start": start, "end": time.perf_counter()}), flush=True)
    store.close()
    return 0


class Applier:
    """The benchmark's side of `--apply-server`."""

    def __init__(self, state: Path, timeout: float = 60.0):
        self.timeout = timeout
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--apply-server", str(state)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._answer()

    def _answer(self) -> Body:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the apply helper gave no answer within {self.timeout:g} s (exit {self.proc.poll()})")
        return json.loads(line)

    def apply(self, body: Body) -> tuple[float, float]:
        self.proc.stdin.write(json.dumps(body) + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        return answer["start"], answer["end"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# == a control plane in this process ==============================================================

class LocalControlPlane:
    """`ControlPlane.run` on its own thread and event loop, as `meshway controlplane` runs it (its
    default debounce, poll and loopback placement), with `sync` wrapped for timing: each call's wall
    time and the CPU time of the thread that ran it."""

    def __init__(self, state: Path, envoy: str):
        self.state = state
        self.syncs: list[list] = []  # [start, end, thread CPU] per call; end and CPU None while it runs
        self.started = time.perf_counter()
        self.cp = ControlPlane(state, envoy=envoy)
        original = self.cp.sync

        def timed_sync(*args, **kwargs):  # instance attribute: wraps this ControlPlane's sync, for timing only
            entry = [time.perf_counter(), None, None]
            self.syncs.append(entry)
            cpu = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                entry[2] = time.thread_time() - cpu
                entry[1] = time.perf_counter()

        self.cp.sync = timed_sync
        self.stop_event = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.cp.run(self.stop_event),),
                                       daemon=True)
        self.thread.start()

    def alive(self) -> None:
        if not self.thread.is_alive():
            raise RuntimeError("the control plane's loop ended")

    def node_ids(self, namespace: str | None = None) -> list[str]:
        return sorted(n for n, s in list(self.cp.replicas.items())
                      if namespace is None or s.replica.namespace == namespace)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(15)
        try:
            self.cp.stop_proxies()
        finally:
            stop_leftovers(self.state)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.005,
             alive: Callable[[], None] | None = None) -> float:
    """perf_counter when `predicate` first held; raises after `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if alive is not None:
            alive()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def sync_around(lcp: "LocalControlPlane", t_set: float, wait: float) -> tuple[float, float, float] | None:
    """The wrapped `sync` call during which the snapshot was set (start, end, thread CPU), once it has
    returned (waiting up to `wait` seconds); None if the snapshot was set outside any `sync` call."""
    entry = next((e for e in reversed(list(lcp.syncs)) if e[0] <= t_set + 0.001), None)
    if entry is None:
        return None
    deadline = time.perf_counter() + wait
    while entry[1] is None:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"ControlPlane.sync did not return within {wait:g} s")
        time.sleep(0.005)
    return tuple(entry) if entry[1] >= t_set - 0.001 else None


def gateway_programmed(store: Store, ns: str) -> bool:
    gw = store.get(BY_KIND["Gateway"], ns, "waypoint")
    return any(c.get("type") == "Programmed" and c.get("status") == "True"
               for c in (gw.get("status") or {}).get("conditions", []))


def acked_all(cp: ControlPlane, node: str, routes_wanted: int) -> bool:
    """The node's snapshot holds at least `routes_wanted` route configurations and Envoy ACKed the
    current version of every type in it (NACK: an error)."""
    snap = cp.cache.get(node)
    if snap is None or len(snap.resources(P.ROUTE)) < routes_wanted:
        return False
    status = cp.cache.status.get(node, {})
    for t in P.TYPE_ORDER:
        if not snap.resources(t):
            continue
        s = dict(status.get(t, {}))
        if s.get("state") == NACKED:
            raise RuntimeError(f"{node} NACKed {t}: {s.get('error')}")
        if s.get("state") != SYNCED or s.get("version") != snap.version(t):
            return False
    return True


# == 1. store change -> waypoint Envoy ACK ========================================================

def bench_ack(name: str, namespaces: int, services: int, routes: str, changes: int, envoy: str, tmp: Path,
              timeout: float) -> Body:
    """One topology: fresh store, control plane started (cold start measured), then `changes` route
    changes one at a time, each timed until the real waypoint Envoy ACKs the new RDS version."""
    folder = tmp / name
    folder.mkdir()
    state = folder / "state"
    target_ns = ns_name(1)
    label = describe(namespaces, services, routes)
    print(f"  [{name}] {label} ({time.strftime('%H:%M:%S')})", flush=True)
    bodies = topology(namespaces, services, routes)
    # The waypoint measured runs a real Envoy and goes through the real start (Ready when it ACKs);
    # the other waypoints (10-waypoint topology) run stand-ins and are Ready from the start.
    store, apply_s = load_store(state, bodies, lambda ns: ns != target_ns)
    wrapper = envoy_wrapper(folder, envoy, lambda ns: ns == target_ns, [ns_name(n) for n in range(1, namespaces + 1)])
    per_ns = services // namespaces
    print(f"    store loaded ({len(bodies):,} objects applied in {apply_s:.1f} s); starting the control plane",
          flush=True)
    lcp = LocalControlPlane(state, str(wrapper))
    cp = lcp.cp
    try:
        t0 = lcp.started
        t_node = wait_for("waypoint replica", lambda: bool(lcp.node_ids(target_ns)), timeout, alive=lcp.alive)
        node = lcp.node_ids(target_ns)[0]
        seen: dict[str, float] = {}  # the two milestones, each when first seen (either may come first)

        def milestones() -> bool:
            now = time.perf_counter()
            if "programmed" not in seen and gateway_programmed(store, target_ns):
                seen["programmed"] = now
            if "full" not in seen and acked_all(cp, node, per_ns):
                seen["full"] = now
            return len(seen) == 2

        wait_for(f"Gateway Programmed and all {per_ns} services ACKed", milestones, timeout, 0.01, lcp.alive)
        t_prog, t_full = seen["programmed"], seen["full"]
        snap = cp.cache.get(node)
        cold = {"to_replica_known_s": t_node - t0, "to_programmed_s": t_prog - t0,
                "to_all_services_acked_s": t_full - t0,
                "resources": {SHORT.get(t, t): len(snap.resources(t)) for t in P.TYPE_ORDER if snap.resources(t)}}
        print(f"    cold start: Programmed after {fmt_time(cold['to_programmed_s'])}, all {per_ns} services ACKed "
              f"after {fmt_time(cold['to_all_services_acked_s'])}", flush=True)
        time.sleep(0.5)
        others = [n for n in lcp.node_ids() if n != node]
        svc = f"svc-{per_ns // 2:04d}"
        applier = Applier(state)
        try:
            rows = measure_changes(lcp, applier, node, others, routes, target_ns, svc, changes, timeout)
        finally:
            applier.close()
    finally:
        lcp.close()
        store.close()
    out = {"name": name, "topology": label, "namespaces": namespaces, "services": services,
           "routes_kind": routes, "route_objects": services * (1 if routes == "vs" else ROUTES),
           "routes": services * ROUTES, "changes": changes,
           "change": f"{'VirtualService' if routes == 'vs' else 'HTTPRoute'} {target_ns}/{svc}"
                     f"{'' if routes == 'vs' else '-r1'}: route r1's timeout 1s <-> 2s "
                     "(`Store.apply` in a helper process)",
           "real_envoy": f"the waypoint of {target_ns}" + ("" if namespaces == 1 else
                                                           f"; the other {namespaces - 1} waypoints run stand-ins "
                                                           "(no Envoy), Ready from the start, so their services bind"),
           "store_apply_s": apply_s, "cold_start": cold, "samples": rows,
           "poll_s": getattr(cp, "poll", None), "debounce_s": getattr(cp, "debounce", None),
           "delta_xds": getattr(cp, "delta", None)}
    for key in ("total", "apply", "to_snapshot", "applied_to_sync", "sync_to_snapshot", "sync", "sync_cpu",
                "snapshot_to_ack"):
        out[key] = stats([r[key] for r in rows])
    out["other_snapshots_set"] = sum(r["other_snapshots_set"] for r in rows)
    print(f"    store change -> RDS ACK: p50 {fmt_time(out['total']['p50'])}, p99 {fmt_time(out['total']['p99'])}; "
          f"snapshot -> ACK p50 {fmt_time(out['snapshot_to_ack']['p50'])}; other waypoints' snapshots set: "
          f"{out['other_snapshots_set']}", flush=True)
    return out


def measure_changes(lcp: LocalControlPlane, applier: Applier, node: str, others: list[str], routes: str, ns: str,
                    svc: str, changes: int, timeout: float) -> list[Body]:
    """dataplane.py's bench_ack for one node, the change applied from another process (`Applier`),
    plus: the `sync` call that set the snapshot (it may go on with other waypoints after; the next
    change waits for it to return) and the snapshots set for the other waypoints."""
    cp, cache = lcp.cp, lcp.cp.cache
    set_at: list[tuple[float, int]] = []
    unwatch = cache.watch(node, lambda generation: set_at.append((time.perf_counter(), generation)))
    rng = random.Random(1)
    rows = []
    try:
        for i in range(changes):
            body = changed_route(routes, ns, svc, (i + 1) % 2)
            generation = cache.generation(node)
            old_version = cache.get(node).version(P.ROUTE)
            before = {n: cache.generation(n) for n in others}
            t0, t_applied = applier.apply(body)
            # the snapshot that carries the change (a snapshot set for another reason meanwhile, with
            # the same routes, is not it)
            wait_for(f"change {i}: new snapshot", lambda: cache.generation(node) != generation
                     and cache.get(node).version(P.ROUTE) != old_version, timeout, 0.002, lcp.alive)
            version = cache.get(node).version(P.ROUTE)
            generation = cache.generation(node) - 1

            def acked() -> bool:
                status = dict(cache.status.get(node, {}).get(P.ROUTE, {}))
                if status.get("state") == NACKED:
                    raise RuntimeError(f"change {i}: RDS NACKed: {status.get('error')}")
                return status.get("state") == SYNCED and status.get("version") == version

            t_ack = wait_for(f"change {i}: RDS {version} ACK", acked, timeout, 0.002, lcp.alive)
            wait_for(f"change {i}: snapshot-set callback", lambda: any(g > generation for _, g in set_at), timeout,
                     0.001, lcp.alive)  # the cache calls its watchers right after setting the snapshot
            t_set = next(t for t, g in set_at if g > generation)
            sync = sync_around(lcp, t_set, timeout)
            time.sleep(rng.uniform(0.1, 0.2))  # idle between changes; random so the poll phase varies
            other = sum(1 for n in others if cache.generation(n) != before[n])
            rows.append({"apply": t_applied - t0, "to_snapshot": t_set - t0, "snapshot_to_ack": t_ack - t_set,
                         "total": t_ack - t0, "applied_to_sync": sync[0] - t_applied if sync else None,
                         "sync_to_snapshot": t_set - sync[0] if sync else None,
                         "sync": sync[1] - sync[0] if sync else None, "sync_cpu": sync[2] if sync else None,
                         "other_snapshots_set": other})
    finally:
        unwatch()
    return rows


# == 2. translation only (stand-ins, no Envoy) ====================================================

def bench_translation(namespaces: int, services: int, changes: int, tmp: Path, timeout: float) -> Body:
    """100 waypoints (stand-in proxies, Ready from the start): the control plane's first sync
    translates all of them (cold); then one VirtualService change at a time in one namespace:
    which waypoints got a new snapshot (cache generations), how many builds ran (`ControlPlane.builds`)
    and the CPU it took."""
    folder = tmp / "translation"
    folder.mkdir()
    state = folder / "state"
    label = describe(namespaces, services, "vs")
    print(f"  [translation] {label}; no Envoy", flush=True)
    bodies = topology(namespaces, services, "vs")
    store, apply_s = load_store(state, bodies, lambda ns: True)
    wrapper = envoy_wrapper(folder, "/nonexistent", lambda ns: False, [])
    per_ns = services // namespaces
    lcp = LocalControlPlane(state, str(wrapper))
    cp = lcp.cp
    try:
        t0, cpu0 = lcp.started, time.process_time() - time.thread_time()

        def all_set() -> bool:
            nodes = lcp.node_ids()
            return len(nodes) == namespaces and all(
                (s := cp.cache.get(n)) is not None and len(s.resources(P.ROUTE)) >= per_ns for n in nodes)

        t_all = wait_for(f"snapshots of all {namespaces} waypoints", all_set, timeout, 0.01, lcp.alive)
        cpu_all = time.process_time() - time.thread_time() - cpu0
        wait_for("the first ControlPlane.sync to return", lambda: bool(lcp.syncs) and lcp.syncs[0][1] is not None,
                 timeout, 0.01, lcp.alive)
        first = lcp.syncs[0]
        cold = {"first_sync_s": first[1] - first[0] if first else None, "first_sync_cpu_s": first[2] if first else None,
                "start_to_all_snapshots_s": t_all - t0, "start_to_all_snapshots_cpu_s": cpu_all,
                "builds": getattr(cp, "builds", None)}
        print(f"    cold: first sync {_ms(cold['first_sync_s'])} "
              f"(CPU {_ms(cold['first_sync_cpu_s'])}); start -> all {namespaces} snapshots "
              f"{fmt_time(cold['start_to_all_snapshots_s'])}", flush=True)
        time.sleep(1.0)
        target = ns_name(namespaces // 2)
        node = lcp.node_ids(target)[0]
        nodes = lcp.node_ids()
        rows = []
        set_at: list[float] = []
        unwatch = cp.cache.watch(node, lambda generation: set_at.append(time.perf_counter()))
        applier = Applier(state)
        try:
            for i in range(changes):
                body = vs_body(target, f"svc-{per_ns // 2:04d}", (i + 1) % 2)
                before = {n: cp.cache.generation(n) for n in nodes}
                builds0 = getattr(cp, "builds", None)
                cpu_before = time.process_time() - time.thread_time()
                t0, _ = applier.apply(body)
                wait_for(f"change {i}: new snapshot for {target}",
                         lambda: cp.cache.generation(node) != before[node], timeout, 0.002, lcp.alive)
                t_set = set_at[-1]
                sync = sync_around(lcp, t_set, timeout)  # the whole call: the other waypoints it went on with
                cpu_after = time.process_time() - time.thread_time()
                time.sleep(0.3)  # anything else this change causes
                builds1 = getattr(cp, "builds", None)
                rows.append({"snapshots_set": sum(1 for n in nodes if cp.cache.generation(n) != before[n]),
                             "builds": None if builds0 is None else builds1 - builds0,
                             "to_snapshot": t_set - t0, "cp_cpu": cpu_after - cpu_before,
                             "cpu_window": "apply -> end of the sync that set the snapshot" if sync else
                                           "apply -> snapshot set",
                             "sync": sync[1] - sync[0] if sync else None, "sync_cpu": sync[2] if sync else None})
                time.sleep(random.Random(i).uniform(0.05, 0.15))
        finally:
            applier.close()
            unwatch()
    finally:
        lcp.close()
        store.close()
    out = {"topology": label + "; stand-in proxies (no Envoy), every waypoint Ready from the start",
           "namespaces": namespaces, "services": services, "store_apply_s": apply_s, "cold": cold,
           "change": f"VirtualService {target}/svc-{per_ns // 2:04d}: route r1's timeout 1s <-> 2s",
           "changes": changes, "samples": rows,
           "snapshots_set": stats([r["snapshots_set"] for r in rows]),
           "builds": stats([r["builds"] for r in rows]) if rows and rows[0]["builds"] is not None else {},
           "cp_cpu": stats([r["cp_cpu"] for r in rows]), "sync_cpu": stats([r["sync_cpu"] for r in rows]),
           "sync": stats([r["sync"] for r in rows]), "to_snapshot": stats([r["to_snapshot"] for r in rows])}
    print(f"    one change: {out['snapshots_set'].get('p50')} snapshot(s) set, {out['builds'].get('p50')} build(s), "
          f"control-plane CPU p50 {fmt_time(out['cp_cpu']['p50'])}", flush=True)
    return out


# == 3. memory and idle CPU per connected proxy (raw ADS clients) ==================================

def serve(state: Path, envoy: str) -> int:
    """`--serve STATE`: the control plane alone in this process, until SIGTERM (then its proxies stop).
    On SIGUSR1 (from its event loop) it runs a full `gc.collect()` and appends one JSON line to
    STATE/../memory.jsonl: its RSS then and what glibc's allocator holds in use (`mallinfo2`)."""
    cp = ControlPlane(state, envoy=envoy)
    stop = asyncio.Event()
    report = state.parent / "memory.jsonl"

    def memory_report() -> None:
        import gc

        gc.collect()
        line = {"rss": rss_of(os.getpid()), "malloc_in_use": malloc_in_use(),
                "python_blocks": sys.getallocatedblocks()}
        with report.open("a") as out:
            out.write(json.dumps(line) + "\n")

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, memory_report)
        await cp.run(stop)

    try:
        asyncio.run(main())
    finally:
        cp.stop_proxies()
    return 0


async def ads_client(socket: Path, node_id: str, token: str, done: asyncio.Event, counts: dict,
                     stop: asyncio.Event) -> None:
    """A raw Delta ADS client (xds-protos stubs): presents the node's xDS token, subscribes to every
    resource of the five types (`*`), and ACKs every response, until `stop`."""
    import grpc
    from envoy.config.core.v3.base_pb2 import Node
    from envoy.service.discovery.v3 import ads_pb2_grpc
    from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

    from meshway.ca.tokens import TOKEN_METADATA

    node = Node(id=node_id, cluster="scale-bench")
    node.metadata.update({TOKEN_METADATA: token})
    answered: set[str] = set()
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        for i, type_url in enumerate(P.TYPE_ORDER):
            request = DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=["*"])
            if i == 0:
                request.node.CopyFrom(node)
            await call.write(request)
        reader = asyncio.ensure_future(call.read())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper.done():
                    return
                response = reader.result()
                if response is grpc.aio.EOF:
                    raise RuntimeError(f"{node_id}: the server ended the stream")
                counts["responses"] += 1
                counts["bytes"] += response.ByteSize()
                if "resources" in counts:  # per type, what the clients were sent
                    kind = XDS_NAMES.get(response.type_url, response.type_url)
                    counts["resources"][kind] = counts["resources"].get(kind, 0) + len(response.resources)
                await call.write(DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce))
                answered.add(response.type_url)
                if answered >= {P.CLUSTER, P.LISTENER, P.ROUTE} and not done.is_set():
                    done.set()
                reader = asyncio.ensure_future(call.read())
        finally:
            reader.cancel()
            stopper.cancel()
            call.cancel()


def bench_proxies(namespaces: int, services: int, window: float, tmp: Path, timeout: float) -> Body:
    """The control plane in its own process (`--serve`), `namespaces` waypoints with stand-in proxies;
    its RSS and CPU with no proxy connected, then with one raw ADS client per waypoint connected and
    every client having ACKed its CDS, LDS and RDS."""
    folder = tmp / "proxies"
    folder.mkdir()
    state = folder / "state"
    label = describe(namespaces, services, "vs")
    print(f"  [proxies] {label}; control plane in its own process", flush=True)
    bodies = topology(namespaces, services, "vs")
    store, _ = load_store(state, bodies, lambda ns: True)
    store.close()
    wrapper = envoy_wrapper(folder, "/nonexistent", lambda ns: False, [])
    log = (folder / "controlplane.log").open("w")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(state),
                             "--envoy", str(wrapper)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        status_file = state / "run" / "proxy-status.json"

        def listed() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the control plane exited {proc.returncode}; see {folder / 'controlplane.log'}")
            try:
                return len(json.loads(status_file.read_text())) >= namespaces
            except (OSError, ValueError):
                return False

        wait_for("control plane lists every waypoint", listed, timeout, 0.1)
        settle(proc.pid)
        idle0 = idle_cpu(proc.pid, window)
        rss0 = rss_of(proc.pid)
        status = json.loads(status_file.read_text())
        nodes = sorted(n for n, s in status.items() if s.get("type") == "waypoint")
        from meshway.ca.tokens import ProxyTokens
        from meshway.runtime.placement import socket_dir

        tokens = ProxyTokens(state)
        socket = socket_dir(state) / "xds.sock"
        counts = {"responses": 0, "bytes": 0}

        async def clients() -> Body:
            stop = asyncio.Event()
            dones = [asyncio.Event() for _ in nodes]
            tasks = [asyncio.ensure_future(ads_client(socket, n, tokens.token(n), d, counts, stop))
                     for n, d in zip(nodes, dones)]
            t0 = time.perf_counter()
            try:
                deadline = time.perf_counter() + timeout
                while not all(d.is_set() for d in dones):
                    for t in tasks:
                        if t.done():
                            t.result()  # a client that ended raises here
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"{sum(not d.is_set() for d in dones)} clients without CDS/LDS/RDS "
                                           f"within {timeout:g} s")
                    await asyncio.sleep(0.05)
                t_all = time.perf_counter() - t0
                await asyncio.to_thread(settle, proc.pid)
                connected = await asyncio.to_thread(count_connected, status_file, nodes)
                responses0 = counts["responses"]
                idle = await asyncio.to_thread(idle_cpu, proc.pid, window)
                counts["responses_in_window"] = counts["responses"] - responses0
                rss = rss_of(proc.pid)
                connected_after = await asyncio.to_thread(count_connected, status_file, nodes)
                return {"all_acked_s": t_all, "idle": idle, "rss": rss, "connected": min(connected, connected_after)}
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

        result = asyncio.run(clients())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        stop_leftovers(state)
    n = len(nodes)
    out = {"topology": label + "; stand-in proxies (no Envoy), each waypoint served to one raw Delta ADS client "
                               "(xds-protos stubs, its xDS token, `*` for CDS/EDS/LDS/RDS/SDS, every response ACKed)",
           "proxies": n, "connected": result["connected"], "window_s": window,
           "rss_no_proxy_bytes": rss0, "rss_connected_bytes": result["rss"],
           "rss_per_proxy_bytes": (result["rss"] - rss0) / n if n else None,
           "idle_cpu_ms_per_s_no_proxy": idle0 * 1e3, "idle_cpu_ms_per_s_connected": result["idle"] * 1e3,
           "clients_all_acked_s": result["all_acked_s"], "responses": counts["responses"], "bytes": counts["bytes"],
           "responses_in_window": counts.get("responses_in_window")}
    print(f"    RSS {rss0 / 2**20:.1f} MiB -> {result['rss'] / 2**20:.1f} MiB with {n} connected "
          f"({(out['rss_per_proxy_bytes'] or 0) / 1e6:.3f} MB per proxy); idle CPU {idle0 * 1e3:.1f} -> "
          f"{result['idle'] * 1e3:.1f} ms/s", flush=True)
    if result["connected"] < n:
        raise RuntimeError(f"only {result['connected']} of {n} proxies connected during the measurement")
    return out


def start_serving(folder: Path, base: Path) -> tuple[subprocess.Popen, Path, Any]:
    """A copy of the loaded store `base` in `folder`, and the control plane on it in its own process
    (`--serve`), every waypoint a stand-in."""
    import shutil

    folder.mkdir()
    state = folder / "state"
    shutil.copytree(base, state)
    wrapper = envoy_wrapper(folder, "/nonexistent", lambda ns: False, [])
    log = (folder / "controlplane.log").open("w")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(state),
                             "--envoy", str(wrapper)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, state, log


def read_memory(proc: subprocess.Popen, state: Path, timeout: float = 30.0) -> Body:
    """The `--serve` process's memory after a full collection (its SIGUSR1 report, one JSON line)."""
    report = state.parent / "memory.jsonl"
    before = len(report.read_text().splitlines()) if report.exists() else 0
    proc.send_signal(signal.SIGUSR1)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        lines = report.read_text().splitlines() if report.exists() else []
        if len(lines) > before:
            return json.loads(lines[before])
        if proc.poll() is not None:
            raise RuntimeError(f"the control plane exited {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"no memory report from the control plane within {timeout:g} s")


def slope(points: list[tuple[int, int | None]]) -> float | None:
    """Least-squares slope of value over proxies connected (bytes per proxy)."""
    points = [(x, y) for x, y in points if y is not None]
    if len(points) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def bench_memory(namespaces: int, services: int, steps: list[int], repetitions: int, tmp: Path,
                 timeout: float) -> Body:
    """Control-plane memory per connected proxy as a slope: the control plane alone in its own
    process (`--serve`), `namespaces` waypoints (stand-ins), snapshots built; raw Delta ADS clients
    connected in steps (`steps`: total connected after each; the first is a warm-up that takes the
    one-time cost of the first streams), one client per waypoint. After each step (every new client
    has CDS/LDS/RDS and ACKed, CPU settled) its RSS and glibc heap in use after a full collection.
    Per proxy = (value at the last step - value at the step before) / the proxies between them.
    `repetitions` fresh control-plane processes on copies of one loaded store."""
    folder = tmp / "memory"
    folder.mkdir()
    base = folder / "base"
    label = describe(namespaces, services, "vs")
    print(f"  [memory] {label}; steps {steps}, {repetitions} repetitions", flush=True)
    store, _ = load_store(base, topology(namespaces, services, "vs"), lambda ns: True)
    store.close()
    reps: list[Body] = []
    config: Body = {}
    for rep in range(repetitions):
        proc, state, log = start_serving(folder / f"rep-{rep}", base)
        try:
            status_file = state / "run" / "proxy-status.json"

            def listed() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"the control plane exited {proc.returncode}; see {state.parent}")
                try:
                    return len(json.loads(status_file.read_text())) >= namespaces
                except (OSError, ValueError):
                    return False

            wait_for("control plane lists every waypoint", listed, timeout, 0.1)
            settle(proc.pid)
            readings = [{"connected": 0, **read_memory(proc, state)}]
            nodes = sorted(n for n, s in json.loads(status_file.read_text()).items() if s.get("type") == "waypoint")
            if len(nodes) < steps[-1]:
                raise RuntimeError(f"{len(nodes)} waypoints listed, {steps[-1]} needed")
            from meshway.ca.tokens import ProxyTokens
            from meshway.runtime.placement import socket_dir

            tokens = ProxyTokens(state)
            socket = socket_dir(state) / "xds.sock"
            counts = {"responses": 0, "bytes": 0, "resources": {}}

            async def clients() -> None:
                stop = asyncio.Event()
                tasks: list[asyncio.Future] = []
                try:
                    for step in steps:
                        dones = []
                        for node in nodes[len(tasks):step]:
                            dones.append(asyncio.Event())
                            tasks.append(asyncio.ensure_future(
                                ads_client(socket, node, tokens.token(node), dones[-1], counts, stop)))
                        deadline = time.perf_counter() + timeout
                        while not all(d.is_set() for d in dones):
                            for t in tasks:
                                if t.done():
                                    t.result()  # a client that ended raises here
                            if time.perf_counter() > deadline:
                                raise RuntimeError(f"{sum(not d.is_set() for d in dones)} clients without "
                                                   f"CDS/LDS/RDS within {timeout:g} s")
                            await asyncio.sleep(0.05)
                        await asyncio.to_thread(settle, proc.pid)
                        reading = await asyncio.to_thread(read_memory, proc, state)
                        connected = await asyncio.to_thread(count_connected, status_file, nodes[:step])
                        if connected < step:
                            raise RuntimeError(f"only {connected} of {step} clients connected")
                        readings.append({"connected": step, **reading, "responses": counts["responses"],
                                         "bytes": counts["bytes"]})
                finally:
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(clients())
            if not config:
                kinds = [s.get("type") for s in json.loads(status_file.read_text()).values()]
                config = {"waypoints": kinds.count("waypoint"), "node_proxies": kinds.count("ztunnel"),
                          "resources_per_client": {k: v / steps[-1] for k, v in counts["resources"].items()},
                          "bytes_per_client": counts["bytes"] / steps[-1],
                          "responses_per_client": counts["responses"] / steps[-1]}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
            stop_leftovers(state)
        last, before = readings[-1], readings[-2]
        span = last["connected"] - before["connected"]
        row = {"readings": readings,
               "rss_per_proxy_bytes": (last["rss"] - before["rss"]) / span,
               "malloc_per_proxy_bytes": (last["malloc_in_use"] - before["malloc_in_use"]) / span
               if last["malloc_in_use"] is not None else None,
               "rss_fit_per_proxy_bytes": slope([(r["connected"], r["rss"]) for r in readings[1:]]),
               "rss_first_to_last_per_proxy_bytes": (last["rss"] - readings[0]["rss"]) / last["connected"]}
        reps.append(row)
        print(f"    repetition {rep + 1}: RSS " + " -> ".join(f"{r['rss'] / 2**20:.1f}" for r in readings)
              + f" MiB at {[r['connected'] for r in readings]} connected: {row['rss_per_proxy_bytes'] / 1e6:.3f} MB "
              f"per proxy ({steps[-2]} -> {steps[-1]}); malloc in use {(row['malloc_per_proxy_bytes'] or 0) / 1e6:.3f} "
              "MB per proxy", flush=True)

    def spread(key: str) -> Body:
        values = [r[key] for r in reps if r[key] is not None]
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)} \
            if values else {}

    return {"topology": label + "; stand-in proxies (no Envoy), each waypoint served to at most one raw Delta ADS "
                                "client (xds-protos stubs, its xDS token, `*` for CDS/EDS/LDS/RDS/SDS, every "
                                "response ACKed)",
            "namespaces": namespaces, "services": services, "steps": steps, "repetitions": reps,
            "per_client": config, "rss_per_proxy_bytes": spread("rss_per_proxy_bytes"),
            "malloc_per_proxy_bytes": spread("malloc_per_proxy_bytes"),
            "rss_fit_per_proxy_bytes": spread("rss_fit_per_proxy_bytes"),
            "rss_first_to_last_per_proxy_bytes": spread("rss_first_to_last_per_proxy_bytes")}


def settle(pid: int, limit: float = 30.0, quiet: float = 0.05) -> None:
    """Until the process's CPU rate over half a second is under `quiet` CPU seconds per second, or
    steady (within 20 ms/s of the half second before: its idle loop), at most `limit` seconds."""
    deadline, previous = time.perf_counter() + limit, None
    while time.perf_counter() < deadline:
        c0 = cpu_of(pid)
        time.sleep(0.5)
        rate = (cpu_of(pid) - c0) / 0.5
        if rate < quiet or (previous is not None and abs(rate - previous) < 0.02 and rate < 0.5):
            return
        previous = rate


def idle_cpu(pid: int, window: float) -> float:
    """CPU seconds per second the process used over `window` seconds (utime + stime, /proc)."""
    c0, t0 = cpu_of(pid), time.perf_counter()
    time.sleep(window)
    return (cpu_of(pid) - c0) / (time.perf_counter() - t0)


def count_connected(status_file: Path, nodes: list[str]) -> int:
    status = json.loads(status_file.read_text())
    return sum(1 for n in nodes if status.get(n, {}).get("connected"))


# == 4. `meshway get pods` (cli_startup.py's result) ===============================================

def get_pods_reference() -> Body:
    path = RESULTS / "cli_startup.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"source": str(path.relative_to(ROOT)), "missing": True}
    rows = {s["name"]: s for s in report.get("scenarios", [])}
    out = {"source": str(path.relative_to(ROOT)), "started": report.get("started"),
           "commit": (report.get("machine") or {}).get("meshway_commit")}
    for name in ("get-pods-empty", "get-pods-demo"):
        if name in rows:
            out[name] = {"what": rows[name].get("what"), "cpu_ms_median": rows[name]["cpu_ms"]["median"],
                         "vs_kubectl_help": rows[name].get("vs_kubectl_help")}
    return out


# == output =======================================================================================

def verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "—"
    return "met" if value <= goal else f"**missed ({value / goal:.1f}x)**"


def _ms(s: float | None) -> str:
    return "—" if s is None else fmt_time(s)


def write_markdown(path: Path, report: Body) -> None:
    m, acks, tr, px, gp = report["machine"], report["ack"], report["translation"], report["proxies"], report["get_pods"]
    mem = report["memory"]
    runs = report.get("runs") or {}

    def machine_line(mm: Body, started: str, duration: str) -> str:
        return (f"Python {mm['python']}, {mm['cpu_count']} CPUs (shared), Envoy {mm.get('envoy')} (`--concurrency 1`), "
                f"protobuf {mm.get('protobuf')} ({mm.get('protobuf_backend')}); meshway {mm.get('meshway_commit')}; "
                f"run {started}{duration}; load average at start {mm['loadavg_at_start'][0]:.2f}")

    carried = {part: r for part, r in runs.items() if r.get("machine")}

    def run_of(*parts: str) -> str:
        """' (run X)' for figures carried over from an earlier run, '' for this run's."""
        found = [carried[p] for p in parts if p in carried]
        return f" (run {found[0]['started']}, meshway {found[0]['machine'].get('meshway_commit')})" if found else ""

    lines = [f"# Control plane at scale ({report['mode']})", "",
             machine_line(m, report["started"], f" ({report['duration_s']:.0f} s)") + ". Goals: issue 10.", ""]
    if carried:
        this = sorted(set(runs) - set(carried))
        lines += [f"This run measured: {', '.join(this) or 'nothing'}. Carried over unchanged from earlier runs "
                  "(`scale.py --only` re-runs some parts and keeps the others, each marked with its run):", ""]
        for started in sorted({r["started"] for r in carried.values()}):
            names = sorted(p for p, r in carried.items() if r["started"] == started)
            mm = next(r["machine"] for r in carried.values() if r["started"] == started)
            lines.append(f"- {', '.join(names)}: " + machine_line(mm, started, "") + ".")
        lines.append("")
    lines += ["## Summary", "", "| figure | topology | measured | goal | verdict | anchor |",
              "|---|---|---|---|---|---|"]
    for a in acks:
        t = a["total"]
        lines.append(f"| store change -> waypoint Envoy RDS ACK, p50 / p99 (N={a['changes']}) | {a['topology']} | "
                     f"**{_ms(t['p50'])} / {_ms(t['p99'])}** | 30 ms / 100 ms | "
                     f"{verdict(t['p50'], GOALS['ack_p50_s'])} / {verdict(t['p99'], GOALS['ack_p99_s'])} | {ANCHORS} |")
    lines.append(f"| cold translation of all {tr['namespaces']} waypoints (the control plane's first `sync`) | "
                 f"{tr['topology']} | **{_ms(tr['cold']['first_sync_s'])}** "
                 f"(CPU {_ms(tr['cold']['first_sync_cpu_s'])}) | "
                 f"1 s | {verdict(tr['cold']['first_sync_s'], GOALS['cold_translation_s'])} | |")
    sets, builds = tr["snapshots_set"], tr["builds"]
    lines.append(f"| one change -> waypoints re-translated (snapshots set / `ControlPlane.builds`), median of "
                 f"{tr['changes']} | same | **{sets.get('p50')} / {builds.get('p50', '—')}** of {tr['namespaces']} | "
                 f"1 (the affected waypoint) | {verdict(builds.get('p50', sets.get('p50')), 1)} | |")
    lines.append("| one change -> control-plane CPU (apply -> the `sync` that set the snapshot returned), p50 / p99 | "
                 "same | "
                 f"**{_ms(tr['cp_cpu']['p50'])} / {_ms(tr['cp_cpu']['p99'])}** | 50 ms | "
                 f"{verdict(tr['cp_cpu']['p50'], GOALS['change_cpu_s'])} | |")
    for a in acks:
        c = a["cold_start"]
        lines.append(f"| cold start -> Gateway Programmed / -> waypoint ACKed all its services | {a['topology']} | "
                     f"**{_ms(c['to_programmed_s'])} / {_ms(c['to_all_services_acked_s'])}** | 3 s | "
                     f"{verdict(c['to_programmed_s'], GOALS['cold_start_s'])} / "
                     f"{verdict(c['to_all_services_acked_s'], GOALS['cold_start_s'])} | |")
    per = mem["rss_per_proxy_bytes"]
    lines.append(f"| control-plane RSS per connected proxy: slope from {mem['steps'][-2]} to {mem['steps'][-1]} "
                 f"connected, median [min-max] of {per['n']} control-plane processes{run_of('memory')} | "
                 f"{mem['topology']} | **{per['median'] / 1e6:.3f} MB** [{per['min'] / 1e6:.3f}-{per['max'] / 1e6:.3f}] | "
                 f"0.3 MB | {verdict(per['median'], GOALS['rss_per_proxy_bytes'])} | |")
    lines.append(f"| control-plane idle CPU, {px['proxies']} connected proxies{run_of('proxies')} | {px['topology']} | "
                 f"**{px['idle_cpu_ms_per_s_connected']:.1f} ms/s** (none connected: "
                 f"{px['idle_cpu_ms_per_s_no_proxy']:.1f} ms/s) | 10 ms/s | "
                 f"{verdict(px['idle_cpu_ms_per_s_connected'], GOALS['idle_cpu_ms_per_s'])} | |")
    gpe = gp.get("get-pods-empty")
    if gpe:
        lines.append(f"| `meshway get pods` CPU (from `{gp['source']}`, run {gp['started']}, not re-measured) | "
                     f"{gpe['what']} | **{gpe['cpu_ms_median']:.0f} ms** | 120 ms | "
                     f"{verdict(gpe['cpu_ms_median'], GOALS['get_pods_cpu_ms'])} | kubectl get pods 40 ms |")
    lines += ["", f"## 1. Store change -> waypoint Envoy ACK, per stage{run_of('ack')}", ""]
    for a in acks:
        lines += [f"### {a['name']}: {a['topology']}", "",
                  f"{a['changes']} changes, one at a time: {a['change']}. Latency until `cache.status[node][RDS]` is "
                  f"SYNCED at the new snapshot's version (polled every 2 ms). Real Envoy: {a['real_envoy']}. "
                  f"Control plane defaults: poll {_ms(a['poll_s'])}, debounce {_ms(a['debounce_s'])}, "
                  f"{'Delta' if a['delta_xds'] else 'SotW'} ADS. Snapshots set for other waypoints during the changes: "
                  f"{a['other_snapshots_set']}.", "",
                  "| part | p50 | p99 | min | max |", "|---|---|---|---|---|"]
        for key, what in (("total", "**store change -> RDS ACK**"), ("apply", "of which `Store.apply`"),
                          ("to_snapshot", "store change -> new snapshot in the cache"),
                          ("applied_to_sync", "of which apply returned -> `ControlPlane.sync` started (commit "
                                              "signal, debounce, store read, view update)"),
                          ("sync_to_snapshot", "of which `ControlPlane.sync` started -> this snapshot set"),
                          ("sync", "the whole `ControlPlane.sync` call that set it (wall; it may go on with other "
                                   "waypoints after)"),
                          ("sync_cpu", "the whole `ControlPlane.sync` call that set it (CPU of its thread)"),
                          ("snapshot_to_ack", "new snapshot -> RDS ACK (push, Envoy applies, ACK)")):
            s = a[key]
            if s:
                lines.append(f"| {what} | {_ms(s['p50'])} | {_ms(s['p99'])} | {_ms(s['min'])} | {_ms(s['max'])} |")
        c = a["cold_start"]
        lines += ["", f"Cold start (store loaded first: {a['store_apply_s']:.1f} s for `Store.apply`; clock from "
                      f"`ControlPlane(...)`, in this process): replica known {_ms(c['to_replica_known_s'])}, Gateway "
                      f"Programmed {_ms(c['to_programmed_s'])}, every service's routes ACKed "
                      f"{_ms(c['to_all_services_acked_s'])}; the waypoint's resources: "
                      + ", ".join(f"{k} {v:,}" for k, v in c["resources"].items()) + ".", ""]
    lines += [f"## 2. Translation, no Envoy{run_of('translation')}", "", f"{tr['topology']}.", "",
              "| measurement | value |", "|---|---|",
              f"| first `ControlPlane.sync` (all {tr['namespaces']} waypoints), wall / CPU | "
              f"{_ms(tr['cold']['first_sync_s'])} / {_ms(tr['cold']['first_sync_cpu_s'])} |",
              f"| `ControlPlane(...)` -> every waypoint's snapshot set (store read, view, translation), wall / CPU | "
              f"{_ms(tr['cold']['start_to_all_snapshots_s'])} / {_ms(tr['cold']['start_to_all_snapshots_cpu_s'])} |",
              f"| one change ({tr['change']}): snapshots set, median [max] | {sets.get('p50')} [{sets.get('max')}] |",
              f"| builds (`ControlPlane.builds`), median [max] | {builds.get('p50', '—')} "
              f"[{builds.get('max', '—')}] |",
              f"| control-plane CPU (all its threads), apply -> the `sync` that set the snapshot returned, p50 / p99 | "
              f"{_ms(tr['cp_cpu']['p50'])} / {_ms(tr['cp_cpu']['p99'])} |",
              f"| of which that `ControlPlane.sync` call's CPU, p50 / p99 | {_ms(tr['sync_cpu'].get('p50'))} / "
              f"{_ms(tr['sync_cpu'].get('p99'))} |",
              f"| apply -> snapshot set (wall), p50 / p99 | {_ms(tr['to_snapshot']['p50'])} / "
              f"{_ms(tr['to_snapshot']['p99'])} |", ""]
    lines += [f"## 3. Idle CPU with connected proxies{run_of('proxies')}", "", f"{px['topology']}.", "",
              "| measurement | value |", "|---|---|",
              f"| control-plane RSS, no proxy connected / {px['connected']} connected (one reading each; the "
              "per-proxy figure is section 4's) | "
              f"{px['rss_no_proxy_bytes'] / 2**20:.1f} / {px['rss_connected_bytes'] / 2**20:.1f} MiB |",
              f"| idle CPU ({px['window_s']:g} s window), none / {px['proxies']} connected | "
              f"{px['idle_cpu_ms_per_s_no_proxy']:.1f} / {px['idle_cpu_ms_per_s_connected']:.1f} ms/s |",
              f"| clients connected -> all ACKed CDS/LDS/RDS | {_ms(px['clients_all_acked_s'])} |",
              f"| responses / bytes the clients received (of which responses in the idle window) | "
              f"{px['responses']:,} / {px['bytes']:,} ({px.get('responses_in_window')}) |", ""]
    steps, reps = mem["steps"], mem["repetitions"]
    pc = mem["per_client"]
    lines += [f"## 4. Memory per connected proxy{run_of('memory')}", "",
              f"{mem['topology']}. Proxies in the control plane's proxy-status.json: {pc.get('waypoints')} "
              f"waypoints, {pc.get('node_proxies')} node proxies (ztunnel; no namespace is in ambient mode). "
              "Each client is sent "
              + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(pc.get("resources_per_client", {}).items()))
              + f" resources ({pc['bytes_per_client'] / 1e3:,.1f} kB of responses, "
              f"{pc['responses_per_client']:.0f} responses). Delta ADS.", "",
              f"{len(reps)} repetitions, each a fresh control-plane process (`--serve`) on a copy of one loaded "
              f"store: its snapshots built and its CPU settled, then clients connected in steps to "
              f"{', '.join(map(str, steps))} in all (each step: every new client has CDS, LDS and RDS and ACKed; "
              f"the control plane settled; all clients `connected` in proxy-status.json). At 0 and after each step the "
              "control plane runs a full `gc.collect()` and reports its RSS (`VmRSS`) and glibc's heap in use "
              f"(`mallinfo2`). Per proxy = (value at {steps[-1]} - value at {steps[-2]}) / {steps[-1] - steps[-2]}: "
              f"the first {steps[0]} clients take the one-time cost of the first streams (gRPC's threads and buffers, "
              "allocator arenas), which a difference from 0 would spread over the proxies.", "",
              "| measurement | median | min | max |", "|---|---|---|---|"]
    for key, what in (("rss_per_proxy_bytes", f"**RSS per proxy, {steps[-2]} -> {steps[-1]} connected**"),
                      ("malloc_per_proxy_bytes", f"glibc heap in use per proxy, {steps[-2]} -> {steps[-1]} connected"),
                      ("rss_fit_per_proxy_bytes", f"RSS per proxy, least-squares over {', '.join(map(str, steps))} "
                                                  "connected"),
                      ("rss_first_to_last_per_proxy_bytes", f"RSS per proxy, (at {steps[-1]} - at 0) / {steps[-1]} "
                                                            "(with the one-time cost)")):
        v = mem.get(key) or {}
        if v:
            lines.append(f"| {what} | {v['median'] / 1e6:.3f} MB | {v['min'] / 1e6:.3f} MB | {v['max'] / 1e6:.3f} MB |")
    lines += ["", "RSS (MiB) per repetition at " + ", ".join(f"{r['connected']}" for r in reps[0]["readings"])
              + " connected:", ""]
    for i, r in enumerate(reps):
        lines.append(f"- {i + 1}: " + " / ".join(f"{x['rss'] / 2**20:.1f}" for x in r["readings"])
                     + f" -> {r['rss_per_proxy_bytes'] / 1e6:.3f} MB per proxy")
    lines.append("")
    lines += ["Times are wall clock on a shared 2-vCPU machine (other work running: expect +-30 %); CPU is "
              "utime + stime. See benchmarks/README.md (`scale.py`).", ""]
    path.write_text("\n".join(lines))


def carry_over(path: Path, parts: set[str]) -> Body:
    """The `parts` not re-run, from the results file this run replaces, each with the run it is from
    (`runs[part]`: that run's start and its machine line)."""
    if not parts:
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: Body = {"runs": {}}
    for part in parts:
        if old.get(part):
            out[part] = old[part]
            source = (old.get("runs") or {}).get(part) or {}
            out["runs"][part] = {"started": source.get("started") or old.get("started"),
                                 "machine": source.get("machine") or old.get("machine")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 services per topology, 5 changes: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: %(default)s)")
    ap.add_argument("--envoy", default=None, help="envoy binary (default: the one next to this Python)")
    ap.add_argument("--only", default=None,
                    help="comma-separated parts to run (ack, translation, proxies, memory); the others are "
                         "carried over from the results file being replaced, each marked with its own run")
    ap.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the control plane alone
    ap.add_argument("--apply-server", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the writer
    args = ap.parse_args(argv)
    if args.serve is not None:
        return serve(args.serve, args.envoy)
    if args.apply_server is not None:
        return apply_server(args.apply_server)
    try:
        envoy = args.envoy or find_envoy()
    except FileNotFoundError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 2
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    loadavg = os.getloadavg()
    if args.quick:
        services, changes, tr_ns, tr_services, tr_changes, proxies, px_services, window, timeout = \
            100, 5, 20, 100, 3, 10, 100, 2.0, 60.0
        mem_ns, mem_services, mem_steps, mem_reps = 20, 100, [5, 10, 20], 2
    else:
        services, changes, tr_ns, tr_services, tr_changes, proxies, px_services, window, timeout = \
            1000, 30, 100, 1000, 10, 50, 1000, 10.0, 600.0
        mem_ns, mem_services, mem_steps, mem_reps = 100, 2000, [10, 50, 100], 5
    parts = ("ack", "translation", "proxies", "memory")
    only = set(args.only.split(",")) if args.only else set(parts)
    if only - set(parts):
        ap.error(f"unknown parts {sorted(only - set(parts))}; the parts are {', '.join(parts)}")
    stem = "scale-quick" if args.quick else "scale"
    report: Body = {"benchmark": "scale", "mode": "quick" if args.quick else "full",
                    "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "goals": GOALS, "anchors": ANCHORS, "ack": [], "translation": None, "proxies": None,
                    "memory": None, "runs": {}}
    carried = carry_over(args.out / f"{stem}.json", set(parts) - only)
    report.update({k: v for k, v in carried.items() if k != "runs"})
    report["runs"].update(carried.get("runs", {}))
    with tempfile.TemporaryDirectory(prefix="mw-scale-") as tmp_name:
        tmp = Path(tmp_name)
        if "ack" in only:
            print("1. store change -> waypoint Envoy ACK", flush=True)
            for name, namespaces, routes in (("vs-1-waypoint", 1, "vs"), ("httproute-1-waypoint", 1, "httproute"),
                                             ("vs-10-waypoints", 10, "vs")):
                report["ack"].append(bench_ack(name, namespaces, services, routes, changes, envoy, tmp, timeout))
        if "translation" in only:
            print("2. translation (no Envoy)", flush=True)
            report["translation"] = bench_translation(tr_ns, tr_services, tr_changes, tmp, timeout)
        if "proxies" in only:
            print("3. memory and idle CPU per connected proxy", flush=True)
            report["proxies"] = bench_proxies(proxies, px_services, window, tmp, timeout)
        if "memory" in only:
            print("4. memory per connected proxy (slope)", flush=True)
            report["memory"] = bench_memory(mem_ns, mem_services, mem_steps, mem_reps, tmp, timeout)
    for part in only:
        report["runs"][part] = {"started": report["started"], "machine": None}  # this run: see "machine"
    report["get_pods"] = get_pods_reference()
    report["duration_s"] = time.perf_counter() - t0
    report["machine"] = {**machine_info(), **tool_versions(envoy), "loadavg_at_start": loadavg}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    if report["ack"] and report["translation"] and report["proxies"] and report["memory"]:
        write_markdown(args.out / f"{stem}.md", report)
    else:
        (args.out / f"{stem}.md").write_text(f"# Control plane at scale (partial: {sorted(only)})\n\n```json\n"
                                             + json.dumps({k: v for k, v in report.items() if k != "machine"},
                                                          indent=1, default=str)[:20000] + "\n```\n")
    print(f"total {report['duration_s']:.0f} s; wrote {args.out / stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
