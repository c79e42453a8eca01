"""`meshway up`: the main job. Until the local network-namespace cluster exists, it walks through
the control plane with the seed scenario: bookinfo, a namespace waypoint, enrollment, explain."""
from __future__ import annotations

from pathlib import Path

import click

from .main import Ctx, cli, pass_ctx


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, help="Manifests to apply (default: the bundled demo).")
@click.option("--nodes", type=click.IntRange(1, 250), default=None,
              help="Number of nodes pods are scheduled on (each holds up to 253 pods).")
@pass_ctx
def up(c: Ctx, files: tuple[str, ...], nodes: int | None) -> None:
    """Start the mesh and apply manifests (today: the control-plane walk-through)."""
    from .walkthrough import run_walkthrough

    if nodes:
        c.store.set_nodes(nodes)
    demo = Path(__file__).resolve().parent.parent / "demo" / "bookinfo.yaml"
    run_walkthrough(c, files or (str(demo),))


@cli.command()
@click.option("--purge", is_flag=True, help="Also delete the state folder (store, CA, logs).")
@pass_ctx
def down(c: Ctx, purge: bool) -> None:
    """Stop the control plane and every proxy it runs."""
    import shutil

    from ..runtime.daemon import stop_all

    state_dir = c.store.state_dir
    for what in stop_all(state_dir):
        click.echo(f"stopped {what}")
    if purge:
        c.store.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        click.echo(f"deleted {state_dir}")
