"""`meshway analyze config-distribution`: the seed blog's sidecar-vs-waypoint table."""
from __future__ import annotations

import click

from ..mesh.distribution import build_distribution, generate_topology, write_distribution_table
from ..mesh.view import SNAPSHOT_KINDS, MeshView
from . import printers as P
from .main import Ctx, cli, pass_ctx


@cli.group()
def analyze() -> None:
    """Analyze the mesh's configuration."""


@analyze.command("config-distribution")
@click.option("--namespaces", type=click.IntRange(min=1), default=None, help="Generate a topology: namespaces.")
@click.option("--deployments", type=click.IntRange(min=1), default=25, show_default=True,
              help="Generated: deployments (one service each) per namespace.")
@click.option("--pods", type=click.IntRange(min=1), default=10, show_default=True, help="Generated: pods per deployment.")
@click.option("--waypoint-replicas", type=click.IntRange(min=1), default=2, show_default=True,
              help="Generated: replicas per namespace waypoint.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@pass_ctx
def config_distribution(c: Ctx, namespaces: int | None, deployments: int, pods: int, waypoint_replicas: int,
                        output: str) -> None:
    """Configurations sidecars would receive versus waypoints, for the store or a generated topology."""
    if namespaces:
        snapshot, replicas = generate_topology(namespaces, deployments, pods, waypoint_replicas)
    else:
        _, snapshot = c.store.snapshot(SNAPSHOT_KINDS)
        replicas = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"].get("replicas", 1)
                    for d in snapshot["Deployment"]}
    dist = build_distribution(MeshView.build(snapshot), replicas)
    if output == "json":
        click.echo(P.to_json(dist.to_json()), nl=False)
    else:
        click.echo(P.tabwrite(write_distribution_table(dist)), nl=False)
