"""`meshway metrics [TARGET]`: Istio's standard metrics of the mesh, read from the proxies' own stats.

Like `istioctl experimental metrics`, but from counters (meshway keeps no time series): requests,
error requests and latency quantiles per destination service and version since the proxies started,
and TCP connections and bytes per reporter, source and destination. `-o prometheus` prints the
Istio-named Prometheus text the control plane's `--metrics-addr` endpoint serves.

Commands gather (proxy-status.json, each proxy's admin socket, the control plane's tally of the
proxies' logs); the writers below render.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import click

from ..mesh.view import build_pod
from ..model import find_kind
from ..observe.metrics import Family, Sample, build_istio_metrics, merge_families, write_text
from ..observe.requests import FILE_NAME as REQUESTS_FILE, parse_request_families
from ..observe.summary import HttpRow, Predicate, TcpRow, build_http_rows, build_tcp_rows
from ..runtime.monitoring import SCRAPE_PATH
from ..xds.stat_tags import find_workload_name
from . import printers as P
from .controlplane import load_proxy_status
from ..runtime.envoy_admin import AdminError, fetch_admin
from .main import Ctx, cli, pass_ctx
from .proxyconfig import split_target

Body = dict[str, Any]


# -- gathering -----------------------------------------------------------------------------------
def _is_replica(pod: str, deployment: str) -> bool:
    return pod.startswith(f"{deployment}-") and pod[len(deployment) + 1:].count("-") == 1


def find_target(c: Ctx, status: dict[str, Body], target: str | None,
                namespace: str | None) -> tuple[list[Body], Predicate]:
    """(the proxies to read, the series to keep): a proxy's own reports for a waypoint or node proxy
    (deploy/NAME, POD), the series about a service (svc/NAME) or an application workload otherwise."""
    proxies = sorted(status.values(), key=lambda p: (p["namespace"], p["pod"]))
    if target is None:
        return proxies, lambda s: True
    kind, _, rest = target.rpartition("/")
    if kind.lower() in ("svc", "service", "services"):
        name, _, ns = rest.partition(".")
        ns = ns or namespace or "default"
        return proxies, lambda s: (s.label("destination_service_name"), s.label("destination_service_namespace")) \
            == (name, ns)
    kind, name, ns = split_target(target, namespace)
    own = [p for p in proxies if (p["namespace"] == ns or (kind == "pod" and namespace is None))
           and (p["pod"] == name if kind == "pod" else _is_replica(p["pod"], name))]
    if own:
        return own[:1] if kind == "pod" else own, lambda s: True
    workload = name
    if kind == "pod":
        pods = [b for b in c.store.list(find_kind("pod"), ns) if b["metadata"]["name"] == name]
        if not pods:
            raise LookupError(f'pod "{name}" not found in namespace {ns}')
        workload = find_workload_name(build_pod(pods[0]))
    return proxies, lambda s: (s.label("destination_workload"), s.label("destination_workload_namespace")) \
        == (workload, ns)


def fetch_families(proxies: list[Body], tally: str | None = None,
                   fetch: Callable[[Body, str], bytes] | None = None) -> list[Family]:
    """The proxies' Istio metrics: from their admin sockets (or `fetch`: on Kubernetes through
    port-forward), a waypoint's HTTP series and a node proxy's tunnel and connection series from the
    control plane's tally of their logs (`tally`, Prometheus text; None: a waypoint's HTTP series from
    its own stats, without source labels)."""
    groups = []
    for p in proxies:
        try:
            text = (fetch(p, SCRAPE_PATH) if fetch else fetch_admin(p["admin"], SCRAPE_PATH)).decode()
        except AdminError as exc:
            raise ValueError(f"{p['pod']}.{p['namespace']}: {exc}") from exc
        groups.append(build_istio_metrics(text, {"pod": p["pod"], "namespace": p["namespace"]},
                                          p.get("type") != "waypoint" or tally is None))
    names = find_tally_names(proxies)
    if names and tally is not None:
        groups.append(rename_proxies(parse_request_families(
            tally, lambda labels: (labels.get("pod"), labels.get("namespace")) in names), names))
    return merge_families(groups)


def find_tally_names(proxies: list[Body]) -> dict[tuple[str, str], tuple[str, str]]:
    """(pod, namespace) as the control plane's tally names a proxy -> as the CLI shows it. The tally
    names a proxy by its node id, whose pod is a node proxy's `ztunnel-<node>` (`build_node_proxy_id`):
    on Kubernetes that node's ztunnel DaemonSet pod (`find_kube_proxies` gives its node)."""
    names = {(p["pod"], p["namespace"]): (p["pod"], p["namespace"]) for p in proxies}
    names.update({(f"ztunnel-{p['node']}", p["namespace"]): (p["pod"], p["namespace"]) for p in proxies
                  if p.get("type") == "ztunnel" and p.get("node")})
    return names


def rename_proxies(families: list[Family], names: dict[tuple[str, str], tuple[str, str]]) -> list[Family]:
    def rename(labels: tuple) -> tuple:
        found = dict(labels)
        shown = names.get((found.get("pod", ""), found.get("namespace", "")))
        return tuple((k, shown[0] if k == "pod" and shown else v) for k, v in labels)
    return [Family(f.name, f.type, f.help, tuple(Sample(s.name, rename(s.labels), s.value) for s in f.samples))
            for f in families]


def read_tally(path: Path) -> str:
    """The tally the local control plane writes (`request-metrics.prom`; empty before its first write)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def select(families: list[Family], keep: Predicate) -> list[Family]:
    kept = [Family(f.name, f.type, f.help, tuple(s for s in f.samples if keep(s))) for f in families]
    return [f for f in kept if f.samples]


# -- writers -------------------------------------------------------------------------------------
def format_latency(ms: float) -> str:
    if math.isnan(ms):
        return "-"
    return f"{ms / 1000:.2f}s" if ms >= 1000 else f"{ms:.1f}ms"


def write_http(rows: list[HttpRow]) -> str:
    table = [["DESTINATION", "VERSION", "REQUESTS", "ERRORS", "P50 LATENCY", "P90 LATENCY", "P99 LATENCY"]]
    table += [[r.service, r.version, str(r.requests), str(r.errors), format_latency(r.p50), format_latency(r.p90),
               format_latency(r.p99)] for r in rows]
    return P.tabwrite(table)


def write_tcp(rows: list[TcpRow]) -> str:
    table = [["REPORTER", "SOURCE", "DESTINATION", "OPENED", "CLOSED", "RECEIVED BYTES", "SENT BYTES"]]
    table += [[r.reporter, r.source, r.destination, str(r.opened), str(r.closed), str(r.received), str(r.sent)]
              for r in rows]
    return P.tabwrite(table)


def write_metrics(families: list[Family]) -> str:
    http, tcp = build_http_rows(families), build_tcp_rows(families)
    parts = ([write_http(http)] if http else []) + ([write_tcp(tcp)] if tcp else [])
    return "\n".join(parts)


# -- command -------------------------------------------------------------------------------------
@cli.command()
@click.argument("target", required=False)
@click.option("-n", "--namespace", default=None, help="Namespace of TARGET (default: default).")
@click.option("-o", "--output", type=click.Choice(["short", "prometheus"]), default="short", show_default=True,
              help="Summary tables, or the Istio metrics as Prometheus text.")
@pass_ctx
def metrics(c: Ctx, target: str | None, namespace: str | None, output: str) -> None:
    """Istio metrics from the proxies' own counters: requests, errors and latency per destination
    service and version, TCP connections and bytes.

    TARGET: deploy/NAME[.NS] or POD[.NS] of a waypoint or node proxy (what it reports), svc/NAME[.NS]
    (traffic to a service), deploy/NAME or POD of an application (traffic to that workload); none:
    the whole mesh. On Kubernetes (--kubeconfig) the waypoint and node proxy pods, read through the
    API server's port-forward, and the control plane's tally of their logs from its monitoring port
    (the address on its Lease; without one, a waypoint's requests from its own stats, no source labels)."""
    if c.backend.kubernetes:
        from .kubeproxies import fetch_kube_admin, fetch_kube_tally, find_kube_proxies

        status = find_kube_proxies(c.store.list(find_kind("pod"), None))
        fetch = fetch_kube_admin(c.store.client.api)  # type: ignore[attr-defined]
        tally, problem = fetch_kube_tally(c.store.client) if status else (None, "")  # type: ignore[attr-defined]
        if problem:
            click.echo(f"Warning: {problem}: a waypoint's requests come from its own stats, without source "
                       "labels, and the node proxies' tunnel and connection series are missing", err=True)
    else:
        status, tally, fetch = load_proxy_status(c), read_tally(c.store.state_dir / "run" / REQUESTS_FILE), None
    if not status:
        raise LookupError("no proxies found (is `meshway controlplane` running?)")
    proxies, keep = find_target(c, status, target, namespace)
    families = select(fetch_families(proxies, tally, fetch), keep)
    if output == "prometheus":
        click.echo(write_text(families), nl=False)
    elif families:
        click.echo(write_metrics(families), nl=False)
    else:
        click.echo("No metrics found (no traffic yet?).", err=True)

