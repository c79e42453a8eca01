"""`meshway analyze config-distribution`: the seed blog's sidecar-vs-waypoint table."""
from __future__ import annotations

import click

from ..mesh.distribution import build_distribution, generate_topology, write_distribution_table
from ..mesh.view import XDS_KINDS, MeshView
from ..xds.config_bytes import measure_config_bytes
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
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="The table, or its figures as JSON.")
@pass_ctx
def config_distribution(c: Ctx, namespaces: int | None, deployments: int, pods: int, waypoint_replicas: int,
                        output: str) -> None:
    """Configurations sidecars would receive versus waypoints, for the store or a generated topology."""
    if namespaces:
        snapshot, replicas = generate_topology(namespaces, deployments, pods, waypoint_replicas)
    else:
        _, snapshot = c.store.snapshot(XDS_KINDS)
        replicas = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"].get("replicas", 1)
                    for d in snapshot["Deployment"]}
    view = MeshView.build(snapshot)
    dist = build_distribution(view, replicas)
    sizes = measure_config_bytes(view, replicas)
    data = dist.to_json()
    data["waypoint"]["bytes"] = sizes.waypoint
    data["sidecar_mesh_wide"]["bytes"] = sizes.sidecar_mesh_wide
    data["bytes_ratio"] = round(sizes.waypoint / sizes.sidecar_mesh_wide, 6) if sizes.sidecar_mesh_wide else 0.0
    data["bytes_per_waypoint"] = sizes.per_waypoint
    data["bytes_per_sidecar"] = sizes.per_sidecar
    if output == "json":
        click.echo(P.to_json(data), nl=False)
    else:
        rows = write_distribution_table(dist)
        rows.append(["Bytes: sidecars (mesh-wide)"] + [""] * (len(rows[0]) - 2) + [str(sizes.sidecar_mesh_wide)])
        rows.append(["Bytes: waypoints"] + [""] * (len(rows[0]) - 2) + [str(sizes.waypoint)])
        ratio = f"{100 * sizes.waypoint / sizes.sidecar_mesh_wide:.2f}%" if sizes.sidecar_mesh_wide else "-"
        rows.append(["Bytes: waypoints / sidecars"] + [""] * (len(rows[0]) - 2) + [ratio])
        click.echo(P.tabwrite(rows), nl=False)
