"""What `meshway up` runs: the manifests (or the bundled demo), the control plane in the background
(with the network-namespace cluster where this machine allows it), then the seed scenario's
commands, each printed as the command a user would type followed by its real output."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import click

from ..model import find_kind
from .main import Ctx, cli

DEMO = Path(__file__).resolve().parent.parent / "demo"


def _run(c: Ctx, args: list[str]) -> None:
    click.secho(f"$ meshway {' '.join(args)}", bold=True)
    state = ["--state-dir", str(c.store.state_dir)]
    try:
        code = cli.main(state + args, prog_name="meshway", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    if code:  # a step that exits non-zero (its error already printed) stops the walk-through
        raise click.exceptions.Exit(code)
    click.echo()


def run_kube_demo(kubeconfig: Path, files: tuple[str, ...]) -> None:
    """The walk-through's steps (or `files`) through a Kubernetes API (`meshway up --kubernetes`)."""
    def step(args: list[str]) -> None:
        click.secho(f"$ meshway {' '.join(args)}", bold=True)
        try:
            code = cli.main(["--kubeconfig", str(kubeconfig), *args], prog_name="meshway", standalone_mode=False)
        except SystemExit as exc:
            code = exc.code
        if code:
            raise click.exceptions.Exit(code)
        click.echo()
    if files:
        step(["apply", *[arg for f in files for arg in ("-f", f)]])
        return
    step(["apply", "-f", str(DEMO / "bookinfo.yaml"), "-f", str(DEMO / "bookinfo-client.yaml")])
    step(["label", "namespace", "default", "istio.io/dataplane-mode=ambient", "--overwrite"])
    step(["waypoint", "apply", "-n", "default", "--enroll-namespace", "--overwrite"])
    step(["apply", "-f", str(DEMO / "reviews-traffic.yaml")])


def _run_process(c: Ctx, args: list[str]) -> None:
    """A step that replaces its process (`exec`): run it as a child."""
    click.secho(f"$ meshway {' '.join(args)}", bold=True)
    from ..runtime.daemon import python_module_args

    out = subprocess.run([*python_module_args("meshway"), "--state-dir", str(c.store.state_dir), *args],
                         capture_output=True, text=True, timeout=60)
    click.echo(out.stdout + out.stderr)


def wait_for_pods(c: Ctx, timeout: float = 120.0) -> None:
    pod_kind = find_kind("pod")
    deadline, shown = time.monotonic() + timeout, None
    while True:
        pods = c.store.list(pod_kind, None)
        ready = sum(any(x.get("type") == "Ready" and x.get("status") == "True"
                        for x in (p.get("status") or {}).get("conditions") or []) for p in pods)
        if (ready, len(pods)) != shown:
            click.echo(f"  pods ready: {ready}/{len(pods)}")
            shown = (ready, len(pods))
        if ready == len(pods):
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"only {ready}/{len(pods)} pods became ready in {timeout:.0f}s; "
                                       "see `meshway status` and `meshway logs POD`")
        time.sleep(0.5)


def find_metrics_url(c: Ctx, requested: str, timeout: float = 5.0) -> str:
    """The endpoint the control plane bound (it writes run/metrics-address once listening)."""
    path = c.store.state_dir / "run" / "metrics-address"
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not path.exists():
        return f"none (could not listen on {requested}; see run/controlplane.log)"
    return f"http://{path.read_text().strip()}/metrics"


def choose_mode(requested: bool | None, reason: str | None) -> tuple[bool, str]:
    """(cluster?, the line that says which mode runs and why). `requested`: True --cluster, False
    --loopback, None automatic. A required cluster this machine cannot run is an error."""
    if requested is False:
        return False, "loopback mode (--loopback): waypoints run on the host, application pods do not"
    if reason is None:
        return True, "cluster in network namespaces"
    if requested:
        raise click.ClickException(f"the cluster cannot run here: {reason} (root on Linux with ip, iptables and "
                                   "sysctl; ./scripts/up installs them; --loopback runs without)")
    return False, (f"LOOPBACK mode, not the cluster: {reason}. Waypoints run on the host; application pods do "
                   "not run, so `meshway exec` has nothing to run in. For the cluster: sudo ./scripts/up")


def report_running(c: Ctx, files: tuple[str, ...], nodes: int | None, pid: int) -> None:
    """`up` on a running mesh starts nothing a second time: it says so and applies the -f manifests
    (apply is idempotent); the control plane picks them up like any other change."""
    click.echo(f"meshway: the mesh is already running (control plane pid {pid}, store "
               f"{c.store.state_dir / 'store.db'}); nothing started. `meshway status` shows it, `meshway down` "
               "stops it.")
    if nodes and nodes != c.store.node_count():
        click.echo(f"meshway: --nodes {nodes} ignored: the running cluster has {c.store.node_count()} "
                   "(`meshway down` first to change it)", err=True)
    from ..runtime.daemon import node_agent_pid, start_node_agents
    from ..runtime.netns import state_path

    if state_path(c.store.state_dir).exists():  # the cluster: a node agent that died is started again
        missing = [n for n in range(1, c.store.node_count() + 1) if node_agent_pid(c.store.state_dir, f"node-{n}") is None]
        for node, pid in start_node_agents(c.store.state_dir).items():
            if int(node.rsplit("-", 1)[1]) in missing:
                click.echo(f"meshway: the node agent of {node} was not running: started (pid {pid}); it adopts "
                           "the node's pods and proxies")
    click.echo()
    if files:
        _run(c, ["apply", *[arg for f in files for arg in ("-f", f)]])


def run_walkthrough(c: Ctx, files: tuple[str, ...], nodes: int | None, metrics_addr: str | None = None,
                    requested: bool | None = None) -> None:
    from ..runtime.daemon import controlplane_pid, start_controlplane
    from ..runtime.netns import detect_capability, recorded_node_count, state_path

    running = controlplane_pid(c.store.state_dir)
    if running:
        report_running(c, files, nodes, running)
        return
    recorded = recorded_node_count(c.store.state_dir)
    if recorded and nodes and nodes != recorded:  # the pods still run there: adopted, not rebuilt
        raise click.ClickException(f"the cluster recorded in {c.store.state_dir} has {recorded} nodes, not {nodes}: "
                                   "`meshway down` first to change it (or `meshway up` without --nodes)")
    cluster, mode = choose_mode(requested, None if requested is False else detect_capability())
    if cluster:
        if nodes or not state_path(c.store.state_dir).exists():  # a recorded cluster keeps its nodes (adopted)
            c.store.set_nodes(nodes or 2)
        mode = f"cluster of {c.store.node_count()} nodes in network namespaces"
    else:
        click.echo(f"meshway: {mode}", err=True)
    click.echo(f"meshway: store {c.store.state_dir / 'store.db'}; {mode}\n")
    if files:
        _run(c, ["apply", *[arg for f in files for arg in ("-f", f)]])
    else:
        _run(c, ["apply", "-f", str(DEMO / "bookinfo.yaml"), "-f", str(DEMO / "bookinfo-client.yaml")])
        _run(c, ["label", "namespace", "default", "istio.io/dataplane-mode=ambient", "--overwrite"])
        _run(c, ["waypoint", "apply", "-n", "default", "--enroll-namespace", "--overwrite"])
        _run(c, ["apply", "-f", str(DEMO / "reviews-traffic.yaml")])
        _run(c, ["explain", "service/reviews"])
    pid = start_controlplane(c.store.state_dir, cluster=cluster, metrics_addr=metrics_addr)
    click.echo(f"control plane running in the background (pid {pid}); `meshway down` stops everything")
    if cluster:
        from ..runtime.daemon import start_node_agents

        agents = start_node_agents(c.store.state_dir)  # started with the control plane: their pids
        click.echo("node agents (pods, waypoints, node proxies): " + ", ".join(
            f"{node} (pid {agent})" for node, agent in agents.items()))
    if metrics_addr:
        click.echo(f"Prometheus metrics (control plane and every proxy): {find_metrics_url(c, metrics_addr)}")
    click.echo()
    if cluster:
        wait_for_pods(c)
        click.echo()
    _run(c, ["waypoint", "status", "-A", "--waypoint-timeout", "60s"])
    if files:
        _run(c, ["status"])
        return
    _run(c, ["get", "pods", "-o", "wide"])
    _run(c, ["explain", "service/reviews"])
    if cluster:
        _run_process(c, ["exec", "deploy/curl", "--", "curl", "-s", "http://reviews:9080/reviews/0"])
        time.sleep(1.1)  # the proxies merge their latency histograms once a second
        _run(c, ["metrics", "deploy/waypoint"])
    _run(c, ["proxy-status"])
    _run(c, ["proxy-config", "listener", "deploy/waypoint", "--waypoint"])
    _run(c, ["proxy-config", "endpoint", "deploy/waypoint"])
    _run(c, ["analyze", "config-distribution", "--namespaces", "2", "--deployments", "25", "--pods", "10",
             "--waypoint-replicas", "2"])
    click.echo("Next: `meshway exec deploy/curl -- curl -s http://productpage:9080/productpage`,\n"
               "`meshway port-forward svc/productpage 9080:9080` (then http://127.0.0.1:9080/productpage),\n"
               "`meshway proxy-config route deploy/waypoint -o yaml`, `meshway status`, `meshway logs deploy/reviews-v2`,\n"
               "`meshway label svc reviews istio.io/use-waypoint=none` (opt out), `meshway down` to stop everything.")
