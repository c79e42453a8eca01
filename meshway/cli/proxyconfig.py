"""`meshway proxy-config` (alias `pc`): a waypoint replica's Envoy configuration, istioctl-style.

Commands gather: pick the replica from proxy-status.json, fetch its admin API (or read `--file`);
`configdump` renders.
"""
from __future__ import annotations

import copy

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click

from . import configdump as D
from . import printers as P
from .controlplane import load_proxy_status
from ..runtime.envoy_admin import AdminError, fetch_admin
from .main import Ctx, cli, pass_ctx

Body = dict[str, Any]


class AliasGroup(click.Group):
    """A group whose commands also answer to short names (`listeners`, `l`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.aliases: dict[str, str] = {}

    def command_with_aliases(self, name: str, *aliases: str) -> Callable:
        def decorator(fn: Callable) -> click.Command:
            cmd = self.command(name)(fn)
            cmd.help = f"{cmd.help}\n\nAliases: {', '.join(aliases)}."
            self.aliases.update({a: name for a in aliases})
            return cmd
        return decorator

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]):
        _, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else None), cmd, rest


@cli.group("proxy-config", cls=AliasGroup)
def proxy_config() -> None:
    """A proxy's listeners, clusters, routes, endpoints and secrets (alias: pc).

    TARGET is deploy/NAME[.NS] (a waypoint Deployment's first replica), POD[.NS] (a waypoint replica,
    or a node proxy: ztunnel-node-N.istio-system); --file reads a stored config dump instead of asking
    the live proxy."""


_alias = copy.copy(proxy_config)
_alias.hidden = True  # listed once, as proxy-config
cli.add_command(_alias, "pc")


# -- gathering -----------------------------------------------------------------------------------
def split_target(target: str, namespace: str | None) -> tuple[str, str, str]:
    """`deploy/NAME[.NS]` | `pod/NAME[.NS]` | `NAME[.NS]` -> (kind, name, namespace)."""
    kind, _, rest = target.rpartition("/")
    kind = {"": "pod", "pod": "pod", "pods": "pod", "po": "pod", "deploy": "deployment",
            "deployment": "deployment", "deployments": "deployment"}.get(kind.lower())
    if kind is None:
        raise ValueError(f"unsupported target {target!r}: use deploy/NAME[.NS] or POD[.NS]")
    name, dot, ns = rest.rpartition(".")
    if not dot:
        name, ns = rest, ""
    return kind, name, ns or namespace or "default"


def find_replica(status: dict[str, Body], target: str, namespace: str | None) -> Body:
    """The proxy-status entry of the target: a pod by name, or a Deployment's first replica (pods
    `<deployment>-<hash>-<suffix>`, by name)."""
    kind, name, ns = split_target(target, namespace)
    if not status:
        raise LookupError("no proxies found (is `meshway controlplane` running?)")
    in_ns = sorted((p for p in status.values() if p.get("namespace") == ns), key=lambda p: p.get("pod", ""))
    if kind == "pod":
        found = [p for p in in_ns if p.get("pod") == name]
    else:
        found = [p for p in in_ns
                 if p.get("pod", "").startswith(f"{name}-") and p["pod"][len(name) + 1:].count("-") == 1]
    if not found and kind == "pod":
        raise LookupError(f'no waypoint proxy for pod "{name}" in namespace {ns}')
    if not found:
        raise LookupError(f'no waypoint proxy for deployment "{name}" in namespace {ns}')
    return found[0]


def read_json_file(path: str) -> Body:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc


def fetch_json(c: Ctx, target: str | None, namespace: str | None, file: str | None, admin_path: str,
               command: str) -> Body:
    """The admin API answer for `admin_path` from the target's Envoy, or the `--file` contents."""
    if target is not None and file is not None:
        raise click.UsageError(f"{command} takes a TARGET or --file, not both")
    if target is None and file is None:
        raise click.UsageError(f"{command} requires a TARGET (deploy/NAME[.NS] or POD[.NS]) or --file")
    if file is not None:
        return read_json_file(file)
    replica = find_replica(load_proxy_status(c), target, namespace)
    try:
        body = fetch_admin(replica["admin"], admin_path)
    except AdminError as exc:
        raise ValueError(f"{replica['pod']}.{replica['namespace']}: {exc}") from exc
    return json.loads(body)


def fetch_config_dump(c: Ctx, target: str | None, namespace: str | None, file: str | None,
                      command: str) -> D.ConfigDump:
    return D.parse_config_dump(fetch_json(c, target, namespace, file, "/config_dump?include_eds", command))


# -- options -------------------------------------------------------------------------------------
def common_options(fn: Callable) -> Callable:
    for option in reversed([
        click.argument("target", required=False),
        click.option("-n", "--namespace", default=None, help="Namespace of TARGET (default: default)."),
        click.option("-f", "--file", "file", default=None, metavar="DUMP",
                     help="Read this stored Envoy dump (JSON of GET /config_dump) instead of the live proxy."),
        click.option("-o", "--output", type=click.Choice(["short", "json", "yaml"]), default="short",
                     show_default=True, help="Summary table, or the resources as JSON/YAML."),
    ]):
        fn = option(fn)
    return fn


def echo(text: str) -> None:
    click.echo(text, nl=False)


# -- commands ------------------------------------------------------------------------------------
@proxy_config.command_with_aliases("listener", "listeners", "l")
@common_options
@click.option("--waypoint", is_flag=True, help="Chains of the waypoint's listeners: LISTENER CHAIN MATCH DESTINATION.")
@click.option("--port", type=int, default=0, help="Filter listeners by port.")
@click.option("--address", default="", help="Filter listeners by address.")
@click.option("--type", "type_", default="", help="Filter listeners by type (HTTP, TCP, HTTP+TCP).")
@click.option("--verbose/--no-verbose", default=True, help="Show MATCH and DESTINATION columns.")
@pass_ctx
def listener(c: Ctx, target: str | None, namespace: str | None, file: str | None, output: str, waypoint: bool,
             port: int, address: str, type_: str, verbose: bool) -> None:
    """Listeners of a proxy's Envoy."""
    dump = fetch_config_dump(c, target, namespace, file, "listener")
    flt = D.ListenerFilter(address, port, type_)
    if output != "short":
        echo(D.write_protos([l for l in dump.listeners if flt.verify(l)], D.LISTENER_TYPE, output))
    elif waypoint:
        echo(D.write_waypoint_listeners([l for l in dump.listeners if flt.verify(l)]))
    else:
        echo(D.write_listeners(dump.listeners, flt, verbose))


@proxy_config.command_with_aliases("cluster", "clusters", "c")
@common_options
@click.option("--fqdn", default="", help="Filter clusters by substring of the service FQDN.")
@click.option("--direction", default="", help="Filter clusters by substring of the direction (inbound-vip).")
@click.option("--port", type=int, default=0, help="Filter clusters by port.")
@click.option("--subset", default="", help="Filter clusters by substring of the subset.")
@pass_ctx
def cluster(c: Ctx, target: str | None, namespace: str | None, file: str | None, output: str, fqdn: str,
            direction: str, port: int, subset: str) -> None:
    """Clusters of a proxy's Envoy (a node proxy's svc|…|HOST|PORT clusters as HOST, PORT)."""
    dump = fetch_config_dump(c, target, namespace, file, "cluster")
    flt = D.ClusterFilter(fqdn, direction, port, subset)
    if output == "short":
        echo(D.write_clusters(dump.clusters, flt))
    else:
        echo(D.write_protos(D.select_clusters(dump.clusters, flt), D.CLUSTER_TYPE, output))


@proxy_config.command_with_aliases("route", "routes", "r")
@common_options
@click.option("--name", default="", help="Show only the route configuration with this exact name.")
@click.option("--verbose/--no-verbose", default=True, help="One row per route instead of per route configuration.")
@pass_ctx
def route(c: Ctx, target: str | None, namespace: str | None, file: str | None, output: str, name: str,
          verbose: bool) -> None:
    """Route configurations of a proxy's Envoy (a waypoint's: one per HTTP chain over RDS, plus the inline ones)."""
    dump = fetch_config_dump(c, target, namespace, file, "route")
    if output == "short":
        echo(D.write_routes(dump.routes, name, verbose))
    else:
        echo(D.write_protos(D.select_routes(dump.routes, name), D.ROUTE_TYPE, output))


@proxy_config.command_with_aliases("endpoint", "endpoints", "ep")
@common_options
@click.option("--cluster", "cluster_name", default="", help="Filter endpoints by cluster name (exact).")
@click.option("--address", default="", help="Filter endpoints by address.")
@click.option("--port", type=int, default=0, help="Filter endpoints by port.")
@click.option("--status", default="", help="Filter endpoints by health status (HEALTHY, UNHEALTHY, ...).")
@pass_ctx
def endpoint(c: Ctx, target: str | None, namespace: str | None, file: str | None, output: str,
             cluster_name: str, address: str, port: int, status: str) -> None:
    """Endpoints of a proxy's Envoy, from its cluster status (--file: GET /clusters?format=json)."""
    data = fetch_json(c, target, namespace, file, "/clusters?format=json", "endpoint")
    flt = D.EndpointFilter(address, port, cluster_name, status)
    if isinstance(data, dict) and "configs" in data:  # a config dump given to --file: its EDS section
        dump = D.parse_config_dump(data)
        if output == "short":
            echo(D.write_eds(dump.endpoints, flt))
        else:
            echo(D.write_protos(dump.endpoints, D.ENDPOINT_TYPE, output))
        return
    statuses = D.parse_cluster_statuses(data)
    if output == "short":
        echo(D.write_endpoints(statuses, flt))
    else:
        echo(D.write_protos(D.select_cluster_statuses(statuses, flt), D.CLUSTER_STATUS_TYPE, output))


@proxy_config.command_with_aliases("secret", "secrets", "s")
@common_options
@pass_ctx
def secret(c: Ctx, target: str | None, namespace: str | None, file: str | None, output: str) -> None:
    """Secrets (workload certificates, root CA) of a proxy's Envoy."""
    dump = fetch_config_dump(c, target, namespace, file, "secret")
    if output == "short":
        echo(D.write_secrets(dump.secrets, datetime.now(timezone.utc)))
    else:
        echo(D.write_protos([s for _, s in dump.secrets], D.DYNAMIC_SECRET_TYPE, output))


@proxy_config.command_with_aliases("all", "a")
@common_options
@click.option("--with-headers", is_flag=True, help="Put a ------ CLUSTER INFO ------ banner above each section.")
@pass_ctx
def all_(c: Ctx, target: str | None, namespace: str | None, file: str | None, output: str,
         with_headers: bool) -> None:
    """Every summary at once; -o json|yaml prints the whole config dump."""
    data = fetch_json(c, target, namespace, file, "/config_dump?include_eds", "all")
    dump = D.parse_config_dump(data)
    if output == "short":
        echo(D.write_all(dump, datetime.now(timezone.utc), with_headers))
    else:
        data = D.redact(data)  # the xDS token in the bootstrap's node metadata
        echo(P.to_yaml(data) if output == "yaml" else P.to_json(data))


@proxy_config.command_with_aliases("bootstrap", "b")
@click.argument("target", required=False)
@click.option("-n", "--namespace", default=None, help="Namespace of TARGET (default: default).")
@click.option("-f", "--file", "file", default=None, metavar="DUMP",
              help="Read this stored Envoy dump (JSON of GET /config_dump) instead of the live proxy.")
@click.option("-o", "--output", type=click.Choice(["json", "yaml", "short"]), default="json", show_default=True,
              help="The bootstrap section of the config dump, or a version summary.")
@pass_ctx
def bootstrap(c: Ctx, target: str | None, namespace: str | None, file: str | None, output: str) -> None:
    """Bootstrap configuration of a proxy's Envoy (credentials in its node metadata redacted)."""
    data = fetch_json(c, target, namespace, file, "/config_dump?mask=bootstrap", "bootstrap")
    section = D.bootstrap_section(data)
    if output == "short":
        echo(D.write_bootstrap(section.get("bootstrap") or {}))
        return
    converted = D.to_proto_json(section, "envoy.admin.v3.BootstrapConfigDump")
    echo(P.to_yaml(converted) if output == "yaml" else P.to_json(converted))


@proxy_config.command_with_aliases("log", "o")
@click.argument("target")
@click.option("-n", "--namespace", default=None, help="Namespace of TARGET (default: default).")
@click.option("--level", default="", metavar="[LOGGER:]LEVEL,...",
              help="Set every logger (LEVEL) or named ones (LOGGER:LEVEL, comma-separated); levels: trace, debug, "
                   "info, warning, error, critical, off.")
@click.option("-r", "--reset", is_flag=True, help="Reset every logger to the level the proxy was started with.")
@pass_ctx
def log(c: Ctx, target: str, namespace: str | None, level: str, reset: bool) -> None:
    """Logging levels of a proxy's Envoy (POST /logging), and set them."""
    if reset and level:
        raise click.UsageError("--level cannot be combined with --reset")
    replica = find_replica(load_proxy_status(c), target, namespace)
    where = f"{replica['pod']}.{replica['namespace']}"
    try:
        response = apply_log_levels(replica["admin"], level, reset)
    except AdminError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    echo(f"{where}:\n{response}")


def apply_log_levels(admin: str, level: str, reset: bool) -> str:
    """POST /logging: the levels `--level` asks for (loggers checked against the proxy's), every
    logger back to the proxy's start-up level (`--reset`, from /server_info), or nothing; Envoy's
    answer (the active loggers) after the last change."""
    from .envoylog import build_log_queries, find_loggers, parse_level_spec

    levels: list[tuple[str, str]] = []
    if reset:
        info = json.loads(fetch_admin(admin, "/server_info"))
        levels = [("level", (info.get("command_line_options") or {}).get("log_level") or "warning")]
    elif level:
        levels = parse_level_spec(level, find_loggers(fetch_admin(admin, "/logging", method="POST").decode()))
    response = b""
    for query in build_log_queries(levels):
        response = fetch_admin(admin, query, method="POST")
    return response.decode()
