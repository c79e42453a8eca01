"""The ADS server against a real Envoy 1.40, over Unix sockets, in SotW and in Delta.

The control plane runs on its own asyncio loop in a thread; the test thread sets snapshots, sends
HTTP through Envoy, and reads Envoy's admin API over its Unix socket.
"""
from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import json_format

from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (registers @type)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from meshway.xds.bootstrap import build_bootstrap
from meshway.xds.cache import CLUSTER, ENDPOINT, LISTENER, NACKED, SYNCED, Snapshot, SnapshotCache
from meshway.xds.server import XdsServer

ENVOY = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "envoy"
NODE = "waypoint~127.0.0.1~test.default~default.svc.cluster.local"


# -- resources -----------------------------------------------------------------------------------
def backend_cluster() -> Cluster:
    return json_format.ParseDict({"name": "backend", "type": "EDS", "connect_timeout": "1s",
                                  "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}},
                                 Cluster())


def backend_endpoints(port: int) -> ClusterLoadAssignment:
    return json_format.ParseDict({"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}, ClusterLoadAssignment())


def http_listener(port: int, route_action: dict[str, Any], version: str = "") -> Listener:
    vhost: dict[str, Any] = {"name": "all", "domains": ["*"],
                             "routes": [{"match": {"prefix": "/"}, "route": route_action}]}
    if version:
        vhost["response_headers_to_add"] = [{"header": {"key": "x-config-version", "value": version}}]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "http", "route_config": {"name": "local", "virtual_hosts": [vhost]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return json_format.ParseDict({
        "name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}]}, Listener())


def make_snapshot(backend_port: int, listen_port: int, route_action: dict[str, Any], version: str = "") -> Snapshot:
    return Snapshot.of([backend_cluster(), backend_endpoints(backend_port),
                        http_listener(listen_port, route_action, version)])


TO_BACKEND = {"cluster": "backend"}
WEIGHTS_SUM_TO_ZERO = {"weighted_clusters": {"clusters": [{"name": "backend", "weight": 0}]}}


# -- processes and helpers -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from backend\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: Envoy's admin listens on one."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__("localhost", timeout=2)
        self._socket_path = str(socket_path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def http_get(host: str, port: int, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def admin_get(socket_path: Path, path: str) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(socket_path)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.02)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tail}")


@dataclass
class ControlPlane:
    cache: SnapshotCache
    server: XdsServer
    socket: Path
    loop: asyncio.AbstractEventLoop


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="xds-loop", daemon=True)
    thread.start()
    cache = SnapshotCache()
    server = XdsServer(cache)
    path = tmp_path / "ads.sock"
    asyncio.run_coroutine_threadsafe(server.start(path), loop).result(5)
    try:
        yield ControlPlane(cache, server, path, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def backend_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Envoy:
    process: subprocess.Popen
    admin: Path
    log: Path


def start_envoy(tmp_path: Path, control_plane: ControlPlane, delta: bool) -> Envoy:
    admin = tmp_path / "admin.sock"
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(build_bootstrap(NODE, "test", control_plane.socket, admin, delta=delta,
                                                 metadata={"test": "xds-server"})))
    log = tmp_path / "envoy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(ENVOY), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
                                    "-l", "warning"], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return Envoy(process, admin, log)


def stop_envoy(envoy: Envoy) -> None:
    if envoy.process.poll() is None:
        envoy.process.terminate()
        try:
            envoy.process.wait(5)
        except subprocess.TimeoutExpired:
            envoy.process.kill()
            envoy.process.wait(5)


# -- the test ------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_real_envoy_acks_serves_updates_and_nacks(tmp_path: Path, control_plane: ControlPlane, backend_port: int,
                                                  delta: bool) -> None:
    cache = control_plane.cache
    listen_port = free_port()
    first = make_snapshot(backend_port, listen_port, TO_BACKEND, "1")
    cache.set_snapshot(NODE, first)
    envoy = start_envoy(tmp_path, control_plane, delta)
    try:
        status = lambda type_url: cache.status.get(NODE, {}).get(type_url, {})  # noqa: E731

        # 1. Envoy connects, ACKs clusters, endpoints and listeners, goes LIVE and serves.
        wait_for("CDS, EDS and LDS ACKed", lambda: all(status(t).get("state") == SYNCED
                                                        for t in (CLUSTER, ENDPOINT, LISTENER)), log=envoy.log)
        assert control_plane.server.connected == {NODE}
        assert status(LISTENER)["version"] == first.version(LISTENER)
        wait_for("Envoy LIVE", lambda: admin_get(envoy.admin, "/ready") == (200, b"LIVE\n"), log=envoy.log)
        code, headers, body = wait_for("a response through the listener",
                                       lambda: http_get("127.0.0.1", listen_port), log=envoy.log)
        assert (code, headers["x-config-version"], body) == (200, "1", b"hello from backend\n")
        listeners = json.loads(admin_get(envoy.admin, "/config_dump?resource=dynamic_listeners")[1])
        assert [item["name"] for item in listeners["configs"]] == ["http"]
        pid = envoy.process.pid

        # 2. A changed route is served within a second, by the same Envoy process.
        second = make_snapshot(backend_port, listen_port, TO_BACKEND, "2")
        started = time.monotonic()
        cache.set_snapshot(NODE, second)
        wait_for("the new route", lambda: http_get("127.0.0.1", listen_port)[1].get("x-config-version") == "2",
                 timeout=1.0, log=envoy.log)
        assert time.monotonic() - started < 1.0
        assert envoy.process.poll() is None and envoy.process.pid == pid
        wait_for("LDS ACKed again", lambda: status(LISTENER).get("version") == second.version(LISTENER)
                 and status(LISTENER)["state"] == SYNCED, log=envoy.log)

        # 3. A listener Envoy rejects: NACKED with Envoy's message, old config still served, no resend loop.
        cache.set_snapshot(NODE, make_snapshot(backend_port, listen_port, WEIGHTS_SUM_TO_ZERO, "3"))
        wait_for("LDS NACKed", lambda: status(LISTENER).get("state") == NACKED, log=envoy.log)
        assert "weight" in status(LISTENER)["error"].lower(), status(LISTENER)
        assert status(LISTENER)["version"] == second.version(LISTENER)
        assert status(CLUSTER)["state"] == status(ENDPOINT)["state"] == SYNCED
        pushes = cache.pushes[NODE]
        time.sleep(1.0)
        assert cache.pushes[NODE] == pushes, "resend loop after a NACK"
        assert status(LISTENER)["state"] == NACKED
        code, headers, _ = http_get("127.0.0.1", listen_port)
        assert (code, headers["x-config-version"]) == (200, "2")

        # 4. The next good config is accepted.
        fourth = make_snapshot(backend_port, listen_port, TO_BACKEND, "4")
        cache.set_snapshot(NODE, fourth)
        wait_for("LDS synced after the fix", lambda: status(LISTENER).get("state") == SYNCED, log=envoy.log)
        assert status(LISTENER)["error"] is None
        assert http_get("127.0.0.1", listen_port)[1]["x-config-version"] == "4"
        assert envoy.process.poll() is None and envoy.process.pid == pid
    finally:
        stop_envoy(envoy)
    wait_for("the stream to close", lambda: not control_plane.server.connected, timeout=5)


def test_bootstrap_shape(tmp_path: Path) -> None:
    sotw = build_bootstrap("n", "c", tmp_path / "ads.sock", tmp_path / "admin.sock", delta=False)
    delta = build_bootstrap("n", "c", "/x/ads.sock", "/x/admin.sock", metadata={"k": "v"})
    assert sotw["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert delta["dynamic_resources"]["ads_config"] == {
        "api_type": "DELTA_GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}], "set_node_on_first_message_only": True}
    assert delta["node"] == {"id": "n", "cluster": "c", "metadata": {"k": "v"}}
    assert delta["admin"] == {"address": {"pipe": {"path": "/x/admin.sock", "mode": 0o600}}}
    [xds] = delta["static_resources"]["clusters"]
    assert xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/x/ads.sock"}}
    json.dumps(sotw)  # paths are plain strings


def test_bootstrap_passes_envoy_validation(tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(build_bootstrap("n", "c", tmp_path / "ads.sock", tmp_path / "admin.sock")))
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(config), "--disable-hot-restart",
                             "-l", "warning"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
