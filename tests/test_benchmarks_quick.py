"""Benchmarks that cannot rot: every `benchmarks/*.py` with a `--quick` mode runs here as a smoke test,
in a subprocess, writing to a temporary folder (never over the committed results). It must exit 0
(its own checks hold: paths verified, counters agree, ...) and write `<name>-quick.json` and
`<name>-quick.md` with the keys every benchmark writes. Times are not checked.

A benchmark that needs what the cluster needs (root, network namespaces, iptables) exits 2 with the
reason when the machine lacks it; that follows the end-to-end rule: a failure when
MESHWAY_REQUIRE_E2E=1 (CI), a skip otherwise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshway.runtime.netns import detect_capability

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
TIMEOUT_S = 300  # a hung benchmark fails here; a quick run takes tens of seconds
TIMEOUTS_S = {"cluster": 480}  # two clusters, one after the other: `meshway up` and `meshway up --kubernetes`
COMMON_KEYS = ("benchmark", "mode", "started", "duration_s", "machine")
EXTRA_KEYS = {  # what each known benchmark reports besides; a new one needs only COMMON_KEYS
    "selection": ("measurements", "checks"),
    "dataplane": ("translation", "bytes", "ack", "load"),
    "l7": ("load",),
    "cluster": ("run_modes", "modes", "startup", "setup", "load", "teardown", "comparison"),
    "cli_startup": ("scenarios", "checks"),
    "envoy_stats": ("sizes",),
    "scale": ("ack", "translation", "proxies", "memory", "get_pods", "goals"),
}


def quick_benchmarks() -> list[Path]:
    """Every benchmark script that has a --quick mode (so a new one is covered without listing it)."""
    return sorted(p for p in BENCHMARKS.glob("*.py") if '"--quick"' in p.read_text())


def results_state(name: str) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in RESULTS.glob(f"{name}*")}


def test_the_benchmarks_are_found() -> None:
    names = {p.stem for p in quick_benchmarks()}
    assert {"selection", "dataplane", "l7", "cluster", "cli_startup"} <= names


@pytest.mark.parametrize("script", quick_benchmarks(), ids=lambda p: p.stem)
def test_quick_run(script: Path, tmp_path: Path) -> None:
    name = script.stem
    out = tmp_path / "results"
    committed = results_state(name)
    env = {k: v for k, v in os.environ.items() if k != "MESHWAY_STATE_DIR"}
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True,
                              text=True, env=env, timeout=TIMEOUTS_S.get(name, TIMEOUT_S), cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name} --quick did not finish in {TIMEOUTS_S.get(name, TIMEOUT_S)} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    took = time.monotonic() - started
    tail = f"\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    reason = detect_capability()
    if proc.returncode == 2 and reason:
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(f"{name} --quick needs root, network namespaces and iptables: {reason}{tail}")
        pytest.skip(f"{name}: {reason}")
    assert proc.returncode == 0, f"{name} --quick exited {proc.returncode} after {took:.0f} s{tail}"
    report = json.loads((out / f"{name}-quick.json").read_text())
    assert (out / f"{name}-quick.md").read_text().strip()
    missing = [k for k in (*COMMON_KEYS, *EXTRA_KEYS.get(name, ())) if k not in report]
    assert not missing, f"{name}-quick.json lacks {missing} (has {sorted(report)})"
    assert report["benchmark"] == name and report["mode"] == "quick"
    if name == "cluster" and os.environ.get("MESHWAY_REQUIRE_E2E") == "1":  # CI measures both run modes
        assert report["run_modes"] == ["embedded", "kubernetes"] and report["comparison"], report.get("skipped_modes")
    assert results_state(name) == committed, "a quick run wrote into benchmarks/results/"
    print(f"{name} --quick: {took:.0f} s")
