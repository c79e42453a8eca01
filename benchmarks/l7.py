#!/usr/bin/env python
"""The cost of L7 policy and access logging at the waypoint, side by side in one run.

One live mesh (benchmarks/dataplane.py's LiveMesh: control plane, waypoint Envoy, node proxy,
backend, HBONE client Envoy), then rounds over five configurations, each applied through the
store and waited for until the waypoint ACKs it:

- `baseline`: no AuthorizationPolicy, no access log
- `authz-10` / `authz-100`: one ALLOW policy (targetRefs: the Service) with 10 / 100 rules; every
  rule but the last names a path and header the load never sends, so each request is checked
  against all of them before the last rule (the client's SPIFFE identity) admits it
- `log-on`: a Telemetry turning on the JSON access log (one line per request, to the log file)
- `authz-100+log`: both

    python benchmarks/l7.py            # full: about 3 minutes on 2 CPUs
    python benchmarks/l7.py --quick    # smoke run, about 40 s

Writes benchmarks/results/l7.{json,md} (`--quick`: l7-quick.{json,md}). All traffic stays on
127.0.0.0/8; each load run is bounded by time and a request cap.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane import (RESULTS, WRK_SCRIPT, LiveMesh, admin_get, find_envoy, machine_info, run_python_load,  # noqa: E402
                       run_wrk, tool_versions)

from meshway.model import find_kind, load_yaml  # noqa: E402
from meshway.xds import protos as P  # noqa: E402

Body = dict[str, Any]
CONFIGS = ("baseline", "authz-10", "authz-100", "log-on", "authz-100+log")


def policy_yaml(rules: int) -> str:
    decoys = "".join(f"""
  - to: [{{operation: {{paths: ["/decoy-{i}/*"], methods: [POST]}}}}]
    when: [{{key: "request.headers[x-decoy]", values: ["d{i}"]}}]""" for i in range(rules - 1))
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: bench-rules, namespace: bench}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: ALLOW
  rules:{decoys}
  - from: [{{source: {{principals: [cluster.local/ns/bench/sa/client]}}}}]
"""


TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bench-logs, namespace: bench}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
"""


def configure(mesh: LiveMesh, name: str) -> None:
    """Bring the store to configuration `name`, then wait until the waypoint has ACKed it."""
    before = mesh.cp.cache.get(mesh.node_id).version(P.LISTENER)
    rules = {"authz-10": 10, "authz-100": 100, "authz-100+log": 100}.get(name)
    wanted = {"AuthorizationPolicy": policy_yaml(rules) if rules else None,
              "Telemetry": TELEMETRY if name.endswith("log") or name == "log-on" else None}
    changed = False
    for kind, doc in wanted.items():
        current = mesh.store.list(find_kind(kind), "bench")
        if doc:
            changed |= any(r.action != "unchanged" for r in mesh.store.apply(load_yaml(doc, f"{name}.yaml")))
        elif current:
            mesh.store.delete([(find_kind(kind), "bench", b["metadata"]["name"]) for b in current])
            changed = True
    if not changed:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        snapshot = mesh.cp.cache.get(mesh.node_id)
        acked = mesh.cp.cache.status.get(mesh.node_id, {}).get(P.LISTENER, {}).get("version")
        if snapshot.version(P.LISTENER) != before and acked == snapshot.version(P.LISTENER):
            mesh.wait_serving()
            return
        time.sleep(0.02)
    raise RuntimeError(f"configuration {name} not ACKed by the waypoint within 15 s")


def rbac_allowed(mesh: LiveMesh) -> int:
    """Requests the waypoint's ALLOW RBAC filters admitted (proof the rules were evaluated)."""
    text = admin_get(mesh.waypoint_state.paths.admin, "/stats?filter=rbac.allowed")
    return sum(int(line.rpartition(": ")[2]) for line in text.splitlines() if line.strip())


def bench(mesh: LiveMesh, rounds: int, duration: float, connections: int, tmp: Path) -> Body:
    wrk = shutil.which("wrk")
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)
    url = f"http://127.0.0.1:{mesh.client_port}/"
    runs: list[Body] = []
    order = list(CONFIGS)
    for rnd in range(rounds):
        for name in order:
            configure(mesh, name)
            if wrk:
                run_wrk(wrk, script, url, connections, 1)  # warm-up after the listener drain
            allowed = rbac_allowed(mesh)
            result = run_wrk(wrk, script, url, connections, duration) if wrk else \
                run_python_load(url, connections, duration)
            result.update(config=name, round=rnd + 1, rbac_allowed=rbac_allowed(mesh) - allowed)
            if name.startswith("authz") and result["rbac_allowed"] < result["requests"]:
                raise RuntimeError(f"{name}: the waypoint's RBAC admitted {result['rbac_allowed']} of "
                                   f"{result['requests']} requests: the policy is not in force")
            runs.append(result)
            errors = sum(result["errors"].values())
            print(f"  round {rnd + 1} {name:14}: {result['rps']:8,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
                  f"p99 {result['p99_ms']:.2f} ms, {errors} errors", flush=True)
        order.reverse()  # alternate the order so that drift does not favour one configuration
    configure(mesh, "baseline") if runs[-1]["config"] != "baseline" else None
    base = statistics.median(r["rps"] for r in runs if r["config"] == "baseline")
    base_p99 = statistics.median(r["p99_ms"] for r in runs if r["config"] == "baseline")
    summary = {}
    for name in CONFIGS:
        rs = [r for r in runs if r["config"] == name]
        rps, p99 = statistics.median(r["rps"] for r in rs), statistics.median(r["p99_ms"] for r in rs)
        summary[name] = {"rps": rps, "p50_ms": statistics.median(r["p50_ms"] for r in rs), "p99_ms": p99,
                         "rps_range": [min(r["rps"] for r in rs), max(r["rps"] for r in rs)],
                         "errors": sum(sum(r["errors"].values()) for r in rs),
                         "rps_vs_baseline": rps / base, "p99_vs_baseline": p99 / base_p99}
    return {"client": "wrk" if wrk else "python", "connections": connections, "rounds": rounds,
            "duration_s": duration, "summary": summary, "runs": runs}


def write_markdown(path: Path, report: Body) -> None:
    load = report["load"]
    lines = [f"# L7 policy and access log cost at the waypoint ({report['mode']})", "",
             f"{load['client']}, {load['connections']} connections, {load['rounds']} rounds x "
             f"{load['duration_s']:g} s per configuration, medians; ratios against `baseline` in the same run.", "",
             "| configuration | req/s | p50 ms | p99 ms | req/s vs baseline | p99 vs baseline | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in load["summary"].items():
        lines.append(f"| {name} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                     f"{s['rps_vs_baseline']:.2f}x | {s['p99_vs_baseline']:.2f}x | {s['errors']} |")
    m = report["machine"]
    envoy = m.get("envoy", "?/?").split("/")[1]
    lines += ["", f"Machine: {m.get('cpu_count')} CPUs, Python {m.get('python')}, Envoy {envoy}, "
                  f"{m.get('wrk', 'python load client')}, commit {m.get('meshway_commit')}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one round of short runs")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: %(default)s)")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=None, help="rounds over the configurations (default 5; quick 1)")
    args = ap.parse_args(argv)
    envoy = find_envoy()
    rounds, duration = (1, 2.0) if args.quick else (5, 4.0)
    rounds = args.rounds or rounds
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mw-l7-") as tmp_name:
        tmp = Path(tmp_name)
        mesh = LiveMesh(tmp, envoy)
        try:
            mesh.start()
            load = bench(mesh, rounds, duration, args.connections, tmp)
        finally:
            mesh.close()
    report = {"benchmark": "l7", "mode": "quick" if args.quick else "full",
              "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_s": time.perf_counter() - t0,
              "machine": {**machine_info(), **tool_versions(envoy)}, "load": load}
    stem = "l7-quick" if args.quick else "l7"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / f"{stem}.md", report)
    print(f"wrote {args.out / stem}.json and .md in {report['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
