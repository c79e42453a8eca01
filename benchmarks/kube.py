#!/usr/bin/env python
"""meshway's control plane on a real Kubernetes API: memory and label-change latency at scale.

Topology (full): the real etcd, kube-apiserver, kube-controller-manager and kube-scheduler built by
scripts/build-kubernetes (meshway.kube.harness, loopback, no nodes), the CRDs installed with
`meshway install`, then 100 namespaces, 1,000 Services (10 per namespace) and 10,000 Pods (100 per
namespace, 10 per Service, each with a realistic container spec; with no nodes they stay Pending,
marked Unschedulable by the real scheduler), and one waypoint Gateway in the first namespace.
`--quick`: 10 namespaces, 100 Services, 1,000 Pods.

Then `meshway controlplane --kubeconfig` starts as its own process and lists and watches it all.
Measured:
- list time (its log line), RSS after the first reconcile and at the end (VmRSS / VmHWM of the
  control-plane process), against the issue's goal of 150 MB;
- label change -> status write: the benchmark labels one Service `istio.io/use-waypoint=waypoint`
  (then removes the label), and times from the PATCH's response to the moment its own watch sees
  the Service's `istio.io/WaypointBound` condition appear (then disappear): N changes, p50/p99.

Checks (exit 1): every object created; the control plane lists them all; every label change is
answered by a status change within 30 s. Exit 2 when the binaries are missing (run
scripts/build-kubernetes).

    python benchmarks/kube.py            # full: 11,101 objects, 40 label changes; ~5 minutes
    python benchmarks/kube.py --quick    # smoke: 1,111 objects, 6 label changes; ~1 minute

Writes benchmarks/results/kube.{json,md} (`--quick`: kube-quick.{json,md}).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshway.kube.client import ApiError, KubeClient, kind_path  # noqa: E402
from meshway.kube.harness import Harness, find_missing_binaries  # noqa: E402
from meshway.kube.localcluster import find_bin_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_RSS_MB = 150.0
BOUND = "istio.io/WaypointBound"


def pod_body(ns: str, svc: int, replica: int) -> dict:
    app = f"svc-{svc}"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{app}-{replica}", "namespace": ns,
                         "labels": {"app": app, "version": "v1", "pod-template-hash": "5d9f7c8b6"},
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9080"}},
            "spec": {"serviceAccountName": "default",
                     "containers": [{"name": "app", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.3",
                                     "imagePullPolicy": "IfNotPresent",
                                     "ports": [{"name": "http", "containerPort": 9080}],
                                     "env": [{"name": "LOG_DIR", "value": "/tmp/logs"},
                                             {"name": "SERVICE_VERSION", "value": "v1"}],
                                     "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                                     "readinessProbe": {"httpGet": {"path": "/health", "port": 9080}},
                                     "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                     "volumes": [{"name": "tmp", "emptyDir": {}}]}}


def service_body(ns: str, svc: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{svc}", "namespace": ns, "labels": {"app": f"svc-{svc}"}},
            "spec": {"selector": {"app": f"svc-{svc}"}, "ports": [{"name": "http", "port": 9080}]}}


WAYPOINT = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "bench-0"},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def populate(client: KubeClient, namespaces: int, services: int, pods: int) -> dict:
    started = time.monotonic()
    for n in range(namespaces):
        client.create(kind_path("Namespace"), {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": f"bench-{n}"}})
    jobs = []
    for n in range(namespaces):
        ns = f"bench-{n}"
        for s in range(services):
            jobs.append((kind_path("Service", ns), service_body(ns, s)))
            jobs += [(kind_path("Pod", ns), pod_body(ns, s, r)) for r in range(pods // services)]

    def create(job):
        for attempt in range(40):
            try:
                client.create(*job)
                return
            except ApiError as exc:
                if exc.conflict:
                    return
                # a new namespace's "default" ServiceAccount comes from the controller-manager shortly after
                no_sa_yet = exc.status == 403 and "serviceaccount" in exc.message
                if attempt == 39 or not (no_sa_yet or exc.status in (429, 500, 503, 504)):
                    raise
                time.sleep(0.25 if no_sa_yet else 0.5 * (attempt + 1))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, jobs))
    client.create(kind_path("Gateway", "bench-0"), WAYPOINT)
    return {"objects": namespaces + len(jobs) + 1, "seconds": round(time.monotonic() - started, 1)}


def rss_mb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


class StatusWatch:
    """The benchmark's own watch on the Services of bench-0: when each saw WaypointBound change."""

    def __init__(self, client: KubeClient) -> None:
        self.client, self.events, self.stop = client, [], threading.Event()
        self.cond = threading.Condition()
        self.state: dict[str, bool] = {}

    def run(self) -> None:
        path = kind_path("Service", "bench-0")
        rv = self.client.get(path)["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            try:
                for event in self.client.watch(path, rv, 60):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    has = any(c.get("type") == BOUND for c in (obj.get("status") or {}).get("conditions") or ())
                    with self.cond:
                        self.state[obj["metadata"]["name"]] = has
                        self.events.append((time.monotonic(), obj["metadata"]["name"], has))
                        self.cond.notify_all()
            except Exception:  # noqa: BLE001: resume
                time.sleep(0.2)

    def wait(self, name: str, has: bool, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.state.get(name) is not has:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return time.monotonic()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    namespaces, services, pods, changes = (10, 10, 100, 6) if args.quick else (100, 10, 100, 40)
    bin_dir = find_bin_dir(build=False, echo=lambda line: None)
    missing = find_missing_binaries(bin_dir)
    if missing:
        print(f"kube benchmark: binaries missing in {bin_dir}: {', '.join(missing)} (run scripts/build-kubernetes)",
              file=sys.stderr)
        return 2
    started_at, t0 = datetime.now(timezone.utc), time.monotonic()
    checks: dict[str, bool] = {}
    h = Harness.create(bin_dir)
    h.start()
    cp = None
    try:
        kc = str(h.kubeconfig)
        subprocess.run([sys.executable, "-m", "meshway", "install", "--kubeconfig", kc], check=True,
                       capture_output=True, timeout=300)
        client = KubeClient.connect(kc)
        created = populate(client, namespaces, services, pods)
        print(f"created {created['objects']} objects in {created['seconds']} s", file=sys.stderr)
        log = Path(h.config.state) / "controlplane.log"
        cp = subprocess.Popen([sys.executable, "-m", "meshway", "controlplane", "--kubeconfig", kc, "-v"],
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        listed = wait_log(log, r"listed (\d+) objects of \d+ kinds in ([\d.]+)s", 300)
        first = wait_log(log, r"reconcile 1: (\d+) writes in ([\d.]+)s", 300)
        time.sleep(2.0)
        rss_synced = rss_mb(cp.pid)
        expected = namespaces * (1 + services + pods) + 1  # what the benchmark made (the cluster has more)
        checks["control plane listed every benchmark object"] = listed is not None and int(listed[0]) >= expected
        watch = StatusWatch(client)
        threading.Thread(target=watch.run, daemon=True).start()
        time.sleep(1.0)
        latencies = []
        svc_path = kind_path("Service", "bench-0", "svc-0")
        for i in range(changes):
            on = i % 2 == 0
            patch = {"metadata": {"labels": {"istio.io/use-waypoint": "waypoint" if on else None}}}
            client.merge_patch(svc_path, patch)
            sent = time.monotonic()
            seen = watch.wait("svc-0", on, 30)
            if seen is None:
                checks[f"label change {i} answered within 30 s"] = False
                break
            latencies.append((seen - sent) * 1000)
            time.sleep(0.3)
        checks["every label change answered"] = len(latencies) == changes
        rss_end = rss_mb(cp.pid)
        result = {
            "benchmark": "kube", "mode": "quick" if args.quick else "full", "started": started_at.isoformat(),
            "duration_s": round(time.monotonic() - t0, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
            "topology": {"namespaces": namespaces, "services": namespaces * services, "pods": namespaces * pods,
                         "waypoints": 1, "nodes": 0,
                         "api": "kube-apiserver v1.37.2 + etcd 3.6.16 on loopback (meshway.kube.harness)"},
            "populate": created,
            "list": {"objects": int(listed[0]) if listed else None, "seconds": float(listed[1]) if listed else None},
            "first_reconcile": {"writes": int(first[0]) if first else None, "seconds": float(first[1]) if first else None},
            "rss_mb": {"after_first_reconcile": rss_synced.get("VmRSS"), "end": rss_end.get("VmRSS"),
                       "peak": rss_end.get("VmHWM"), "goal": GOAL_RSS_MB},
            "label_to_status_ms": {"changes": len(latencies), "p50": round(percentile(latencies, 0.5), 1) if latencies else None,
                                   "p99": round(percentile(latencies, 0.99), 1) if latencies else None,
                                   "max": round(max(latencies), 1) if latencies else None},
            "checks": checks,
        }
    finally:
        if cp is not None:
            cp.terminate()
            try:
                cp.wait(20)
            except subprocess.TimeoutExpired:
                cp.kill()
            if os.environ.get("MESHWAY_BENCH_KEEP_LOG"):
                Path(os.environ["MESHWAY_BENCH_KEEP_LOG"]).write_bytes(log.read_bytes())
        h.stop()
    write(result, args.out, args.quick)
    print(json.dumps({k: result[k] for k in ("topology", "list", "rss_mb", "label_to_status_ms", "checks")}, indent=1))
    return 0 if all(checks.values()) else 1


def wait_log(path: Path, pattern: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if m:
            return m.groups()
        time.sleep(0.2)
    return None


def write(result: dict, out: Path, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "kube-quick" if quick else "kube"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    t, r, lat = result["topology"], result["rss_mb"], result["label_to_status_ms"]
    md = [f"# Control plane on a real Kubernetes API ({result['mode']})", "",
          f"Topology: {t['namespaces']} namespaces, {t['services']} Services, {t['pods']} Pods (Pending: no nodes), "
          f"{t['waypoints']} waypoint Gateway; {t['api']}. Machine: {result['machine']['cpus']} CPUs, "
          f"load {', '.join(f'{x:.1f}' for x in result['machine']['load'])}.", "",
          "| measure | meshway | goal |", "|---|---|---|",
          f"| objects listed by the control plane | {result['list']['objects']} in {result['list']['seconds']} s | |",
          f"| first reconcile | {result['first_reconcile']['writes']} writes in {result['first_reconcile']['seconds']} s | |",
          f"| control-plane RSS after the first reconcile | {r['after_first_reconcile']} MB | ≤ {r['goal']:g} MB |",
          f"| control-plane RSS at the end / peak | {r['end']} / {r['peak']} MB | ≤ {r['goal']:g} MB |",
          f"| label change → Service status (WaypointBound) seen by a watch, p50 / p99 / max ({lat['changes']} changes) "
          f"| {lat['p50']} / {lat['p99']} / {lat['max']} ms | |", "",
          "Checks: " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in result["checks"].items()), ""]
    (out / f"{name}.md").write_text("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
