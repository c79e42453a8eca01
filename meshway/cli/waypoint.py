"""`meshway waypoint generate|apply|list|delete|status`, with istioctl's flags and output lines
(istioctl/pkg/waypoint/waypoint.go; istio-facts §5.1)."""
from __future__ import annotations

import time
from typing import Any

import click
import yaml

from .. import labels as L
from ..model import find_kind, parse_object
from ..store import Store  # or, with --kubeconfig, a KubeStore (the same interface)
from . import printers as P
from .liveness import NOT_RUNNING, REASON, as_unknown, detect_running, start_hint
from .main import Ctx, cli, namespace_option, pass_ctx

GATEWAY = find_kind("gateway")
NAMESPACE = find_kind("namespace")


def check_name(name: str) -> str:
    name = name or L.DEFAULT_WAYPOINT_NAME
    if name == L.NONE:
        raise ValueError("invalid name provided for waypoint, 'none' is a reserved value")
    return name


def check_traffic_type(value: str | None) -> None:
    if value is not None and value not in L.TRAFFIC_TYPES:
        raise ValueError(f"invalid traffic type: {value}. Valid options are: [all none service workload]")


def build_gateway(name: str, namespace: str | None, traffic: str | None, revision: str | None,
                  replicas: int | None = None) -> dict[str, Any]:
    """The Gateway istioctl generates (labels only when given; namespace only when -n is given)."""
    meta: dict[str, Any] = {}
    labels = {**({L.WAYPOINT_FOR: traffic} if traffic else {}), **({L.REVISION: revision} if revision else {})}
    if replicas:
        meta["annotations"] = {L.REPLICAS: str(replicas)}
    if labels:
        meta["labels"] = labels
    meta["name"] = name
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": meta,
            "spec": {"gatewayClassName": L.WAYPOINT_CLASS,
                     "listeners": [{"name": "mesh", "port": L.HBONE_PORT, "protocol": "HBONE"}]}}


def programmed(gateway: dict[str, Any]) -> bool:
    return any(c.get("type") == "Programmed" and c.get("status") == "True"
               for c in (gateway.get("status") or {}).get("conditions") or [])


def parse_timeout(text: str) -> float:
    from ..model.durations import parse_duration

    return parse_duration(text)


@cli.group()
def waypoint() -> None:
    """Manage waypoint configuration."""


name_option = click.option("--name", default=L.DEFAULT_WAYPOINT_NAME, show_default=True, help="Name of the waypoint.")
for_option = click.option("--for", "traffic", default=None,
                          help="Traffic type the waypoint handles: [all none service workload].")
revision_option = click.option("-r", "--revision", default=None, help="The revision to label the waypoint with.")


@waypoint.command()
@name_option
@for_option
@revision_option
@namespace_option
def generate(name: str, traffic: str | None, revision: str | None, namespace: str | None) -> None:
    """Print the waypoint Gateway as YAML."""
    name = check_name(name)
    check_traffic_type(traffic)
    click.echo(yaml.safe_dump(build_gateway(name, namespace, traffic, revision), sort_keys=False), nl=False)


def _namespace_labels(store: Store, ns: str) -> dict[str, str]:
    return store.get(NAMESPACE, "", ns)["metadata"].get("labels") or {}


@waypoint.command("apply")
@name_option
@for_option
@revision_option
@namespace_option
@click.option("--enroll-namespace", is_flag=True, help="Label the namespace with the waypoint name.")
@click.option("--overwrite", is_flag=True, help="Overwrite the existing waypoint used by the namespace.")
@click.option("-w", "--wait", is_flag=True, help="Wait for the waypoint to be ready.")
@click.option("--waypoint-timeout", default="90s", show_default=True, metavar="DURATION",
              help="Timeout for waiting for waypoint ready.")
@click.option("--replicas", type=click.IntRange(1, 100), default=None,
              help=f"Waypoint replicas (sets the {L.REPLICAS} annotation; default 1).")
@pass_ctx
def apply_(c: Ctx, name: str, traffic: str | None, revision: str | None, namespace: str | None,
           enroll_namespace: bool, overwrite: bool, wait: bool, waypoint_timeout: str, replicas: int | None) -> None:
    """Apply a waypoint Gateway to the namespace."""
    name, ns = check_name(name), namespace or "default"
    check_traffic_type(traffic)
    timeout = parse_timeout(waypoint_timeout)
    ns_labels = _namespace_labels(c.store, ns)
    if enroll_namespace:
        if ns_labels.get(L.USE_WAYPOINT) and not overwrite:
            click.echo(f"⚠️ Warning: namespace ({ns}) already has an enrolled Waypoint. Consider adding the "
                       "`--overwrite` flag to your apply command.")
            return
        if ns_labels.get(L.DATAPLANE_MODE) != "ambient":
            click.echo("⚠️ Warning: namespace is not enrolled in ambient. Consider running\t"
                       f"`kubectl label namespace {ns} istio.io/dataplane-mode=ambient`")
    manifest = parse_object(build_gateway(name, ns, traffic, revision, replicas), "waypoint apply", 1, ns)
    c.store.apply([manifest])
    click.echo(f"✅ waypoint {ns}/{name} applied")
    if wait:
        if not detect_running(c.store):  # nothing can program it: say so now, not in 90 s
            click.echo(f"Error: {NOT_RUNNING}, so waypoint {ns}/{name} cannot become ready ({start_hint(c.store)})",
                       err=True)
            raise click.exceptions.Exit(1)
        wait_programmed(c.store, ns, name, timeout, "timed out while waiting for waypoint")
        click.echo(f"✅ waypoint {ns}/{name} is ready!")
    if enroll_namespace:
        c.store.label(NAMESPACE, None, [ns], None, {L.USE_WAYPOINT: name}, [], overwrite=True)
        click.echo(f'✅ namespace {ns} labeled with "{L.USE_WAYPOINT}: {name}"')


def wait_programmed(store: Store, ns: str, name: str, timeout: float, message: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        gateway = store.get(GATEWAY, ns, name)
        if programmed(gateway):
            return gateway
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message}\t{ns}/{name}")
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def waypoints_in(store: Store, ns: str | None) -> list[dict[str, Any]]:
    return [g for g in store.list(GATEWAY, ns) if g["spec"]["gatewayClassName"] == L.WAYPOINT_CLASS]


def write_list(gateways: list[dict[str, Any]], all_namespaces: bool) -> str:
    if not gateways:
        return "No waypoints found.\n"
    header = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"]
    rows = [header]
    for gw in sorted(gateways, key=lambda g: (g["metadata"]["namespace"], g["metadata"]["name"])):
        labels = gw["metadata"].get("labels") or {}
        status = next((c["status"] for c in (gw.get("status") or {}).get("conditions") or []
                       if c["type"] == "Programmed"), "False")
        row = [gw["metadata"]["name"], labels.get(L.REVISION) or "default", labels.get(L.WAYPOINT_FOR) or "none",
               status]
        rows.append(([gw["metadata"]["namespace"]] if all_namespaces else []) + row)
    return P.tabwrite(rows, padding=5)


@waypoint.command("list")
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="List all waypoints in all namespaces.")
@pass_ctx
def list_(c: Ctx, namespace: str | None, all_namespaces: bool) -> None:
    """List managed waypoint configurations."""
    click.echo(write_list(waypoints_in(c.store, None if all_namespaces else namespace or "default"), all_namespaces),
               nl=False)


@waypoint.command("delete")
@click.argument("names", nargs=-1)
@namespace_option
@click.option("--all", "all_", is_flag=True, help="Delete all waypoints in the namespace.")
@click.option("-r", "--revision", default=None, help="Delete the waypoints labeled with this revision.")
@pass_ctx
def delete_(c: Ctx, names: tuple[str, ...], namespace: str | None, all_: bool, revision: str | None) -> None:
    """Delete waypoints by name, or all of them."""
    ns = namespace or "default"
    if (all_ or revision) and names:
        raise ValueError("cannot specify waypoint names when deleting all waypoints")
    if not (all_ or revision) and not names:
        raise ValueError("must specify a waypoint name or delete all using --all or delete specific revision "
                         "using --revision")
    existing = {g["metadata"]["name"]: g for g in waypoints_in(c.store, ns)}
    if names:
        targets = []
        for name in names:
            if name in existing:
                targets.append(name)
            else:
                click.echo(f"waypoint {ns}/{name} not found")
    else:
        targets = [n for n, g in sorted(existing.items())
                   if not revision or (g["metadata"].get("labels") or {}).get(L.REVISION) == revision]
    for result in c.store.delete([(GATEWAY, ns, n) for n in targets], ignore_not_found=True):
        click.echo(f"waypoint {ns}/{result.name} deleted")


def status_row(gw: dict[str, Any], all_namespaces: bool) -> list[str]:
    conds = (gw.get("status") or {}).get("conditions") or []
    cond = next((c for c in conds if c["type"] == "Programmed" and c["status"] == "True"), None) or \
        next((c for c in conds if c.get("reason") == REASON), conds[-1] if conds else {})
    row = [gw["metadata"]["name"], cond.get("status", ""), cond.get("type", ""), cond.get("reason", ""),
           cond.get("message", "")]
    return ([gw["metadata"]["namespace"]] if all_namespaces else []) + row


@waypoint.command("status")
@name_option
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Show the status of waypoints in all namespaces.")
@click.option("-w", "--wait/--no-wait", default=True,
              help="Wait for the waypoint to be ready (the default), or show its status now.")
@click.option("--waypoint-timeout", default="90s", show_default=True, metavar="DURATION",
              help="How long to wait for the waypoint to be ready.")
@pass_ctx
def status(c: Ctx, name: str, namespace: str | None, all_namespaces: bool, wait: bool, waypoint_timeout: str) -> None:
    """Show the Programmed status of waypoints."""
    ns = namespace or "default"
    if all_namespaces:
        gateways = waypoints_in(c.store, None)
    else:
        gateways = [g for g in waypoints_in(c.store, ns) if g["metadata"]["name"] == check_name(name)]
        if not gateways:
            raise LookupError(f"failed to get waypoint {ns}/{name}: gateways.gateway.networking.k8s.io "
                              f'"{name}" not found')
    header = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    rows, timeout = [header], parse_timeout(waypoint_timeout)
    if not detect_running(c.store):  # nothing can program a waypoint: no waiting, no "True"
        rows += [status_row(as_unknown(gw, "Programmed"), all_namespaces) for gw in gateways]
        click.echo(P.tabwrite(rows, padding=5), nl=False)
        if wait:
            click.echo(f"Error: {NOT_RUNNING}, so no waypoint can become ready ({start_hint(c.store)}; "
                       "--no-wait shows the last recorded status)", err=True)
            raise click.exceptions.Exit(1)
        click.echo(f"Note: {NOT_RUNNING}; the status above is the last recorded.", err=True)
        return
    for gw in gateways:
        meta = gw["metadata"]
        if wait:
            try:
                gw = wait_programmed(c.store, meta["namespace"], meta["name"], timeout,
                                     "timed out while retrieving status for waypoint")
            except TimeoutError:
                click.echo(P.tabwrite(rows + [status_row(c.store.get(GATEWAY, meta["namespace"], meta["name"]),
                                                         all_namespaces)], padding=5), nl=False)
                raise
        rows.append(status_row(gw, all_namespaces))
    click.echo(P.tabwrite(rows, padding=5), nl=False)
