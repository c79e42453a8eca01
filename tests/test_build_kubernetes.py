"""scripts/build-kubernetes and the pinned wrapper modules under tools/, without Go or a build.

The build itself is measured by hand (README "Kubernetes mode (in progress)"); these tests check the
parts that need no toolchain: the pins are consistent, the cache folder is keyed by them, and the
script's refusals are one clear line.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
SCRIPT = ROOT / "scripts" / "build-kubernetes"

# kubernetes-backend.md §1.2: the 33 staging modules of 1.36/1.37.
STAGING = set("""api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
sample-apiserver sample-cli-plugin sample-controller streaming""".split())


def requires(gomod: Path) -> dict[str, str]:
    """module -> version of the require lines (block or single) of a go.mod."""
    out = {}
    for line in gomod.read_text().splitlines():
        line = line.split("//")[0].strip()
        m = re.fullmatch(r"(?:require\s+)?([\w.\-/]+\.[\w.\-/]+)\s+(v\S+)", line)
        if m and "=>" not in line:
            out[m.group(1)] = m.group(2)
    return out


def replaces(gomod: Path) -> dict[str, str]:
    return dict(re.findall(r"^\s*(k8s\.io/[\w-]+) => k8s\.io/[\w-]+ (v\S+)\s*$", gomod.read_text(), re.M))


def test_every_staging_module_is_replaced_at_the_kubernetes_patch():
    k8s = requires(TOOLS / "k8s" / "go.mod")["k8s.io/kubernetes"]
    major, minor, patch = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", k8s).groups()
    got = replaces(TOOLS / "k8s" / "go.mod")
    assert set(got) == {f"k8s.io/{m}" for m in STAGING}
    assert set(got.values()) == {f"v0.{minor}.{patch}"}


@pytest.mark.parametrize("wrapper,module,prefix", [
    ("k8s", "k8s.io/kubernetes", "v1.37."),
    ("etcd", "go.etcd.io/etcd/server/v3", "v3.6."),
    ("etcd", "go.etcd.io/etcd/etcdctl/v3", "v3.6."),
    ("istioctl", "istio.io/istio", "v0.0.0-"),
])
def test_pins(wrapper, module, prefix):
    assert requires(TOOLS / wrapper / "go.mod")[module].startswith(prefix)
    assert (TOOLS / wrapper / "go.sum").read_text().strip()


def test_istio_is_never_in_the_kubernetes_module():
    assert not any(m.startswith("istio.io/") for m in requires(TOOLS / "k8s" / "go.mod"))
    assert not re.search(r"^\s*replace\b", (TOOLS / "istioctl" / "go.mod").read_text(), re.M)


def run(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MESHWAY_K8S_CACHE"}
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


def test_bin_dir_is_keyed_by_the_pins(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(TOOLS, copy / "tools")
    (copy / "scripts").mkdir()
    shutil.copy(SCRIPT, copy / "scripts")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = run(copy / "scripts" / SCRIPT.name, "--print-bin-dir", env=env).stdout.strip()
    assert re.fullmatch(re.escape(str(tmp_path / "cache" / "meshway")) + r"/k8s-[0-9a-f]{16}/bin", first)
    assert run(copy / "scripts" / SCRIPT.name, "--print-bin-dir", env=env).stdout.strip() == first
    with open(copy / "tools" / "etcd" / "go.sum", "a") as f:
        f.write("example.com/x v1.0.0 h1:AAAA=\n")
    assert run(copy / "scripts" / SCRIPT.name, "--print-bin-dir", env=env).stdout.strip() != first


def test_cache_folder_override():
    out = run(SCRIPT, "--print-bin-dir", env={"MESHWAY_K8S_CACHE": "/x/k8s"})
    assert out.stdout == "/x/k8s/bin\n"


@pytest.mark.parametrize("args,env,message", [
    (("kube-proxy",), {}, "unknown binary 'kube-proxy'"),
    (("--fast",), {}, "unknown option --fast"),
    ((), {"PATH": "without go"}, "Go not found on PATH; install Go 1.26 or newer"),
])
def test_refusals_are_one_line(tmp_path, args, env, message):
    bash = shutil.which("bash")
    if env.get("PATH") == "without go":  # the script's other tools, but no go
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("dirname", "sha256sum", "cut", "cat", "sed", "grep", "awk"):
            (bin_dir / tool).symlink_to(shutil.which(tool))
        env = {"PATH": str(bin_dir)}
    out = subprocess.run([bash, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                         env={"HOME": str(tmp_path), "MESHWAY_K8S_CACHE": str(tmp_path / "c"),
                              "PATH": os.environ["PATH"], **env})
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and message in out.stderr
