"""Per-destination summaries of Istio metrics, from counters and histograms (pure).

`istioctl experimental metrics` asks Prometheus for rates over a minute; meshway has no time series,
so a row has totals since the proxies started: requests, error requests (4xx and 5xx, as istioctl
counts them) and latency quantiles interpolated in the duration histogram as PromQL's
`histogram_quantile` does.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .metrics import Family, Sample

Predicate = Callable[[Sample], bool]


@dataclass(frozen=True)
class HttpRow:
    service: str
    version: str
    requests: int
    errors: int
    p50: float  # milliseconds; NaN when there is no observation
    p90: float
    p99: float


@dataclass(frozen=True)
class TcpRow:
    reporter: str
    source: str
    destination: str
    opened: int
    closed: int
    received: int
    sent: int


def find_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """PromQL `histogram_quantile` over cumulative (upper bound, count) buckets ending with +Inf."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] == 0:
        return math.nan
    rank, lower, below = q * ordered[-1][1], 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below) if count > below else lower
        lower, below = upper, count
    return lower


def _samples(families: Iterable[Family], name: str, keep: Predicate) -> list[Sample]:
    return [s for f in families for s in f.samples if s.name == name and keep(s)]


def build_http_rows(families: list[Family], keep: Predicate = lambda s: True) -> list[HttpRow]:
    """One row per (destination service, version)."""
    def key(s: Sample) -> tuple[str, str]:
        return s.label("destination_service"), s.label("destination_version")

    totals: dict[tuple, list[int]] = {}
    for s in _samples(families, "istio_requests_total", keep):
        row = totals.setdefault(key(s), [0, 0])
        row[0] += int(s.value)
        row[1] += int(s.value) if s.label("response_code")[:1] in ("4", "5") else 0
    buckets: dict[tuple, dict[float, float]] = {}
    for s in _samples(families, "istio_request_duration_milliseconds_bucket", keep):
        by_le = buckets.setdefault(key(s), {})
        by_le[float(s.label("le"))] = by_le.get(float(s.label("le")), 0.0) + s.value
    rows = []
    for k in sorted(set(totals) | set(buckets)):
        requests, errors = totals.get(k, [0, 0])
        hist = list(buckets.get(k, {}).items())
        rows.append(HttpRow(*k, requests, errors, *(find_quantile(q, hist) for q in (0.5, 0.9, 0.99))))
    return rows


TCP = {"istio_tcp_connections_opened_total": 0, "istio_tcp_connections_closed_total": 1,
       "istio_tcp_received_bytes_total": 2, "istio_tcp_sent_bytes_total": 3}


def build_tcp_rows(families: list[Family], keep: Predicate = lambda s: True) -> list[TcpRow]:
    """One row per (reporter, source, destination): the best-known name of each side."""
    def side(s: Sample, which: str) -> str:
        for label in (f"{which}_service", f"{which}_workload", f"{which}_principal"):
            value = s.label(label, "unknown")
            if value != "unknown":
                ns = s.label(f"{which}_workload_namespace", "unknown")
                return f"{value}.{ns}" if label.endswith("workload") and ns != "unknown" else value
        return "unknown"

    rows: dict[tuple[str, str, str], list[int]] = {}
    for f in families:
        for s in f.samples:
            if s.name in TCP and keep(s):
                row = rows.setdefault((s.label("reporter"), side(s, "source"), side(s, "destination")), [0] * 4)
                row[TCP[s.name]] += int(s.value)
    return [TcpRow(*k, *v) for k, v in sorted(rows.items())]
