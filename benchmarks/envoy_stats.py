#!/usr/bin/env python
"""Envoy stats configuration: time for a real Envoy to take a waypoint's and a node proxy's config,
with the old stats config (15 unanchored tag regexes, every stat created) and the current one
(anchored per-family extractors + inclusion list, `meshway.xds.bootstrap.build_stats_config`),
side by side in one run.

    python benchmarks/envoy_stats.py            # N = 25 and 250, 3 rounds: about 10 minutes (2 CPUs)
    python benchmarks/envoy_stats.py --quick    # N = 25, 1 round: about 20 s

Per N and stats config, with the control plane's snapshot already set (an in-process ADS server,
`meshway.xds.server`, over a Unix socket) and a fresh Envoy 1.40 (`--concurrency 1`, as the
runtime starts it):
- waypoint: process start -> CDS ACK (the N services' clusters), -> LDS ACK, and Envoy's own CPU
  seconds at the LDS ACK; and the number of stats it created;
- node proxy: a node proxy connected to the control plane is killed (SIGKILL) and started again:
  process start -> CDS ACK, -> its outbound listener accepts a TCP connection (restart-to-listening),
  and the CPU seconds by then.

Topology: `benchmarks/dataplane.build_topology(1, N, 2, 1)` (one namespace bound to its waypoint,
N services x 2 pods, 3 services with DestinationRule subsets v1/v2 + a 90/10 VirtualService), in
ambient mode; the node proxy is node-0's, which holds every pod (its inbound clusters and outbound
chains carry Istio's labels). Listeners are moved to 127.250.0.x so nothing else on the host clashes.

Writes benchmarks/results/envoy_stats.{json,md} (`--quick`: envoy_stats-quick.{json,md}). Exit
status 1 if the new config is not faster at the largest N or a run fails.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from dataplane import build_topology, waypoint_proxy  # noqa: E402
from selection import machine_info  # noqa: E402

from meshway import labels as L  # noqa: E402
from meshway.ca import CertificateAuthority, build_secrets  # noqa: E402
from meshway.ca.sds import SDS_ROOT, build_certificate_secret, build_root_secret  # noqa: E402
from meshway.mesh.view import MeshView  # noqa: E402
from meshway.runtime.envoy import find_envoy  # noqa: E402
from meshway.xds import protos as P  # noqa: E402
from meshway.xds.bootstrap import build_bootstrap  # noqa: E402
from meshway.xds.build_snapshot import build_waypoint_config  # noqa: E402
from meshway.xds.build_ztunnel import NodeProxy, build_ztunnel_config  # noqa: E402
from meshway.xds.cache import SYNCED, Snapshot, SnapshotCache  # noqa: E402
from meshway.xds.server import XdsServer  # noqa: E402
from meshway.xds.stat_tags import TAGS  # noqa: E402

Body = dict[str, Any]
RESULTS = Path(__file__).resolve().parent / "results"
WAYPOINT_IP, NODE_IP = "127.250.0.1", "127.250.0.2"
VARIANTS = ("old", "new")


def legacy_stats_config() -> Body:
    """The stats config before anchoring: one unanchored std::regex per label, every stat created."""
    return {"stats_tags": [{"tag_name": t, "regex": rf"\.({t}=\.=(.*?);\.)"} for t in TAGS]}


# == configs ======================================================================================

def build_configs(services: int, ca: CertificateAuthority) -> tuple[dict, dict, Body]:
    """(waypoint messages, node-proxy messages, counts) for `build_topology(1, services, 2, 1)`."""
    snap, _ = build_topology(1, services, 2, 1)
    for ns in snap["Namespace"]:
        ns["metadata"].setdefault("labels", {})[L.DATAPLANE_MODE] = "ambient"
    view = MeshView.build(snap)
    proxy = waypoint_proxy("ns-1", ip=WAYPOINT_IP)
    waypoint = build_waypoint_config(view, proxy).messages()
    waypoint[P.SECRET] = dict(build_secrets(ca.issue("ns-1", "waypoint"), ca.root_pem()))
    resources, identities = build_ztunnel_config(view, NodeProxy("ztunnel~bench", "node-0"))
    for listener in resources[P.LISTENER].values():
        if "address" in listener:
            listener["address"]["socket_address"]["address"] = NODE_IP
    node = {t: {n: P.to_message(t, b) for n, b in items.items()} for t, items in resources.items()}
    node[P.SECRET] = {}
    for identity in sorted(identities):
        secret = build_certificate_secret(ca.issue(identity.split("/ns/")[1].split("/")[0], identity.rsplit("/sa/")[1]))
        secret.name = identity
        node[P.SECRET][identity] = secret
    node[P.SECRET][SDS_ROOT] = build_root_secret(ca.root_pem())
    counts = {"services": services, "pods": len(view.pods),
              "waypoint": {"clusters": len(waypoint[P.CLUSTER]), "listeners": len(waypoint[P.LISTENER])},
              "node_proxy": {"clusters": len(node[P.CLUSTER]), "listeners": len(node[P.LISTENER])}}
    return waypoint, node, counts


# == a control plane and Envoys ===================================================================

class Plane:
    """SnapshotCache + XdsServer on their own event loop thread (as tests/test_xds_server.py)."""

    def __init__(self, tmp: Path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cache = SnapshotCache()
        self.server = XdsServer(self.cache)
        self.socket = tmp / "ads.sock"
        asyncio.run_coroutine_threadsafe(self.server.start(self.socket), self.loop).result(10)

    def acked(self, node: str, type_url: str) -> bool:
        status = self.cache.status.get(node, {}).get(type_url, {})
        snapshot = self.cache.get(node)
        return status.get("state") == SYNCED and snapshot is not None and status.get("version") == \
            snapshot.version(type_url)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.path))


def admin_get(path: Path, url: str) -> str:
    conn = _Unix(path)
    try:
        conn.request("GET", url)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.2):
            return True
    except OSError:
        return False


class Envoy:
    def __init__(self, envoy: str, folder: Path, plane: Plane, node_id: str, kind: str, variant: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.admin = folder / "admin.sock"
        self.admin.unlink(missing_ok=True)
        boot = build_bootstrap(node_id, f"{kind}.bench", plane.socket, self.admin, metadata={"NODE_TYPE": kind})
        if variant == "old":
            boot["stats_config"] = legacy_stats_config()
        config = folder / "bootstrap.json"
        config.write_text(json.dumps(boot))
        plane.cache.status.pop(node_id, None)  # what an earlier process ACKed says nothing of this one
        self.started = time.monotonic()
        with (folder / "envoy.log").open("ab") as log:
            self.proc = subprocess.Popen([envoy, "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
                                          "-l", "warning"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)

    def wait(self, what: str, check, timeout: float) -> float:
        """Seconds from process start until `check()`."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited ({self.proc.returncode}) waiting for {what}")
            if check():
                return time.monotonic() - self.started
            time.sleep(0.005)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")

    def stats_count(self) -> int:
        return sum(1 for line in admin_get(self.admin, "/stats").splitlines() if line.strip())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


# == measurements =================================================================================

def run_waypoint(envoy: str, tmp: Path, plane: Plane, variant: str, timeout: float) -> Body:
    node = "waypoint~bench"
    proc = Envoy(envoy, tmp / f"waypoint-{variant}", plane, node, "waypoint", variant)
    try:
        cds = proc.wait("CDS ACK", lambda: plane.acked(node, P.CLUSTER), timeout)
        lds = proc.wait("LDS ACK", lambda: plane.acked(node, P.LISTENER), timeout)
        cpu = cpu_seconds(proc.proc.pid)
        listening = proc.wait("connect_terminate accepting", lambda: accepts(WAYPOINT_IP, L.HBONE_PORT), timeout)
        return {"cds_ack_s": cds, "lds_ack_s": lds, "listening_s": listening, "cpu_s": cpu,
                "stats": proc.stats_count()}
    finally:
        proc.kill()


def run_node_restart(envoy: str, tmp: Path, plane: Plane, variant: str, timeout: float) -> Body:
    node = "ztunnel~bench"
    listening = lambda: accepts(NODE_IP, 15001)  # noqa: E731
    first = Envoy(envoy, tmp / f"node-{variant}", plane, node, "ztunnel", variant)
    try:  # killed (-9) once the control plane is serving it, then started again as the supervisor does
        first.wait("the first node proxy connected", lambda: node in plane.server.connected, timeout)
    finally:
        first.kill()
    proc = Envoy(envoy, tmp / f"node-{variant}", plane, node, "ztunnel", variant)
    try:
        cds = proc.wait("CDS ACK", lambda: plane.acked(node, P.CLUSTER), timeout)
        up = proc.wait("the outbound listener accepting", listening, timeout)
        return {"cds_ack_s": cds, "listening_s": up, "cpu_s": cpu_seconds(proc.proc.pid),
                "stats": proc.stats_count()}
    finally:
        proc.kill()


def median(rows: list[Body], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def bench(envoy: str, sizes: tuple[int, ...], rounds: int, timeout: float) -> Body:
    ca_dir = Path(tempfile.mkdtemp(prefix="meshway-envoy-stats-"))
    try:
        return _bench(envoy, sizes, rounds, timeout, ca_dir)
    finally:
        shutil.rmtree(ca_dir, ignore_errors=True)  # keys, sockets, logs


def _bench(envoy: str, sizes: tuple[int, ...], rounds: int, timeout: float, ca_dir: Path) -> Body:
    ca = CertificateAuthority(ca_dir / "ca")
    out: Body = {"sizes": []}
    for services in sizes:
        waypoint, node, counts = build_configs(services, ca)
        tmp = ca_dir / f"n{services}"
        tmp.mkdir()
        plane = Plane(tmp)
        try:
            plane.cache.set_snapshot("waypoint~bench", Snapshot(waypoint))
            plane.cache.set_snapshot("ztunnel~bench", Snapshot(node))
            runs: dict[str, dict[str, list[Body]]] = {v: {"waypoint": [], "node": []} for v in VARIANTS}
            for r in range(rounds):
                for variant in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
                    runs[variant]["waypoint"].append(run_waypoint(envoy, tmp, plane, variant, timeout))
                    runs[variant]["node"].append(run_node_restart(envoy, tmp, plane, variant, timeout))
                    print(f"N={services} round {r + 1} {variant}: waypoint {runs[variant]['waypoint'][-1]}, "
                          f"node proxy {runs[variant]['node'][-1]}", flush=True)
        finally:
            plane.close()
        summary = {v: {part: {k: median(rows, k) for k in rows[0]} for part, rows in runs[v].items()}
                   for v in VARIANTS}
        ratios = {f"{part}_{k}": summary["old"][part][k] / max(summary["new"][part][k], 1e-9)
                  for part in ("waypoint", "node") for k in ("cds_ack_s", "listening_s", "cpu_s")}
        out["sizes"].append({**counts, "runs": runs, "median": summary, "ratio_old_over_new": ratios})
    return out


# == report =======================================================================================

def write_markdown(path: Path, report: Body) -> None:
    lines = [f"# Envoy stats config: old vs new ({report['generated']})", "",
             f"Envoy {report['envoy_version']}, `--concurrency 1`; {report['machine'].get('cpu_count')} CPUs, shared; "
             f"{report['rounds']} round(s), medians. Topology: {report['topology']}", "",
             "| N services | proxy (clusters) | measure | old | new | old / new |", "|---|---|---|---|---|---|"]
    names = {"cds_ack_s": "start -> CDS ACK", "lds_ack_s": "start -> LDS ACK",
             "listening_s": "start -> listener accepting", "cpu_s": "Envoy CPU by then", "stats": "stats created"}
    for size in report["sizes"]:
        for part, label in (("waypoint", "waypoint"), ("node", "node proxy, restart after kill -9")):
            counts = size["waypoint" if part == "waypoint" else "node_proxy"]
            for key, name in names.items():
                if key not in size["median"]["old"][part]:
                    continue
                old, new = size["median"]["old"][part][key], size["median"]["new"][part][key]
                fmt = (lambda v: f"{v:,.0f}") if key == "stats" else (lambda v: f"{v:.2f} s")
                lines.append(f"| {size['services']} | {label} ({counts['clusters']}) | {name} | {fmt(old)} | "
                             f"{fmt(new)} | **{old / max(new, 1e-9):.1f}x** |")
    lines += ["", "old: `stats_tags` = 15 unanchored `\\.(LABEL=\\.=(.*?);\\.)` regexes, no stats matcher. "
              "new: `build_stats_config(NODE_TYPE)`: anchored `^cluster\\.` / `^tcp\\.` / `^connection_limit\\.` "
              "extractors for the labels that proxy kind generates, plus the inclusion list.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 25 only, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per N (old and new alternate first)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per Envoy milestone")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON and Markdown")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `finally` blocks stop the Envoys started
    envoy = find_envoy()
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    sizes, rounds = ((25,), 1) if args.quick else ((25, 250), args.rounds)
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout.split("version:")[-1].strip()
    try:
        results = bench(envoy, sizes, rounds, args.timeout)
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    report = {"benchmark": "envoy_stats", "mode": "quick" if args.quick else "full",
              "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_s": time.perf_counter() - t0,
              "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "envoy_version": version,
              "machine": machine_info(), "rounds": rounds, "quick": args.quick,
              "topology": "build_topology(1, N, 2, 1) in ambient mode: one namespace and its waypoint, N services "
                          "x 2 pods, 3 with v1/v2 subsets and a 90/10 VirtualService; the node proxy of node-0 "
                          "(every pod); config already in the control plane when Envoy starts", **results}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "envoy_stats-quick" if args.quick else "envoy_stats"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(args.out / f"{stem}.md", report)
    print((args.out / f"{stem}.md").read_text())
    largest = report["sizes"][-1]["ratio_old_over_new"]
    return 0 if largest["waypoint_cds_ack_s"] > 1 and largest["node_listening_s"] > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
