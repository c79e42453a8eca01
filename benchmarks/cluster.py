#!/usr/bin/env python
"""The mesh on one host: direct vs node proxies vs node proxies + waypoint, in one live cluster.

`meshway up` (the bundled demo, a 2-node network-namespace cluster) is started and timed to its
first successful request through the waypoint; then requests/s and latency at fixed request rates
and unpaced, from a client pod to the reviews service over three paths, with the CPU and memory of
every proxy; then everything is torn down with `stop_all`.

    python benchmarks/cluster.py            # full: about 7 minutes on 2 CPUs (root)
    python benchmarks/cluster.py --quick    # smoke run, about 40 s

Writes benchmarks/results/cluster.{json,md} (`--quick`: cluster-quick.{json,md}). See
benchmarks/README.md for what each measurement means. All traffic stays inside the cluster's own
network namespaces; every load run is bounded in time and in requests.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):  # meshway from this checkout; dataplane.py beside us
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from dataplane import tool_versions  # noqa: E402
from selection import machine_info  # noqa: E402

from meshway import labels as L  # noqa: E402
from meshway.runtime.envoy_admin import AdminError, fetch_admin  # noqa: E402
from meshway.model import find_kind, load_yaml  # noqa: E402
from meshway.observe.metrics import build_istio_metrics  # noqa: E402
from meshway.runtime.daemon import controlplane_pid, node_agent_pid, stop_all  # noqa: E402
from meshway.runtime.envoy import find_envoy  # noqa: E402
from meshway.runtime.netns import cluster_id, detect_capability, node_netns_name, pod_netns_name  # noqa: E402
from meshway.store import Store  # noqa: E402

Body = dict[str, Any]
RESULTS = Path(__file__).resolve().parent / "results"
DEMO = ROOT / "meshway" / "demo"
NOMESH = "nomesh"
PATH = "/health"  # every reviews version answers it alike, without calling ratings (README)
HOST_HEADER = "reviews:9080"
CONNECTIONS = 15  # keep-alive connections of the fixed-rate client, on every path
MAX_CONNECTIONS = (15, 64)  # unpaced runs: as many connections as the fixed-rate runs, and enough to fill 2 CPUs
WRK_THREADS = 1
REQUEST_CAP = 200_000  # per load run: a bound on count besides the duration; no run here gets near it
RUN_TIMEOUT_PAD = 30.0  # a load run's subprocess is killed this long after its duration
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATHS = ("direct", "node", "waypoint")
MODES = ("embedded", "kubernetes")
KUBE_PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
UP_COMMANDS = {"embedded": "meshway up", "kubernetes": "meshway up --kubernetes"}
KUBE_GOAL_S = 20.0  # issue 12: `meshway up --kubernetes` to the first request through the waypoint, binaries built
PATH_TITLES = {"direct": "(a) direct, no mesh", "node": "(b) node proxies only",
               "waypoint": "(c) node proxies + waypoint"}

# -- the load client: fixed-rate (wrk2-like schedule) or closed-loop, run inside the client pod ----
PACED_CLIENT = r'''
"""Requests on keep-alive connections, inside a pod's network namespace. rate > 0: request i is
due at t0 + i/rate whatever happened before (no coordinated omission: latency counts from the due
time, so waiting for a free connection counts too); rate == 0: every connection sends back to back
(closed loop). Bounded by duration and count; prints one JSON line of percentiles."""
import asyncio, gc, json, math, socket, sys

cfg = json.loads(sys.argv[1])
TARGETS = [tuple(t) for t in cfg["targets"]]
RATE, DURATION, NCONN = float(cfg["rate"]), float(cfg["duration"]), int(cfg["connections"])
TIMEOUT, CAP = float(cfg["timeout"]), int(cfg["cap"])
REQUEST = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: meshway-bench\r\n\r\n" % (cfg["path"], cfg["host"])).encode()


async def main():
    loop = asyncio.get_running_loop()
    idle = asyncio.Queue()
    latency, service, lag = [], [], []
    errors, statuses, tally = {}, {}, {"via_waypoint": 0}

    def error(name):
        errors[name] = errors.get(name, 0) + 1

    async def connect(i):
        host, port = TARGETS[i % len(TARGETS)]
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return [i, reader, writer]

    async def exchange(conn):
        _, reader, writer = conn
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        status, length, via = int(head[9:12]), 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"server" and value.strip() == b"istio-envoy":
                via = True
        if length:
            await reader.readexactly(length)
        return status, via

    async def replace(conn):
        conn[2].close()
        deadline = loop.time() + TIMEOUT
        while loop.time() < deadline:
            try:
                idle.put_nowait(await connect(conn[0]))
                return
            except Exception:
                error("connect")
                await asyncio.sleep(0.05)

    async def one(due):
        try:
            async with asyncio.timeout(TIMEOUT):
                conn = await idle.get()
        except TimeoutError:
            error("no_connection")
            return
        sent = loop.time()
        try:
            async with asyncio.timeout(TIMEOUT):
                status, via = await exchange(conn)
        except Exception as exc:
            error(type(exc).__name__)
            loop.create_task(replace(conn))
            return
        done = loop.time()
        idle.put_nowait(conn)
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 400:
            error("status")
        tally["via_waypoint"] += via
        latency.append(done - due)
        service.append(done - sent)
        lag.append(sent - due)

    for i in range(NCONN):
        idle.put_nowait(await connect(i))
    gc.collect()
    gc.disable()  # no collector pauses in the client during the run (it is bounded: memory is too)
    t0 = loop.time() + 0.02
    if RATE > 0:
        count = min(CAP, int(RATE * DURATION))
        left, finished = [count], asyncio.Event()

        async def fire(due):
            try:
                await one(due)
            finally:
                left[0] -= 1
                if not left[0]:
                    finished.set()

        i = 0
        while i < count:
            now = loop.time()
            while i < count and t0 + i / RATE <= now:
                loop.create_task(fire(t0 + i / RATE))
                i += 1
            if i < count:
                await asyncio.sleep(t0 + i / RATE - loop.time())
        await finished.wait()
    else:
        count, end, sent = CAP, t0 + DURATION, [0]

        async def worker():
            while loop.time() < end and sent[0] < CAP:
                sent[0] += 1
                await one(loop.time())
        await asyncio.sleep(max(0.0, t0 - loop.time()))
        await asyncio.gather(*(worker() for _ in range(NCONN)))
        count = sent[0]
    seconds = loop.time() - t0
    while not idle.empty():
        idle.get_nowait()[2].close()

    def pct(values):
        values.sort()
        return {q: values[max(0, math.ceil(float(q) / 100 * len(values)) - 1)] * 1e3 if values else None
                for q in ("50", "90", "99", "99.9", "100")}

    print(json.dumps({"client": "python", "rate": RATE, "scheduled": count, "requests": len(latency),
                      "seconds": seconds, "errors": errors, "statuses": statuses,
                      "via_waypoint": tally["via_waypoint"], "latency_ms": pct(latency),
                      "service_ms": pct(service), "lag_ms": pct(lag)}))


asyncio.run(main())
'''

# -- the unpaced client when wrk is there --------------------------------------------------------
WRK_SCRIPT = r"""
local cap = tonumber(os.getenv("WRK_REQUEST_CAP") or "0")
local threads = {}
wrk.headers["Host"] = os.getenv("WRK_HOST") or wrk.headers["Host"]
function setup(thread)
  threads[#threads + 1] = thread
end
n, via = 0, 0
function response(status, headers, body)
  n = n + 1
  if headers["server"] == "istio-envoy" or headers["Server"] == "istio-envoy" then via = via + 1 end
  if cap > 0 and n >= cap then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e, v = summary.errors, 0
  for _, t in ipairs(threads) do v = v + (t:get("via") or 0) end
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "via_waypoint": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"50": %d, "90": %d, "99": %d, "99.9": %d, "100": %d}}\n',
    summary.requests, summary.duration, v, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""

# -- the start-up prober: from the curl pod, until the first response through the waypoint ---------
PROBER = r'''
"""GET every 20 ms (a new connection each) until a 200 comes back through the waypoint
(`server: istio-envoy`) or the deadline passes; prints one JSON line of wall-clock times."""
import http.client, json, sys, time
host, port, path, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
start = time.time()
out = {"started": start, "first_attempt": None, "first_ok": None, "first_via_waypoint": None,
       "attempts": 0, "errors": {}, "statuses": {}}
while time.time() - start < limit:
    out["attempts"] += 1
    t = time.time()
    out["first_attempt"] = out["first_attempt"] or t
    try:
        c = http.client.HTTPConnection(host, port, timeout=1.0)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        done = time.time()
        out["statuses"][str(r.status)] = out["statuses"].get(str(r.status), 0) + 1
        if r.status == 200:
            out["first_ok"] = out["first_ok"] or done
            if r.getheader("server") == "istio-envoy":
                out["first_via_waypoint"] = done
                break
    except Exception as exc:
        name = type(exc).__name__
        out["errors"][name] = out["errors"].get(name, 0) + 1
    time.sleep(0.02)
print(json.dumps(out))
'''


# == /proc ========================================================================================

def proc_cpu(pid: int | None) -> float:
    """utime + stime of a process in seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_start(pid: int) -> float:
    """A process's start time as a Unix time, from /proc/<pid>/stat starttime (10 ms steps) against
    /proc/uptime (10 ms steps; /proc/stat's btime is whole seconds, which put a start up to 1 s early)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    now, uptime = time.time(), float(Path("/proc/uptime").read_text().split()[0])
    return now - uptime + int(fields[19]) / CLK_TCK


def proc_memory(pid: int | None) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in bytes."""
    out: dict[str, int] = {}
    if pid is None:
        return out
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak_rss(pid: int | None) -> bool:
    """Reset VmHWM to the current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux >= 4.0), so that the
    VmHWM read after a run is that run's peak. Changes nothing else about the process."""
    if pid is None:
        return False
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_cpu() -> dict[str, float]:
    """The machine's CPU seconds from /proc/stat: busy (everything but idle, iowait and steal), of
    which processes (user + nice + system) and softirq + irq (packet processing: veths, bridge,
    iptables); steal is time the hypervisor gave this VM's CPUs to someone else."""
    v = [int(x) / CLK_TCK for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return {"busy": user + nice + system + irq + softirq, "processes": user + nice + system,
            "softirq": softirq + irq, "steal": steal}


def children_cpu() -> float:
    """CPU time of this process's waited-for children (the load clients)."""
    t = os.times()
    return t.children_user + t.children_system


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def all_process_cpu() -> dict[int, tuple[str, float]]:
    """(comm, utime + stime) of every process, to name what else used the CPUs during a run."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, _, rest = (entry / "stat").read_text().rpartition(")")
                fields = rest.split()
                out[int(entry.name)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / CLK_TCK)
            except (OSError, IndexError, ValueError):
                pass
    return out


def top_others(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], known: set[int],
               wall: float) -> list[list]:
    """The three processes outside the benchmark's own that used the most CPU during a run, in CPUs."""
    used = [(comm, cpu - before.get(pid, (comm, 0.0))[1]) for pid, (comm, cpu) in after.items() if pid not in known]
    return [[comm, round(cpu / wall, 3)] for comm, cpu in sorted(used, key=lambda x: -x[1])[:3] if cpu > 0]


# == the cluster ==================================================================================

def count_waypoint_requests(prometheus_text: str, service: str) -> int:
    """The sum of a waypoint's `istio_requests_total` to `service` (FQDN) in its Prometheus text."""
    families = [f for f in build_istio_metrics(prometheus_text) if f.name == "istio_requests_total"]
    return int(sum(s.value for f in families for s in f.samples
                   if s.label("reporter") == "waypoint" and s.label("destination_service") == service))


@dataclass
class Route:
    """One of the three paths: where the client runs, what it connects to, which pods answer."""
    key: str
    client_netns: str
    targets: list[tuple[str, int]]
    backends: list[tuple[str, str]]  # (namespace, pod)
    via_waypoint: bool
    description: str


class Cluster:
    """One run mode's cluster, as the benchmark sees it: how to start it, read its pods, find its
    proxies and mesh processes, change the namespace's enrollment and tear it down. The measurement
    code is the same for every mode; only this adapter differs (`EmbeddedCluster`, `KubeCluster`)."""

    mode = ""
    topology = ""  # what the figures of this mode were measured on (every table names it)

    def __init__(self, state: Path, tmp: Path) -> None:
        self.state, self.tmp = state, tmp
        self.routes: dict[str, Route] = {}
        self.log_offsets: dict[Path, int] = {}
        self.waypoint_on = True

    # -- what each mode provides ------------------------------------------------------------------
    @property
    def cid(self) -> str:
        """The id in the names of the cluster's network namespaces (`mw<cid>-...`)."""
        raise NotImplementedError

    def up_command(self) -> tuple[list[str], dict[str, str]]:
        """`meshway up ...` as a user types it, and its environment."""
        raise NotImplementedError

    def pods(self, ns: str | None) -> list[Body]:
        raise NotImplementedError

    def get(self, kind: str, ns: str, name: str) -> Body:
        """kind: "pod", "svc" or "gateway"."""
        raise NotImplementedError

    def apply(self, manifests: str) -> None:
        raise NotImplementedError

    def label_waypoint(self, on: bool) -> None:
        """Set or remove `istio.io/use-waypoint=waypoint` on namespace default."""
        raise NotImplementedError

    def proxy_pids(self) -> dict[str, int]:
        """node-N (the node proxies) and the waypoint replicas (`waypoint`, or `waypoint-<pod>`)."""
        raise NotImplementedError

    def waypoint_prometheus(self) -> str:
        """The waypoint's own `/stats/prometheus`."""
        raise NotImplementedError

    def backend_logs(self, ns: str, pod: str) -> list[Path]:
        raise NotImplementedError

    def mesh_pids(self) -> dict[str, list[int]]:
        """The cluster's own processes by role: `controlplane`, `node_agents`, and on Kubernetes
        `kubernetes` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)."""
        raise NotImplementedError

    def startup_events(self, events: dict[str, float]) -> None:
        """Record the processes' start times as they appear (Unix time, from /proc)."""
        raise NotImplementedError

    def ready_to_read(self) -> bool:
        """Whether the cluster's API (store or kube-apiserver) can be read yet."""
        raise NotImplementedError

    def teardown(self) -> Body:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- shared -------------------------------------------------------------------------------------
    def pod(self, prefix: str, ns: str = "default") -> Body:
        return next(p for p in self.pods(ns) if p["metadata"]["name"].startswith(prefix)
                    and not p["metadata"].get("deletionTimestamp"))

    def netns(self, pod: Body) -> str:
        return pod_netns_name(self.cid, pod["metadata"]["namespace"], pod["metadata"]["name"])

    def vip(self, service: str, ns: str = "default") -> str:
        return self.get("svc", ns, service)["spec"]["clusterIP"]

    def envoy_concurrency(self) -> dict[str, int | None]:
        """Each proxy's `--concurrency` (worker threads), from its command line."""
        out: dict[str, int | None] = {}
        for name, pid in self.proxy_pids().items():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            out[name] = int(argv[argv.index("--concurrency") + 1]) if "--concurrency" in argv else None
        return out

    def waypoint_requests(self) -> int:
        """Requests the waypoint answered for reviews (every version and code): `istio_requests_total`
        with reporter=waypoint and destination_service=reviews, from its own `/stats/prometheus`, as
        `meshway metrics` reads it (meshway.observe.metrics; tests/test_metrics_e2e.py checks that
        series against the requests sent). -1 when the waypoint cannot be asked."""
        try:
            text = self.waypoint_prometheus()
        except (AdminError, OSError, StopIteration, subprocess.SubprocessError, ValueError):
            return -1
        return count_waypoint_requests(text, "reviews.default.svc.cluster.local")

    def netns_pids(self, netns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10)
        return [int(p) for p in out.stdout.split()]

    def count_requests(self, ns: str, pod: str) -> int:
        """New `GET /health` lines in the pod's access log since the last call."""
        n = 0
        for log in self.backend_logs(ns, pod):
            start = self.log_offsets.get(log, 0)
            with open(log, "rb") as f:
                f.seek(start)
                data = f.read()
            self.log_offsets[log] = start + len(data)
            n += data.count(b'"GET ' + PATH.encode() + b" ")
        return n

    def set_waypoint(self, on: bool, timeout: float = 30.0) -> float:
        """(c) with the namespace's `istio.io/use-waypoint` label, (b) without; returns the seconds
        until fresh connections from the curl pod took the new path (a 20-request probe every ~0.5 s)."""
        if on == self.waypoint_on:
            return 0.0
        self.label_waypoint(on)
        self.waypoint_on = on
        t0 = time.monotonic()
        route = self.routes["waypoint" if on else "node"]
        while time.monotonic() - t0 < timeout:
            r = run_client(self, route, rate=100, duration=0.2, connections=4, quiet=True)
            if r["requests"] == r["scheduled"] and r["via_waypoint"] == (r["requests"] if on else 0):
                took = time.monotonic() - t0
                time.sleep(1.0)  # let the node proxies' replaced listeners settle
                return took
            time.sleep(0.1)
        raise RuntimeError(f"switching the waypoint {'on' if on else 'off'}: not effective within {timeout:g} s")

    def leftovers(self, process_marks: list[str]) -> Body:
        """What a teardown left: network namespaces of this cluster, processes naming its folders."""
        prefix = f"mw{self.cid}-"
        netns = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                 if n.startswith(prefix)]
        procs = sorted({p for mark in process_marks for p in subprocess.run(
            ["pgrep", "-f", mark], capture_output=True, text=True).stdout.split()} - {str(os.getpid())})
        clean = not netns and not procs
        return {"netns_left": netns, "processes_left": procs,
                "summary": "nothing left (no namespace, no process)" if clean else
                f"LEFT: {len(netns)} namespaces, {len(procs)} processes"}


class EmbeddedCluster(Cluster):
    """`meshway up`: the SQLite store, the network-namespace cluster, the control plane and one node
    agent per node (`meshway node --local`), which runs that node's pods, waypoint pods and node proxy."""

    mode = "embedded"
    topology = ("embedded: `meshway up`, 2 nodes: SQLite store, network-namespace cluster, meshway control plane "
                "(xDS over local sockets) and one node agent per node (`meshway node --local`) running the pods, "
                "the node proxy and the waypoint")

    def __init__(self, state: Path, tmp: Path) -> None:
        super().__init__(state, tmp)
        self.store: Store | None = None

    @property
    def cid(self) -> str:
        return cluster_id(self.state)

    def up_command(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", "meshway", "--state-dir", str(self.state), "up"], dict(os.environ)

    def open_store(self) -> Store:
        if self.store is None:
            self.store = Store(self.state)
        return self.store

    def ready_to_read(self) -> bool:
        return (self.state / "store.db").exists() and controlplane_pid(self.state) is not None

    def pods(self, ns: str | None) -> list[Body]:
        return self.open_store().list(find_kind("pod"), ns)

    def get(self, kind: str, ns: str, name: str) -> Body:
        return self.open_store().get(find_kind({"gateway": "gtw"}.get(kind, kind)), ns, name)

    def apply(self, manifests: str) -> None:
        self.open_store().apply(load_yaml(manifests, "manifests.yaml"))

    def label_waypoint(self, on: bool) -> None:
        store = self.open_store()
        if on:
            store.label(find_kind("ns"), "default", ["default"], None, {L.USE_WAYPOINT: "waypoint"}, [],
                        overwrite=True)
        else:
            store.label(find_kind("ns"), "default", ["default"], None, {}, [L.USE_WAYPOINT], overwrite=True)

    def proxy_pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid_file in sorted((self.state / "run" / "nodes").glob("*/envoy.pid")):
            out[pid_file.parent.name] = int(pid_file.read_text().split()[0])
        replicas = sorted((self.state / "run" / "proxies").glob("*/envoy.pid"))
        for pid_file in replicas:
            name = "waypoint" if len(replicas) == 1 else "waypoint-" + pid_file.parent.name.split(".", 1)[1]
            out[name] = int(pid_file.read_text().split()[0])
        return out

    def waypoint_prometheus(self) -> str:
        status = json.loads((self.state / "run" / "proxy-status.json").read_text())
        admin = next(v["admin"] for v in status.values() if v["type"] == "waypoint" and v["namespace"] == "default")
        return fetch_admin(admin, "/stats/prometheus").decode()

    def backend_logs(self, ns: str, pod: str) -> list[Path]:
        return sorted((self.state / "run" / "pods" / f"{ns}.{pod}").glob("*.log"))

    def mesh_pids(self) -> dict[str, list[int]]:
        agents = [node_agent_pid(self.state, f"node-{n}") for n in (1, 2)]
        return {"controlplane": [p for p in [controlplane_pid(self.state)] if p],
                "node_agents": [p for p in agents if p]}

    def startup_events(self, events: dict[str, float]) -> None:
        if "controlplane_started" not in events and (pid := controlplane_pid(self.state)):
            events["controlplane_started"] = proc_start(pid)

    def teardown(self) -> Body:
        stopped = stop_all(self.state)
        return {"command": "stop_all", "stopped": stopped, **self.leftovers([str(self.state)])}

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


class KubeCluster(Cluster):
    """`meshway up --kubernetes`: the real etcd, kube-apiserver, kube-controller-manager and
    kube-scheduler, meshway's control plane against them (xDS over TCP + mTLS) and one node agent per
    node (`meshway node --kubeconfig`), which runs the pods bound to its node in network namespaces:
    the ztunnel DaemonSet's pod (the node proxy, in the node's namespace), the waypoint Deployment's
    pod and the applications. Read through the API in this process; changed with the real kubectl."""

    mode = "kubernetes"
    topology = ("kubernetes: `meshway up --kubernetes`, 2 nodes: etcd, kube-apiserver, kube-controller-manager, "
                "kube-scheduler; meshway control plane (xDS over TCP + mTLS); one node agent per node "
                "(`meshway node --kubeconfig`) running the pods: the ztunnel DaemonSet pod (node proxy), the "
                "waypoint Deployment's pod and the applications")

    def __init__(self, state: Path, tmp: Path, bin_dir: Path) -> None:
        super().__init__(state, tmp)
        self.bin_dir = bin_dir
        self.kube = state / "kubernetes"
        self.client = None

    @property
    def cid(self) -> str:
        return cluster_id(self.kube / "network")

    @property
    def kubeconfig(self) -> Path:
        return self.kube / "admin.kubeconfig"

    def up_command(self) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["MESHWAY_K8S_BIN"] = str(self.bin_dir)
        return [sys.executable, "-m", "meshway", "--state-dir", str(self.state), "up", "--kubernetes"], env

    def api(self):
        if self.client is None:
            from meshway.kube.client import KubeClient

            self.client = KubeClient.connect(str(self.kubeconfig))
        return self.client

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def live(self) -> dict[str, int]:
        from meshway.kube.localcluster import LocalCluster

        return LocalCluster(self.kube).live()

    def ready_to_read(self) -> bool:
        if "kube-apiserver" not in self.live() or not self.kubeconfig.exists():
            return False
        try:
            self.api().get("/version")
            return True
        except Exception:  # not serving yet
            self.close()
            return False

    def pods(self, ns: str | None) -> list[Body]:
        path = f"/api/v1/namespaces/{ns}/pods" if ns else "/api/v1/pods"
        return [p for page in self.api().list(path) for p in page.get("items") or []]

    def get(self, kind: str, ns: str, name: str) -> Body:
        base = {"pod": "/api/v1", "svc": "/api/v1", "gateway": "/apis/gateway.networking.k8s.io/v1"}[kind]
        plural = {"pod": "pods", "svc": "services", "gateway": "gateways"}[kind]
        return self.api().get(f"{base}/namespaces/{ns}/{plural}/{name}")

    def apply(self, manifests: str) -> None:
        self.kubectl("apply", "-f", "-", stdin=manifests)

    def label_waypoint(self, on: bool) -> None:
        self.kubectl("label", "namespace", "default",
                     *([f"{L.USE_WAYPOINT}=waypoint", "--overwrite"] if on else [f"{L.USE_WAYPOINT}-"]))

    def _containers(self) -> list[tuple[str, str, int]]:
        """(node folder, `ns.pod`, pid) of each running istio-proxy container (ztunnel and waypoint
        pods), from the node agents' records (`node-N/run/pods/<ns>.<pod>/containers.json`)."""
        out = []
        for record in sorted(self.kube.glob("node-*/run/pods/*/containers.json")):
            try:
                container = json.loads(record.read_text())["containers"]["istio-proxy"]
            except (OSError, ValueError, KeyError):
                continue
            pid = container.get("pid")
            if pid and container.get("phase") == "running" and Path(f"/proc/{pid}").exists():
                out.append((record.parents[3].name, record.parent.name, int(pid)))
        return out

    def proxy_pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        containers = self._containers()
        waypoints = [(pod, pid) for _, pod, pid in containers if pod.startswith("default.waypoint-")]
        for node, pod, pid in containers:
            if pod.startswith("istio-system.ztunnel-"):
                out[node] = pid
        for pod, pid in waypoints:
            out["waypoint" if len(waypoints) == 1 else "waypoint-" + pod.split(".", 1)[1]] = pid
        return out

    def waypoint_prometheus(self) -> str:
        pod = self.pod("waypoint-")
        out = subprocess.run(["ip", "netns", "exec", self.netns(pod), "curl", "-sf", "--max-time", "5",
                              "http://127.0.0.1:15000/stats/prometheus"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise OSError(f"waypoint admin: curl exit {out.returncode}")
        return out.stdout

    def backend_logs(self, ns: str, pod: str) -> list[Path]:
        return sorted(self.kube.glob(f"node-*/run/pods/{ns}.{pod}/*.log"))

    def mesh_pids(self) -> dict[str, list[int]]:
        live = self.live()
        return {"controlplane": [p for n, p in live.items() if n == "controlplane"],
                "node_agents": [p for n, p in live.items() if n.startswith("node-")],
                "kubernetes": [p for n, p in live.items() if n in KUBE_PROCESSES]}

    def startup_events(self, events: dict[str, float]) -> None:
        live = self.live()
        for name, key in (("kube-apiserver", "apiserver_started"), ("controlplane", "controlplane_started")):
            if key not in events and name in live:
                events[key] = proc_start(live[name])

    def teardown(self) -> Body:
        self.close()
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        out = subprocess.run([sys.executable, "-m", "meshway", "--state-dir", str(self.state), "down"],
                             capture_output=True, text=True, timeout=120, env=env)
        stopped = [line.removeprefix("stopped ") for line in out.stdout.splitlines() if line.startswith("stopped ")]
        left = self.leftovers([str(self.state), f"/run/meshway/mw{self.cid}/"])
        for pid in left["processes_left"]:  # e.g. the harness's, when `up` was stopped before it recorded them
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        return {"command": "meshway down", "exit": out.returncode, "stopped": stopped, **left,
                **({"killed_after_down": left["processes_left"]} if left["processes_left"] else {})}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


# == start-up: `meshway up` to the first request through the waypoint ==============================

def _ready(body: Body) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (body.get("status") or {}).get("conditions") or [])


def _programmed(body: Body) -> bool:
    return any(c["type"] == "Programmed" and c["status"] == "True"
               for c in (body.get("status") or {}).get("conditions") or [])


STARTUP_EVENTS = {  # timeline key -> what it is (the keys a mode does not have are left out)
    "apiserver_started": "kube-apiserver process started",
    "controlplane_started": "meshway control plane process started",
    "prober_started": "prober started in the curl pod",
    "pods_ready": "every pod Ready ({source})",
    "waypoint_programmed": "waypoint Gateway Programmed ({source})",
    "first_ok": "first 200 (any path)",
    "first_via_waypoint": "**first 200 through the waypoint** (`server: istio-envoy`)",
    "up_exited": "`{up}` exited",
}


def bench_startup(cl: Cluster, limit: float = 300.0) -> Body:
    """`meshway up` (the bundled demo) as a user runs it, with a prober in the curl pod from the
    moment its network namespace exists."""
    prober = cl.tmp / "prober.py"
    prober.write_text(PROBER)
    up_log = cl.tmp / f"meshway-up-{cl.mode}.log"
    events: dict[str, float] = {}
    lines: list[tuple[float, str]] = []
    argv, env = cl.up_command()
    t_up = time.time()
    up = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)

    def read_output() -> None:
        for line in up.stdout:  # type: ignore[union-attr]
            lines.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    probe: subprocess.Popen | None = None
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            now = time.time()
            cl.startup_events(events)
            if "controlplane_started" in events and cl.ready_to_read():
                try:
                    if probe is None:
                        curl = [p for p in cl.pods("default") if p["metadata"]["name"].startswith("curl-")
                                and (p.get("status") or {}).get("podIP")]
                        if curl and Path(f"/run/netns/{cl.netns(curl[0])}").exists():
                            vip = cl.vip("reviews")
                            probe = subprocess.Popen(["ip", "netns", "exec", cl.netns(curl[0]), sys.executable,
                                                      str(prober), vip, "9080", "/reviews/0", str(limit)],
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                            events["prober_started"] = time.time()
                    if "pods_ready" not in events:
                        pods = cl.pods(None)
                        if pods and all(map(_ready, pods)):
                            events["pods_ready"] = now
                    if "waypoint_programmed" not in events and _programmed(cl.get("gateway", "default", "waypoint")):
                        events["waypoint_programmed"] = now
                except Exception:  # not applied or not served yet
                    pass
            if probe is not None and probe.poll() is not None and up.poll() is not None:
                break
            # the prober's own 20 ms cadence times the result; this only logs events (the API less often)
            time.sleep(0.05 if cl.mode == "embedded" else 0.25)
        try:
            up.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`{' '.join(argv[5:])}` still running after {limit:g} s; output:\n"
                               + "\n".join(line for _, line in lines[-40:])) from None
        events["up_exited"] = time.time()
        reader.join(10)
        up_log.write_text("\n".join(f"{t - t_up:8.3f}  {line}" for t, line in lines) + "\n")
        if up.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv[3:])}` exited with {up.returncode}; output:\n"
                               + "\n".join(line for _, line in lines[-40:]))
        if probe is None:
            raise RuntimeError("the curl pod's network namespace never appeared")
        out, err = probe.communicate(timeout=limit + 10)
        if probe.returncode != 0:
            raise RuntimeError(f"start-up prober failed: {err[-2000:]}")
        result = json.loads(out)
    finally:
        for proc in (probe, up):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    if not result["first_via_waypoint"]:
        raise RuntimeError(f"no response through the waypoint within {limit:g} s: {result}")
    t_cp = events["controlplane_started"]
    events.update(first_ok=result["first_ok"], first_via_waypoint=result["first_via_waypoint"])
    rel = {k: events.get(k, math.nan) - t_up for k in STARTUP_EVENTS if k in events or k in ("pods_ready",
                                                                                              "waypoint_programmed")}
    out_body = {
        "mode": cl.mode, "topology": cl.topology, "command": "meshway " + " ".join(argv[5:]),
        "from_up_s": result["first_via_waypoint"] - t_up,
        "from_controlplane_s": result["first_via_waypoint"] - t_cp,
        "first_ok_from_controlplane_s": result["first_ok"] - t_cp,
        "timeline_from_up_s": rel,
        "prober": {k: v for k, v in result.items() if k in ("attempts", "errors", "statuses")},
        "first_attempt_succeeded": result["first_attempt"] is not None and result["attempts"] == 1,
        "request": "GET /reviews/0 to the reviews VIP from the curl pod, a new connection every 20 ms",
        "up_output": [[round(t - t_up, 3), line] for t, line in lines],
    }
    if cl.mode == "kubernetes":
        out_body["goal_s"] = KUBE_GOAL_S
        out_body["goal_met"] = out_body["from_up_s"] <= KUBE_GOAL_S
    print(f"  [{cl.mode}] `{out_body['command']}` -> first response through the waypoint: "
          f"{out_body['from_up_s']:.2f} s (from control plane start {out_body['from_controlplane_s']:.2f} s; pods "
          f"ready at {rel['pods_ready']:.2f} s, waypoint Programmed at {rel['waypoint_programmed']:.2f} s, first 200 "
          f"at {rel['first_ok']:.2f} s)", flush=True)
    return out_body


# == the non-mesh copy ============================================================================

def nomesh_manifests(cl: Cluster) -> str:
    """Namespace `nomesh` (no ambient label): a copy of the reviews Service, bare pods reviews-v1/v2/v3
    and curl built from the demo's own Deployment templates, each pinned (`nodeName`) to the node of its
    counterpart in `default`, so that the network path differs from the mesh paths only by the proxies."""
    templates: dict[str, Body] = {}
    for f in ("bookinfo.yaml", "bookinfo-client.yaml"):
        for doc in yaml.safe_load_all((DEMO / f).read_text()):
            if doc and doc.get("kind") == "Deployment":
                templates[doc["metadata"]["name"]] = doc["spec"]["template"]
    docs: list[Body] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NOMESH}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bookinfo-reviews", "namespace": NOMESH}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "curl", "namespace": NOMESH}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": NOMESH},
         "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}},
    ]
    for name in ("reviews-v1", "reviews-v2", "reviews-v3", "curl"):
        template = templates[name]
        node = cl.pod(name + "-")["spec"]["nodeName"]
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": name, "namespace": NOMESH, "labels": template["metadata"]["labels"]},
                     "spec": {**template["spec"], "nodeName": node}})
    return yaml.safe_dump_all(docs, sort_keys=False)


def wait_pods_ready(cl: Cluster, ns: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = cl.pods(ns)
        if pods and all(map(_ready, pods)):
            return
        time.sleep(0.2)
    raise RuntimeError(f"[{cl.mode}] pods in {ns} not ready within {timeout:g} s; see the logs under {cl.state}")


def nat_rules(netns: str, chain: str) -> list[list[str]]:
    """One chain of a network namespace's nat table, as iptables -S argument lists."""
    text = subprocess.run(["ip", "netns", "exec", netns, "iptables", "-t", "nat", "-S", chain], capture_output=True,
                          text=True, timeout=10).stdout
    return [line.split() for line in text.splitlines() if line.startswith("-A ")]


def node_nat_rules(cl: Cluster) -> list[list[str]]:
    """The capture rules (MESHWAY-PRE) of every node."""
    return [r for n in (1, 2) for r in nat_rules(node_netns_name(cl.cid, n), "MESHWAY-PRE")]


def _arg(rule: list[str], flag: str) -> str | None:
    return rule[rule.index(flag) + 1] if flag in rule else None


def path_checks(cl: Cluster, timeout: float = 15.0) -> Body:
    """(a) takes no proxy: no capture (REDIRECT) rule names a nomesh pod, and the nomesh reviews VIP
    is DNATed in the kernel (meshway's kube-proxy part, in the nomesh curl pod's own namespace:
    OUTPUT -> MESHWAY-SVC) to the nomesh reviews pods only. The rules follow pod readiness with the
    next node push: wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        out = _path_checks(cl)
        if out["nomesh_reviews_vip_dnat_to"] == out["nomesh_reviews_pods"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if out["nomesh_pod_ips_in_capture_rules"] or out["nomesh_reviews_vip_dnat_to"] != out["nomesh_reviews_pods"]:
        raise RuntimeError(f"path (a) would not bypass the proxies as intended: {out}")
    return out


def _path_checks(cl: Cluster) -> Body:
    rules = node_nat_rules(cl)
    redirected = {(_arg(r, "-s") or _arg(r, "-d") or "").removesuffix("/32") for r in rules if "REDIRECT" in r}
    nomesh_ips = {p["status"]["podIP"] for p in cl.pods(NOMESH)}
    vip = cl.vip("reviews", NOMESH) + "/32"
    service_nat = nat_rules(pod_netns_name(cl.cid, NOMESH, "curl"), "MESHWAY-SVC")
    dnat = sorted({_arg(r, "--to-destination") or "" for r in service_nat if _arg(r, "-d") == vip and "DNAT" in r})
    reviews = sorted(f"{p['status']['podIP']}:9080" for p in cl.pods(NOMESH)
                     if p["metadata"]["labels"].get("app") == "reviews")
    out = {"nomesh_pod_ips_in_capture_rules": sorted(nomesh_ips & redirected),
           "default_pod_ips_in_capture_rules": len({p["status"]["podIP"] for p in cl.pods("default")} & redirected),
           "nomesh_reviews_vip_dnat_to": dnat, "nomesh_reviews_pods": reviews}
    return out


def setup_routes(cl: Cluster) -> Body:
    cl.apply(nomesh_manifests(cl))
    wait_pods_ready(cl, NOMESH)
    wait_pods_ready(cl, None)
    vip, nomesh_vip = cl.vip("reviews"), cl.vip("reviews", NOMESH)
    default_reviews = sorted((p for p in cl.pods("default") if p["metadata"]["labels"].get("app") == "reviews"),
                             key=lambda p: p["metadata"]["name"])
    nomesh_reviews = [cl.get("pod", NOMESH, f"reviews-v{v}") for v in (1, 2, 3)]
    curl, curl_nomesh = cl.pod("curl-"), cl.get("pod", NOMESH, "curl")
    cl.routes = {
        "direct": Route("direct", cl.netns(curl_nomesh), [(nomesh_vip, 9080)],
                        [(NOMESH, p["metadata"]["name"]) for p in nomesh_reviews], False,
                        f"nomesh/curl -> nomesh reviews VIP {nomesh_vip}:9080, DNATed by iptables in the curl pod's "
                        "namespace "
                        "(meshway's kube-proxy part: a random pod per connection) -> nomesh/reviews-v1|v2|v3; "
                        "no capture rule, no proxy"),
        "node": Route("node", cl.netns(curl), [(vip, 9080)],
                      [("default", p["metadata"]["name"]) for p in default_reviews], False,
                      f"default/curl -> reviews VIP {vip}:9080, namespace without istio.io/use-waypoint: "
                      "source node proxy (captured, L4) -> HBONE mTLS -> destination node proxy -> pod; "
                      "reviews v1/v2/v3 by connection"),
        "waypoint": Route("waypoint", cl.netns(curl), [(vip, 9080)],
                          [("default", p["metadata"]["name"]) for p in default_reviews], True,
                          f"default/curl -> reviews VIP {vip}:9080, the demo as `{UP_COMMANDS[cl.mode]}` leaves it: source "
                          "node proxy -> HBONE -> waypoint (HTTP, VirtualService 90/10 v1/v2) -> HBONE -> "
                          "destination node proxy -> pod"),
    }
    for route in cl.routes.values():  # start every log count from here
        for ns, pod in route.backends:
            cl.count_requests(ns, pod)
    placement = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": {
        "node": p["spec"]["nodeName"], "ip": p["status"]["podIP"]}
        for p in cl.pods(None) if (p["metadata"].get("labels") or {}).get("app") in ("reviews", "curl")
        or p["metadata"]["name"].startswith("waypoint")}
    checks = path_checks(cl)
    concurrency = cl.envoy_concurrency()
    print(f"  [{cl.mode}] nomesh pods ready; placement: "
          + ", ".join(f"{k} {v['node']}" for k, v in sorted(placement.items()))
          + "; Envoy --concurrency " + ", ".join(f"{k} {v}" for k, v in sorted(concurrency.items())), flush=True)
    return {"mode": cl.mode, "topology": cl.topology, "placement": placement, "checks": checks,
            "envoy_concurrency": concurrency, "paths": {k: r.description for k, r in cl.routes.items()}}


# == load runs ====================================================================================

def run_client(cl: Cluster, route: Route, rate: float, duration: float, connections: int = CONNECTIONS,
               quiet: bool = False) -> Body:
    """The Python client in the route's client pod: fixed rate (rate > 0) or closed loop (rate 0)."""
    cfg = {"targets": route.targets, "path": PATH, "host": HOST_HEADER, "rate": rate, "duration": duration,
           "connections": connections, "timeout": 5.0, "cap": REQUEST_CAP}
    script = cl.tmp / "paced.py"
    if not script.exists():
        script.write_text(PACED_CLIENT)
    out = subprocess.run(["ip", "netns", "exec", route.client_netns, sys.executable, str(script), json.dumps(cfg)],
                         capture_output=True, text=True, timeout=duration + RUN_TIMEOUT_PAD)
    if out.returncode != 0:
        if quiet:
            return {"requests": 0, "scheduled": 1, "via_waypoint": 0}
        raise RuntimeError(f"load client failed on {route.key}: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def run_wrk(cl: Cluster, route: Route, duration: float, connections: int) -> Body:
    """wrk -t1 -cN inside the client pod, with a Lua script that counts responses via the waypoint,
    stops at REQUEST_CAP and prints the result as JSON."""
    script = cl.tmp / "bench.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    host, port = route.targets[0]
    env = {**os.environ, "WRK_REQUEST_CAP": str(REQUEST_CAP // WRK_THREADS), "WRK_HOST": HOST_HEADER}
    cmd = ["ip", "netns", "exec", route.client_netns, shutil.which("wrk") or "wrk", f"-t{WRK_THREADS}",
           f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "-s", str(script), f"http://{host}:{port}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + RUN_TIMEOUT_PAD, env=env)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result on {route.key}: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("WRKJSON "):])
    seconds = r["duration_us"] / 1e6
    return {"client": "wrk", "rate": 0, "scheduled": r["requests"], "requests": r["requests"], "seconds": seconds,
            "errors": {k: v for k, v in r["errors"].items() if v}, "via_waypoint": r["via_waypoint"],
            "latency_ms": {q: v / 1e3 for q, v in r["latency_us"].items()}, "service_ms": None, "lag_ms": None}


def measured_run(cl: Cluster, route: Route, rate: float, duration: float, wrk: bool,
                 connections: int = CONNECTIONS) -> Body:
    """One load run with everything read around it: each proxy's CPU (/proc stat) and RSS (VmRSS
    before and after, VmHWM reset before and read after = the run's peak), the backends' CPU and
    access-log counts, the control plane's CPU, the waypoint's request counter, the machine's CPU."""
    proxies = cl.proxy_pids()
    backend_pids = {f"{ns}/{pod}": cl.netns_pids(pod_netns_name(cl.cid, ns, pod)) for ns, pod in route.backends}
    mesh = cl.mesh_pids()
    for ns, pod in route.backends:
        cl.count_requests(ns, pod)
    wp0 = cl.waypoint_requests()
    rss0 = {k: proc_memory(p).get("VmRSS") for k, p in proxies.items()}
    peak_reset = all(reset_peak_rss(p) for p in proxies.values())
    cpu0 = {k: proc_cpu(p) for k, p in proxies.items()}
    bcpu0 = sum(proc_cpu(p) for ps in backend_pids.values() for p in ps)
    everyone0 = all_process_cpu()
    mesh0 = {role: sum(map(proc_cpu, pids)) for role, pids in mesh.items()}
    m0, c0, s0 = machine_cpu(), children_cpu(), self_cpu()
    t0 = time.perf_counter()
    result = run_wrk(cl, route, duration, connections) if wrk else \
        run_client(cl, route, rate, duration, connections=connections)
    wall = time.perf_counter() - t0
    cpu = {k: proc_cpu(p) - cpu0[k] for k, p in proxies.items()}
    backends_cpu = sum(proc_cpu(p) for ps in backend_pids.values() for p in ps) - bcpu0
    mesh_cpu = {role: sum(map(proc_cpu, pids)) - mesh0[role] for role, pids in mesh.items()}
    m1, client_cpu, own = machine_cpu(), children_cpu() - c0, self_cpu() - s0
    mem = {k: proc_memory(p) for k, p in proxies.items()}
    mine = {*proxies.values(), *(p for ps in backend_pids.values() for p in ps), *(p for ps in mesh.values() for p in ps),
            os.getpid()}
    others = top_others(everyone0, all_process_cpu(), mine, wall)
    wp1 = cl.waypoint_requests()
    served = {f"{ns}/{pod}": cl.count_requests(ns, pod) for ns, pod in route.backends}
    n = max(1, result["requests"])
    busy = {k: (m1[k] - m0[k]) / wall for k in m0}
    known = sum(cpu.values()) + backends_cpu + sum(mesh_cpu.values()) + client_cpu + own
    result.update(
        path=route.key, connections=connections, key=run_key(rate, connections), wall_s=wall, rps=result["requests"] / result["seconds"] if result["seconds"] else 0.0,
        proxies={k: {"cpu_s": cpu[k], "cpu_s_per_1000_requests": cpu[k] / n * 1000, "cpus": cpu[k] / wall,
                     "rss_before": rss0[k], "rss_after": mem[k].get("VmRSS"),
                     "rss_peak": mem[k].get("VmHWM") if peak_reset else None} for k in proxies},
        cpus={"client": client_cpu / wall, "backends": backends_cpu / wall,
              **{role: v / wall for role, v in mesh_cpu.items()},
              "proxies": sum(cpu.values()) / wall, "softirq": busy["softirq"], "machine_busy": busy["busy"],
              "steal": busy["steal"],
              "other_processes": max(0.0, (m1["processes"] - m0["processes"]) - known) / wall},
        backend_requests=served, waypoint_requests=(wp1 - wp0) if min(wp0, wp1) >= 0 else None,
        top_other_processes=others,
    )
    return result


def run_key(rate: float, connections: int) -> str:
    """"100", "500", ... for fixed-rate runs; "max-c15", "max-c64" for unpaced ones."""
    return f"{rate:.0f}" if rate else f"max-c{connections}"


def describe_run(r: Body) -> str:
    lat = r["latency_ms"]
    errors = sum(r["errors"].values())
    cpus = r["cpus"]
    target = f"{r['rate']:>5.0f}/s " if r["rate"] else f"max c{r['connections']:<2}"
    return (f"{r['path']:8} {target}: {r['rps']:7,.0f} req/s, p50 {lat['50']:.2f} ms, p99 {lat['99']:.2f} ms, "
            f"{errors} errors; proxies {cpus['proxies']:.2f} CPUs, backends {cpus['backends']:.2f}, client "
            f"{cpus['client']:.2f}, softirq {cpus['softirq']:.2f}, other processes {cpus['other_processes']:.2f}, "
            f"steal {cpus['steal']:.2f}")


def check_run(cl: Cluster, r: Body) -> None:
    """The path really was the one named: on (c) every response came via the waypoint (its
    `server: istio-envoy` header, and the waypoint's own counter for reviews grew by at least the
    run's requests); on (a)/(b) no response did and the counter did not grow."""
    route = cl.routes[r["path"]]
    via, wp = r["via_waypoint"], r["waypoint_requests"]
    if route.via_waypoint:
        ok = via == r["requests"] and wp is not None and wp >= r["requests"]
    else:  # the counter can only shrink here: reviews' clusters leave the waypoint once unbound
        ok = via == 0 and (wp is None or wp <= 0)
    r["path_verified"] = ok
    if not ok:
        raise RuntimeError(f"run on {r['path']} did not take its path: {via} of {r['requests']} responses via the "
                           f"waypoint, waypoint counted {wp}")


def measure_idle(cl: Cluster, seconds: float) -> Body:
    """Each proxy's CPU and RSS with no load at all: the floor under the per-request numbers."""
    pids = cl.proxy_pids()
    cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
    time.sleep(seconds)
    return {k: {"cpus": (proc_cpu(p) - cpu0[k]) / seconds, "rss": proc_memory(p).get("VmRSS")}
            for k, p in pids.items()}


def bench_load(cl: Cluster, rates: tuple[int, ...], rounds: int, duration: float, max_duration: float,
               max_connections: tuple[int, ...] = MAX_CONNECTIONS) -> Body:
    wrk = shutil.which("wrk") is not None
    runs: list[Body] = []
    switches: list[Body] = []
    idle = measure_idle(cl, duration)
    print(f"  [{cl.mode}] idle: " + ", ".join(f"{k} {v['cpus'] * 1e3:.1f} ms CPU/s, RSS {_mb(v['rss'])}" for k, v in idle.items()),
          flush=True)
    for rnd in range(1, rounds + 1):
        order = PATHS if rnd % 2 else tuple(reversed(PATHS))  # a b c, c b a, a b c: drift spreads evenly
        for key in order:
            if key != "direct":
                took = cl.set_waypoint(key == "waypoint")
                if took:
                    switches.append({"to": key, "effective_s": took})
            route = cl.routes[key]
            run_client(cl, route, rate=200, duration=1.0)  # warm-up: connections, HBONE pools, code paths
            for rate in rates:
                r = measured_run(cl, route, rate, duration, wrk=False)
                r["round"] = rnd
                check_run(cl, r)
                runs.append(r)
                print(f"  [{cl.mode}] round {rnd} {describe_run(r)}", flush=True)
            for connections in max_connections:
                r = measured_run(cl, route, 0, max_duration, wrk=wrk, connections=connections)
                r["round"] = rnd
                check_run(cl, r)
                runs.append(r)
                print(f"  [{cl.mode}] round {rnd} {describe_run(r)}", flush=True)
    cl.set_waypoint(True)  # leave the demo as `meshway up` made it
    return {"mode": cl.mode, "topology": cl.topology, "runs": runs, "switches": switches, "idle": idle,
            "summary": summarize(runs, run_keys(rates, max_connections)), "max_client": "wrk" if wrk else "python"}


# == summary ======================================================================================

def _med(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_keys(rates: tuple[int, ...] | list[int], max_connections: tuple[int, ...] = MAX_CONNECTIONS) -> list[str]:
    return [run_key(r, CONNECTIONS) for r in rates] + [run_key(0, c) for c in max_connections]


def summarize(runs: list[Body], keys: list[str]) -> Body:
    out: Body = {}
    for run in keys:
        row: Body = {}
        for key in PATHS:
            rs = [r for r in runs if r["path"] == key and r["key"] == run]
            if not rs:
                continue
            proxies = sorted({k for r in rs for k in r["proxies"]})
            row[key] = {
                "rounds": len(rs), "rps": _med([r["rps"] for r in rs]),
                "rps_range": [min(r["rps"] for r in rs), max(r["rps"] for r in rs)],
                "p50_ms": _med([r["latency_ms"]["50"] for r in rs]),
                "p99_ms": _med([r["latency_ms"]["99"] for r in rs]),
                "p99_range_ms": [min(r["latency_ms"]["99"] for r in rs), max(r["latency_ms"]["99"] for r in rs)],
                "service_p50_ms": _med([(r["service_ms"] or {}).get("50") for r in rs]),
                "service_p99_ms": _med([(r["service_ms"] or {}).get("99") for r in rs]),
                "lag_p50_ms": _med([(r["lag_ms"] or {}).get("50") for r in rs]),
                "errors": sum(sum(r["errors"].values()) for r in rs),
                "requests": sum(r["requests"] for r in rs),
                "proxies": {k: {
                    "cpu_s_per_1000_requests": _med([r["proxies"][k]["cpu_s_per_1000_requests"] for r in rs]),
                    "cpus": _med([r["proxies"][k]["cpus"] for r in rs]),
                    "rss_peak": max((r["proxies"][k]["rss_peak"] or 0 for r in rs), default=0) or None,
                    "rss_after": _med([r["proxies"][k]["rss_after"] for r in rs])} for k in proxies},
                "cpus": {k: _med([r["cpus"][k] for r in rs]) for k in rs[0]["cpus"]},
                "backend_share": _share(rs),
            }
        base = row.get("direct")
        for key in ("node", "waypoint"):
            if base and key in row:
                row[key]["vs_direct"] = {
                    "rps": row[key]["rps"] / base["rps"], "p50": row[key]["p50_ms"] / base["p50_ms"],
                    "p99": row[key]["p99_ms"] / base["p99_ms"],
                    "p50_added_ms": row[key]["p50_ms"] - base["p50_ms"],
                    "p99_added_ms": row[key]["p99_ms"] - base["p99_ms"]}
        if "node" in row and "waypoint" in row:
            row["waypoint"]["vs_node"] = {"rps": row["waypoint"]["rps"] / row["node"]["rps"],
                                          "p50_added_ms": row["waypoint"]["p50_ms"] - row["node"]["p50_ms"],
                                          "p99_added_ms": row["waypoint"]["p99_ms"] - row["node"]["p99_ms"]}
        out[run] = row
    return out


def _share(rs: list[Body]) -> dict[str, float]:
    totals: dict[str, int] = {}
    for r in rs:
        for k, v in r["backend_requests"].items():
            totals[k] = totals.get(k, 0) + v
    n = sum(totals.values()) or 1
    return {k.split("/")[1].rsplit("-", 2)[0] if k.startswith("default/") else k.split("/")[1]: v / n
            for k, v in sorted(totals.items())}


# == output =======================================================================================

def _mb(b: float | None) -> str:
    return "—" if b is None else f"{b / 2 ** 20:.0f} MiB"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} ms"


def compare_modes(rep: Body) -> Body:
    """kubernetes / embedded for the figures both modes measured: start-up, p50/p99 and req/s per run
    and path, proxy CPU per 1,000 requests (all proxies on the path, and the waypoint alone)."""
    if not all(m in rep["load"] for m in MODES):
        return {}
    se, sk = rep["startup"]["embedded"], rep["startup"]["kubernetes"]
    le, lk = rep["load"]["embedded"]["summary"], rep["load"]["kubernetes"]["summary"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return b / a if a and b is not None else None

    out: Body = {"startup": {
        "embedded_s": se["from_up_s"], "kubernetes_s": sk["from_up_s"], "ratio": ratio(se["from_up_s"], sk["from_up_s"]),
        "from_controlplane": {"embedded_s": se["from_controlplane_s"], "kubernetes_s": sk["from_controlplane_s"]},
        "kubernetes_goal_s": KUBE_GOAL_S, "kubernetes_goal_met": sk["from_up_s"] <= KUBE_GOAL_S},
        "runs": {}}
    for key in le:
        if key not in lk:
            continue
        out["runs"][key] = {}
        for path in PATHS:
            e, k = le[key].get(path), lk[key].get(path)
            if not e or not k:
                continue
            row: Body = {}
            for name in ("rps", "p50_ms", "p99_ms"):
                row[name] = {"embedded": e[name], "kubernetes": k[name], "ratio": ratio(e[name], k[name])}
            if path != "direct":
                ce, ck = path_proxies_cpu(e, path), path_proxies_cpu(k, path)
                row["proxies_cpu_s_per_1000_requests"] = {"embedded": ce, "kubernetes": ck, "ratio": ratio(ce, ck)}
            if path == "waypoint":
                we, wk = waypoint_cpu(e), waypoint_cpu(k)
                row["waypoint_cpu_s_per_1000_requests"] = {"embedded": we, "kubernetes": wk, "ratio": ratio(we, wk)}
            out["runs"][key][path] = row
    return out


def path_proxies_cpu(row: Body, path: str) -> float:
    """CPU s per 1,000 requests of the proxies on the path: the node proxies, and on (c) the waypoint."""
    return sum(v["cpu_s_per_1000_requests"] for k, v in row["proxies"].items()
               if not k.startswith("waypoint") or path == "waypoint")


def waypoint_cpu(row: Body) -> float | None:
    cells = [v["cpu_s_per_1000_requests"] for k, v in row["proxies"].items() if k.startswith("waypoint")]
    return sum(cells) if cells else None


def _others(load: Body) -> str:
    """The CPUs other processes used during a mode's load runs: median [max]."""
    values = [r["cpus"]["other_processes"] for r in load["runs"]]
    return f"{statistics.median(values):.2f} [{max(values):.2f}]" if values else "—"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def comparison_markdown(rep: Body) -> list[str]:
    c = rep.get("comparison") or {}
    if not c:
        return []
    st = c["startup"]
    rates = [str(r) for r in rep["settings"]["rates"]]
    conc = {m: rep["setup"][m]["envoy_concurrency"] for m in MODES}
    missed = st["kubernetes_s"] - KUBE_GOAL_S
    lines = [
        "## Side by side: embedded and kubernetes", "",
        "The same benchmark on each run mode, one after the other in this run (each cluster torn down before the "
        "next starts). What each figure was measured on:", "",
        *[f"- **{rep['modes'][m]['topology']}**; Envoy `--concurrency` "
          + ", ".join(f"{k} {v}" for k, v in sorted(conc[m].items()))
          + f"; load average at the mode's start {rep['modes'][m]['loadavg_at_start'][0]:.2f}; CPUs used by other "
          f"processes during its load runs, median [max]: {_others(rep['load'][m])}." for m in MODES], "",
        "The data plane is the same Envoy binary and the same generated config in both; the modes differ in the "
        "processes around it (the API server and etcd, node agents talking to the API, xDS over TCP + mTLS instead "
        "of local sockets), in Envoy's worker threads (see `--concurrency` above) and in where the scheduler put "
        "the pods (placement in each mode's section 2).", "",
        "### `up` to the first request through the waypoint (binaries already built)", "",
        "| mode | command | `up` -> first 200 through the waypoint | control plane start -> first 200 through the "
        "waypoint | goal |", "|---|---|---|---|---|",
        f"| embedded | `meshway up` | {st['embedded_s']:.2f} s | {st['from_controlplane']['embedded_s']:.2f} s | — |",
        f"| kubernetes | `meshway up --kubernetes` | {st['kubernetes_s']:.2f} s | "
        f"{st['from_controlplane']['kubernetes_s']:.2f} s | ≤ {KUBE_GOAL_S:g} s: "
        + ("**met**" if st["kubernetes_goal_met"] else f"**missed** by {missed:.1f} s") + " |",
        f"| kubernetes / embedded | | {_x(st['ratio'])} | | |", "",
        "### Latency at fixed request rates (medians over rounds; from the due time, as in each mode's section 3)",
        "", "| rate | path | p50 embedded | p50 kubernetes | kubernetes / embedded | p99 embedded | p99 kubernetes | "
        "kubernetes / embedded |", "|---|---|---|---|---|---|---|---|"]
    for rate in rates:
        for path, r in c["runs"].get(rate, {}).items():
            lines.append(f"| {rate}/s | {PATH_TITLES[path]} | {_ms(r['p50_ms']['embedded'])} | "
                         f"{_ms(r['p50_ms']['kubernetes'])} | {_x(r['p50_ms']['ratio'])} | {_ms(r['p99_ms']['embedded'])} | "
                         f"{_ms(r['p99_ms']['kubernetes'])} | {_x(r['p99_ms']['ratio'])} |")
    max_keys = [k for k in c["runs"] if k.startswith("max-")]
    lines += ["", "### Unpaced throughput (medians over rounds)", "",
              "| connections | path | req/s embedded | req/s kubernetes | kubernetes / embedded | p50 embedded | "
              "p50 kubernetes |", "|---|---|---|---|---|---|---|"]
    for key in max_keys:
        for path, r in c["runs"][key].items():
            lines.append(f"| {key.removeprefix('max-c')} | {PATH_TITLES[path]} | {r['rps']['embedded']:,.0f} | "
                         f"{r['rps']['kubernetes']:,.0f} | {_x(r['rps']['ratio'])} | {_ms(r['p50_ms']['embedded'])} | "
                         f"{_ms(r['p50_ms']['kubernetes'])} |")
    lines += ["", "### Proxy CPU per 1,000 requests (CPU seconds; = CPUs busy at 1,000 req/s; medians over rounds)", "",
              "All proxies on the path: both node proxies, and on (c) the waypoint. Per proxy: each mode's section 5.",
              "", "| run | path | all proxies embedded | all proxies kubernetes | kubernetes / embedded | waypoint "
              "embedded | waypoint kubernetes | kubernetes / embedded |", "|---|---|---|---|---|---|---|---|"]
    for key in [*rates, *max_keys]:
        for path, r in c["runs"].get(key, {}).items():
            if path == "direct":
                continue
            a, w = r["proxies_cpu_s_per_1000_requests"], r.get("waypoint_cpu_s_per_1000_requests")
            run = f"{key}/s" if not key.startswith("max-") else f"unpaced, {key.removeprefix('max-c')} conn."
            lines.append(f"| {run} | {PATH_TITLES[path]} | {a['embedded']:.3f} | {a['kubernetes']:.3f} | "
                         f"{_x(a['ratio'])} | " + (f"{w['embedded']:.3f} | {w['kubernetes']:.3f} | {_x(w['ratio'])} |"
                                                   if w else "— | — | — |"))
    return lines + [""]


TIMELINE_SOURCES = {"embedded": "store", "kubernetes": "API"}
UP_MILESTONES = ("started ", "installed ", "nodes Ready", "$ meshway", "pods ready", "export KUBECONFIG")


def mode_markdown(rep: Body, mode: str) -> list[str]:
    """Sections 1-7 for one run mode, every heading naming the mode."""
    st, ld, setup = rep["startup"][mode], rep["load"][mode], rep["setup"][mode]
    s = ld["summary"]
    rates = rep["settings"]["rates"]
    tl = st["timeline_from_up_s"]
    up = UP_COMMANDS[mode]
    info = rep["modes"][mode]
    concurrency = ", ".join(f"{k} {v}" for k, v in sorted(setup["envoy_concurrency"].items()))
    goal = (f" Goal ≤ {KUBE_GOAL_S:g} s: " + ("met." if st["goal_met"] else
                                             f"missed by {st['from_up_s'] - KUBE_GOAL_S:.1f} s.")) \
        if "goal_s" in st else ""
    lines = [
        f"## {mode}: `{up}`", "",
        f"Topology: {info['topology']}. Envoy `--concurrency`: {concurrency}. Started {info['started']} "
        f"({info['duration_s']:.0f} s), load average at start {info['loadavg_at_start'][0]:.2f}.", "",
        f"### {mode} 1. `{up}` to the first request through the waypoint", "",
        f"`{up}` (bundled demo, 2 nodes{', Kubernetes binaries already built' if mode == 'kubernetes' else ''}) "
        "started at 0; a prober in the curl pod sends "
        "`GET /reviews/0` to the reviews VIP every 20 ms from the moment the pod's network namespace exists.", "",
        f"| event ({mode}) | seconds after `{up}` started |", "|---|---|",
        *[f"| {label.format(source=TIMELINE_SOURCES[mode], up=up)} | "
          + ("— (not before the first request through the waypoint and `up`'s exit; not waited for)"
             if math.isnan(tl[k]) else f"**{tl[k]:.2f}**" if k == "first_via_waypoint" else f"{tl[k]:.2f}") + " |"
          for k, label in STARTUP_EVENTS.items() if k in tl], "",
        f"From control plane start to the first request through the waypoint: **{st['from_controlplane_s']:.2f} s** "
        f"(first 200 on any path: {st['first_ok_from_controlplane_s']:.2f} s).{goal}", "",
        f"What `{up}` printed, and when (seconds after it started; the JSON's `up_output` has every line): "
        + "; ".join(f"{t:.1f} {line.strip()}" for t, line in st.get("up_output", []) if line.strip().startswith(UP_MILESTONES))
        + ".", "",
        f"### {mode} 2. Paths", "",
        "Every request is `GET /health` to a reviews pod (`Host: reviews:9080`) on one of "
        f"{CONNECTIONS} keep-alive connections opened before the run, from a curl pod:", "",
        *[f"- {PATH_TITLES[k]}: {v}" for k, v in setup["paths"].items()], "",
        "Placement: " + ", ".join(f"`{k}` {v['node']}" for k, v in sorted(setup["placement"].items())) + ".", "",
        f"### {mode} 3. Fixed request rates", "",
        f"{rep['settings']['rounds']} round(s) of {rep['settings']['duration_s']:g} s per rate and path, paths "
        "interleaved; medians over rounds. Request i is due at t0 + i/rate (wrk2's schedule); **p50/p99 count from "
        "the due time**, so queueing for a busy connection and the client's timer lag are included (the lag column "
        "is that floor: it is the same on every path). 'send→response' counts from the write. 'steal' is CPU time "
        "the hypervisor took from this VM during the run (in CPUs, of 2): the main source of outliers here.", "",
        f"| rate | path ({mode}) | req/s | p50 | p99 | p50 send→response | p99 send→response | client lag p50 | "
        "errors | vs direct p50 / p99 | steal |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        row = s[str(rate)]
        for key in PATHS:
            r = row.get(key)
            if not r:
                continue
            vs = r.get("vs_direct")
            vs_text = f"{vs['p50_added_ms']:+.2f} / {vs['p99_added_ms']:+.2f} ms ({vs['p50']:.1f}x / {vs['p99']:.1f}x)" \
                if vs else ""
            lines.append(f"| {rate} | {PATH_TITLES[key]} | {r['rps']:,.0f} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | "
                         f"{_ms(r['service_p50_ms'])} | {_ms(r['service_p99_ms'])} | {_ms(r['lag_p50_ms'])} | "
                         f"{r['errors']} | {vs_text} | {r['cpus']['steal']:.2f} |")
    lines += ["", f"The waypoint's own share ({mode}), (c) minus (b): " + "; ".join(
        f"{rate}/s p50 {s[str(rate)]['waypoint']['vs_node']['p50_added_ms']:+.2f} ms, p99 "
        f"{s[str(rate)]['waypoint']['vs_node']['p99_added_ms']:+.2f} ms"
        for rate in rates if "vs_node" in s[str(rate)].get("waypoint", {})) + "."]
    max_keys = [k for k in s if k.startswith("max-")]
    lines += ["", f"### {mode} 4. Unpaced (maximum) throughput", "",
              f"{ld['max_client']}{f' -t{WRK_THREADS}' if ld['max_client'] == 'wrk' else ''} with "
              f"{' and '.join(str(c) for c in rep['settings']['max_connections'])} keep-alive connections, "
              f"{rep['settings']['max_duration_s']:g} s per run, back to back on every connection (latency from the "
              "write, as wrk measures it). Where the 2 CPUs went, in CPUs (medians): proxies = all Envoys, softirq = "
              "the kernel's packet processing (veths, bridge, iptables), not charged to any process; node agents = "
              "`meshway node`; kube = etcd, kube-apiserver, -controller-manager, -scheduler; steal = time the "
              "hypervisor ran something else on this VM's CPUs.", "",
              f"| connections | path ({mode}) | req/s [range] | p50 | p99 | errors | vs direct | proxies | backends | "
              "client | softirq | control plane | node agents | kube | other processes | steal |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mk, key in ((mk, key) for mk in max_keys for key in PATHS):
        r = s[mk].get(key)
        if not r:
            continue
        c = r["cpus"]
        vs = f"{r['vs_direct']['rps']:.2f}x" if r.get("vs_direct") else ""
        kube = f"{c['kubernetes']:.2f}" if "kubernetes" in c else "—"
        lines.append(f"| {mk.removeprefix('max-c')} | {PATH_TITLES[key]} | {r['rps']:,.0f} "
                     f"[{r['rps_range'][0]:,.0f}–{r['rps_range'][1]:,.0f}] | "
                     f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} | {vs} | {c['proxies']:.2f} | "
                     f"{c['backends']:.2f} | {c['client']:.2f} | {c['softirq']:.2f} | {c['controlplane']:.2f} | "
                     f"{c.get('node_agents', 0):.2f} | {kube} | {c['other_processes']:.2f} | {c['steal']:.2f} |")
    lines += ["", f"### {mode} 5. Proxy CPU and memory per 1,000 requests/s", "",
              "CPU: utime + stime from `/proc/<pid>/stat` over the run, per 1,000 requests (= CPUs busy at "
              "1,000 req/s; medians over rounds). Memory: peak RSS during the run (VmHWM, reset with "
              "`clear_refs` before the run; highest over rounds) and RSS idle before any load. `node-N` is node N's "
              "node proxy; the waypoint runs on its pod's node (section 2). Rows marked 'not on the path' show that "
              "proxy's idle level during the other path's runs. 'CPU idle' is each proxy's CPU over "
              f"{rep['settings']['duration_s']:g} s with no load before the first run: at 100 req/s it alone "
              "adds 10x its value (in CPU s per 1k requests) to the column. /proc counts in 10 ms ticks.", "",
              f"| path ({mode}) | proxy | " + " | ".join(f"CPU s / 1k req @ {r}/s" for r in rates)
              + "".join(f" | @ max, {k.removeprefix('max-c')} conn." for k in max_keys)
              + f" | peak RSS @ {rates[-1]}/s | peak RSS @ max | RSS idle | CPU idle |",
              "|---|---|" + "---|" * (len(rates) + len(max_keys) + 4)]
    idle = ld["idle"]
    for key in PATHS:
        proxies = sorted(s[max_keys[-1]].get(key, {}).get("proxies", {}))
        for px in proxies:
            cells = []
            for rate in (*[str(r) for r in rates], *max_keys):
                v = s[rate].get(key, {}).get("proxies", {}).get(px, {}).get("cpu_s_per_1000_requests")
                cells.append("—" if v is None else f"{v:.3f}")
            peak = s[str(rates[-1])].get(key, {}).get("proxies", {}).get(px, {}).get("rss_peak")
            peak_max = max((s[k].get(key, {}).get("proxies", {}).get(px, {}).get("rss_peak") or 0 for k in max_keys),
                           default=0) or None
            on_path = key != "direct" and (not px.startswith("waypoint") or key == "waypoint")
            name = px if on_path else f"{px} (not on the path)"
            lines.append(f"| {PATH_TITLES[key]} | {name} | " + " | ".join(cells)
                         + f" | {_mb(peak)} | {_mb(peak_max)} | {_mb(idle.get(px, {}).get('rss'))} | "
                         f"{idle.get(px, {}).get('cpus', 0) * 1e3:.1f} ms/s |")
        if key != "direct":
            cells = []
            for rate in (*[str(r) for r in rates], *max_keys):
                r = s[rate].get(key)
                cells.append("—" if not r else f"**{path_proxies_cpu(r, key):.3f}**")
            lines.append(f"| {PATH_TITLES[key]} | **all proxies on the path** | " + " | ".join(cells) + " | | | | |")
    lines += ["", f"### {mode} 6. Which backend answered", "",
              "Share of requests per reviews pod, from the pods' own access logs, all runs of a path:", "",
              f"| path ({mode}) | " + " | ".join(("v1", "v2", "v3")) + " |", "|---|---|---|---|"]
    for key in PATHS:
        share: dict[str, int] = {}
        for r in ld["runs"]:
            if r["path"] == key:
                for pod, n in r["backend_requests"].items():
                    version = "v" + pod.split("reviews-v", 1)[1][0]
                    share[version] = share.get(version, 0) + n
        total = sum(share.values()) or 1
        lines.append(f"| {PATH_TITLES[key]} | " + " | ".join(f"{100 * share.get(v, 0) / total:.1f}%"
                                                              for v in ("v1", "v2", "v3")) + " |")
    checks = setup["checks"]
    sw = ld["switches"]
    down = rep["teardown"].get(mode, {})
    lines += ["", f"### {mode} 7. Checks", "",
              "- Every run's path was verified: on (c) every response carried `server: istio-envoy` and the "
              "waypoint's own `istio_requests_total` for reviews (reporter=waypoint) grew by at least the run's "
              "requests; on (a) and (b) no response did and the counter did not grow.",
              f"- (a) bypasses the proxies: the nodes' capture (REDIRECT) rules name no `nomesh` pod "
              f"({checks['default_pod_ips_in_capture_rules']} `default` pod IPs are captured), the `nomesh` reviews "
              f"VIP is DNATed to exactly its pods ({', '.join(checks['nomesh_reviews_vip_dnat_to'])}), and the "
              "node proxies' CPU during (a) runs is their idle level (section 5).",
              f"- Waypoint label switches (b <-> c) took effect for new connections within "
              f"{max((x['effective_s'] for x in sw), default=0):.1f} s ({len(sw)} switches, a probe every ~0.5 s).",
              f"- Errors over all runs: {sum(sum(r['errors'].values()) for r in ld['runs'])}.",
              "- Runs in which processes outside the benchmark used more than 0.1 CPUs (machine process time minus "
              "every process measured above; the per-process and machine counters do not match exactly, so values "
              "near 0.1 with no named process above 0.05 are accounting noise): "
              + ("; ".join(f"round {r['round']} {r['path']} {r['key']}: {r['cpus']['other_processes']:.2f} CPUs "
                           f"(top: {', '.join(f'{c} {v:.2f}' for c, v in r['top_other_processes'])})"
                           for r in ld["runs"] if r["cpus"]["other_processes"] > 0.1) or "none") + ".",
              f"- Teardown (`{down.get('command', '?')}`): {down.get('summary', 'see JSON')}.", ""]
    return lines


def write_markdown(path: Path, rep: Body) -> None:
    m = rep["machine"]
    modes = [mode for mode in rep["run_modes"] if mode in rep["load"]]
    clients = {rep["load"][mode]["max_client"] for mode in modes}
    client = "/".join(sorted(clients))
    lines = [
        f"# Cluster benchmark ({rep['mode']}): {' and '.join(modes)}", "",
        f"Python {m['python']} on {m['platform']}, {m['cpu_count']} CPUs; Envoy {m.get('envoy')}; fixed-rate client: "
        f"Python asyncio; unpaced client: {client}{' (' + m['wrk'] + ')' if m.get('wrk') and 'wrk' in clients else ''}; "
        f"meshway {m.get('meshway_commit')}; run {rep['started']} ({rep['duration_s']:.0f} s); load average at start "
        f"{m['loadavg_at_start'][0]:.2f}.", "",
        *([f"Not measured: {', '.join(f'{k} ({v})' for k, v in rep['skipped_modes'].items())}.", ""]
          if rep.get("skipped_modes") else []),
        *comparison_markdown(rep),
    ]
    for mode in modes:
        lines += mode_markdown(rep, mode)
    path.write_text("\n".join(lines))


def find_kube_binaries() -> tuple[Path | None, str | None]:
    """The Kubernetes binaries `meshway up --kubernetes` runs (and kubectl): ($MESHWAY_K8S_BIN or
    scripts/build-kubernetes's folder, None) when built, else (None, why not). Nothing is built here."""
    from meshway.kube.harness import find_missing_binaries

    env = os.environ.get("MESHWAY_K8S_BIN")
    if env:
        bin_dir = Path(env)
    else:
        out = subprocess.run([str(ROOT / "scripts" / "build-kubernetes"), "--print-bin-dir"], capture_output=True,
                             text=True)
        if out.returncode != 0:
            return None, f"scripts/build-kubernetes --print-bin-dir failed: {out.stderr.strip()[-300:]}"
        bin_dir = Path(out.stdout.strip())
    missing = find_missing_binaries(bin_dir) + [b for b in ("kubectl",) if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        return None, f"Kubernetes binaries not built ({', '.join(missing)} missing in {bin_dir}; run scripts/build-kubernetes)"
    return bin_dir, None


def run_mode(cl: Cluster, rates: tuple[int, ...], rounds: int, duration: float, max_duration: float,
             max_connections: tuple[int, ...]) -> Body:
    """One mode from `up` to teardown: {startup, setup, load, teardown, info}; teardown always runs."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    loadavg = os.getloadavg()
    print(f"== {cl.mode}: {cl.topology} (load average {loadavg[0]:.2f})", flush=True)
    out: Body = {}
    try:
        print(f"1. `{UP_COMMANDS[cl.mode]}` -> first request through the waypoint", flush=True)
        out["startup"] = bench_startup(cl)
        print("2. non-mesh copy of reviews + curl in namespace nomesh", flush=True)
        out["setup"] = setup_routes(cl)
        print(f"3. load: rates {', '.join(map(str, rates))} req/s and unpaced, {rounds} round(s)", flush=True)
        out["load"] = bench_load(cl, rates, rounds, duration, max_duration, max_connections)
    finally:
        cl.close()
        try:
            out["teardown"] = cl.teardown()
        except Exception as exc:  # report it, without hiding an error that got us here
            out["teardown"] = {"summary": f"teardown failed: {exc!r}"}
        print(f"  [{cl.mode}] teardown: {out['teardown']['summary']}", flush=True)
    out["info"] = {"topology": cl.topology, "command": UP_COMMANDS[cl.mode],
                   "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_s": time.perf_counter() - t0,
                   "loadavg_at_start": loadavg}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one round of 2 s runs at one rate (500/s) and unpaced with 15 connections")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: %(default)s)")
    ap.add_argument("--rates", default=None, help="fixed request rates, req/s (default: 100,500,1000; --quick: 500)")
    ap.add_argument("--modes", default=None,
                    help="run modes to measure, one after the other: embedded (`meshway up`), kubernetes "
                         "(`meshway up --kubernetes`) (default: both when the Kubernetes binaries are built, "
                         "else embedded; with MESHWAY_REQUIRE_E2E=1 both or an error)")
    args = ap.parse_args(argv)
    reason = detect_capability()
    if reason:
        print(f"the cluster benchmark needs root, network namespaces and iptables: {reason}", file=sys.stderr)
        return 2
    modes = tuple(m.strip() for m in (args.modes or ",".join(MODES)).split(",") if m.strip())
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes: one or more of {', '.join(MODES)}")
    bin_dir, skipped = None, {}
    if "kubernetes" in modes:
        bin_dir, why = find_kube_binaries()
        if bin_dir is None:
            if args.modes or os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
                print(f"the kubernetes mode cannot run: {why}", file=sys.stderr)
                return 2
            print(f"note: kubernetes mode skipped: {why}", flush=True)
            modes, skipped = tuple(m for m in modes if m != "kubernetes"), {"kubernetes": why}
    rates = tuple(int(r) for r in (args.rates or ("500" if args.quick else "100,500,1000")).split(","))
    rounds, duration, max_duration = (1, 2.0, 2.0) if args.quick else (3, 10.0, 5.0)
    max_connections = (CONNECTIONS,) if args.quick else MAX_CONNECTIONS
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    loadavg = os.getloadavg()
    if loadavg[0] > 0.5:
        print(f"note: load average {loadavg[0]:.2f} at start; other work on the machine skews the numbers "
              "(see 'other processes' in the results)", flush=True)
    results: dict[str, Body] = {}
    with tempfile.TemporaryDirectory(prefix="mw-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        for mode in modes:
            (tmp / mode).mkdir()
            cl: Cluster = EmbeddedCluster(tmp / mode / "state", tmp / mode) if mode == "embedded" else \
                KubeCluster(tmp / mode / "state", tmp / mode, bin_dir)  # type: ignore[arg-type]
            results[mode] = run_mode(cl, rates, rounds, duration, max_duration, max_connections)
    report = {
        "benchmark": "cluster", "mode": "quick" if args.quick else "full", "run_modes": list(modes),
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_s": time.perf_counter() - t0,
        "machine": {**machine_info(), **tool_versions(find_envoy()), "loadavg_at_start": loadavg},
        "settings": {"rates": list(rates), "rounds": rounds, "duration_s": duration, "max_duration_s": max_duration,
                     "connections": CONNECTIONS, "max_connections": list(max_connections), "request": f"GET {PATH}",
                     "host_header": HOST_HEADER, "request_cap_per_run": REQUEST_CAP,
                     "kubernetes_goal_s": KUBE_GOAL_S},
        "modes": {m: r["info"] for m, r in results.items()}, "skipped_modes": skipped,
        **{part: {m: r[part] for m, r in results.items()} for part in ("startup", "setup", "load", "teardown")},
    }
    report["comparison"] = compare_modes(report)
    stem = "cluster-quick" if args.quick else "cluster"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / f"{stem}.md", report)
    top = str(rates[-1])
    for mode in modes:
        s = report["load"][mode]["summary"]
        print(f"{mode}: up -> first request via waypoint {report['startup'][mode]['from_up_s']:.2f} s; at {top}/s p50 "
              + ", ".join(f"{k} {s[top][k]['p50_ms']:.2f} ms" for k in PATHS if k in s[top])
              + "".join(f"; {mk} " + ", ".join(f"{k} {s[mk][k]['rps']:,.0f}/s" for k in PATHS if k in s[mk])
                        for mk in s if mk.startswith("max-")))
    print(f"total {report['duration_s']:.0f} s; wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
