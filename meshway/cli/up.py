"""`meshway up` (the main job: the mesh on this machine, with the bundled demo or your manifests)
and `meshway down`."""
from __future__ import annotations

import click

from .main import Ctx, cli, pass_ctx


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE|DIR",
              help="Manifests to apply (default: the bundled demo); checked before anything starts.")
@click.option("--nodes", type=click.IntRange(1, 50), default=None,
              help="Cluster nodes (default 2; each holds up to 253 pods).")
@click.option("--metrics-addr", default="127.0.0.1:15014", show_default=True, metavar="HOST:PORT",
              help="Prometheus endpoint of the control plane and every proxy (istiod's monitoring port); '' for none.")
@click.option("--cluster/--loopback", "mode", default=None,
              help="Require the network-namespace cluster (root, Linux, ip, iptables), or run the loopback mode "
                   "(waypoints only, no application pods). Default: the cluster where this machine allows it, "
                   "else loopback, saying why.")
@click.option("--kubernetes", is_flag=True,
              help="Run a Kubernetes cluster on this machine instead (kube-apiserver, etcd, controller-manager and "
                   "scheduler built by scripts/build-kubernetes, meshway's control plane and node agents) and apply "
                   "the demo through its API; prints the KUBECONFIG to export.")
@pass_ctx
def up(c: Ctx, files: tuple[str, ...], nodes: int | None, metrics_addr: str, mode: bool | None,
       kubernetes: bool) -> None:
    """Start the mesh: control plane, network-namespace cluster, node proxies, waypoints, and the
    bundled demo (bookinfo, a namespace waypoint, the reviews 90/10 split) or -f manifests."""
    from .main import read_manifests
    from .walkthrough import run_walkthrough

    if files:
        read_manifests(files, None)  # a missing or bad file fails here, before anything starts
    if kubernetes:
        up_kubernetes(c, files, nodes or 2)
        return
    run_walkthrough(c, files, nodes, metrics_addr or None, mode)


def up_kubernetes(c: Ctx, files: tuple[str, ...], nodes: int) -> None:
    from ..kube.localcluster import LocalCluster, LocalClusterError
    from .walkthrough import run_kube_demo

    cluster = LocalCluster(c.store.state_dir / "kubernetes")
    try:
        cluster.up(nodes, click.echo, apply_demo=lambda kubeconfig: run_kube_demo(kubeconfig, files))
    except LocalClusterError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.option("--purge", is_flag=True, help="Also delete the state folder (store, CA, logs).")
@pass_ctx
def down(c: Ctx, purge: bool) -> None:
    """Stop the node agents, the control plane and every pod and proxy they run."""
    import shutil

    from ..runtime.daemon import stop_all

    from ..kube.localcluster import LocalCluster

    state_dir = c.store.state_dir
    LocalCluster(state_dir / "kubernetes").down(click.echo)  # `up --kubernetes`: nothing when it never ran
    for what in stop_all(state_dir):
        click.echo(f"stopped {what}")
    if purge:
        c.store.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        click.echo(f"deleted {state_dir}")
