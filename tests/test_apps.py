"""The built-in apps as real processes on loopback: echo over HTTP/1.1 and h2c, the four bookinfo
stand-ins calling each other (upstreams set with BOOKINFO_*_URL instead of /etc/hosts), and sleep."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded

from meshway.apps import bookinfo
from meshway.apps.server import parse_head
from meshway.apps.upstream import PROPAGATED_HEADERS


# -- helpers ---------------------------------------------------------------------------------
@dataclass
class App:
    proc: subprocess.Popen[bytes]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, object]:
        status, _, body = self.get(path, headers)
        return status, json.loads(body)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.03)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def start_app(module: str, host: str, env: dict[str, str]) -> App:
    port = free_port(host)
    full_env = {**os.environ, "HOST": host, "PORT": str(port), **env}
    proc = subprocess.Popen([sys.executable, "-m", f"meshway.apps.{module}"], env=full_env,
                            stdout=subprocess.DEVNULL)  # access logs are not needed; errors go to stderr
    try:
        wait_listening(host, port, proc)
    except Exception:
        proc.kill()
        raise
    return App(proc, host, port)


def stop_app(app: App) -> None:
    app.proc.send_signal(signal.SIGTERM)
    try:
        app.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        app.proc.kill()
        app.proc.wait()


@pytest.fixture(scope="module")
def echo() -> Iterator[App]:
    app = start_app("echo", "127.0.0.1", {"POD_NAME": "echo-v2-abc", "POD_NAMESPACE": "demo", "VERSION": "v2",
                                          "POD_IP": "10.244.1.7"})
    yield app
    stop_app(app)


@dataclass
class Bookinfo:
    productpage: App
    details: App
    reviews_v1: App
    reviews_v2: App
    reviews_v3: App
    ratings: App
    probe: App  # an echo server standing in for details, to see what productpage sends upstream
    productpage_to_echo: App
    productpage_broken: App
    reviews_broken: App


@pytest.fixture(scope="module")
def books(echo: App) -> Iterator[Bookinfo]:
    started: list[App] = []

    def run(service: str, host: str, version: str = "v1", **urls: str) -> App:
        env = {"BOOKINFO_SERVICE": service, "BOOKINFO_VERSION": version, "POD_NAME": f"{service}-{version}-pod"}
        env.update({f"BOOKINFO_{k.upper()}_URL": v for k, v in urls.items()})
        app = start_app("bookinfo", host, env)
        started.append(app)
        return app

    try:
        closed = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens here
        ratings = run("ratings", "127.0.0.14")
        details = run("details", "127.0.0.12")
        reviews = {v: run("reviews", f"127.0.0.{12 + int(v[1]) * 10}", v, ratings=ratings.url)
                   for v in ("v1", "v2", "v3")}
        productpage = run("productpage", "127.0.0.11", details=details.url, reviews=reviews["v2"].url,
                          ratings=ratings.url)
        yield Bookinfo(
            productpage=productpage, details=details, reviews_v1=reviews["v1"], reviews_v2=reviews["v2"],
            reviews_v3=reviews["v3"], ratings=ratings, probe=echo,
            productpage_to_echo=run("productpage", "127.0.0.15", details=echo.url, reviews=reviews["v1"].url,
                                    ratings=ratings.url),
            productpage_broken=run("productpage", "127.0.0.16", details=closed, reviews=closed, ratings=closed),
            reviews_broken=run("reviews", "127.0.0.17", "v2", ratings=closed))
    finally:
        for app in started:
            stop_app(app)


def h2_requests(host: str, port: int, paths: list[str],
                upgrade: bool = False) -> tuple[dict[str, tuple[int, dict]], list[str]]:
    """GET each path as its own stream of one h2c connection (prior knowledge, or `Upgrade: h2c`
    for the first path); the responses by path and the order the streams ended."""
    sock = socket.create_connection((host, port), timeout=10)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    streams: dict[int, str] = {}
    pending = b""
    if upgrade:
        settings = conn.initiate_upgrade_connection()
        sock.sendall(f"GET {paths[0]} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     f"Upgrade: h2c\r\nHTTP2-Settings: ".encode() + settings + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        head, _, pending = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        streams[1] = paths[0]
        paths = paths[1:]
    else:
        conn.initiate_connection()
    for path in paths:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                (":authority", f"{host}:{port}"), ("x-request-id", f"h2-{sid}")], end_stream=True)
        streams[sid] = path
    sock.sendall(conn.data_to_send())
    status: dict[int, int] = {}
    bodies: dict[int, bytearray] = {sid: bytearray() for sid in streams}
    order: list[str] = []
    try:
        data = pending
        while len(order) < len(streams):
            for event in conn.receive_data(data) if data else []:
                if isinstance(event, ResponseReceived):
                    status[event.stream_id] = int(dict(event.headers)[":status"])
                elif isinstance(event, DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    order.append(streams[event.stream_id])
            sock.sendall(conn.data_to_send())
            if len(order) < len(streams):
                data = sock.recv(65536)
                assert data, "server closed the connection"
    finally:
        sock.close()
    return {streams[s]: (status[s], json.loads(bodies[s])) for s in streams}, order


# -- echo ------------------------------------------------------------------------------------
def test_echo_replies_with_pod_and_request(echo: App) -> None:
    status, body = echo.get_json("/hello?x=1", {"x-request-id": "r-1", "X-Custom": "yes"})
    assert status == 200
    assert body["pod"] == "echo-v2-abc" and body["namespace"] == "demo" and body["version"] == "v2"
    assert body["ip"] == "10.244.1.7"
    assert body["method"] == "GET" and body["path"] == "/hello?x=1" and body["protocol"] == "HTTP/1.1"
    assert body["headers"]["x-request-id"] == "r-1" and body["headers"]["x-custom"] == "yes"
    assert body["headers"]["host"] == f"127.0.0.1:{echo.port}"
    assert body["client"].startswith("127.0.0.1:")


@pytest.mark.parametrize("path,status", [("/status/503", 503), ("/status/201", 201), ("/status/404", 404),
                                         ("/healthz", 200), ("/status/100", 400)])
def test_echo_status_paths(echo: App, path: str, status: int) -> None:
    assert echo.get(path)[0] == status


def test_echo_status_204_has_no_body(echo: App) -> None:
    status, _, body = echo.get("/status/204")
    assert (status, body) == (204, b"")


def test_echo_delay(echo: App) -> None:
    start = time.monotonic()
    status, body = echo.get_json("/delay/0.3")
    assert status == 200 and body["path"] == "/delay/0.3"
    assert time.monotonic() - start >= 0.3


def test_echo_keep_alive_post_and_head(echo: App) -> None:
    conn = http.client.HTTPConnection(echo.host, echo.port, timeout=5)
    try:
        conn.request("POST", "/submit", body=b"x" * 5000, headers={"Content-Type": "text/plain"})
        first = conn.getresponse()
        body = json.loads(first.read())
        assert first.status == 200 and body["method"] == "POST" and body["headers"]["content-length"] == "5000"
        conn.request("HEAD", "/again")  # the same connection
        second = conn.getresponse()
        assert second.status == 200 and second.read() == b"" and int(second.getheader("content-length")) > 0
    finally:
        conn.close()


def test_echo_chunked_request_body(echo: App) -> None:
    with socket.create_connection((echo.host, echo.port), timeout=5) as sock:
        sock.sendall(b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b'"method": "PUT"' in data


def test_echo_bad_request_is_400(echo: App) -> None:
    with socket.create_connection((echo.host, echo.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")


def test_echo_h2c_prior_knowledge_concurrent_streams(echo: App) -> None:
    responses, order = h2_requests(echo.host, echo.port, ["/delay/0.5", "/status/201", "/h2?q=1"])
    assert responses["/status/201"][0] == 201
    status, body = responses["/h2?q=1"]
    assert status == 200 and body["protocol"] == "HTTP/2.0" and body["path"] == "/h2?q=1"
    assert body["pod"] == "echo-v2-abc" and body["version"] == "v2"
    assert body["headers"]["x-request-id"].startswith("h2-") and body["headers"]["host"] == f"127.0.0.1:{echo.port}"
    assert order[-1] == "/delay/0.5"  # streams are answered concurrently, not in order


def test_echo_h2c_upgrade(echo: App) -> None:
    responses, _ = h2_requests(echo.host, echo.port, ["/upgraded", "/second"], upgrade=True)
    assert responses["/upgraded"][0] == 200 and responses["/upgraded"][1]["path"] == "/upgraded"
    assert responses["/second"][1]["protocol"] == "HTTP/2.0"


# -- bookinfo: pure parts --------------------------------------------------------------------
def test_bookinfo_settings_defaults_use_service_names() -> None:
    s = bookinfo.build_settings({"BOOKINFO_SERVICE": "reviews", "BOOKINFO_VERSION": "v3", "POD_NAME": "p"})
    assert (s.details_url, s.reviews_url, s.ratings_url) == ("http://details:9080", "http://reviews:9080",
                                                             "http://ratings:9080")
    assert s.ratings_enabled and s.star_color == "red" and s.pod == "p"
    v1 = bookinfo.build_settings({"BOOKINFO_SERVICE": "reviews", "BOOKINFO_VERSION": "v1"})
    assert not v1.ratings_enabled


def test_bookinfo_settings_istio_overrides() -> None:
    s = bookinfo.build_settings({"BOOKINFO_SERVICE": "productpage", "SERVICES_DOMAIN": "default.svc.cluster.local",
                                 "DETAILS_HOSTNAME": "details-alt", "RATINGS_SERVICE_PORT": "9081",
                                 "BOOKINFO_REVIEWS_URL": "http://10.0.0.1:1234/"})
    assert s.details_url == "http://details-alt.default.svc.cluster.local:9080"
    assert s.ratings_url == "http://ratings.default.svc.cluster.local:9081"
    assert s.reviews_url == "http://10.0.0.1:1234"


def test_bookinfo_settings_rejects_unknown_service() -> None:
    with pytest.raises(ValueError, match="BOOKINFO_SERVICE"):
        bookinfo.build_settings({"BOOKINFO_SERVICE": "inventory"})


def test_parse_head() -> None:
    assert parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\nX-A:  1 \r\n\r\n") == ("GET", "/a", "HTTP/1.1",
                                                                            (("host", "x"), ("x-a", "1")))
    with pytest.raises(ValueError):
        parse_head(b"GET /a\r\n\r\n")


# -- bookinfo: live services -----------------------------------------------------------------
def test_details(books: Bookinfo) -> None:
    status, body = books.details.get_json("/details/0")
    assert status == 200
    assert body == {"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
                    "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890",
                    "ISBN-13": "123-1234567890"}
    assert books.details.get_json("/details/abc")[0] == 400
    assert books.details.get_json("/health") == (200, {"status": "Details is healthy"})


def test_ratings(books: Bookinfo) -> None:
    assert books.ratings.get_json("/ratings/7") == (200, {"id": 7, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
    assert books.ratings.get_json("/ratings/x")[0] == 400
    assert books.ratings.get_json("/health") == (200, {"status": "Ratings is healthy"})


def test_reviews_v1_has_no_ratings(books: Bookinfo) -> None:
    status, body = books.reviews_v1.get_json("/reviews/0")
    assert status == 200
    assert body["version"] == "v1" and body["podname"] == "reviews-v1-pod" and body["id"] == "0"
    assert [r["reviewer"] for r in body["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert all("rating" not in r for r in body["reviews"])
    assert books.reviews_v1.get_json("/health") == (200, {"status": "Reviews is healthy"})


@pytest.mark.parametrize("version,color", [("v2", "black"), ("v3", "red")])
def test_reviews_v2_v3_call_ratings(books: Bookinfo, version: str, color: str) -> None:
    app = books.reviews_v2 if version == "v2" else books.reviews_v3
    status, body = app.get_json("/reviews/0")
    assert status == 200 and body["version"] == version and body["podname"] == f"reviews-{version}-pod"
    assert [r["rating"] for r in body["reviews"]] == [{"stars": 5, "color": color}, {"stars": 4, "color": color}]


def test_reviews_without_ratings_service_says_unavailable(books: Bookinfo) -> None:
    status, body = books.reviews_broken.get_json("/reviews/0")
    assert status == 200
    assert body["reviews"][0]["rating"] == {"error": "Ratings service is currently unavailable"}


def test_productpage_shows_details_and_reviews(books: Bookinfo) -> None:
    status, headers, raw = books.productpage.get("/productpage")
    page = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "The Comedy of Errors" in page
    assert "PublisherA" in page and "123-1234567890" in page and "paperback" in page  # details
    assert "Reviewer1" in page and "An extremely entertaining play" in page  # reviews
    assert 'data-stars="5" style="color:black"' in page  # v2's ratings, through reviews
    assert '<b id="reviews-pod">reviews-v2-pod</b>' in page and '<b id="reviews-version">v2</b>' in page
    assert "Error fetching" not in page


def test_productpage_index_and_health(books: Bookinfo) -> None:
    status, _, page = books.productpage.get("/")
    assert status == 200 and b"/productpage" in page
    assert books.productpage.get_json("/health") == (200, {"status": "Product page is healthy"})


def test_productpage_api(books: Bookinfo) -> None:
    pp = books.productpage
    status, products = pp.get_json("/api/v1/products")
    assert status == 200 and products[0]["id"] == 0 and products[0]["title"] == "The Comedy of Errors"
    assert pp.get_json("/api/v1/products/0")[1]["publisher"] == "PublisherA"
    status, reviews = pp.get_json("/api/v1/products/0/reviews")
    assert status == 200 and reviews["version"] == "v2" and reviews["reviews"][1]["rating"]["stars"] == 4
    assert pp.get_json("/api/v1/products/0/ratings") == (200, {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})


def test_productpage_upstream_failures_show_errors(books: Bookinfo) -> None:
    status, _, raw = books.productpage_broken.get("/productpage")
    page = raw.decode()
    assert status == 200
    assert "Sorry, product details are currently unavailable for this book." in page
    assert "Sorry, product reviews are currently unavailable for this book." in page
    assert "The Comedy of Errors" in page
    assert books.productpage_broken.get_json("/api/v1/products/0") == (
        500, {"error": "Sorry, product details are currently unavailable for this book."})
    assert books.productpage_broken.get_json("/api/v1/products/0/ratings")[0] == 500


def test_productpage_propagates_tracing_headers(books: Bookinfo) -> None:
    """productpage_to_echo sends its details call to the echo server, which shows what arrived."""
    sent = {"x-request-id": "req-42", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7", "x-b3-spanid": "e457b5a2e4d86bd1",
            "x-b3-sampled": "1", "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
            "x-not-propagated": "secret", "Cookie": "user=jason"}
    status, echoed = books.productpage_to_echo.get_json("/api/v1/products/0", sent)
    assert status == 200 and echoed["path"] == "/details/0" and echoed["pod"] == "echo-v2-abc"
    got = echoed["headers"]
    for name in ("x-request-id", "traceparent", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "b3"):
        assert got[name] == sent[name]
    assert got["end-user"] == "jason"  # the signed-in user, as Istio's productpage sends it
    assert "x-not-propagated" not in got
    assert got["host"] == f"127.0.0.1:{books.probe.port}"
    assert {"x-request-id", "traceparent", "b3", "x-b3-traceid"} <= set(PROPAGATED_HEADERS)


def test_productpage_login_sets_user_cookie(books: Bookinfo) -> None:
    status, headers, _ = books.productpage.get("/login", method="POST", body=b"username=jason&passwd=x",
                                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302 and headers["location"] == "/productpage" and headers["set-cookie"].startswith("user=jason")
    page = books.productpage.get("/productpage", {"Cookie": "user=jason"})[2].decode()
    assert "Signed in as <b>jason</b>" in page


def test_bookinfo_port_argument(tmp_path) -> None:
    """Istio's images take the port as the first argument (`python productpage.py 9080`)."""
    port = free_port("127.0.0.1")
    env = {**os.environ, "HOST": "127.0.0.1", "BOOKINFO_SERVICE": "ratings"}
    env.pop("PORT", None)
    proc = subprocess.Popen([sys.executable, "-m", "meshway.apps.bookinfo", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    app = App(proc, "127.0.0.1", port)
    try:
        wait_listening("127.0.0.1", port, proc)
        assert app.get_json("/ratings/1")[1]["id"] == 1
    finally:
        stop_app(app)


def test_bookinfo_without_service_exits_with_message() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BOOKINFO_SERVICE"}
    done = subprocess.run([sys.executable, "-m", "meshway.apps.bookinfo"], env=env, capture_output=True, timeout=10)
    assert done.returncode != 0 and b"BOOKINFO_SERVICE must be one of" in done.stderr


# -- sleep -----------------------------------------------------------------------------------
def catches(pid: int, sig: int) -> bool:
    """Whether the process has installed a handler for `sig` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_sleep_runs_until_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "meshway.apps.sleep"])
    try:
        deadline = time.monotonic() + 10
        while not catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:  # its handler is in place
            time.sleep(0.02)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
