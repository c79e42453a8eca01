"""The control plane's Prometheus endpoint (`--metrics-addr`): its own metrics under istiod's names,
plus the Istio metrics of every proxy it runs, read from their admin sockets at scrape time.

| metric | what |
| pilot_xds_pushes{type} | xDS responses sent, by type (cds, eds, lds, rds, sds) |
| pilot_total_xds_rejects{type} | responses a proxy NACKed |
| pilot_xds{version} | proxies with an open ADS stream |
| pilot_proxy_convergence_time | seconds from a proxy's new snapshot to its ACK of every response that carried it |
| meshway_config_build_seconds{proxy_type} | seconds to build one proxy's config (waypoint, ztunnel) |
| meshway_config_build_failures{proxy_type} | builds that raised (the proxy kept its last good config) |
| meshway_config_build_over_budget{proxy_type} | builds that took longer than the per-proxy budget |

Next to /metrics, istiod's `/version` and `/debug/syncz`, which `istioctl version` asks through the
istiod pod (`meshway.xds.debug_http`; the control plane gives the routes).

Thin I/O: a threaded HTTP server; the translation is `meshway.observe.metrics`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import __version__
from .envoy_admin import AdminError, fetch_admin
from ..observe.metrics import Family, Sample, build_istio_metrics, merge_families, write_text
from ..xds.debug_http import find_route
from ..xds.stream import Acked, Event, Nacked, Sent

log = logging.getLogger("meshway.monitoring")
TYPES = {"Cluster": "cds", "ClusterLoadAssignment": "eds", "Listener": "lds", "RouteConfiguration": "rds",
         "Secret": "sds", "TypedExtensionConfig": "ecds"}
CONVERGENCE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 3, 5, 10, 20, 30)
BUILD_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
SCRAPE_PATH = "/stats/prometheus?usedonly"


@dataclass(frozen=True)
class ScrapeTarget:
    pod: str
    namespace: str
    admin: str  # the Envoy admin Unix socket
    type: str = ""  # waypoint | ztunnel: a waypoint's HTTP series come from its request log instead


class Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))] += 1
        self.sum += value

    def samples(self, name: str, labels: tuple = ()) -> list[Sample]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            out.append(Sample(f"{name}_bucket", (*labels, ("le", "+Inf" if bound == float("inf") else f"{bound:g}")),
                              total))
        return out + [Sample(f"{name}_sum", labels, self.sum), Sample(f"{name}_count", labels, total)]


class ControlPlaneMetrics:
    """Counts kept by the control plane's event loop, read by the scrape thread (hence the lock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self.pushes: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()
        self.convergence = Histogram(CONVERGENCE_BUCKETS)
        self.build = {"waypoint": Histogram(BUILD_BUCKETS), "ztunnel": Histogram(BUILD_BUCKETS)}
        self.build_failures: Counter[str] = Counter()
        self.over_budget: Counter[str] = Counter()
        self._published: dict[str, float] = {}  # node id -> when its newest snapshot was set
        self._waiting: dict[str, dict[str, str]] = {}  # node id -> type -> nonce not yet answered
        self._sent_since: set[str] = set()

    def published(self, node_id: str) -> None:
        with self._lock:
            self._published[node_id] = self.clock()
            self._sent_since.discard(node_id)

    def observe_build(self, proxy_type: str, seconds: float, failed: bool = False, over_budget: bool = False) -> None:
        with self._lock:
            self.build[proxy_type].observe(seconds)
            self.build_failures[proxy_type] += failed
            self.over_budget[proxy_type] += over_budget

    def on_event(self, node_id: str, event: Event) -> None:
        """ADS stream events: a proxy has converged when every response sent since its newest snapshot
        was published is answered (ACK or NACK)."""
        short = TYPES.get(event.type_url.rsplit(".", 1)[-1], event.type_url)
        with self._lock:
            waiting = self._waiting.setdefault(node_id, {})
            if isinstance(event, Sent):
                self.pushes[short] += 1
                waiting[short] = event.nonce
                if node_id in self._published:
                    self._sent_since.add(node_id)
                return
            if isinstance(event, Nacked):
                self.rejects[short] += 1
            if isinstance(event, (Acked, Nacked)) and waiting.get(short) == event.nonce:
                del waiting[short]
            if not waiting and node_id in self._sent_since:
                self.convergence.observe(self.clock() - self._published.pop(node_id))
                self._sent_since.discard(node_id)

    def families(self, connected: int) -> list[Family]:
        with self._lock:
            return [
                Family("pilot_xds", "gauge", "Number of endpoints connected to this pilot using XDS.",
                       (Sample("pilot_xds", (("version", __version__),), connected),)),
                Family("pilot_xds_pushes", "counter", "xDS responses sent to proxies, by type.",
                       tuple(Sample("pilot_xds_pushes", (("type", t),), n) for t, n in sorted(self.pushes.items()))),
                Family("pilot_total_xds_rejects", "counter", "xDS responses rejected (NACKed) by proxies.",
                       tuple(Sample("pilot_total_xds_rejects", (("type", t),), n)
                             for t, n in sorted(self.rejects.items()))),
                Family("pilot_proxy_convergence_time", "histogram",
                       "Seconds from a proxy's new configuration to its acceptance of all of it.",
                       tuple(self.convergence.samples("pilot_proxy_convergence_time"))),
                Family("meshway_config_build_seconds", "histogram", "Seconds to build one proxy's configuration.",
                       tuple(s for kind, h in sorted(self.build.items())
                             for s in h.samples("meshway_config_build_seconds", (("proxy_type", kind),)))),
                Family("meshway_config_build_failures", "counter",
                       "Proxy config builds that failed; the proxy kept its last good configuration.",
                       tuple(Sample("meshway_config_build_failures", (("proxy_type", t),), n)
                             for t, n in sorted(self.build_failures.items()))),
                Family("meshway_config_build_over_budget", "counter",
                       "Proxy config builds that took longer than the per-proxy budget.",
                       tuple(Sample("meshway_config_build_over_budget", (("proxy_type", t),), n)
                             for t, n in sorted(self.over_budget.items()))),
            ]


def find_scrape_targets(status: dict) -> list[ScrapeTarget]:
    """The proxies of a proxy-status.json (`ControlPlane.proxy_status`)."""
    return [ScrapeTarget(p["pod"], p["namespace"], p["admin"], p.get("type", "")) for _, p in sorted(status.items())]


def fetch_proxy_metrics(targets: Iterable[ScrapeTarget]) -> list[Family]:
    """The Istio metrics of every proxy, labelled with its pod and namespace; unreachable ones skipped."""
    groups = []
    for t in targets:
        try:
            text = fetch_admin(t.admin, SCRAPE_PATH).decode()
        except AdminError as exc:
            log.warning("metrics of %s.%s left out: %s", t.pod, t.namespace, exc)
            continue
        groups.append(build_istio_metrics(text, {"pod": t.pod, "namespace": t.namespace}, t.type != "waypoint"))
    return merge_families(groups)


# A route of the monitoring port besides /metrics: the query -> (status, content type, body).
Route = Callable[[Mapping[str, list[str]]], tuple[int, str, bytes]]


class MetricsServer:
    """GET /metrics (any path without a route): `collect()` rendered as Prometheus text; GET of a
    path in `routes` (istiod's `/version`, `/debug/syncz`: `meshway.xds.debug_http`), its answer;
    another `/debug/` path, 404 (istiod's debug paths meshway does not serve)."""

    def __init__(self, address: str, collect: Callable[[], list[Family]], routes: Mapping[str, Route] | None = None):
        host, _, port = address.rpartition(":")
        collect_, routes_ = collect, dict(routes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path, query = find_route(self.path)
                if path in routes_:
                    try:
                        status, content_type, body = routes_[path](query)
                    except Exception as exc:  # noqa: BLE001: istiod answers 500 with the error's text
                        log.warning("GET %s: %s", path, exc)
                        status, content_type, body = 500, "text/plain; charset=utf-8", str(exc).encode()
                elif path.startswith("/debug/"):  # istiod's other debug paths: Go's ServeMux's 404
                    status, content_type, body = 404, "text/plain; charset=utf-8", b"404 page not found\n"
                else:
                    status, content_type = 200, "text/plain; version=0.0.4; charset=utf-8"
                    body = write_text(collect_()).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                log.debug(format, *args)

        self.httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.httpd.daemon_threads = True
        self.address = "%s:%d" % self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
