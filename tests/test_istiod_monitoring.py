"""istiod's monitoring port as `istioctl version` reads it (`meshway.xds.debug_http`, the control
plane's monitoring server): `/version` as istiod's `version.Info.String()` and istioctl's reading of
it, `/debug/syncz` as istiod's `[]SyncStatus` JSON (exact bytes), the doubled slash istioctl sends,
and the routes served next to /metrics over HTTP."""
from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from meshway import __version__
from meshway.buildinfo import build_version_info
from meshway.observe.metrics import Family, Sample
from meshway.runtime.monitoring import MetricsServer
from meshway.xds.debug import SyncSource
from meshway.xds.debug_http import (build_go_time, build_syncz_statuses, build_version_text, find_route,
                                    write_go_json)

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
WAYPOINT = "waypoint~10.244.2.6~waypoint-7999b58cb4-bv492.default~default.svc.cluster.local"
ZTUNNEL = "ztunnel~10.244.1.1~ztunnel-node-1.istio-system~istio-system.svc.cluster.local"


def read_istiod_version(text: str) -> dict[str, str]:
    """istioctl's `setServerInfoWithIstiodVersionInfo` (pkg/kube/client.go), for the test's reading."""
    parts = text.split("-")
    if len(parts) < 3:
        return {"version": text}
    version, revision, status = "-".join(parts[:-2]), parts[-2], parts[-1]
    if revision == "dirty":
        version, revision = "-".join(parts[:-3]), f"{parts[-3]}-dirty"
    return {"version": version, "revision": revision, "status": status, "tag": version}


def test_version_is_istiods_text_and_istioctl_reads_the_xds_identitys_version() -> None:
    text = build_version_text(build_version_info())
    assert text == f"meshway-{__version__}-unknown-Clean"
    # what `istioctl version` prints as "control plane version", the same as `istioctl x version`
    assert read_istiod_version(text) == {"version": f"meshway-{__version__}", "revision": "unknown",
                                         "status": "Clean", "tag": f"meshway-{__version__}"}


@pytest.mark.parametrize("target, path, query", [
    ("//version", "/version", {}),  # istioctl: fmt.Sprintf("http://%s/%s", addr, "/version")
    ("/debug/syncz", "/debug/syncz", {}),
    ("/debug/syncz?namespace=default&pretty", "/debug/syncz", {"namespace": ["default"], "pretty": [""]}),
    ("/metrics", "/metrics", {}),
    ("/", "/", {}),
])
def test_the_route_of_a_request_target(target, path, query) -> None:
    assert find_route(target) == (path, query)


@pytest.mark.parametrize("seconds, text", [
    (None, "0001-01-01T00:00:00Z"),  # Go's zero time.Time (omitempty does not leave a struct out)
    (1_764_768_000.0, "2025-12-03T13:20:00Z"),
    (1_764_768_000.5, "2025-12-03T13:20:00.5Z"),
    (1_764_768_000.123456, "2025-12-03T13:20:00.123456Z"),
])
def test_go_times(seconds, text) -> None:
    assert build_go_time(seconds) == text


def _source() -> SyncSource:
    status = {
        WAYPOINT: {CDS: {"version": "v1", "sent": "v1", "nonce": "n1", "state": "SYNCED", "error": None},
                   LDS: {"version": "", "sent": "v2", "nonce": "n2", "state": "STALE", "error": None},
                   RDS: {"version": "v0", "sent": "v3", "nonce": "n3", "state": "NACKED", "error": "bad <route> & co"}},
        ZTUNNEL: {CDS: {"version": "", "sent": "", "nonce": "", "state": "STALE", "error": None}},
    }
    connected = frozenset({WAYPOINT, ZTUNNEL, "istioctl-debug-1"})  # istioctl's own stream: no proxy
    return SyncSource(status, connected, {(WAYPOINT, CDS): 1_764_768_000.5})


def test_syncz_is_istiods_sync_status_json_byte_for_byte() -> None:
    got = write_go_json(build_syncz_statuses(_source(), "0.1.0"))
    assert got.decode() == (
        '[{"cluster_id":"Kubernetes","proxy":"' + WAYPOINT + '","proxy_type":"waypoint",'
        '"istio_version":"meshway-0.1.0","cluster_sent":"n1","cluster_acked":"n1","listener_sent":"n2",'
        '"route_sent":"n3","resources":{'
        '"type.googleapis.com/envoy.config.cluster.v3.Cluster":{"sent":"n1","acked":"n1",'
        '"sentTime":"2025-12-03T13:20:00.5Z"},'
        '"type.googleapis.com/envoy.config.listener.v3.Listener":{"sent":"n2","sentTime":"0001-01-01T00:00:00Z"},'
        '"type.googleapis.com/envoy.config.route.v3.RouteConfiguration":{"sent":"n3",'
        '"sentTime":"0001-01-01T00:00:00Z","lastError":"bad \\u003croute\\u003e \\u0026 co"}}},'
        '{"cluster_id":"Kubernetes","proxy":"' + ZTUNNEL + '","proxy_type":"ztunnel",'
        '"istio_version":"meshway-0.1.0","resources":{'
        '"type.googleapis.com/envoy.config.cluster.v3.Cluster":{"sentTime":"0001-01-01T00:00:00Z"}}}]')


def test_what_istioctl_reads_of_syncz() -> None:
    """`pkg/proxy.GetProxyInfo`: `proxy`, `istio_version`, `proxy_type` of each entry: `data plane
    version: meshway-0.1.0 (2 proxies)`."""
    entries = json.loads(write_go_json(build_syncz_statuses(_source(), "0.1.0")))
    assert [(e["proxy"], e["istio_version"], e["proxy_type"]) for e in entries] == [
        (WAYPOINT, "meshway-0.1.0", "waypoint"), (ZTUNNEL, "meshway-0.1.0", "ztunnel")]


def test_syncz_of_one_namespace_and_pretty() -> None:
    entries = build_syncz_statuses(_source(), "0.1.0", "istio-system")
    assert [e["proxy"] for e in entries] == [ZTUNNEL]
    assert build_syncz_statuses(_source(), "0.1.0", "nowhere") == []
    assert write_go_json([], pretty=True) == b"[]"
    assert write_go_json(entries, pretty=True).decode().startswith('[\n    {\n        "cluster_id": "Kubernetes",\n')


def _get(address: str, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_the_monitoring_server_serves_the_routes_next_to_metrics() -> None:
    families = [Family("pilot_xds", "gauge", "help", (Sample("pilot_xds", (), 2),))]

    def broken(query):
        raise RuntimeError("the control plane is not serving xDS")

    routes = {"/version": lambda q: (200, "text/plain; charset=utf-8", b"meshway-0.1.0-unknown-Clean"),
              "/debug/syncz": lambda q: (200, "application/json", json.dumps(q).encode()),
              "/debug/broken": broken}
    server = MetricsServer("127.0.0.1:0", lambda: families, routes)
    server.start()
    try:
        assert _get(server.address, "//version") == (200, "text/plain; charset=utf-8", "meshway-0.1.0-unknown-Clean")
        assert _get(server.address, "/debug/syncz?namespace=default") == (
            200, "application/json", '{"namespace": ["default"]}')
        status, content_type, body = _get(server.address, "/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4") and "pilot_xds 2" in body
        assert _get(server.address, "/debug/broken")[::2] == (500, "the control plane is not serving xDS")
        assert _get(server.address, "/debug/clusterz") == (404, "text/plain; charset=utf-8", "404 page not found\n")
    finally:
        server.stop()


def test_the_control_plane_copies_the_xds_state_on_its_loop() -> None:
    """`ControlPlane._serve_syncz`, called on a metrics thread: the copy is made on the event loop."""
    from meshway.runtime.controlplane import ControlPlane

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen: list[threading.Thread] = []
    cp = ControlPlane.__new__(ControlPlane)
    cp.server = SimpleNamespace(sync_source=lambda: seen.append(threading.current_thread()) or _source())
    try:
        cp._loop = None
        with pytest.raises(RuntimeError, match="not serving xDS"):
            cp._serve_syncz({})
        cp._loop = loop
        status, content_type, body = cp._serve_syncz({"namespace": ["default"]})
        assert (status, content_type) == (200, "application/json") and seen == [thread]
        assert [e["proxy"] for e in json.loads(body)] == [WAYPOINT]
        assert cp._serve_version({}) == (200, "text/plain; charset=utf-8",
                                         f"meshway-{__version__}-unknown-Clean".encode())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
