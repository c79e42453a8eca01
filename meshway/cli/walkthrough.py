"""The control-plane walk-through `meshway up` runs: each step is printed as the command a user
would type, followed by that command's real output."""
from __future__ import annotations

from pathlib import Path

import click

from .main import Ctx, cli


def _run(c: Ctx, args: list[str]) -> None:
    click.secho(f"$ meshway {' '.join(args)}", bold=True)
    state = ["--state-dir", str(c.store.state_dir)]
    try:
        cli.main(state + args, prog_name="meshway", standalone_mode=False)
    except SystemExit as exc:  # a step that exits non-zero stops the walk-through
        if exc.code:
            raise
    click.echo()


def run_walkthrough(c: Ctx, files: tuple[str, ...]) -> None:
    traffic = Path(__file__).resolve().parent.parent / "demo" / "reviews-traffic.yaml"
    click.echo(f"meshway control plane, store: {c.store.state_dir / 'store.db'}\n")
    _run(c, ["apply", *[arg for f in files for arg in ("-f", f)]])
    _run(c, ["label", "namespace", "default", "istio.io/dataplane-mode=ambient", "--overwrite"])
    _run(c, ["waypoint", "apply", "-n", "default", "--enroll-namespace", "--overwrite"])
    _run(c, ["apply", "-f", str(traffic)])
    _run(c, ["waypoint", "list", "-A"])
    _run(c, ["get", "ns", "-L", "istio.io/dataplane-mode", "-L", "istio.io/use-waypoint"])
    _run(c, ["get", "pods", "-o", "wide"])
    _run(c, ["explain", "service/reviews"])
    from ..runtime.daemon import start_controlplane

    pid = start_controlplane(c.store.state_dir)
    click.echo(f"control plane running in the background (pid {pid}); `meshway down` stops it\n")
    _run(c, ["waypoint", "status", "--waypoint-timeout", "60s"])
    _run(c, ["get", "gtw", "waypoint"])
    _run(c, ["explain", "service/reviews"])
    _run(c, ["proxy-status"])
    _run(c, ["analyze", "config-distribution", "--namespaces", "2", "--deployments", "25", "--pods", "10",
             "--waypoint-replicas", "2"])
    click.echo("Next: `meshway proxy-config listener deploy/waypoint --waypoint`, `meshway proxy-config cluster "
               "deploy/waypoint`,\n`meshway explain pod/<name>`, `meshway get svc reviews -o yaml` (the WaypointBound "
               "condition),\n`meshway down` to stop the control plane and the waypoint Envoys.\n"
               "The waypoint Envoy runs on the host (loopback placement); the network-namespace cluster comes next.")
