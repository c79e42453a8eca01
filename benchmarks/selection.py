#!/usr/bin/env python
"""Waypoint selection at scale: index build, decide-for-all, one incremental label change, and the
same label change end to end through the SQLite store.

    python benchmarks/selection.py            # full: 100 namespaces, 1,000 services, 10,000 pods
    python benchmarks/selection.py --quick    # smoke run, seconds

Writes benchmarks/results/selection.{json,md} (`--quick`: selection-quick.{json,md}).
See benchmarks/README.md for what each measurement means.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout even when meshway is not installed
    sys.path.insert(0, str(ROOT))

from meshway import labels as L  # noqa: E402
from meshway.mesh.selection import decide_service, decide_workload  # noqa: E402
from meshway.mesh.view import SNAPSHOT_KINDS, MeshView  # noqa: E402
from meshway.model import parse_object  # noqa: E402
from meshway.model.registry import BY_KIND  # noqa: E402
from meshway.store.cluster import Store  # noqa: E402
from meshway.store.reconcile import STATUS_KINDS  # noqa: E402

Body = dict[str, Any]
RESULTS = Path(__file__).resolve().parent / "results"
NOW = "2025-01-01T00:00:00Z"
GW_API = "gateway.networking.k8s.io/v1"
PODS_PER_NODE = 200  # the store gives each node a /24 (253 pod IPs); one node cannot hold 10,000 pods


# -- topology -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    namespaces: int
    services_per_namespace: int = 10
    pods_per_service: int = 10

    @property
    def services(self) -> int:
        return self.namespaces * self.services_per_namespace

    @property
    def pods(self) -> int:
        return self.services * self.pods_per_service


def ns_name(n: int) -> str:
    return f"ns-{n:03d}"


def enrolled(n: int) -> bool:
    """Odd-numbered namespaces carry istio.io/use-waypoint=waypoint: half of them."""
    return n % 2 == 1


def namespace_labels(n: int) -> dict[str, str]:
    return {L.USE_WAYPOINT: "waypoint"} if enrolled(n) else {}


def gateway_labels(n: int) -> dict[str, str]:
    """Half the waypoints (half of the enrolled namespaces' and half of the others') also take
    workload-addressed traffic (waypoint-for=all); the rest default to service traffic only."""
    return {L.WAYPOINT_FOR: "all"} if n % 4 in (0, 1) else {}


def waypoint_ready(n: int) -> dict[str, int]:
    """Every waypoint Deployment has a ready replica except every 25th (WaypointIsNotReady)."""
    return {} if n % 25 == 0 else {"readyReplicas": 1, "availableReplicas": 1}


def service_labels(n: int, s: int) -> dict[str, str]:
    """Some services labelled individually, so every decision path is exercised:
    svc-0 asks for its namespace's waypoint itself (matters where the namespace is not enrolled);
    svc-1 opts out (use-waypoint=none); in every 10th namespace svc-2 asks for ns-001's waypoint
    (refused: allowedRoutes is Same) and in every 20th svc-3 asks for a waypoint that does not exist."""
    if s == 0:
        return {L.USE_WAYPOINT: "waypoint"}
    if s == 1:
        return {L.USE_WAYPOINT: L.NONE}
    if s == 2 and n % 10 == 0:
        return {L.USE_WAYPOINT: "waypoint", L.USE_WAYPOINT_NAMESPACE: ns_name(1)}
    if s == 3 and n % 20 == 0:
        return {L.USE_WAYPOINT: "missing"}
    return {}


def cluster_ip(i: int) -> str:
    i += 20  # stay clear of 10.96.0.1 / 10.96.0.10
    return f"10.96.{i // 250}.{i % 250 + 2}"


def pod_ip(i: int) -> tuple[str, str]:
    node = i // PODS_PER_NODE + 1
    return f"node-{node}", f"10.244.{node}.{i % PODS_PER_NODE + 2}"


def _meta(name: str, namespace: str | None, uid: str, labels: dict[str, str] | None = None, **extra: Any) -> Body:
    meta: Body = {"name": name, "uid": uid, "resourceVersion": "1", "creationTimestamp": NOW, **extra}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def build_snapshot(scale: Scale) -> dict[str, list[Body]]:
    """Store-shaped bodies (what `Store.snapshot` returns after apply + reconcile), built in memory.

    Same shape as meshway.mesh.distribution.generate_topology, with the server-set fields the store
    adds (uid, creationTimestamp, defaults, pod IPs and Ready conditions). Each waypoint has a
    Deployment, most with a ready replica, so selection runs all the way to WaypointAccepted."""
    snap: dict[str, list[Body]] = {kind: [] for kind in SNAPSHOT_KINDS}
    snap["GatewayClass"].append({
        "apiVersion": GW_API, "kind": "GatewayClass", "metadata": _meta(L.WAYPOINT_CLASS, None, "gc-0", generation=1),
        "spec": {"controllerName": L.MESH_CONTROLLER}})
    svc_i = pod_i = 0
    for n in range(1, scale.namespaces + 1):
        ns = ns_name(n)
        snap["Namespace"].append({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(ns, None, f"ns-{n}", {"kubernetes.io/metadata.name": ns, **namespace_labels(n)}),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        snap["Gateway"].append({
            "apiVersion": GW_API, "kind": "Gateway",
            "metadata": _meta("waypoint", ns, f"gw-{n}", gateway_labels(n), generation=1),
            "spec": {"gatewayClassName": L.WAYPOINT_CLASS,
                     "listeners": [{"name": "mesh", "port": L.HBONE_PORT, "protocol": "HBONE"}]}})
        snap["Deployment"].append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta("waypoint", ns, f"wpd-{n}", {L.GATEWAY_NAME: "waypoint",
                                                            L.GATEWAY_CLASS_NAME: L.WAYPOINT_CLASS,
                                                            L.MANAGED: L.MANAGED_VALUE}, generation=1),
            "spec": {"replicas": 1, "selector": {"matchLabels": {L.GATEWAY_NAME: "waypoint"}}},
            "status": {"observedGeneration": 1, "replicas": 1, **waypoint_ready(n)}})
        for s in range(scale.services_per_namespace):
            app = f"svc-{s}"
            ip = cluster_ip(svc_i)
            svc_i += 1
            snap["Service"].append({
                "apiVersion": "v1", "kind": "Service",
                "metadata": _meta(app, ns, f"svc-{n}-{s}", service_labels(n, s), generation=1),
                "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                         "ipFamilyPolicy": "SingleStack", "selector": {"app": app},
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
                "status": {"loadBalancer": {}}})
            for p in range(scale.pods_per_service):
                node, ip = pod_ip(pod_i)
                pod_i += 1
                snap["Pod"].append({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": _meta(f"{app}-{p}", ns, f"pod-{n}-{s}-{p}", {"app": app}),
                    "spec": {"containers": [{"name": "app", "image": "x"}], "serviceAccountName": "default",
                             "restartPolicy": "Always", "nodeName": node},
                    "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                               "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": NOW}]}})
    return snap


def build_manifests(scale: Scale) -> list[Body]:
    """The same topology as user manifests for `Store.apply`: Namespaces, waypoint Gateways, Services
    and bare Pods (the store allocates ClusterIPs, schedules pods, assigns pod IPs and creates each
    waypoint's ServiceAccount/Deployment/Service/pod)."""
    out: list[Body] = []
    for n in range(1, scale.namespaces + 1):
        ns = ns_name(n)
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": namespace_labels(n)}})
        out.append({"apiVersion": GW_API, "kind": "Gateway",
                    "metadata": {"name": "waypoint", "namespace": ns, "labels": gateway_labels(n)},
                    "spec": {"gatewayClassName": L.WAYPOINT_CLASS,
                             "listeners": [{"name": "mesh", "port": L.HBONE_PORT, "protocol": "HBONE"}]}})
        for s in range(scale.services_per_namespace):
            app = f"svc-{s}"
            out.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": app, "namespace": ns, "labels": service_labels(n, s)},
                        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
            for p in range(scale.pods_per_service):
                out.append({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": f"{app}-{p}", "namespace": ns, "labels": {"app": app}},
                            "spec": {"containers": [{"name": "app", "image": "x"}]}})
    for body in out:
        if not body["metadata"].get("labels"):
            body["metadata"].pop("labels", None)
    return out


def first_unenrolled(scale: Scale, skip: int = 0) -> list[str]:
    return [ns_name(n) for n in range(1, scale.namespaces + 1) if not enrolled(n)][skip:]


# -- measuring ------------------------------------------------------------------------------------

@dataclass
class Measurement:
    id: str
    name: str
    samples: list[float]
    peak_bytes: int | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def to_json(self) -> Body:
        return {
            "id": self.id, "name": self.name, "unit": "s", "repetitions": len(self.samples),
            "median": self.median, "min": self.min, "max": max(self.samples), "samples": self.samples,
            "peak_memory": None if self.peak_bytes is None else {"value": self.peak_bytes, "unit": "bytes"},
            "notes": self.notes, **self.extra,
        }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def traced_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes Python allocated while `fn` ran (inputs allocated before are not counted).
    A separate, untimed run: tracemalloc slows allocation-heavy code several times over."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def measure(mid: str, name: str, fn: Callable[[], Any], reps: int, memory: bool = True, warmup: int = 1,
            notes: str = "") -> Measurement:
    for _ in range(warmup):
        fn()
    samples = [timed(fn)[0] for _ in range(reps)]
    peak = traced_peak(fn) if memory else None
    m = Measurement(mid, name, samples, peak, notes)
    print(f"  {name}: median {fmt_time(m.median)}, min {fmt_time(m.min)}"
          + (f", peak {fmt_bytes(peak)}" if peak is not None else ""), flush=True)
    return m


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"
    return f"{s * 1e6:.0f} µs"


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "—"
    if b >= 1 << 20:
        return f"{b / (1 << 20):.1f} MiB"
    return f"{b / 1024:.0f} KiB"


# -- the benchmarks -------------------------------------------------------------------------------

def decide_all(view: MeshView) -> list:
    out = [decide_service(view, svc) for svc in view.services.values()]
    out += [decide_workload(view, pod) for pod in view.pods.values()]
    return out


def decide_namespace(view: MeshView, namespace: str) -> list:
    """Re-decide one namespace's services and pods. MeshView has no per-namespace index, so this
    scans the service and pod maps for the namespace (the same scan in the full and the incremental path)."""
    out = [decide_service(view, svc) for svc in view.services.values() if svc.namespace == namespace]
    out += [decide_workload(view, pod) for pod in view.pods.values() if pod.namespace == namespace]
    return out


def relabel(namespaces: list[Body], target: str, labels: dict[str, str]) -> list[Body]:
    """The namespace list after `meshway label ns <target> k=v`: one new body, the rest shared."""
    out = []
    for body in namespaces:
        if body["metadata"]["name"] == target:
            body = copy.deepcopy(body)
            body["metadata"]["labels"] = {**body["metadata"].get("labels", {}), **labels}
        out.append(body)
    return out


def bench_in_memory(scale: Scale, reps: dict[str, int]) -> tuple[list[Measurement], Body, Body]:
    snapshot = build_snapshot(scale)
    counts = {k: len(v) for k, v in snapshot.items()}
    print(f"in-memory topology: {counts}", flush=True)
    objects = sum(counts.values())

    m_build = measure("build", "1. MeshView.build (full index)", lambda: MeshView.build(snapshot), reps["build"],
                      notes=f"{objects:,} objects of {len(SNAPSHOT_KINDS)} kinds")
    view = MeshView.build(snapshot)

    n_dec = len(view.services) + len(view.pods)
    m_decide = measure("decide_all", "2. decide all (services + pods)", lambda: decide_all(view), reps["decide"],
                       notes=f"{len(view.services):,} decide_service + {len(view.pods):,} decide_workload; "
                             "decisions kept in a list")
    m_decide.notes += f"; {m_decide.median / n_dec * 1e6:.1f} µs per decision"
    decisions = decide_all(view)
    reasons = {"service": dict(Counter(d.reason for d in decisions if d.addressed_as == "service")),
               "workload": dict(Counter(d.reason for d in decisions if d.addressed_as == "workload"))}

    # 3. one label change: an unenrolled namespace gets istio.io/use-waypoint=waypoint
    target = first_unenrolled(scale)[0]
    new_namespaces = relabel(snapshot["Namespace"], target, {L.USE_WAYPOINT: "waypoint"})
    new_snapshot = {**snapshot, "Namespace": new_namespaces}

    def full_path() -> list:
        return decide_namespace(MeshView.build(new_snapshot), target)

    def incremental_path() -> list:
        return decide_namespace(view.with_changes({"Namespace": new_namespaces}), target)

    m_full = measure("label_full", f"3a. label change: full rebuild + re-decide {target}", full_path,
                     reps["incremental_full"])
    m_incr = measure("label_incremental", f"3b. label change: with_changes + re-decide {target}", incremental_path,
                     reps["incremental"])
    new_view = view.with_changes({"Namespace": new_namespaces})
    m_wc = measure("label_incremental_with_changes", "3b.i   of which with_changes({'Namespace': ...})",
                   lambda: view.with_changes({"Namespace": new_namespaces}), reps["incremental"])
    m_dn = measure("label_incremental_decide", f"3b.ii  of which re-decide {target}",
                   lambda: decide_namespace(new_view, target), reps["incremental"])
    before, after_full, after_incr = decide_namespace(view, target), full_path(), incremental_path()
    same = after_full == after_incr and [d.requested for d in after_full] == [d.requested for d in after_incr]
    changed = sum(a.reason != b.reason for a, b in zip(before, after_incr))
    m_full.notes = f"{len(after_full)} decisions ({scale.services_per_namespace} services + " \
                   f"{len(after_full) - scale.services_per_namespace} pods)"
    m_incr.notes = f"same {len(after_incr)} decisions; identical to 3a: {same}; {changed} changed reason"
    m_wc.notes = "rebuilds the Namespace index only; services/pods/waypoints shared"
    m_dn.notes = f"includes the scan of all {len(view.services) + len(view.pods):,} services+pods for the namespace"
    ratio = m_full.median / m_incr.median
    ratio_min = m_full.min / m_incr.min
    checks = {"incremental_equals_full": same, "incremental_target_namespace": target,
              "decisions_changed_by_label": changed, "reasons": reasons,
              "reasons_in_target_after_label": dict(Counter(d.reason for d in after_incr))}
    if not same:
        print("WARNING: incremental decisions differ from the full rebuild", file=sys.stderr)
    summary = {"value": ratio, "unit": "x", "ratio_of_mins": ratio_min,
               "definition": "median(3a full rebuild + re-decide namespace) / median(3b with_changes + re-decide "
                             "namespace)"}
    return [m_build, m_decide, m_full, m_incr, m_wc, m_dn], summary, checks


def bench_store(scale: Scale, reps: dict[str, int]) -> tuple[list[Measurement], Body, Body]:
    bodies = build_manifests(scale)
    print(f"store topology: {scale.namespaces} namespaces, {scale.services:,} services, {scale.pods:,} pods "
          f"({len(bodies):,} manifests)", flush=True)
    m_parse = measure("store_parse", "4.0 parse_object of every manifest",
                      lambda: [parse_object(b, "benchmark", i + 1) for i, b in enumerate(bodies)], reps["store_parse"],
                      notes=f"{len(bodies):,} manifests (pydantic validation); not part of 4a")
    manifests = [parse_object(b, "benchmark", i + 1) for i, b in enumerate(bodies)]
    nodes = math.ceil((scale.pods + scale.namespaces) / PODS_PER_NODE)
    checks: Body = {}
    tmp = tempfile.TemporaryDirectory(prefix="meshway-bench-")
    stores: list[Store] = []

    def fresh_store() -> Store:
        """An empty store (bootstrapped, `nodes` nodes) in its own directory; creation is not timed."""
        store = Store(Path(tmp.name) / f"store-{len(stores)}")
        store.set_nodes(nodes)
        stores.append(store)
        return store

    try:
        # 4a: every repetition applies the whole topology to a fresh store; only `apply` is timed.
        samples, results = [], []
        for _ in range(reps["store_apply"]):
            store = fresh_store()
            t, results = timed(lambda: store.apply(manifests))
            samples.append(t)
        traced_store = fresh_store()
        peak = traced_peak(lambda: traced_store.apply(manifests))
        traced_store.close()
        m_apply = Measurement(
            "store_apply", "4a. Store.apply (whole topology, one transaction)", samples, peak,
            notes=f"{len(results):,} objects created + reconcile (ClusterIPs, scheduling on {nodes} nodes, pod IPs, "
                  f"{scale.namespaces} waypoint ServiceAccount/Deployment/Service/pod, statuses); fresh store each run")
        print(f"  {m_apply.name}: median {fmt_time(m_apply.median)}, min {fmt_time(m_apply.min)}, "
              f"peak {fmt_bytes(peak)}", flush=True)

        _, snap = store.snapshot(SNAPSHOT_KINDS)
        checks["store_objects"] = {k: len(v) for k, v in snap.items()}
        del snap
        m_snap = measure("store_snapshot", "4b. Store.snapshot (all selection kinds)",
                         lambda: store.snapshot(SNAPSHOT_KINDS), reps["store_snapshot"],
                         notes="SELECT + json.loads of every object of the selection kinds (what a reader builds "
                               "its MeshView from)")

        targets = iter(first_unenrolled(scale))
        ns_info = BY_KIND["Namespace"]
        labelled: list[str] = []

        def label_one() -> Any:
            ns = next(targets)
            labelled.append(ns)
            result = store.label(ns_info, None, [ns], None, {L.USE_WAYPOINT: "waypoint"}, [])
            assert [r.action for r in result] == ["labeled"], result
            return result

        m_label = measure("store_label", "4c. Store.label ns use-waypoint=waypoint (+ reconcile)", label_one,
                          reps["store_label"], warmup=0)
        last = labelled[-1]
        svcs = [b for b in store.list(BY_KIND["Service"], last)
                if (b["metadata"].get("labels") or {}).get(L.MANAGED) != L.MANAGED_VALUE]
        bound = Counter(c.get("reason") for b in svcs for c in (b.get("status") or {}).get("conditions", [])
                        if c["type"] == "istio.io/WaypointBound")
        checks["store_label_namespaces"] = labelled
        checks["store_label_waypoint_bound_reasons"] = dict(bound)
        n_svc = len(store.list(BY_KIND["Service"]))
        m_label.notes = (f"a different unenrolled namespace each run; one write transaction that re-reads "
                         f"{', '.join(STATUS_KINDS)} and re-decides all {n_svc:,} Services; "
                         f"the namespace's services then report WaypointBound {dict(bound)} "
                         "(no runtime, so waypoints are not ready)")
    finally:
        for st in stores:
            st.close()
        tmp.cleanup()
    return [m_parse, m_apply, m_snap, m_label], {"nodes": nodes, "manifests": len(bodies)}, checks


# -- output ---------------------------------------------------------------------------------------

def machine_info() -> Body:
    info: Body = {"python": platform.python_version(), "implementation": platform.python_implementation(),
                  "platform": platform.platform(), "machine": platform.machine(),
                  "processor": platform.processor() or None, "cpu_count": os.cpu_count()}
    try:
        info["sqlite"] = __import__("sqlite3").sqlite_version
        info["pydantic"] = __import__("pydantic").VERSION
    except Exception:  # pragma: no cover
        pass
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "meshway"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["meshway_commit"] = head + ("-dirty" if dirty else "") if head else None
    except Exception:  # pragma: no cover
        info["meshway_commit"] = None
    return info


def write_markdown(path: Path, report: Body, measurements: list[Measurement]) -> None:
    topo, machine, ratio = report["topology"], report["machine"], report["incremental_ratio"]
    e2e = report["store_topology"]
    lines = [
        f"# Waypoint selection benchmark ({report['mode']})",
        "",
        f"In memory: {topo['namespaces']} namespaces, {topo['services']:,} services, {topo['pods']:,} pods, "
        f"{topo['namespaces']} waypoints, {topo['enrolled_namespaces']} namespaces enrolled. "
        f"Store (4.x): {e2e['namespaces']} namespaces, {e2e['services']:,} services, {e2e['pods']:,} pods.",
        "",
        f"Python {machine['python']} on {machine['platform']}, {machine['cpu_count']} CPUs; "
        f"meshway {machine.get('meshway_commit')}; run {report['started']} ({report['duration_s']:.0f} s).",
        "",
        "| measurement | median | min | peak memory | notes |",
        "|---|---|---|---|---|",
    ]
    for m in measurements:
        reps = len(m.samples)
        lines.append(f"| {m.name} | {fmt_time(m.median)} | {fmt_time(m.min)} | {fmt_bytes(m.peak_bytes)} | "
                     f"{reps} run{'s' if reps > 1 else ''}; {m.notes} |")
    lines += ["", f"**Incremental vs full (3a / 3b, medians): {ratio['value']:.1f}x** "
                  f"(ratio of minimums {ratio['ratio_of_mins']:.1f}x).", "",
              "Times are wall clock (`time.perf_counter`); peak memory is what Python allocated during one extra, "
              "untimed run (`tracemalloc`), excluding the inputs.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller store topology and fewer repetitions")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: %(default)s)")
    ap.add_argument("--store-namespaces", type=int, default=None,
                    help="namespaces for the store benchmark (default: 100, or 10 with --quick)")
    args = ap.parse_args(argv)

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    scale = Scale(100)
    store_scale = Scale(args.store_namespaces or (10 if args.quick else 100))
    if args.quick:
        reps = {"build": 3, "decide": 3, "incremental_full": 3, "incremental": 9, "store_parse": 2,
                "store_apply": 2, "store_snapshot": 3, "store_label": 3}
    else:
        reps = {"build": 7, "decide": 5, "incremental_full": 7, "incremental": 51, "store_parse": 3,
                "store_apply": 3, "store_snapshot": 5, "store_label": 7}

    mem, ratio, checks = bench_in_memory(scale, reps)
    store_ms, store_info, store_checks = bench_store(store_scale, reps)
    measurements = mem + store_ms
    duration = time.perf_counter() - t0

    report = {
        "benchmark": "selection", "mode": "quick" if args.quick else "full",
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_s": duration, "machine": machine_info(),
        "topology": {"namespaces": scale.namespaces, "services": scale.services, "pods": scale.pods,
                     "waypoints": scale.namespaces,
                     "enrolled_namespaces": sum(enrolled(n) for n in range(1, scale.namespaces + 1))},
        "store_topology": {"namespaces": store_scale.namespaces, "services": store_scale.services,
                           "pods": store_scale.pods, **store_info},
        "repetitions": reps,
        "measurements": [m.to_json() for m in measurements],
        "incremental_ratio": ratio,
        "checks": {**checks, **store_checks},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "selection-quick" if args.quick else "selection"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / f"{stem}.md", report, measurements)
    print(f"incremental vs full: {ratio['value']:.1f}x; total {duration:.0f} s; "
          f"wrote {args.out / stem}.json and .md")
    return 0 if checks["incremental_equals_full"] else 1


if __name__ == "__main__":
    sys.exit(main())
