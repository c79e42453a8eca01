"""`meshway install` / `meshway uninstall`: the CRDs, the `istio-waypoint` GatewayClass and the
control plane's ServiceAccount and RBAC on a real cluster (meshway/kube/install.py). The
`kubernetes` library is imported only when one of them runs."""
from __future__ import annotations

import click

from .main import cli

kubeconfig_option = click.option("--kubeconfig", default=None, metavar="FILE",
                                 help="Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).")
context_option = click.option("--context", default=None, metavar="NAME", help="Kubeconfig context (default: current).")


def _run(action, kubeconfig: str | None, context: str | None):
    from ..kube.install import InstallError

    try:
        return action(kubeconfig, context, click.echo)
    except InstallError as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(1) from None


@cli.command()
@kubeconfig_option
@context_option
def install(kubeconfig: str | None, context: str | None) -> None:
    """Install the Gateway API and Istio CRDs, the istio-waypoint GatewayClass and meshway's RBAC."""
    from ..kube import install as I

    _run(I.install, kubeconfig, context)


@cli.command()
@kubeconfig_option
@context_option
def uninstall(kubeconfig: str | None, context: str | None) -> None:
    """Delete what `meshway install` created (the CRDs with every object of their kinds)."""
    from ..kube import install as I

    if not _run(I.uninstall, kubeconfig, context):
        click.echo("Nothing to delete: meshway is not installed.")
