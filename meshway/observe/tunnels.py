"""Istio's TCP metrics of node proxies, with the calling pod, from their tunnel and connection logs (pure).

A node proxy's HBONE chain of each local pod logs every tunnel (CONNECT stream) to the control
plane (`meshway.xds.build_peer_source.build_tunnel_log`): when it is established, every few seconds
while it lasts (the bytes so far) and when it ends. Its custom tags are the destination labels; the
mTLS peer and the CONNECT's `forwarded` header name the caller (`requests.find_caller_labels`: its own
pod when the address is one of the peer's identity; a waypoint, which sends no header, by the
address it connects from). Counted here, per label set, as Istio's ztunnel counts a connection:

- istio_tcp_connections_opened_total when established, istio_tcp_connections_closed_total when it ends;
- istio_tcp_received_bytes_total (from the caller, the CONNECT's body) and istio_tcp_sent_bytes_total,
  the increase since the tunnel's previous entry.

The client's node proxy logs every captured connection of its outbound chains the same way
(`build_peer_source.build_connection_log`, `read_connection_entry`): the chain's identity and
destination are its custom tags, the connection's source address is the calling pod (the chain was
chosen by it), so `reporter="source"` series are per source workload, as Istio's ztunnel reports them.
Every connection it accepted counts (as ztunnel counts a connection it accepted, also one whose
upstream then fails).

A tunnel refused before it was established (an L4 policy's 403, guaranteed traversal) is not counted,
as ztunnel counts no connection it refused. Memory is bounded: at most `max_series` label sets per
proxy (the rest in `meshway_tunnel_metrics_overflow_total`) and `max_open` open tunnels (the oldest
forgotten: its later bytes and close are counted as a tunnel found open, once).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .metrics import TCP_LABELS, Family, Labels, Sample, build_istio_labels
from .requests import parse_forwarded

MAX_SERIES = 5000
MAX_OPEN = 20000
ESTABLISHED, PERIODIC, END = "DownstreamTunnelSuccessfullyEstablished", "DownstreamPeriodic", "DownstreamEnd"
# A connection log's events (a tcp_proxy's) as the tunnel log's
TCP_EVENTS = {"TcpUpstreamConnected": ESTABLISHED, "TcpPeriodic": PERIODIC, "TcpConnectionEnd": END}
SOURCE_PRINCIPAL = "source_principal"  # the connection log's tag of its chain's identity (no scheme)
TCP_FAMILIES = (
    ("istio_tcp_connections_opened_total", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "TCP connections closed."),
    ("istio_tcp_received_bytes_total", "Bytes received from the client, over TCP connections."),
    ("istio_tcp_sent_bytes_total", "Bytes sent to the client, over TCP connections."),
)


@dataclass(frozen=True)
class TunnelRecord:
    """What one tunnel-log entry says, as plain data."""

    stream: str  # the CONNECT stream's id
    event: str  # ESTABLISHED | PERIODIC | END (Envoy's access log type)
    principal: str  # the mTLS peer's SPIFFE identity
    address: str  # the caller's address: the CONNECT's `forwarded`, else the connection's source
    tags: Mapping[str, str]  # the chain's destination labels
    status: int  # the CONNECT's response code (200: established; a captured connection: always 200)
    received: int  # bytes from the caller so far
    sent: int  # bytes to the caller so far
    destination: str = ""  # a captured connection's original destination address (a direct chain's pod)


def read_tunnel_entry(entry) -> TunnelRecord:
    """An `envoy.data.accesslog.v3.HTTPAccessLogEntry` of a tunnel log as a TunnelRecord."""
    from envoy.data.accesslog.v3.accesslog_pb2 import AccessLogType

    common = entry.common_properties
    peer = common.tls_properties.peer_certificate_properties.subject_alt_name
    principal = next((san.uri for san in peer if san.uri), "")
    address = parse_forwarded(entry.request.request_headers.get("forwarded", "")) \
        or common.downstream_remote_address.socket_address.address
    return TunnelRecord(stream=common.stream_id, event=AccessLogType.Name(common.access_log_type),
                        principal=principal, address=address, tags=dict(common.custom_tags),
                        status=entry.response.response_code.value, received=entry.request.request_body_bytes,
                        sent=entry.response.response_body_bytes)


def read_connection_entry(entry) -> TunnelRecord:
    """An `envoy.data.accesslog.v3.TCPAccessLogEntry` of a connection log as a TunnelRecord: the caller
    is the chain's identity (its `source_principal` tag) at the connection's source address (the pod)."""
    from envoy.data.accesslog.v3.accesslog_pb2 import AccessLogType

    common = entry.common_properties
    tags = dict(common.custom_tags)
    principal = tags.pop(SOURCE_PRINCIPAL, "")
    remote, local = common.downstream_remote_address.socket_address, common.downstream_local_address.socket_address
    event = AccessLogType.Name(common.access_log_type)
    return TunnelRecord(stream=common.stream_id or f"{remote.address}:{remote.port_value}>"
                        f"{local.address}:{local.port_value}", event=TCP_EVENTS.get(event, event),
                        principal=f"spiffe://{principal}" if principal else "", address=remote.address, tags=tags,
                        status=200, received=entry.connection_properties.received_bytes,
                        sent=entry.connection_properties.sent_bytes, destination=local.address)


def build_tunnel_labels(record: TunnelRecord, source: Mapping[str, str],
                        destination: Mapping[str, str] | None = None) -> Labels:
    """Istio's TCP labels of one tunnel or connection: the chain's labels and the caller's `source`;
    `destination`: the workload labels of the pod a connection went to, for a chain that serves
    every pod addressed directly (its own tags name no workload)."""
    return build_istio_labels({**(destination or {}), **record.tags, **source}, TCP_LABELS)


@dataclass
class TunnelCounts:
    """One node proxy's TCP counters by label set (both reporters), and its open tunnels and connections."""

    max_series: int = MAX_SERIES
    max_open: int = MAX_OPEN
    series: dict[Labels, list[int]] = field(default_factory=dict)  # opened, closed, received, sent
    open: dict[str, tuple[Labels, int, int]] = field(default_factory=dict)  # stream -> (labels, received, sent)
    overflow: int = 0

    def _counters(self, labels: Labels) -> list[int] | None:
        counters = self.series.get(labels)
        if counters is None:
            if len(self.series) >= self.max_series:
                self.overflow += 1
                return None
            counters = self.series[labels] = [0, 0, 0, 0]
        return counters

    def add(self, labels: Labels, record: TunnelRecord) -> None:
        known = self.open.pop(record.stream, None)
        if known is None and (record.event == ESTABLISHED or record.status == 200):
            known = (labels, 0, 0)  # established now, or earlier than this proxy's tally knows
            opened = 1
        elif known is None:
            return  # refused: never a connection
        else:
            opened = 0
        labels, received, sent = known
        counters = self._counters(labels)
        if counters is None:
            return
        counters[0] += opened
        counters[2] += max(0, record.received - received)
        counters[3] += max(0, record.sent - sent)
        if record.event == END:
            counters[1] += 1
            return
        if len(self.open) >= self.max_open:
            self.open.pop(next(iter(self.open)))
        self.open[record.stream] = (labels, max(received, record.received), max(sent, record.sent))


def build_tunnel_families(counts: Iterable[tuple[Mapping[str, str], TunnelCounts]]) -> list[Family]:
    """Prometheus families of several node proxies' counts, each with its own labels (pod, namespace)."""
    samples: list[list[Sample]] = [[], [], [], []]
    overflow: list[Sample] = []
    for extra, c in counts:
        extra_labels = tuple(extra.items())
        for labels, counters in sorted(c.series.items()):
            for (name, _), value, out in zip(TCP_FAMILIES, counters, samples):
                out.append(Sample(name, labels + extra_labels, value))
        if c.overflow:
            overflow.append(Sample("meshway_tunnel_metrics_overflow_total", extra_labels, c.overflow))
    families = [Family(name, "counter", help_, tuple(out)) for (name, help_), out in zip(TCP_FAMILIES, samples) if out]
    if overflow:
        families.append(Family("meshway_tunnel_metrics_overflow_total", "counter",
                               "Tunnels not counted by label set: the node proxy had too many label sets.",
                               tuple(overflow)))
    return families
