"""`meshway up --kubernetes`: a Kubernetes cluster on this machine that outlives the command — the
harness's etcd, kube-apiserver, kube-controller-manager and kube-scheduler, meshway's control plane
against it (`meshway controlplane --kubeconfig … --xds-addr`), one node agent per node (`meshway
node`, when this build has it) — with the CRDs installed and the bundled demo applied through the
API; `meshway down` stops it all, newest first.

Everything lives in one folder (`<state>/kubernetes`): the harness's PKI, etcd data and logs, the
admin kubeconfig, `ports.json` (a restart reuses the ports, so the kubeconfig stays valid) and
`run/<name>.pid` for each process (its pid and its command line, so a reused pid is never signalled).
The plan (`plan_processes`) is pure; `LocalCluster` is the thin shell."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .harness import Harness, HarnessConfig, Ports, find_free_ports, find_missing_binaries

Echo = Callable[[str], None]
ROOT = Path(__file__).resolve().parents[2]
NODES_READY_TIMEOUT = 60.0
STOP_GRACE = 15.0


class LocalClusterError(Exception):
    pass


@dataclass(frozen=True)
class Process:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def find_bin_dir(build: bool, echo: Echo) -> Path:
    """The Kubernetes binaries: $MESHWAY_K8S_BIN, else scripts/build-kubernetes of this checkout
    (it builds what is missing when `build`, with its progress on stderr)."""
    env = os.environ.get("MESHWAY_K8S_BIN")
    if env:
        return Path(env)
    script = ROOT / "scripts" / "build-kubernetes"
    if not script.exists():
        raise LocalClusterError("the Kubernetes binaries are built by scripts/build-kubernetes of a meshway "
                                "checkout; set MESHWAY_K8S_BIN to a folder holding them")
    if build:
        echo("building or reusing the Kubernetes binaries (scripts/build-kubernetes; a cold build takes 10-25 min)")
    out = subprocess.run([str(script)] + ([] if build else ["--print-bin-dir"]), stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise LocalClusterError(f"scripts/build-kubernetes failed (exit {out.returncode}); see its messages above")
    return Path(out.stdout.strip())


def plan_processes(state: Path, kubeconfig: Path, nodes: int, node_agent: bool, xds_port: int,
                   metrics_port: int) -> list[Process]:
    """meshway's own processes, in start order (the harness's come before them). The control plane
    serves xDS over TCP + mTLS on 127.0.0.1:`xds_port` (istiod's 15012, on a free port so that two
    clusters on one machine never collide); the node agents send waypoint pods there (`--xds-address`,
    in place of their CA_ADDR, which this host cannot resolve) and check it against the mesh root the
    control plane publishes in each namespace (the `istio-ca-root-cert` ConfigMap). Its monitoring
    port (istiod's 15014) is 127.0.0.1:`metrics_port`, named on its Lease (`meshway metrics`) and
    given to the node agents (`--monitoring-address`: the istiod pod relays its 15014 there)."""
    python = (sys.executable, "-P", "-m", "meshway")
    out = [Process("controlplane", (*python, "controlplane", "--kubeconfig", str(kubeconfig), "--xds-addr",
                                    f"127.0.0.1:{xds_port}", "--metrics-addr", f"127.0.0.1:{metrics_port}", "-v"),
                   (("MESHWAY_STATE_DIR", str(state / "controlplane")),))]
    if node_agent:
        out += [Process(f"node-{i}", (*python, "node", "--kubeconfig", str(kubeconfig), "--name", f"node-{i}",
                                      "--port", "0", "--xds-address", f"127.0.0.1:{xds_port}",
                                      "--monitoring-address", f"127.0.0.1:{metrics_port}",
                                      "--network-dir", str(network_dir(state)), "--nodes", str(nodes)),
                        (("MESHWAY_STATE_DIR", str(state / f"node-{i}")),)) for i in range(1, nodes + 1)]
    return out


def network_dir(state: Path) -> Path:
    """The state of the machines' network (`meshway.runtime.netns`: a fabric and one namespace per
    node), made by `up` before the node agents start and shared by them; `down` removes it."""
    return Path(state) / "network"


def detect_node_agent() -> bool:
    """Whether this build has `meshway node` (the node agent of issue "Kubernetes nodes")."""
    from ..cli.main import LAZY_COMMANDS, cli

    return "node" in LAZY_COMMANDS or "node" in cli.commands


class LocalCluster:
    def __init__(self, state: Path) -> None:
        self.state = Path(state)
        self.run = self.state / "run"

    # -- pid files ----------------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def _record(self, name: str, pid: int) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        self._pid_file(name).write_text(json.dumps({"pid": pid, "cmdline": _cmdline(pid)}))

    def live(self) -> dict[str, int]:
        """{name: pid} of the recorded processes still running (the same program, not a reused pid)."""
        out = {}
        for path in sorted(self.run.glob("*.pid")) if self.run.exists() else ():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _cmdline(record["pid"]) == record.get("cmdline") and record.get("cmdline"):
                out[path.stem] = record["pid"]
        return out

    @property
    def kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    # -- up -----------------------------------------------------------------------------------------
    def up(self, nodes: int, echo: Echo, apply_demo: Callable[[Path], None] | None = None, build: bool = True) -> None:
        if self.live().get("kube-apiserver"):
            echo(f"the Kubernetes cluster in {self.state} is running")
        else:
            self._start_harness(find_bin_dir(build, echo), echo)
            from .install import Installer, load_crd_documents, plan_install
            from .client import KubeClient

            client = KubeClient.connect(str(self.kubeconfig))
            try:
                Installer(client, lambda line: None).install(plan_install(load_crd_documents()))
            finally:
                client.close()
            echo("installed the Gateway API and Istio CRDs, the istio-waypoint GatewayClass and meshway's RBAC")
        has_agent = detect_node_agent()
        if has_agent:
            from ..runtime.netns import ClusterNet

            ClusterNet(network_dir(self.state), nodes).up()
        for proc in plan_processes(self.state, self.kubeconfig, nodes, has_agent, self._port("xds-port"),
                                   self._port("metrics-port")):
            if proc.name in self.live():
                continue
            self._start(proc)
            echo(f"started {proc.name} (log {self.state / 'logs' / (proc.name + '.log')})")
        if not has_agent:
            echo("no node agent in this build (`meshway node`): pods are scheduled nowhere and stay Pending")
        else:
            self._wait_nodes_ready(nodes, echo)
        if apply_demo is not None:
            apply_demo(self.kubeconfig)
        echo(f"export KUBECONFIG={self.kubeconfig}")

    def _wait_nodes_ready(self, nodes: int, echo: Echo, timeout: float = NODES_READY_TIMEOUT) -> None:
        """Until every node is Ready, so that the scheduler spreads the demo's pods over all of them."""
        from .client import ApiError, KubeClient

        client = KubeClient.connect(str(self.kubeconfig))
        deadline, ready = time.monotonic() + timeout, []
        try:
            while True:
                try:
                    items = next(iter(client.list("/api/v1/nodes")), {}).get("items") or []
                except ApiError:
                    items = []
                ready = sorted(n["metadata"]["name"] for n in items if any(
                    c.get("type") == "Ready" and c.get("status") == "True" for c in (n.get("status") or {}).get(
                        "conditions") or []))
                if len(ready) >= nodes:
                    break
                if time.monotonic() > deadline:
                    raise LocalClusterError(f"{len(ready)} of {nodes} nodes Ready after {timeout:g}s "
                                            f"(see {self.state / 'logs'}/node-*.log)")
                time.sleep(0.2)
        finally:
            client.close()
        echo(f"nodes Ready: {', '.join(ready)}")

    def _port(self, name: str) -> int:
        """A free port chosen once for this cluster (`xds-port`, `metrics-port`): restarts reuse it."""
        path = self.state / name
        if not path.exists():
            path.write_text(f"{find_free_ports(1)[0]}\n")
        return int(path.read_text())

    def _start_harness(self, bin_dir: Path, echo: Echo) -> None:
        missing = find_missing_binaries(bin_dir)
        if missing:
            raise LocalClusterError(f"missing in {bin_dir}: {', '.join(missing)} (run scripts/build-kubernetes)")
        ports_file = self.state / "ports.json"
        ports = Ports(**json.loads(ports_file.read_text())) if ports_file.exists() else Ports(*find_free_ports(5))
        self.state.mkdir(parents=True, exist_ok=True)
        ports_file.write_text(json.dumps(asdict(ports)))
        started = time.monotonic()
        harness = Harness(HarnessConfig(state=self.state, bin_dir=bin_dir, ports=ports))
        harness.start()
        for name, proc in harness.procs:
            self._record(name, proc.pid)
        echo(f"started etcd, kube-apiserver, kube-controller-manager, kube-scheduler in "
             f"{time.monotonic() - started:.1f}s (API https://127.0.0.1:{ports.apiserver})")

    def _start(self, proc: Process) -> None:
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for key, value in proc.env:
            Path(value).mkdir(parents=True, exist_ok=True) if key == "MESHWAY_STATE_DIR" else None
        with open(logs / f"{proc.name}.log", "ab") as log:
            child = subprocess.Popen(list(proc.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True, cwd=self.state, env={**os.environ, **dict(proc.env)})
        time.sleep(0.3)
        if child.poll() is not None:
            raise LocalClusterError(f"{proc.name} exited with {child.returncode}; see {logs / (proc.name + '.log')}")
        self._record(proc.name, child.pid)

    # -- down -----------------------------------------------------------------------------------------
    def down(self, echo: Echo) -> list[str]:
        """SIGTERM every recorded process, meshway's first and etcd last; SIGKILL after STOP_GRACE."""
        order = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "controlplane"]
        live = self.live()
        names = sorted(live, key=lambda n: order.index(n) if n in order else len(order), reverse=True)
        for name in names:
            _stop(live[name])
            self._pid_file(name).unlink(missing_ok=True)
            echo(f"stopped {name}")
        from ..runtime.netns import down as network_down

        network_down(network_dir(self.state))  # what a node agent killed -9 left, and the network itself
        return names


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _stop(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        if not _cmdline(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
