#!/usr/bin/env python
"""CPU time of `meshway --help` and `meshway get pods`, as a user runs them, with what they import.

Each scenario runs the installed `meshway` console script in a fresh process, N times after one
warm-up; CPU = user + system time of that child (`resource.getrusage(RUSAGE_CHILDREN)` around it),
wall = `time.perf_counter` around it. One extra run under `python -X importtime` gives the modules
it imported and where the import time went. Scenarios:

- `help`: `meshway --help`
- `get-pods-empty`: `meshway get pods` on a bootstrapped store with no pods (the state folder after
  the first command)
- `get-pods-fresh`: `meshway get pods` on a new state folder: it creates and bootstraps the store
  (a new folder per run)
- `get-pods-demo`: `meshway get pods -A` with the bundled demo applied (bookinfo, curl, the
  namespace waypoint)
- `get-pods-no-pyc`: `get-pods-empty` with PYTHONDONTWRITEBYTECODE=1 and no bytecode cache for
  meshway's own modules, so they are compiled from source in every run (a checkout run with that
  variable set, as in this repository's sandbox)
- `kubectl-help` (when `kubectl` is on PATH): `kubectl --help`, the same machine's anchor

Bytecode: every other scenario runs with PYTHONPYCACHEPREFIX in the run's temporary folder (so the
checkout gets no __pycache__) and PYTHONDONTWRITEBYTECODE unset; the warm-up run writes the bytecode,
as the first run after an install does. `--source DIR` imports meshway from DIR (PYTHONPATH), e.g. a
`git worktree` of an older commit, to measure before and after on one machine.

Checks (exit status 1 if one fails): every command exits 0; `get pods` with the demo lists the
demo's pods; `--help` and `get pods` import none of the Envoy protobufs, gRPC or protobuf
(`envoy`, `xds`, `udpa`, `grpc`, `google.protobuf`, `meshway.xds`). The issue's goal (`get pods`
<= 120 ms CPU against kubectl's 40 ms) is reported, not checked: times depend on the machine.

    python benchmarks/cli_startup.py            # full: 20 runs per scenario, about 1 minute
    python benchmarks/cli_startup.py --quick    # smoke run: 3 runs per scenario, about 10 s

Writes benchmarks/results/cli_startup.{json,md} (`--quick`: cli_startup-quick.{json,md}).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEMO = ROOT / "meshway" / "demo"
FORBIDDEN = ("envoy", "xds", "udpa", "grpc", "google.protobuf", "meshway.xds")
GOAL_MS = 120.0
KUBECTL_ANCHOR_MS = 40.0
TIMEOUT_S = 120

Body = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    argv: tuple[str, ...]  # after the program
    program: str = "meshway"
    store: str = "empty"  # the state folder: "empty" (bootstrapped, no pods), "demo", "fresh" (new per run)
    no_pyc: bool = False  # PYTHONDONTWRITEBYTECODE=1 and no bytecode cache: meshway compiled in every run
    expect_stdout: str = ""  # a line that must be in the output


def find_meshway() -> list[str]:
    """The console script next to this Python (what `pip install` puts on PATH), else `python -m meshway`."""
    script = Path(sys.executable).parent / "meshway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "meshway"]


def cpu_run(argv: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(CPU ms, wall ms, result) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    wall = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000
    return cpu, wall, proc


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """`-X importtime` lines -> (module, self µs, cumulative µs, depth), in the order printed."""
    rows = []
    for m in re.finditer(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$", stderr, re.M):
        rows.append((m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2))
    return rows


def forbidden_in(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def import_profile(cmd: list[str], env: dict[str, str]) -> Body:
    """One run under `-X importtime`: what was imported and the costliest imports."""
    argv = [sys.executable, "-X", "importtime", *cmd[1:]] if cmd[0] == sys.executable else \
        [sys.executable, "-X", "importtime", *cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    rows = parse_importtime(proc.stderr)
    modules = [r[0] for r in rows]
    top_level = [r for r in rows if r[3] == 0]
    return {
        "modules": len(modules),
        "meshway_modules": sorted(m for m in modules if m.split(".")[0] == "meshway"),
        "forbidden": forbidden_in(modules),
        "imports_ms": sum(r[2] for r in top_level) / 1000,
        "top_cumulative": [{"module": r[0], "ms": r[2] / 1000} for r in sorted(top_level, key=lambda r: -r[2])[:8]],
        "top_self": [{"module": r[0], "ms": r[1] / 1000} for r in sorted(rows, key=lambda r: -r[1])[:8]],
    }


def argv_for(s: Scenario, meshway: list[str], state: Path, i: int) -> list[str]:
    if s.program != "meshway":
        return [shutil.which(s.program) or s.program, *s.argv]
    folder = state / f"fresh-{s.name}-{i}" if s.store == "fresh" else state / s.store
    return [*meshway, "--state-dir", str(folder), *s.argv]


def env_for(s: Scenario, env: dict[str, str]) -> dict[str, str]:
    if s.no_pyc:
        return {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"} | {"PYTHONDONTWRITEBYTECODE": "1"}
    return env


def measure(todo: list[Scenario], meshway: list[str], state: Path, runs: int, env: dict[str, str]) -> list[Body]:
    """Round-robin over the scenarios (a change in the machine's load hits them all alike); run 0 of
    each is the warm-up (page cache, bytecode)."""
    samples: dict[str, Body] = {s.name: {"cpu": [], "wall": [], "failures": [], "missing": False} for s in todo}
    for i in range(runs + 1):
        for s in todo:
            cpu, wall, proc = cpu_run(argv_for(s, meshway, state, i), env_for(s, env))
            got = samples[s.name]
            if proc.returncode != 0:
                got["failures"].append(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
            got["missing"] |= bool(s.expect_stdout) and s.expect_stdout not in proc.stdout
            if i:
                got["cpu"].append(cpu)
                got["wall"].append(wall)
    out = []
    for s in todo:
        got = samples[s.name]
        r: Body = {
            "name": s.name, "what": s.what, "command": " ".join([s.program, *s.argv]), "runs": runs,
            "cpu_ms": {"median": statistics.median(got["cpu"]), "min": min(got["cpu"]), "max": max(got["cpu"])},
            "wall_ms": {"median": statistics.median(got["wall"]), "min": min(got["wall"])},
            "failures": got["failures"][:3], "expected_output_found": not got["missing"],
        }
        if s.program == "meshway":
            r["imports"] = import_profile(argv_for(s, meshway, state, runs + 1), env_for(s, env))
        out.append(r)
    anchor = next((r["cpu_ms"]["median"] for r in out if r["name"] == "kubectl-help"), None)
    for r in out:
        r["vs_kubectl_help"] = r["cpu_ms"]["median"] / anchor if anchor else None
    return out


def apply_demo(meshway: list[str], state: Path, env: dict[str, str]) -> None:
    for store in ("empty", "demo"):  # the first command creates and bootstraps the store
        subprocess.run([*meshway, "--state-dir", str(state / store), "get", "ns"], check=True, capture_output=True,
                       text=True, env=env, timeout=TIMEOUT_S)
    subprocess.run([*meshway, "--state-dir", str(state / "demo"), "apply", "-f", str(DEMO)], check=True,
                   capture_output=True, text=True, env=env, timeout=TIMEOUT_S)


def scenarios() -> list[Scenario]:
    out = [
        Scenario("help", "`meshway --help`", ("--help",), expect_stdout="Commands:"),
        Scenario("get-pods-empty", "`meshway get pods`, bootstrapped store, no pods", ("get", "pods")),
        Scenario("get-pods-demo", "`meshway get pods -A`, the bundled demo applied", ("get", "pods", "-A"),
                 store="demo", expect_stdout="productpage-v1"),
        Scenario("get-pods-fresh", "`meshway get pods`, new state folder (creates and bootstraps the store)",
                 ("get", "pods"), store="fresh"),
        Scenario("get-pods-no-pyc", "`meshway get pods`, no pods, meshway compiled from source each run "
                 "(PYTHONDONTWRITEBYTECODE=1)", ("get", "pods"), no_pyc=True),
    ]
    if shutil.which("kubectl"):
        out.append(Scenario("kubectl-help", "`kubectl --help` (anchor on this machine)", ("--help",),
                            program="kubectl"))
    return out


def check(results: list[Body]) -> Body:
    by = {r["name"]: r for r in results}
    meshway = [r for r in results if "imports" in r]
    return {
        "all_exit_0": all(not r["failures"] for r in results),
        "expected_output": all(r["expected_output_found"] for r in results),
        "no_envoy_grpc_protobuf_imports": all(not r["imports"]["forbidden"] for r in meshway),
        "get_pods_imports_no_istio_model": all("meshway.model.istio" not in r["imports"]["meshway_modules"]
                                               for r in meshway if r["name"].startswith("get-pods")
                                               and r["name"] != "get-pods-fresh"),
        "goal_get_pods_ms": GOAL_MS,
        "goal_met_get_pods": all(by[n]["cpu_ms"]["median"] <= GOAL_MS for n in ("get-pods-empty", "get-pods-demo")
                                 if n in by),
    }


def describe_source(env: dict[str, str]) -> Body:
    """Where the children import meshway from, and that folder's git commit."""
    path = subprocess.run([sys.executable, "-c", "import meshway; print(meshway.__file__)"], capture_output=True,
                          text=True, env=env, timeout=TIMEOUT_S, cwd="/").stdout.strip()  # not the cwd's meshway
    folder = Path(path).parent.parent if path else ROOT
    commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "meshway"], capture_output=True,
                           text=True, timeout=30).stdout.strip()
    return {"package": path, "commit": commit or None, "meshway_changed_since_commit": bool(dirty)}


def machine_info() -> Body:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0]}


def write_markdown(path: Path, report: Body) -> None:
    changed = " (with uncommitted changes)" if report["source"]["meshway_changed_since_commit"] else ""
    lines = [f"# CLI start-up ({report['mode']})", "",
             f"{report['started']}, Python {report['machine']['python']}, {report['machine']['cpus']} CPUs, "
             f"load average {report['machine']['load_avg_1m']:.2f} at the start. CPU = user + system time of the "
             f"process; {report['runs']} runs per row after one warm-up, the rows taking turns. Imports from one "
             f"extra run under `python -X importtime`. meshway from commit {report['source']['commit']}{changed}; "
             "bytecode cached (written by the warm-up run) except in the no-pyc row.", "",
             "| scenario | CPU median (ms) | CPU min (ms) | / kubectl --help | wall median (ms) | modules | "
             "import time (ms) | Envoy/gRPC/protobuf imported |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["scenarios"]:
        imp = r.get("imports")
        ratio = f"{r['vs_kubectl_help']:.1f}x" if r.get("vs_kubectl_help") else "-"
        cells = [r["what"], f"{r['cpu_ms']['median']:.0f}", f"{r['cpu_ms']['min']:.0f}", ratio,
                 f"{r['wall_ms']['median']:.0f}"]
        if imp:
            bad = ", ".join(imp["forbidden"][:4]) + (" …" if len(imp["forbidden"]) > 4 else "")
            cells += [str(imp["modules"]), f"{imp['imports_ms']:.0f}", bad or "no"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    c = report["checks"]
    lines += ["", f"Goal (issue 10): `meshway get pods` <= {GOAL_MS:.0f} ms CPU (kubectl: {KUBECTL_ANCHOR_MS:.0f} ms): "
              f"**{'met' if c['goal_met_get_pods'] else 'not met'}**.", "",
              "Checks: " + ", ".join(f"{k} = {v}" for k, v in c.items() if isinstance(v, bool)) + ".", "",
              "## Costliest imports (cumulative, top level)", ""]
    for r in report["scenarios"]:
        if "imports" in r:
            top = ", ".join(f"{t['module']} {t['ms']:.0f}" for t in r["imports"]["top_cumulative"][:5])
            lines.append(f"- {r['name']}: {top}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 runs per scenario instead of 20")
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario (after one warm-up)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: %(default)s)")
    ap.add_argument("--source", type=Path, default=None,
                    help="import meshway from this folder (PYTHONPATH), e.g. a git worktree of another commit")
    args = ap.parse_args(argv)
    runs = args.runs or (3 if args.quick else 20)

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    meshway = find_meshway()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MESHWAY_STATE_DIR", "MESHWAY_DEBUG", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["COLUMNS"] = "100"
    if args.source:
        env["PYTHONPATH"] = str(args.source.resolve())
    with tempfile.TemporaryDirectory(prefix="meshway-cli-bench-") as tmp:
        state = Path(tmp)
        env["PYTHONPYCACHEPREFIX"] = str(state / "pycache")
        source = describe_source(env)
        apply_demo(meshway, state, env)
        results = measure(scenarios(), meshway, state, runs, env)
    report = {
        "benchmark": "cli_startup", "mode": "quick" if args.quick else "full",
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_s": time.perf_counter() - t0,
        "machine": machine_info(), "command": meshway, "runs": runs, "source": source,
        "bytecode": "cached in a temporary PYTHONPYCACHEPREFIX, written by the warm-up run (not for get-pods-no-pyc)",
        "anchors": {"kubectl_get_pods_ms": KUBECTL_ANCHOR_MS, "goal_get_pods_ms": GOAL_MS},
        "scenarios": results, "checks": check(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cli_startup-quick" if args.quick else "cli_startup"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / f"{stem}.md", report)
    for r in results:
        print(f"{r['name']:16} CPU median {r['cpu_ms']['median']:6.0f} ms  min {r['cpu_ms']['min']:6.0f} ms"
              + (f"  modules {r['imports']['modules']}, forbidden {len(r['imports']['forbidden'])}"
                 if "imports" in r else ""))
    print(f"wrote {args.out / stem}.json and .md")
    c = report["checks"]
    ok = c["all_exit_0"] and c["expected_output"] and c["no_envoy_grpc_protobuf_imports"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
