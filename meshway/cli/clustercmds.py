"""Commands for the local cluster: `exec`, `logs`, `status`, `port-forward`."""
from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from pathlib import Path

import click

from .. import labels as L
from ..model import find_kind
from ..runtime.netns import cluster_id, node_netns_name, pod_netns_name
from . import printers as P
from .main import Ctx, cli, namespace_option, pass_ctx

POD = find_kind("pod")


def find_pod(c: Ctx, target: str, namespace: str) -> dict:
    """`POD`, `pod/POD` or `deploy/NAME` (its first ready pod, else its first pod)."""
    kind, _, name = target.rpartition("/")
    if kind in ("deploy", "deployment", "deployments"):
        dep = c.store.get(find_kind("deploy"), namespace, name)
        pods = [p for p in c.store.list(POD, namespace) if any(
            r.get("name") == name for r in p["metadata"].get("ownerReferences") or [])]
        if not pods:
            raise LookupError(f"deployment {namespace}/{dep['metadata']['name']} has no pods")
        pods.sort(key=lambda p: (not _ready(p), p["metadata"]["name"]))
        return pods[0]
    return c.store.get(POD, namespace, name)


def _ready(pod: dict) -> bool:
    return any(x.get("type") == "Ready" and x.get("status") == "True"
               for x in (pod.get("status") or {}).get("conditions") or [])


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@namespace_option
@pass_ctx
def exec_(c: Ctx, target: str, command: tuple[str, ...], namespace: str | None) -> None:
    """Run a command inside a pod's network namespace: exec POD|deploy/NAME -- CMD [ARGS...]."""
    ns = namespace or "default"
    pod = find_pod(c, target, ns)
    netns = pod_netns_name(cluster_id(c.store.state_dir), ns, pod["metadata"]["name"])
    if not Path("/run/netns", netns).exists():
        raise LookupError(f"pod {ns}/{pod['metadata']['name']} is not running ({_why_no_pods(c.store.state_dir)})")
    os.execvp("ip", ["ip", "netns", "exec", netns, *command])


def _why_no_pods(state_dir: Path) -> str:
    from .liveness import find_controlplane

    if not find_controlplane(state_dir):
        return "the control plane is not running; `meshway up` starts it"
    if not (state_dir / "run" / "cluster.json").exists():
        return "the mesh runs in the loopback mode, where application pods do not run; `sudo meshway up --cluster` " \
               "after `meshway down` runs the cluster"
    return "is `meshway up` running?"


def find_log(state_dir: Path, ns: str, pod: dict, container: str | None) -> Path:
    name = pod["metadata"]["name"]
    labels = pod["metadata"].get("labels") or {}
    if L.GATEWAY_NAME in labels:
        return state_dir / "run" / "proxies" / f"{ns}.{name}" / "envoy.log"
    containers = [x["name"] for x in pod["spec"]["containers"]]
    chosen = container or containers[0]
    if chosen not in containers:
        raise LookupError(f'container "{chosen}" is not valid for pod {name} (containers: {", ".join(containers)})')
    return state_dir / "run" / "pods" / f"{ns}.{name}" / f"{chosen}.log"


def find_node_proxy_log(state_dir: Path, ns: str, target: str) -> Path | None:
    """Node proxies run as the `ztunnel` DaemonSet of the root namespace: `ds/ztunnel` (node-1's,
    as kubectl picks one pod) or `ztunnel-node-N`."""
    if ns != L.ROOT_NAMESPACE:
        return None
    if target in ("ds/ztunnel", "daemonset/ztunnel", "daemonsets/ztunnel"):
        return state_dir / "run" / "nodes" / "node-1" / "envoy.log"
    name = target.removeprefix("pod/")
    if name.startswith("ztunnel-node-") and name.removeprefix("ztunnel-").startswith("node-"):
        return state_dir / "run" / "nodes" / name.removeprefix("ztunnel-") / "envoy.log"
    return None


@cli.command()
@click.argument("target")
@namespace_option
@click.option("-c", "--container", default=None, help="Container of the pod (default: its first).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing the log as it grows.")
@click.option("--tail", type=int, default=-1, help="Lines of recent log to show (-1: all).")
@pass_ctx
def logs(c: Ctx, target: str, namespace: str | None, container: str | None, follow: bool, tail: int) -> None:
    """Print a pod's logs: logs POD|deploy/NAME [-c CONTAINER] [-f]; node proxies:
    logs -n istio-system ds/ztunnel|ztunnel-node-N."""
    ns = namespace or "default"
    node_log = find_node_proxy_log(c.store.state_dir, ns, target)
    path = node_log or find_log(c.store.state_dir, ns, find_pod(c, target, ns), container)
    if not path.exists():
        raise LookupError(f"no logs yet for {target} ({path})")
    with open(path, "rb") as f:
        lines = f.read().decode(errors="replace").splitlines(keepends=True)
        click.echo("".join(lines[-tail:] if tail >= 0 else lines), nl=False)
        while follow:
            chunk = f.read()
            if chunk:
                click.echo(chunk.decode(errors="replace"), nl=False)
            else:
                time.sleep(0.2)


@cli.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Nodes, pods, waypoints and proxy sync of the local mesh."""
    from .controlplane import load_proxy_status, write_proxy_status
    from .liveness import NOT_RUNNING_NOTE, as_unknown, find_controlplane

    state = c.store.state_dir
    pid = find_controlplane(state)
    if pid:
        mode = "cluster (network namespaces)" if (state / "run" / "cluster.json").exists() else "loopback"
        click.echo(f"Control plane: running (pid {pid}), {mode}\n")
    else:
        click.echo(f"Control plane: not running\n{NOT_RUNNING_NOTE}\n")
    pods = c.store.list(POD, None)
    if not pid:
        pods = [as_unknown(p, "Ready") for p in pods]
    proxies = load_proxy_status(c) if pid else {}
    from ..runtime.daemon import node_agent_pid

    rows = [["NODE", "AGENT", "PODS", "READY", "NODE PROXY"]]
    cluster = (state / "run" / "cluster.json").exists()
    for n in range(1, c.store.node_count() + 1):
        node = f"node-{n}"
        on = [p for p in pods if p["spec"].get("nodeName") == node]
        z = next((v for v in proxies.values() if v["type"] == "ztunnel" and v["pod"] == f"ztunnel-{node}"), None)
        zstate = ("SYNCED" if z and all(x.get("state") == "SYNCED" for x in z["xds"].values()) else "STALE") \
            if z else "-"
        agent = node_agent_pid(state, node)
        agent_text = f"running (pid {agent})" if agent else ("not running" if cluster else "-")
        rows.append([node, agent_text, str(len(on)), str(sum(_ready(p) for p in on)), zstate])
    click.echo(P.tabwrite(rows) + "\n", nl=False)
    click.echo(P.write_table("Pod", pods, all_namespaces=True, wide=True) + "\n", nl=False)
    gws = [g if pid else as_unknown(g, "Programmed") for g in c.store.list(find_kind("gtw"), None)
           if g["spec"]["gatewayClassName"] == L.WAYPOINT_CLASS]
    if gws:
        click.echo(P.write_table("Gateway", gws, all_namespaces=True) + "\n", nl=False)
    if proxies:
        click.echo(write_proxy_status(proxies), nl=False)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _connect_in_netns(netns: str, address: tuple[str, int]) -> socket.socket:
    """A TCP connection made from inside a network namespace (a thread that setns()es; the socket
    stays in that namespace after the thread ends)."""
    result: dict = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            result["sock"] = socket.create_connection(address, timeout=10)
        except Exception as exc:  # reported to the caller
            result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@cli.command("port-forward")
@click.argument("target")
@click.argument("ports")
@namespace_option
@pass_ctx
def port_forward(c: Ctx, target: str, ports: str, namespace: str | None) -> None:
    """Forward 127.0.0.1:LOCAL on the host to a pod of svc/NAME (or a pod) on PORT: port-forward svc/NAME LOCAL:PORT."""
    ns = namespace or "default"
    local, _, remote = ports.partition(":")
    remote = remote or local
    kind, _, name = target.rpartition("/")
    if kind in ("svc", "service", "services"):
        svc = c.store.get(find_kind("svc"), ns, name)
        port = next((p for p in svc["spec"]["ports"] if str(p["port"]) == remote), None)
        if port is None:
            raise LookupError(f"service {ns}/{name} has no port {remote}")
        selector = svc["spec"].get("selector") or {}
        pods = [p for p in c.store.list(POD, ns) if _ready(p) and all(
            (p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
        if not pods:
            raise LookupError(f"service {ns}/{name} has no ready pods")
        pod, target_port = pods[0], port.get("targetPort", port["port"])
        if isinstance(target_port, str):
            target_port = next(p["containerPort"] for x in pod["spec"]["containers"] for p in x.get("ports") or []
                               if p.get("name") == target_port)
    else:
        pod, target_port = find_pod(c, target, ns), int(remote)
    node = int(pod["spec"]["nodeName"].rsplit("-", 1)[1])
    netns = node_netns_name(cluster_id(c.store.state_dir), node)
    if not Path("/run/netns", netns).exists():  # after `down`: refuse now, not on the first connection
        raise LookupError(f"pod {ns}/{pod['metadata']['name']} is not running ({_why_no_pods(c.store.state_dir)})")
    address = (pod["status"]["podIP"], int(target_port))
    server = socket.create_server(("127.0.0.1", int(local)), reuse_port=False)
    click.echo(f"Forwarding from 127.0.0.1:{server.getsockname()[1]} -> {pod['metadata']['name']} "
               f"{address[0]}:{address[1]}")
    while True:
        client, _ = server.accept()
        try:
            upstream = _connect_in_netns(netns, address)
        except OSError as exc:
            click.echo(f"error: cannot reach {address[0]}:{address[1]}: {exc}", err=True)
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

