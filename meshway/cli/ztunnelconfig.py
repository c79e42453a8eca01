"""`meshway ztunnel-config` (alias `zc`): what a node proxy holds, as `istioctl ztunnel-config` shows
a ztunnel's. Commands gather (the node proxy's config dump and /certs through its admin socket, the
store's pods and AuthorizationPolicies); `ztunneldump` builds the dump and renders it.

On Kubernetes (`--kubeconfig`) the node proxies are the `ztunnel` DaemonSet's pods, and their admin
port (localhost:15000 in the node's namespace) is reached as istioctl reaches it: a port-forward
through the API server (`meshway.kube.portforward`), which the node agent serves."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any, Callable

import click

from . import ztunneldump as Z
from .controlplane import load_proxy_status
from .main import Ctx, cli, pass_ctx
from .proxyconfig import AliasGroup, apply_log_levels, echo, read_json_file
from ..runtime.envoy_admin import AdminError, fetch_admin

Body = dict[str, Any]
ROOT_NAMESPACE = "istio-system"
OUTPUTS = click.Choice(["short", "json", "yaml"])


@cli.group("ztunnel-config", cls=AliasGroup)
def ztunnel_config() -> None:
    """What a node proxy (ztunnel) holds: workloads, services, policies, certificates (alias: zc).

    TARGET is a node proxy, ztunnel-node-N[.istio-system], or ds/ztunnel (the first one); --node NODE
    picks the node proxy of that node; --file reads a stored dump (`ztunnel-config all -o json`)."""


_alias = copy.copy(ztunnel_config)
_alias.hidden = True
cli.add_command(_alias, "zc")


# -- gathering -----------------------------------------------------------------------------------
def find_node_proxy(status: dict[str, Body], target: str | None, node: str | None, namespace: str | None) -> Body:
    """The proxy-status entry of a node proxy: by pod name, by node (`ztunnel-<node>`), or the first."""
    proxies = sorted((p for p in status.values() if p.get("type") == "ztunnel"), key=lambda p: p.get("pod", ""))
    if not proxies:
        raise LookupError("no node proxies found (is the mesh running? `meshway up` starts it)")
    if node:
        found = [p for p in proxies if p.get("pod") == f"ztunnel-{node}" or p.get("node") == node]
        if not found:
            raise LookupError(f'no node proxy on node "{node}" (nodes: '
                              f'{", ".join(p.get("node") or p["pod"].removeprefix("ztunnel-") for p in proxies)})')
        return found[0]
    if target is None or target.split(".")[0].lower() in ("ds/ztunnel", "daemonset/ztunnel"):
        return proxies[0]
    name, _, ns = target.removeprefix("pod/").partition(".")
    if (ns or namespace or ROOT_NAMESPACE) != ROOT_NAMESPACE:
        raise LookupError(f"{target}: node proxies run in namespace {ROOT_NAMESPACE}")
    found = [p for p in proxies if p.get("pod") == name]
    if not found:
        raise LookupError(f'{target}: not a node proxy (they are {", ".join(p["pod"] for p in proxies)})')
    return found[0]


def find_kube_node_proxies(pods: list[Body]) -> dict[str, Body]:
    """The running node proxy pods of a cluster as proxy entries: pod, namespace, type, node."""
    from .kubeproxies import find_kube_proxies

    return {k: p for k, p in find_kube_proxies(pods).items() if p["type"] == "ztunnel"}


def fetch_ztunnel_dump(c: Ctx, target: str | None, node: str | None, namespace: str | None,
                       file: str | None) -> Body:
    set_ = sum(1 for x in (target, node, file) if x)
    if set_ > 1:
        raise click.UsageError("at most one of --file, --node, or pod name must be passed")
    if file:
        return Z.parse_ztunnel_dump(read_json_file(file))
    from ..model import find_kind

    pods = c.store.list(find_kind("pod"), None)
    if c.backend.kubernetes:
        from .kubeproxies import fetch_kube_admin

        proxy = find_node_proxy(find_kube_node_proxies(pods), target, node, namespace)
        fetch = fetch_kube_admin(c.store.client.api)  # type: ignore[attr-defined]
        config_dump, certs = json.loads(fetch(proxy, "/config_dump")), json.loads(fetch(proxy, "/certs"))
    else:
        proxy = find_node_proxy(load_proxy_status(c), target, node, namespace)
        try:
            config_dump = json.loads(fetch_admin(proxy["admin"], "/config_dump"))
            certs = json.loads(fetch_admin(proxy["admin"], "/certs"))
        except AdminError as exc:
            raise ValueError(f"{proxy['pod']}.{proxy['namespace']}: {exc}") from exc
    policies = c.store.list(find_kind("authorizationpolicy"), None)
    peer_authns = c.store.list(find_kind("peerauthentication"), None)
    return Z.build_ztunnel_dump(config_dump, certs, pods, policies, peer_authns=peer_authns)


def common_options(fn: Callable) -> Callable:
    for option in reversed([
        click.argument("target", required=False),
        click.option("--node", default=None, help="The node proxy of this node (e.g. node-2)."),
        click.option("-o", "--output", type=OUTPUTS, default="short", show_default=True,
                     help="Summary table, or the entries as JSON/YAML."),
        click.option("-f", "--file", "file", default=None, metavar="DUMP",
                     help="Read a stored dump (`ztunnel-config all -o json`) instead of a live node proxy."),
    ]):
        fn = option(fn)
    return fn


def namespace_filter(flag: str) -> Callable:
    def decorator(fn: Callable) -> Callable:
        fn = click.option(f"--{flag}", "filter_ns", default="", help=f"Filter by namespace (as -n).")(fn)
        return click.option("-n", "--namespace", default=None,
                            help="Only entries of this namespace (TARGET is always in istio-system).")(fn)
    return decorator


# -- commands ------------------------------------------------------------------------------------
@ztunnel_config.command_with_aliases("workload", "workloads", "w")
@common_options
@namespace_filter("workload-namespace")
@click.option("--address", default="", help="Filter workloads by address.")
@click.option("--workload-node", default="", help="Filter workloads by node.")
@pass_ctx
def workload(c: Ctx, target: str | None, node: str | None, output: str, file: str | None, namespace: str | None,
             filter_ns: str, address: str, workload_node: str) -> None:
    """Workloads the node proxy knows: its local pods, the mesh pods and the services' endpoints."""
    dump = fetch_ztunnel_dump(c, target, node, None, file)
    flt = Z.WorkloadFilter(filter_ns or namespace or "", address, workload_node)
    echo(Z.write_workloads(dump, flt) if output == "short" else Z.write_data(Z.select_workloads(dump, flt), output))


@ztunnel_config.command_with_aliases("service", "services", "s", "svc")
@common_options
@namespace_filter("service-namespace")
@pass_ctx
def service(c: Ctx, target: str | None, node: str | None, output: str, file: str | None, namespace: str | None,
            filter_ns: str) -> None:
    """Services the node proxy routes: VIPs, waypoint, endpoints (healthy/all)."""
    dump = fetch_ztunnel_dump(c, target, node, None, file)
    ns = filter_ns or namespace or ""
    echo(Z.write_services(dump, ns) if output == "short"
         else Z.write_data(Z.select_by_namespace(dump["services"], ns), output))


@ztunnel_config.command_with_aliases("policy", "policies", "p", "pol")
@common_options
@namespace_filter("policy-namespace")
@pass_ctx
def policy(c: Ctx, target: str | None, node: str | None, output: str, file: str | None, namespace: str | None,
           filter_ns: str) -> None:
    """AuthorizationPolicies the node proxy enforces for its local pods."""
    dump = fetch_ztunnel_dump(c, target, node, None, file)
    ns = filter_ns or namespace or ""
    echo(Z.write_policies(dump, ns) if output == "short"
         else Z.write_data(Z.select_by_namespace(dump["policies"], ns), output))


@ztunnel_config.command_with_aliases("certificate", "certificates", "certs", "cert")
@common_options
@pass_ctx
def certificate(c: Ctx, target: str | None, node: str | None, output: str, file: str | None) -> None:
    """Workload certificates the node proxy holds (Envoy's /certs), one row per certificate."""
    dump = fetch_ztunnel_dump(c, target, node, None, file)
    echo(Z.write_certificates(dump, datetime.now(timezone.utc)) if output == "short"
         else Z.write_data(dump["certificates"], output))


@ztunnel_config.command_with_aliases("all", "a")
@common_options
@pass_ctx
def all_(c: Ctx, target: str | None, node: str | None, output: str, file: str | None) -> None:
    """Every summary; -o json|yaml prints the whole dump."""
    dump = fetch_ztunnel_dump(c, target, node, None, file)
    echo(Z.write_all(dump, datetime.now(timezone.utc)) if output == "short" else Z.write_data(dump, output))


@ztunnel_config.command_with_aliases("log", "o")
@click.argument("target", required=False)
@click.option("--node", default=None, help="The node proxy of this node.")
@click.option("--level", default="", metavar="[LOGGER:]LEVEL,...", help="Set every logger or named ones.")
@click.option("-r", "--reset", is_flag=True, help="Reset every logger to the level the proxy was started with.")
@pass_ctx
def log(c: Ctx, target: str | None, node: str | None, level: str, reset: bool) -> None:
    """Logging levels of node proxies (every one without TARGET or --node), and set them."""
    if reset and level:
        raise click.UsageError("--level cannot be combined with --reset")
    if c.backend.kubernetes:
        raise click.UsageError("ztunnel-config log works on the local mesh; on Kubernetes: istioctl ztunnel-config "
                               "log, or kubectl port-forward to the pod's admin port 15000")
    status = load_proxy_status(c)
    proxies = ([find_node_proxy(status, target, node, None)] if target or node else
               sorted((p for p in status.values() if p.get("type") == "ztunnel"), key=lambda p: p["pod"]))
    if not proxies:
        raise LookupError("no node proxies found (is the mesh running? `meshway up` starts it)")
    for proxy in proxies:
        where = f"{proxy['pod']}.{proxy['namespace']}"
        try:
            response = apply_log_levels(proxy["admin"], level, reset)
        except AdminError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        echo(f"{where}:\n{response}\n")
