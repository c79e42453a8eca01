"""The kubelet API of `meshway node`: `GET /containerLogs/<ns>/<pod>/<container>` (`kubectl logs`
reaches it through the API server: `https://<node InternalIP>:<kubeletEndpoint port>`), with
`follow`, `tailLines` and `limitBytes`; `/exec/…` and `/portForward/…` upgraded to SPDY/3.1
(`kubectl exec`, `attach`, `port-forward`: `meshway.node.streaming`); and `/healthz`.

HTTPS only. A client must present a certificate of the cluster CA (`--client-ca-file`; the API
server presents its `--kubelet-client-certificate`), and is then authorized as the kubelet's
webhook mode does it: a SubjectAccessReview for `get nodes/proxy` on this node, with the
certificate's CN as the user and its O as the groups. `run` is not served (501)."""
from __future__ import annotations

import http.server
import logging
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from ..kube.client import ApiError, KubeClient
from .plan import LogRequestError, plan_log_request, select_log
from .streaming import (EXEC_PROTOCOLS, PORT_FORWARD_PROTOCOL, FindTarget, StreamRequestError, StreamSession,
                        choose_protocol, plan_stream_request)

log = logging.getLogger("meshway.node.server")
FindLog = Callable[[str, str, str], "tuple[Path, bool] | None"]
STREAMING = ("/exec/", "/attach/", "/portForward/", "/run/")


def build_tls_context(cert_file: Path, key_file: Path, client_ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.load_verify_locations(cafile=str(client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED  # no anonymous requests
    return ctx


def find_subject(cert: dict) -> tuple[str, list[str]]:
    """(CN, [O...]) of a peer certificate as `ssl.getpeercert()` returns it."""
    cn, orgs = "", []
    for rdn in cert.get("subject") or ():
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return cn, orgs


class Authorizer:
    """`get` (or `create`, for POST) `nodes/proxy` on this node, by SubjectAccessReview (answers cached 30 s, as the kubelet's)."""

    def __init__(self, client: KubeClient, node: str, ttl: float = 30.0) -> None:
        self.client, self.node, self.ttl = client, node, ttl
        self.cache: dict[tuple[str, tuple[str, ...], str], tuple[float, bool, str]] = {}

    def allowed(self, user: str, groups: list[str], verb: str = "get") -> tuple[bool, str]:
        key = (user, tuple(sorted(groups)), verb)
        hit = self.cache.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1], hit[2]
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": groups,
                           "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": "proxy",
                                                  "name": self.node}}}
        try:
            out = self.client.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        except ApiError as exc:
            return False, f"authorization check failed: {exc}"
        status = out.get("status") or {}
        allowed, reason = bool(status.get("allowed")), status.get("reason") or ""
        self.cache[key] = (time.monotonic(), allowed, reason)
        return allowed, reason


class KubeletServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext, find_log: FindLog, authorizer: Authorizer,
                 stopping: threading.Event, find_target: FindTarget | None = None) -> None:
        super().__init__(address, Handler)
        self.tls, self.find_log, self.authorizer, self.stopping = tls, find_log, authorizer, stopping
        self.find_target = find_target

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(10)
        try:
            return self.tls.wrap_socket(sock, server_side=True), addr
        except (ssl.SSLError, OSError):
            sock.close()
            raise


class Handler(http.server.BaseHTTPRequestHandler):
    server: KubeletServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def log_error(self, fmt: str, *args) -> None:  # an idle keep-alive connection timing out, mostly
        log.debug("%s %s", self.address_string(), fmt % args)

    def reply(self, status: int, text: str) -> None:
        data = (text.rstrip("\n") + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802: exec, attach, portForward (the API server upgrades these)
        if not self.check("create"):
            return
        if urlsplit(self.path).path.startswith(STREAMING):
            return self.stream()
        self.reply(405, f"{self.command} is not allowed on {urlsplit(self.path).path}")

    def stream(self) -> None:
        """exec / portForward: check the request and the upgrade, answer 101, serve the SPDY session."""
        url = urlsplit(self.path)
        try:
            req = plan_stream_request(url.path, parse_qs(url.query))
        except StreamRequestError as exc:
            return self.reply(exc.status, str(exc))
        if (self.headers.get("Upgrade") or "").lower() != "spdy/3.1":
            return self.reply(400, "Upgrade request required (SPDY/3.1)")
        supported = EXEC_PROTOCOLS if req.kind in ("exec", "attach") else (PORT_FORWARD_PROTOCOL,)
        protocol = choose_protocol(self.headers.get_all("X-Stream-Protocol-Version") or [], supported)
        if protocol is None:
            return self.reply(403, f"subprotocol negotiation failed: the client offers none of {', '.join(supported)}")
        target = self.server.find_target(req.namespace, req.pod, req.container) if self.server.find_target else None
        if target is None:
            what = f'container "{req.container}" in pod' if req.container else "pod"
            return self.reply(404, f'{what} "{req.pod}" (namespace {req.namespace}) is not running on this node')
        self.send_response(101, "Switching Protocols")
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        self.send_header("X-Stream-Protocol-Version", protocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(None)
        StreamSession(self.connection, req, target).run()

    def check(self, verb: str) -> bool:
        """Whether the client (its certificate's CN and O) may use this node's kubelet API."""
        user, groups = find_subject(self.connection.getpeercert() or {})
        allowed, reason = self.server.authorizer.allowed(user, groups, verb)
        if not allowed:
            self.reply(403, f"Forbidden (user={user}, verb={verb}, resource=nodes, subresource=proxy)"
                            + (f": {reason}" if reason else ""))
        return allowed

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        if url.path == "/healthz":
            return self.reply(200, "ok")
        if not self.check("get"):
            return None
        if url.path.startswith(STREAMING):
            return self.stream()
        try:
            req = plan_log_request(url.path, parse_qs(url.query))
        except LogRequestError as exc:
            return self.reply(exc.status, str(exc))
        if req.previous:
            return self.reply(400, f'previous terminated container "{req.container}" in pod "{req.pod}" not found '
                                   "(meshway keeps one log per container; restarts append to it)")
        found = self.server.find_log(req.namespace, req.pod, req.container)
        if found is None:
            return self.reply(404, f'container "{req.container}" in pod "{req.pod}" (namespace {req.namespace}) '
                                   "is not running on this node")
        path, live = found
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        offset = len(data)
        body = select_log(data, req.tail_lines, req.limit_bytes)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if not req.follow:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.follow(path, body, offset, req.limit_bytes)

    def chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def follow(self, path: Path, first: bytes, offset: int, limit: int | None) -> None:
        """Send what is there, then what is appended, until the client goes, the limit is reached,
        the pod stops or the agent does."""
        sent = 0
        try:
            data = first
            while True:
                if limit is not None:
                    data = data[:max(0, limit - sent)]
                self.chunk(data)
                sent += len(data)
                if (limit is not None and sent >= limit) or self.server.stopping.is_set():
                    break
                parts = path.parent.name.split(".", 1)
                found = self.server.find_log(parts[0], parts[1], path.stem) if len(parts) == 2 else None
                if found is None or not found[1]:
                    break
                time.sleep(0.2)
                try:
                    with open(path, "rb") as f:
                        f.seek(offset)
                        data = f.read(1 << 20)
                except FileNotFoundError:
                    data = b""
                offset += len(data)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass  # the client went away


def serve(address: tuple[str, int], tls: ssl.SSLContext, find_log: FindLog, authorizer: Authorizer,
          stopping: threading.Event, find_target: FindTarget | None = None) -> KubeletServer:
    """Bind and serve on a daemon thread; `.server_address[1]` is the bound port (0: any free one)."""
    server = KubeletServer(address, tls, find_log, authorizer, stopping, find_target)
    threading.Thread(target=server.serve_forever, name="kubelet API", daemon=True).start()
    return server
