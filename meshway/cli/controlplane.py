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
              help="Serve the one-host cluster, whose node agents (`meshway node --local --name node-N`, started "
                   "by `meshway up`) run the pods, waypoints and node proxies in network namespaces (root, Linux); "
                   "else run the waypoints on loopback itself.")
@click.option("--nodes", type=click.IntRange(1, 50), default=None, help="Cluster nodes (default: the store's, 1).")
@click.option("--stop-proxies-on-exit", is_flag=True,
              help="Stop the waypoint Envoys on exit (by default they keep serving their last config).")
@click.option("--xds-addr", default=None, metavar="HOST:PORT",
              help="Also serve xDS over TCP + mTLS here, as istiod does on port 15012 (e.g. 0.0.0.0:15012; "
                   "port 0: any free port, written to run/xds-address): proxies prove their node id with their "
                   "SPIFFE workload certificate. Off by default (the Unix socket serves the local proxies).")
@click.option("--xds-ip", "xds_ips", multiple=True, metavar="IP",
              help="An IP address proxies dial the xDS port at, named in its certificate besides istiod's DNS "
                   "names (the --xds-addr host is, unless 0.0.0.0 or ::). Repeatable.")
@click.option("--metrics-addr", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics: the control plane's own and the "
                   "Istio metrics of every proxy (port 0: any free port, written to run/metrics-address). With "
                   "--kubeconfig and --xds-addr: its own and its tally of the proxies' logs, the address written "
                   "on its Lease (`meshway --kubeconfig FILE metrics` reads it there).")
@click.option("--secret-ttl", envvar="SECRET_TTL", default="24h", show_default=True, metavar="DURATION",
              help="Lifetime of workload certificates (istiod's SECRET_TTL; Go duration: 24h, 2m, 90s); "
                   "renewed at half life. Env: SECRET_TTL.")
@click.option("--wasm-insecure-registries", envvar="WASM_INSECURE_REGISTRIES", default="", metavar="HOSTS",
              help="WasmPlugin modules from these registries and servers are fetched without checking their TLS "
                   "certificate (Istio's WASM_INSECURE_REGISTRIES: comma-separated host or host:port as the "
                   "plugin's URL names it, `*` for all). Env: WASM_INSECURE_REGISTRIES.")
@click.option("--kubeconfig", default=None, metavar="FILE",
              help="Run against this Kubernetes API server instead of the embedded store (as istiod: watch, "
                   "deploy waypoints, write status).")
@click.option("--context", "kube_context", default=None, help="The kubeconfig context (default: its current one).")
@click.option("--in-cluster", is_flag=True, help="Use the pod's service account (as istiod in a cluster).")
@pass_ctx
def controlplane(c: Ctx, sotw: bool, verbose: bool, cluster_mode: bool, nodes: int | None, xds_addr: str | None,
                 xds_ips: tuple[str, ...],
                 stop_proxies_on_exit: bool, metrics_addr: str | None, secret_ttl: str, wasm_insecure_registries: str,
                 kubeconfig: str | None, kube_context: str | None, in_cluster: bool) -> None:
    """Run the control plane in the foreground: store watch, translation, ADS/SDS, status (and, on
    loopback, the waypoint replicas)."""
    from ..runtime.oci_image import parse_insecure_registries

    ttl = parse_secret_ttl(secret_ttl)
    insecure = parse_insecure_registries(wasm_insecure_registries)
    if kubeconfig or in_cluster:
        if xds_addr:
            check_xds_addr(xds_addr, xds_ips)
        run_kube_controlplane(kubeconfig, kube_context, verbose, xds_addr, xds_ips, ttl, not sotw, insecure,
                              metrics_addr=metrics_addr)
        return
    from ..runtime.controlplane import ControlPlane

    from ..runtime.daemon import controlplane_pid

    check_xds_addr(xds_addr, xds_ips)
    running = controlplane_pid(c.store.state_dir)
    if running and running != os.getpid():  # two would both supervise the same pods and proxies
        raise click.ClickException(f"a control plane already runs for {c.store.state_dir} (pid {running}); "
                                   "`meshway down` stops it")

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node_count = 0
    if cluster_mode:
        from ..runtime.netns import detect_capability

        reason = detect_capability()
        if reason:
            raise click.ClickException(f"the cluster needs network namespaces and iptables: {reason}")
        if nodes:
            c.store.set_nodes(nodes)
        node_count = c.store.node_count()
    cp = ControlPlane(c.store.state_dir, delta=not sotw, nodes=node_count, run_proxies=not cluster_mode,
                      metrics_addr=metrics_addr, secret_ttl=ttl, xds_addr=xds_addr, xds_ips=xds_ips,
                      wasm_insecure_registries=insecure)
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
        if xds_addr:
            click.echo(f"xDS over TCP + mTLS on {xds_addr} (run/xds-address: the bound port)")
        await cp.run(stop)

    asyncio.run(main())
    if stop_proxies_on_exit:
        cp.stop_proxies()


def run_kube_controlplane(kubeconfig: str | None, context: str | None, verbose: bool, xds_addr: str | None = None,
                          xds_ips: tuple[str, ...] = (), ttl: timedelta | None = None, delta: bool = True,
                          wasm_insecure_registries: frozenset[str] = frozenset(),
                          metrics_addr: str | None = None) -> None:
    """The control plane on a Kubernetes API, until SIGTERM/SIGINT: the controller
    (meshway.kube.controlplane: waypoint objects, statuses, under the Lease) and, with `xds_addr`,
    the translation and ADS over TCP + mTLS for proxies that run as pods (meshway.runtime.controlplane
    on the same watches, serving them, never starting them) and, with `metrics_addr`, its monitoring
    port (istiod's 15014: its own series and its tally of the proxies' logs). The CA and xDS tokens
    live in the state folder ($MESHWAY_STATE_DIR, else the default one's `kubernetes/<API server>`
    subfolder)."""
    from ..kube.client import KubeClient
    from ..kube.controlplane import KubeControlPlane

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        client = KubeClient.connect(kubeconfig, context)
    except Exception as exc:  # noqa: BLE001: a bad kubeconfig: one line
        raise click.ClickException(f"cannot load the Kubernetes credentials: {exc}") from None
    kcp = KubeControlPlane(client)
    click.echo(f"meshway control plane: Kubernetes API {client.host} (lease istio-system/{kcp.leader.name}, "
               f"identity {kcp.identity})")
    if not xds_addr:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: kcp.stop())
        kcp.run()
        return
    _serve_xds_on_kubernetes(kcp, client, xds_addr, xds_ips, ttl, delta, wasm_insecure_registries, metrics_addr)


def kube_state_dir(server: str) -> "Path":  # noqa: F821 (imported inside)
    import hashlib
    from pathlib import Path

    from ..store import default_state_dir

    env = os.environ.get("MESHWAY_STATE_DIR")
    if env:
        return Path(env)
    return default_state_dir() / "kubernetes" / hashlib.sha256(server.encode()).hexdigest()[:12]


def _serve_xds_on_kubernetes(kcp, client, xds_addr: str, xds_ips: tuple[str, ...], ttl, delta: bool,
                             wasm_insecure_registries: frozenset[str], metrics_addr: str | None = None) -> None:
    import threading

    from ..kube.backend import KubeBackend
    from ..kube.cacert import sync_ca_secret
    from ..kube.client import ApiError
    from ..kube.controlplane import SYNC_TIMEOUT
    from ..kube.tokenreview import fetch_token_review
    from ..runtime.controlplane import ControlPlane
    from ..runtime.placement import PodPlacement

    kcp.source.start()
    kcp.source.wait_synced(SYNC_TIMEOUT)
    backend = KubeBackend(client, kcp.source, writes_allowed=lambda: kcp.leader.leading)
    state_dir = kube_state_dir(client.host)
    try:
        click.echo(sync_ca_secret(client, state_dir))  # before the CA loads its folder
    except (ApiError, ValueError) as exc:
        raise click.ClickException(f"the mesh CA: {exc}") from None
    cp = ControlPlane(state_dir, placement=PodPlacement(), delta=delta, store=backend,
                      run_proxies=False, secret_ttl=ttl or timedelta(hours=24), xds_addr=xds_addr, xds_ips=xds_ips,
                      metrics_addr=metrics_addr, scrape_proxies=False,
                      review_token=lambda token: fetch_token_review(client, token),
                      wasm_insecure_registries=wasm_insecure_registries)
    kcp.controller.root_pem = cp.ca.root_pem()  # published to every namespace (istio-ca-root-cert)
    controller = threading.Thread(target=kcp.run, name="kube-controller", daemon=True)
    controller.start()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"meshway control plane: ADS over TCP + mTLS on {xds_addr}, state {cp.state_dir}")
        advertising = asyncio.ensure_future(_advertise_addresses(cp, kcp, xds_ips))
        try:
            await cp.run(stop)
        finally:
            advertising.cancel()

    try:
        asyncio.run(main())
    finally:
        kcp.stop()
        controller.join(10)


async def _advertise_addresses(cp, kcp, xds_ips: tuple[str, ...]) -> None:
    """Once bound: the xDS port's address on the Lease (`meshway proxy-status` finds it there), then
    the monitoring port's, if it serves one (`meshway metrics`)."""
    from ..kube.xdsdebug import METRICS_ADDRESS_ANNOTATION, XDS_ADDRESS_ANNOTATION, find_advertised_address

    while not cp.server.tcp_address:
        await asyncio.sleep(0.05)
    kcp.annotations[XDS_ADDRESS_ANNOTATION] = find_advertised_address(cp.server.tcp_address, xds_ips)
    for _ in range(100 if cp.metrics_addr else 0):  # started right after the xDS port, or not at all (logged)
        if cp.monitor is not None:
            kcp.annotations[METRICS_ADDRESS_ANNOTATION] = find_advertised_address(cp.monitor.address, xds_ips)
            return
        await asyncio.sleep(0.05)


def check_xds_addr(xds_addr: str | None, xds_ips: tuple[str, ...]) -> None:
    """A bad --xds-addr or --xds-ip stops the command before anything starts."""
    import ipaddress

    from ..xds.mtls import parse_address

    if xds_addr is not None:
        try:
            parse_address(xds_addr)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--xds-addr'") from None
    for ip in xds_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise click.BadParameter(f"{ip!r} is not an IP address", param_hint="'--xds-ip'") from None


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
        state("TypedExtensionConfig")  # ECDS (WasmPlugins): no column (most proxies have none), a NACK is noted
        if not proxy.get("connected"):
            notes.append(f"{proxy['pod']}.{proxy['namespace']} is not connected to the control plane")
        for where, message in proxy.get("problems") or ():
            notes.append(f"{proxy['pod']}.{proxy['namespace']} {where}: {message}")
    return P.tabwrite(rows) + "".join(f"{n}\n" for n in notes)


@cli.command("proxy-status")
@click.option("--xds-address", default=None, metavar="HOST:PORT",
              help="On Kubernetes: the control plane's xDS port (default: the one its Lease names).")
@pass_ctx
def proxy_status(c: Ctx, xds_address: str | None) -> None:
    """Each proxy's xDS state: SYNCED, STALE (sent, not yet ACKed), NACKED (with Envoy's message)."""
    from .liveness import find_controlplane

    if c.backend.kubernetes:
        return _kube_proxy_status(c, xds_address)
    if xds_address:
        raise click.UsageError("--xds-address is for a control plane on Kubernetes (with --kubeconfig)")
    if not find_controlplane(c.store.state_dir):  # as istioctl when it cannot reach istiod
        click.echo("Error: unable to reach the control plane: it is not running (`meshway up` starts it)", err=True)
        raise click.exceptions.Exit(1)
    status = load_proxy_status(c)
    if not status:
        click.echo("No proxies found.", err=True)
        return
    click.echo(write_proxy_status(status), nl=False)


def _kube_proxy_status(c: Ctx, xds_address: str | None) -> None:
    """As `istioctl proxy-status --xds-address`: syncz from the control plane over its xDS port."""
    import grpc

    from ..kube.client import ApiError
    from ..kube.xdsdebug import NoControlPlane, fetch_debug_token, fetch_mesh_root, fetch_syncz, fetch_xds_address
    from ..xds.debug import read_syncz

    client = c.store.client  # type: ignore[attr-defined]
    try:
        address = xds_address or fetch_xds_address(client)
        response = fetch_syncz(address, fetch_debug_token(client), fetch_mesh_root(client))
    except NoControlPlane as exc:
        click.echo(f"Error: unable to reach the control plane: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    except ApiError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    except grpc.RpcError as exc:
        click.echo(f"Error: the control plane at {address} answered {exc.code().name}: {exc.details()}", err=True)
        raise click.exceptions.Exit(1) from None
    status = read_syncz(response)
    if not status:
        click.echo("No proxies found.", err=True)
        return
    click.echo(write_proxy_status(status), nl=False)
