"""Shared by the tests that run the real Kubernetes binaries (built by scripts/build-kubernetes;
scripts/test builds them first when Go is present). When they are missing the test fails under
MESHWAY_REQUIRE_E2E=1 (CI) and is skipped, with the reason, otherwise."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from meshway.kube.harness import find_missing_binaries
from meshway.kube.localcluster import find_bin_dir as find_k8s_bin_dir



def find_bin_dir() -> Path:
    """$MESHWAY_K8S_BIN, else where scripts/build-kubernetes puts them (nothing is built here)."""
    return find_k8s_bin_dir(build=False, echo=lambda line: None)


def require_binaries(*extra: str) -> Path:
    """The bin folder holding etcd, the control-plane binaries, kubectl and `extra` (e.g. istioctl)."""
    bin_dir = find_bin_dir()
    missing = find_missing_binaries(bin_dir) + [b for b in ("kubectl", *extra) if not (bin_dir / b).exists()]
    if missing:
        reason = (f"Kubernetes binaries not built ({', '.join(missing)} missing in {bin_dir}); "
                  "run scripts/build-kubernetes")
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return bin_dir


def require_kubectl() -> Path:
    """The kubectl binary alone (tests that need no cluster), skipped or failed as require_binaries."""
    kubectl = find_bin_dir() / "kubectl"
    if not kubectl.exists():
        reason = f"kubectl not built ({kubectl} missing); run scripts/build-kubernetes"
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return kubectl


def run(bin_dir: Path, tool: str, kubeconfig: Path, *args: str, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / tool), f"--kubeconfig={kubeconfig}", *args],
                          capture_output=True, text=True, check=check, timeout=timeout)


def kubectl(bin_dir: Path, kubeconfig: Path, *args: str) -> str:
    return run(bin_dir, "kubectl", kubeconfig, *args).stdout


def wait_for(what: str, check, timeout: float = 90.0, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
