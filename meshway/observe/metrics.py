"""Istio's standard metrics from a proxy's own Prometheus output (pure).

The stat names meshway generates carry Istio's labels as Envoy tags (`meshway.xds.stat_tags`), so
Envoy's `/stats/prometheus` already has them on the tagged series. This module renames those series
to Istio's metric names, fills the labels stock Envoy cannot know with "unknown" (as Istio does for
an unknown peer), sums series that end up with the same labels, and writes Prometheus text.

HTTP, from the waypoint's service clusters (tag request_protocol="http"):
- istio_requests_total: `upstream_rq_<code>`, every request sent upstream (a retry counts again);
- istio_request_duration_milliseconds: `upstream_rq_time` (the upstream part of the request);
- istio_request_bytes, istio_response_bytes: `upstream_rq_body_size`, `upstream_rs_body_size`.
TCP (request_protocol="tcp"), from a tagged cluster's connections (a node proxy's plaintext inbound):
- istio_tcp_connections_opened_total: `upstream_cx_total`;
- istio_tcp_connections_closed_total: `upstream_cx_destroy`;
- istio_tcp_received_bytes_total: `upstream_cx_tx_bytes_total`;
- istio_tcp_sent_bytes_total: `upstream_cx_rx_bytes_total`.

Requests the waypoint answers itself (an RBAC 403, a fault abort, no route) never reach a cluster and
are not counted here; source workload labels are not in Envoy's stats and stay "unknown". So the
control plane and `meshway metrics` take a waypoint's HTTP series from its request log instead
(`meshway.observe.requests`: every request, with the caller's labels) and only its TCP series from here;
likewise a node proxy's `reporter="destination"` series of HBONE tunnels come from its tunnel log
and its `reporter="source"` series from its connection log (`meshway.observe.tunnels`, with the
calling pod's labels: neither the tunnels' cluster nor the outbound chains carry labels).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

CLUSTER_ID = "Kubernetes"
UNKNOWN = "unknown"
_PEER = ("workload", "workload_namespace", "principal", "app", "version", "canonical_service",
         "canonical_revision", "cluster")
LABELS = ("reporter", *(f"source_{p}" for p in _PEER), *(f"destination_{p}" for p in _PEER),
          "destination_service", "destination_service_name", "destination_service_namespace",
          "request_protocol", "response_code", "connection_security_policy")
TCP_LABELS = tuple(label for label in LABELS if label != "response_code")

HISTOGRAMS = {"envoy_cluster_upstream_rq_time": "istio_request_duration_milliseconds",
              "envoy_cluster_upstream_rq_body_size": "istio_request_bytes",
              "envoy_cluster_upstream_rs_body_size": "istio_response_bytes"}
HTTP_SERIES = {  # Envoy sample name -> Istio sample name, for request_protocol="http"
    "envoy_cluster_upstream_rq": "istio_requests_total",
    **{f"{e}_{s}": f"{i}_{s}" for e, i in HISTOGRAMS.items() for s in ("bucket", "sum", "count")},
}
TCP_SERIES = {  # for request_protocol="tcp"
    "envoy_cluster_upstream_cx_total": "istio_tcp_connections_opened_total",
    "envoy_cluster_upstream_cx_destroy": "istio_tcp_connections_closed_total",
    "envoy_cluster_upstream_cx_tx_bytes_total": "istio_tcp_received_bytes_total",
    "envoy_cluster_upstream_cx_rx_bytes_total": "istio_tcp_sent_bytes_total",
}
FAMILIES = (  # name, type, help
    ("istio_requests_total", "counter", "Requests the proxy sent to a destination, by response code."),
    ("istio_request_duration_milliseconds", "histogram", "Request duration (upstream time) in milliseconds."),
    ("istio_request_bytes", "histogram", "HTTP request body sizes in bytes."),
    ("istio_response_bytes", "histogram", "HTTP response body sizes in bytes."),
    ("istio_tcp_connections_opened_total", "counter", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "counter", "TCP connections closed."),
    ("istio_tcp_received_bytes_total", "counter", "Bytes received from the client, over TCP connections."),
    ("istio_tcp_sent_bytes_total", "counter", "Bytes sent to the client, over TCP connections."),
)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float

    def label(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.labels if k == name), default)


@dataclass(frozen=True)
class Family:
    name: str
    type: str  # counter | gauge | histogram
    help: str
    samples: tuple[Sample, ...]


# -- Envoy's Prometheus text ---------------------------------------------------------------------
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")


def parse_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line of Prometheus text, names exactly as written."""
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue  # comments, blank lines
        labels = {k: _ESCAPE.sub(lambda e: "\n" if e[1] == "n" else e[1], v) for k, v in _LABEL.findall(m[2] or "")}
        yield m[1], labels, float(m[3])


# -- translation ---------------------------------------------------------------------------------
def build_istio_labels(tags: Mapping[str, str], names: tuple[str, ...]) -> Labels:
    """Istio's label set from Envoy tags: `envoy_*` tags dropped, "unknown" where not known, SPIFFE
    principals given back their scheme, the cluster of each side known if any of its labels is."""
    out = {k: v for k, v in tags.items() if k in names}
    for side in ("source", "destination"):
        if f"{side}_principal" in out:
            out[f"{side}_principal"] = "spiffe://" + out[f"{side}_principal"]
        if any(k.startswith(f"{side}_") for k in out):
            out.setdefault(f"{side}_cluster", CLUSTER_ID)
    return tuple((k, out.get(k, UNKNOWN)) for k in names)


def build_istio_metrics(text: str, extra: Mapping[str, str] | None = None, requests: bool = True) -> list[Family]:
    """Istio's metric families from one proxy's `/stats/prometheus` text; `extra` labels (e.g. the
    proxy's pod and namespace) are added to every sample. `requests=False`: no HTTP series (a
    waypoint's come from its request log, `meshway.observe.requests`, with the caller's labels)."""
    extra_labels = tuple((extra or {}).items())
    sums: dict[tuple[str, Labels], float] = {}

    def add(name: str, labels: Labels, value: float) -> None:
        sums[(name, labels)] = sums.get((name, labels), 0.0) + value

    for name, tags, value in parse_samples(text):
        protocol = tags.get("request_protocol")
        if "reporter" not in tags:
            continue
        if protocol == "http" and name in HTTP_SERIES and requests:
            if name == "envoy_cluster_upstream_rq":
                tags = {**tags, "response_code": tags.get("envoy_response_code", "0")}
            labels = build_istio_labels(tags, LABELS) + extra_labels
            add(HTTP_SERIES[name], labels + ((("le", tags["le"]),) if "le" in tags else ()), value)
        elif protocol == "tcp" and name in TCP_SERIES:
            add(TCP_SERIES[name], build_istio_labels(tags, TCP_LABELS) + extra_labels, value)
    return _families(sums)


_RANK = {"bucket": 0, "sum": 1, "count": 2}


def _order(item: tuple[tuple[str, Labels], float]) -> tuple:
    """Series by labels; a histogram's buckets by bound, then _sum and _count."""
    (name, labels), _ = item
    le = dict(labels).get("le")
    return tuple(kv for kv in labels if kv[0] != "le"), _RANK.get(name.rpartition("_")[2], 0), float(le or 0)


def _families(sums: Mapping[tuple[str, Labels], float]) -> list[Family]:
    out = []
    for name, type_, help_ in FAMILIES:
        items = [i for i in sums.items() if i[0][0] == name
                 or (type_ == "histogram" and i[0][0].rpartition("_")[0] == name)]
        if items:
            out.append(Family(name, type_, help_, tuple(Sample(n, labels, v) for (n, labels), v in
                                                        sorted(items, key=_order))))
    return out


def merge_families(groups: Iterable[Iterable[Family]]) -> list[Family]:
    """One family per name (Prometheus text allows a name once), samples in the order given."""
    merged: dict[str, Family] = {}
    for families in groups:
        for f in families:
            have = merged.get(f.name)
            merged[f.name] = f if have is None else Family(f.name, f.type, f.help, have.samples + f.samples)
    return list(merged.values())


# -- Prometheus text -----------------------------------------------------------------------------
def _value(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 2**53 else repr(v)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def write_text(families: Iterable[Family]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines = []
    for f in families:
        lines += [f"# HELP {f.name} {f.help}", f"# TYPE {f.name} {f.type}"]
        for s in f.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
            lines.append(f"{s.name}{{{labels}}} {_value(s.value)}" if labels else f"{s.name} {_value(s.value)}")
    return "\n".join(lines) + "\n" if lines else ""
