"""`meshway controlplane` (foreground service) and `meshway proxy-status`."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
from datetime import timedelta

import click

from . import printers as P
from .main import Ctx, cli, pass_ctx


@cli.command()
@click.option("--sotw", is_flag=True, help="Proxies use state-of-the-world ADS instead of Delta.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.option("--cluster", "cluster_mode", is_flag=True,
              help="Run pods and node proxies in network namespaces (root, Linux); else waypoints on loopback.")
@click.option("--nodes", type=click.IntRange(1, 50), default=None, help="Cluster nodes (default: the store's, 1).")
@click.option("--stop-proxies-on-exit", is_flag=True,
              help="Stop the waypoint Envoys on exit (by default they keep serving their last config).")
@click.option("--metrics-addr", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics: the control plane's own and the "
                   "Istio metrics of every proxy (port 0: any free port, written to run/metrics-address).")
@click.option("--secret-ttl", envvar="SECRET_TTL", default="24h", show_default=True, metavar="DURATION",
              help="Lifetime of workload certificates (istiod's SECRET_TTL; Go duration: 24h, 2m, 90s); "
                   "renewed at half life. Env: SECRET_TTL.")
@pass_ctx
def controlplane(c: Ctx, sotw: bool, verbose: bool, cluster_mode: bool, nodes: int | None,
                 stop_proxies_on_exit: bool, metrics_addr: str | None, secret_ttl: str) -> None:
    """Run the control plane in the foreground: store watch, translation, ADS/SDS, waypoint replicas."""
    from ..runtime.controlplane import ControlPlane

    ttl = parse_secret_ttl(secret_ttl)
    from ..runtime.daemon import controlplane_pid

    running = controlplane_pid(c.store.state_dir)
    if running and running != os.getpid():  # two would both supervise the same pods and proxies
        raise click.ClickException(f"a control plane already runs for {c.store.state_dir} (pid {running}); "
                                   "`meshway down` stops it")

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = None
    if cluster_mode:
        from ..runtime.cluster import ClusterRuntime
        from ..runtime.netns import detect_capability

        reason = detect_capability()
        if reason:
            raise click.ClickException(f"the cluster needs network namespaces and iptables: {reason}")
        if nodes:
            c.store.set_nodes(nodes)
        cluster = ClusterRuntime(c.store.state_dir, c.store.node_count())
    cp = ControlPlane(c.store.state_dir, delta=not sotw, cluster=cluster, metrics_addr=metrics_addr,
                      secret_ttl=ttl)
    # The control plane keeps a large, long-lived heap (views, memos, messages): collect the young
    # generation less often and the old one rarely (CPython's 700/10/10 makes full collections
    # walk that heap many times per translation; measured 0.6 s -> 0.15 s for a node proxy's build
    # at 1,000 services).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"meshway control plane: ADS on unix:{cp.ads_socket}, store {c.store.state_dir / 'store.db'}")
        await cp.run(stop)

    asyncio.run(main())
    if stop_proxies_on_exit:
        cp.stop_proxies()


MIN_SECRET_TTL = timedelta(seconds=2)  # certificates carry whole seconds; renewal at half life


def parse_secret_ttl(text: str) -> timedelta:
    from ..model.durations import parse_duration

    try:
        ttl = timedelta(seconds=parse_duration(text.strip()))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--secret-ttl' / SECRET_TTL") from None
    if ttl < MIN_SECRET_TTL:
        raise click.BadParameter(f"{text!r} is shorter than {MIN_SECRET_TTL.total_seconds():g}s",
                                 param_hint="'--secret-ttl' / SECRET_TTL")
    return ttl


def load_proxy_status(c: Ctx) -> dict:
    path = c.store.state_dir / "run" / "proxy-status.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_proxy_status(status: dict) -> str:
    rows = [["NAME", "TYPE", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "SDS", "VERSION"]]
    notes = []
    for node_id, proxy in sorted(status.items(), key=lambda kv: (kv[1]["namespace"], kv[1]["pod"])):
        xds = proxy["xds"]

        def state(short: str) -> str:
            entry = xds.get(short)
            if not entry or not entry.get("sent"):
                return "NOT SENT"
            if entry["state"] == "NACKED":
                notes.append(f"{proxy['pod']}.{proxy['namespace']} {short} NACKED: {entry.get('error')}")
            return entry["state"]

        rows.append([f"{proxy['pod']}.{proxy['namespace']}", proxy["type"], "Kubernetes", state("Cluster"),
                     state("Listener"), state("ClusterLoadAssignment"), state("RouteConfiguration"),
                     state("Secret"), f"meshway-{proxy['version']}"])
        if not proxy.get("connected"):
            notes.append(f"{proxy['pod']}.{proxy['namespace']} is not connected to the control plane")
        for where, message in proxy.get("problems") or ():
            notes.append(f"{proxy['pod']}.{proxy['namespace']} {where}: {message}")
    return P.tabwrite(rows) + "".join(f"{n}\n" for n in notes)


@cli.command("proxy-status")
@pass_ctx
def proxy_status(c: Ctx) -> None:
    """Each proxy's xDS state: SYNCED, STALE (sent, not yet ACKed), NACKED (with Envoy's message)."""
    from .liveness import find_controlplane

    if not find_controlplane(c.store.state_dir):  # as istioctl when it cannot reach istiod
        click.echo("Error: unable to reach the control plane: it is not running (`meshway up` starts it)", err=True)
        raise click.exceptions.Exit(1)
    status = load_proxy_status(c)
    if not status:
        click.echo("No proxies found.", err=True)
        return
    click.echo(write_proxy_status(status), nl=False)
