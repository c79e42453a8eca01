"""Istio's request metrics of waypoints, with the caller's identity, from their request log (pure).

Each waypoint HTTP chain streams one entry per downstream request to the control plane
(`meshway.xds.build_request_log`), requests the waypoint answers itself included (an RBAC 403, a
429, a fault abort, no route). Here an entry becomes Istio's labels and is counted:

- source labels from the HBONE peer's SPIFFE identity and the calling pod (`find_caller_labels`):
  `source_principal`, `source_workload_namespace` (the identity's namespace), `source_workload` (the
  Deployment of a ReplicaSet's pod, else the pod's name), `source_app`/`source_version` (the pod's
  `app`/`version` labels), the canonical service and revision. The pod is the one at the address its
  node proxy wrote on the CONNECT (`meshway.xds.build_peer_source`) if that pod has the peer's
  identity; without one, the pods of the identity's service account, where they agree;
  `source_cluster`; `connection_security_policy="mutual_tls"` (HBONE);
- destination labels as the waypoint's cluster stats carry them (`meshway.xds.stat_tags`, the
  cluster's `alt_stat_name`) for a request an upstream answered, else the chain's service;
- `istio_requests_total` by response code, `istio_request_duration_milliseconds` (the whole request,
  as Istio's), `istio_request_bytes`/`istio_response_bytes` (headers and body, as Istio's) with
  Envoy's default buckets.

Memory is bounded: at most `max_series` label sets per proxy; requests beyond that are counted in
`meshway_request_metrics_overflow_total` instead.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..mesh.view import PodInfo
from ..xds.stat_tags import build_principal, find_workload_name
from .metrics import LABELS, Family, Labels, Sample, build_istio_labels

# Envoy's default histogram buckets (those of the stats meshway read before).
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
           1800000, 3600000)
MAX_SERIES = 5000  # label sets per proxy
FILE_NAME = "request-metrics.prom"  # in the control plane's run folder, for `meshway metrics`
_SPIFFE = re.compile(r"^spiffe://[^/]+/ns/([^/]+)/sa/([^/]+)$")
HISTOGRAMS = (("istio_request_duration_milliseconds", "Request duration in milliseconds."),
              ("istio_request_bytes", "HTTP request sizes (headers and body) in bytes."),
              ("istio_response_bytes", "HTTP response sizes (headers and body) in bytes."))


@dataclass(frozen=True)
class RequestRecord:
    """What one request-log entry says, as plain data."""

    principal: str  # the caller's SPIFFE identity, "" if none
    cluster: str  # the upstream cluster that answered, "" for a reply of the waypoint's own
    tags: Mapping[str, str]  # the chain's custom tags (its service)
    response_code: int
    duration_ms: float
    request_bytes: int
    response_bytes: int
    forwarded: str = ""  # the caller's pod address its node proxy sent on the CONNECT (`parse_forwarded`)


def _filter_state(common, key: str) -> str:
    from google.protobuf.wrappers_pb2 import StringValue

    packed = common.filter_state_objects.get(key)
    value = StringValue()
    return value.value if packed is not None and packed.Unpack(value) else ""


def read_entry(entry) -> RequestRecord:
    """An `envoy.data.accesslog.v3.HTTPAccessLogEntry` as a RequestRecord."""
    common = entry.common_properties
    principal = _filter_state(common, "io.istio.peer_principal")
    answered = common.HasField("upstream_remote_address") or common.HasField("time_to_first_upstream_rx_byte")
    duration = common.time_to_last_downstream_tx_byte
    return RequestRecord(
        principal=principal, cluster=common.upstream_cluster if answered else "", tags=dict(common.custom_tags),
        response_code=entry.response.response_code.value,
        duration_ms=duration.seconds * 1000 + duration.nanos / 1e6,
        request_bytes=entry.request.request_headers_bytes + entry.request.request_body_bytes,
        response_bytes=entry.response.response_headers_bytes + entry.response.response_body_bytes,
        forwarded=parse_forwarded(_filter_state(common, "io.meshway.peer_forwarded")))


def _agreed(values: Iterable[str]) -> str:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else ""


def find_source_labels(pods: Iterable[PodInfo], principal: str) -> dict[str, str]:
    """Istio's source labels of a caller known by its SPIFFE identity (empty: unknown caller). The
    pods of the identity's service account name the workload when they agree on it."""
    m = _SPIFFE.match(principal)
    if m is None:
        return {}
    namespace, account = m.groups()
    mine = [p for p in pods if p.namespace == namespace and p.service_account == account]
    workload = _agreed(find_workload_name(p) for p in mine)
    labels = {"source_principal": build_principal(principal), "source_workload_namespace": namespace,
              "source_workload": workload, "source_app": _agreed(p.labels.get("app", "") for p in mine),
              "source_version": _agreed(p.labels.get("version", "") for p in mine)}
    if workload:
        labels["source_canonical_service"] = _agreed(
            p.labels.get("service.istio.io/canonical-name") or p.labels.get("app.kubernetes.io/name")
            or p.labels.get("app") or workload for p in mine)
        labels["source_canonical_revision"] = _agreed(
            p.labels.get("service.istio.io/canonical-revision") or p.labels.get("app.kubernetes.io/version")
            or p.labels.get("version") or "latest" for p in mine)
    return {k: v for k, v in labels.items() if v}


def parse_forwarded(value: str) -> str:
    """The address of the first `for=` of a `Forwarded` header (RFC 7239), "" if none: `for=10.0.0.5`,
    `for="[2001:db8::1]:80"`, `for=10.0.0.5;proto=http, for=...`."""
    for element in value.split(",")[:1]:
        for pair in element.split(";"):
            key, _, node = pair.strip().partition("=")
            if key.lower() != "for":
                continue
            node = node.strip('"')
            if node.startswith("["):
                return node[1:].partition("]")[0]
            return node.rpartition(":")[0] if node.count(":") == 1 else node
    return ""


def find_source_pod(pods_by_ip: Mapping[str, PodInfo], principal: str, address: str) -> PodInfo | None:
    """The pod at `address` if its identity is `principal` (the tunnel's mTLS peer): an address is
    the caller's word, so a peer can name only pods of its own identity, never another's."""
    m = _SPIFFE.match(principal)
    pod = pods_by_ip.get(address) if address and m else None
    if pod is None or (pod.namespace, pod.service_account) != m.groups():
        return None
    return pod


def find_caller_labels(pods: Iterable[PodInfo], pods_by_ip: Mapping[str, PodInfo], principal: str,
                       address: str) -> dict[str, str]:
    """A caller's source labels: of its own pod when `address` names one of its identity
    (`find_source_pod`), else of the pods of its identity (`find_source_labels`)."""
    pod = find_source_pod(pods_by_ip, principal, address)
    return find_source_labels([pod] if pod else pods, principal)


def build_request_labels(record: RequestRecord, source: Mapping[str, str],
                         clusters: Mapping[str, Mapping[str, str]]) -> Labels:
    """Istio's labels of one request at a waypoint: `source` from `find_source_labels`, `clusters`
    the destination labels of the waypoint's clusters by name (`stat_tags.parse_stat_name`)."""
    destination = clusters.get(record.cluster) if record.cluster else None
    tags = {"reporter": "waypoint", "request_protocol": "http", **(destination or record.tags), **source,
            "response_code": str(record.response_code)}
    if source:
        tags["connection_security_policy"] = "mutual_tls"
    return build_istio_labels(tags, LABELS)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts, self.sum = [0] * (len(BUCKETS) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(BUCKETS) if value <= b), len(BUCKETS))] += 1
        self.sum += value


def _le(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else repr(bound)


@dataclass
class _Series:
    requests: int = 0
    histograms: tuple[_Histogram, ...] = field(default_factory=lambda: (_Histogram(), _Histogram(), _Histogram()))


@dataclass
class RequestCounts:
    """One proxy's request metrics: counters and histograms by Istio label set, at most `max_series`."""

    max_series: int = MAX_SERIES
    series: dict[Labels, _Series] = field(default_factory=dict)
    overflow: int = 0

    def add(self, labels: Labels, record: RequestRecord) -> None:
        series = self.series.get(labels)
        if series is None:
            if len(self.series) >= self.max_series:
                self.overflow += 1
                return
            series = self.series[labels] = _Series()
        series.requests += 1
        for h, value in zip(series.histograms, (record.duration_ms, record.request_bytes, record.response_bytes)):
            h.observe(value)


def build_request_families(counts: Iterable[tuple[Mapping[str, str], RequestCounts]]) -> list[Family]:
    """Prometheus families of several proxies' counts, each labelled with its own labels (pod, namespace)."""
    requests: list[Sample] = []
    histograms: list[list[Sample]] = [[], [], []]
    overflow: list[Sample] = []
    for extra, c in counts:
        extra_labels = tuple(extra.items())
        for labels, s in sorted(c.series.items()):
            labels = labels + extra_labels
            requests.append(Sample("istio_requests_total", labels, s.requests))
            for (name, _), h, out in zip(HISTOGRAMS, s.histograms, histograms):
                total = 0
                for bound, n in zip((*BUCKETS, float("inf")), h.counts):
                    total += n
                    out.append(Sample(f"{name}_bucket", (*labels, ("le", "+Inf" if bound == float("inf")
                                                                   else _le(bound))), total))
                out += [Sample(f"{name}_sum", labels, h.sum), Sample(f"{name}_count", labels, total)]
        if c.overflow:
            overflow.append(Sample("meshway_request_metrics_overflow_total", extra_labels, c.overflow))
    families = []
    if requests:
        families.append(Family("istio_requests_total", "counter", "Requests a waypoint received, by response code.",
                               tuple(requests)))
        families += [Family(name, "histogram", help_, tuple(out)) for (name, help_), out in zip(HISTOGRAMS, histograms)]
    if overflow:
        families.append(Family("meshway_request_metrics_overflow_total", "counter",
                               "Requests not counted by label set: the proxy had too many label sets.",
                               tuple(overflow)))
    return families


def parse_request_families(text: str, keep: Callable[[Mapping[str, str]], bool] = lambda labels: True) -> list[Family]:
    """`build_request_families` and `tunnels.build_tunnel_families` written as Prometheus text, read
    back: the samples `keep` accepts."""
    from .metrics import parse_samples
    from .tunnels import TCP_FAMILIES

    names = {"istio_requests_total": ("counter", "Requests a waypoint received, by response code.")}
    names.update({name: ("histogram", help_) for name, help_ in HISTOGRAMS})
    names.update({name: ("counter", help_) for name, help_ in TCP_FAMILIES})
    samples: dict[str, list[Sample]] = {}
    for sample_name, labels, value in parse_samples(text):
        family = sample_name if sample_name in names else sample_name.rpartition("_")[0]
        if family in names and keep(labels):
            samples.setdefault(family, []).append(Sample(sample_name, tuple(labels.items()), value))
    return [Family(name, names[name][0], names[name][1], tuple(samples[name])) for name in names if name in samples]
