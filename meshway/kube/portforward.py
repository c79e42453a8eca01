"""A pod's port through the API server's `pods/portforward`, as `kubectl port-forward` and istioctl
reach a proxy's admin port (istioctl's `EnvoyDoWithPort`): one HTTP/1.1 exchange with
`localhost:<port>` inside the pod, for `meshway --kubeconfig FILE ztunnel-config` and `metrics`.

The client speaks SPDY/3.1 (`meshway.node.spdy`, the framing the node agent serves), which the API
server relays to the node's kubelet API unchanged after its 101: a POST to
`/api/v1/namespaces/<ns>/pods/<pod>/portforward` with `Upgrade: SPDY/3.1` and
`X-Stream-Protocol-Version: portforward.k8s.io`, then an `error` and a `data` stream (headers
`streamtype`, `port`, `requestid`), the request written on `data`, the answer read until the pod's
side ends it. `build_upgrade_request` and `read_portforward` are pure; `fetch_pod_http` is the I/O.
The credentials are the kubeconfig's (client certificate and/or bearer token), as the
`kubernetes` library loaded them."""
from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..node import spdy as S

PROTOCOL = "portforward.k8s.io"
TIMEOUT = 15.0


class PortForwardError(ConnectionError):
    pass


def build_upgrade_request(host: str, namespace: str, pod: str, authorization: str | None) -> bytes:
    lines = [f"POST /api/v1/namespaces/{namespace}/pods/{pod}/portforward HTTP/1.1", f"Host: {host}",
             "Connection: Upgrade", "Upgrade: SPDY/3.1", f"X-Stream-Protocol-Version: {PROTOCOL}",
             "Content-Length: 0", "User-Agent: meshway"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def build_stream_headers(kind: str, port: int, request_id: int = 0) -> S.Headers:
    return {"streamtype": [kind], "port": [str(port)], "requestid": [str(request_id)]}


@dataclass
class ForwardState:
    """What the pod's side sent back, frame by frame (`read_portforward`)."""

    data: bytearray = field(default_factory=bytearray)
    error: bytearray = field(default_factory=bytearray)
    done: bool = False  # the data stream ended (FIN or reset)


def read_portforward(state: ForwardState, frames: list[S.Frame], error_id: int, data_id: int) -> list[bytes]:
    """Apply the frames to `state`; returns the frames to send back (PING answers)."""
    replies = []
    for frame in frames:
        if isinstance(frame, S.Data) and frame.stream_id == data_id:
            state.data += frame.data
            state.done = state.done or frame.fin
        elif isinstance(frame, S.Data) and frame.stream_id == error_id:
            state.error += frame.data
        elif isinstance(frame, S.RstStream) and frame.stream_id == data_id:
            state.done = True
        elif isinstance(frame, S.Ping):
            replies.append(S.build_ping(frame.ping_id))
        elif isinstance(frame, S.GoAway):
            state.done = True
    return replies


def parse_upgrade_response(head: bytes) -> tuple[int, str]:
    """(status code, reason or body) of the API server's answer to the upgrade."""
    first, _, rest = head.partition(b"\r\n")
    parts = first.decode("latin-1").split(" ", 2)
    try:
        code = int(parts[1])
    except (IndexError, ValueError):
        raise PortForwardError(f"not an HTTP answer: {first[:100]!r}") from None
    return code, rest.partition(b"\r\n\r\n")[2].decode(errors="replace").strip() or (parts[2] if len(parts) > 2 else "")


def _ssl_context(conf: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=conf.ssl_ca_cert) if conf.verify_ssl else \
        ssl._create_unverified_context()  # noqa: S323: the kubeconfig's insecure-skip-tls-verify
    if conf.cert_file:
        context.load_cert_chain(conf.cert_file, conf.key_file)
    return context


def _connect(conf: Any) -> tuple[socket.socket, str]:
    url = urlparse(conf.host)
    host, port = url.hostname or "localhost", url.port or 443
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    server_name = getattr(conf, "tls_server_name", None) or host
    return _ssl_context(conf).wrap_socket(raw, server_hostname=server_name), f"{host}:{port}"


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def fetch_pod_http(api_client: Any, namespace: str, pod: str, port: int, request: bytes) -> bytes:
    """Send `request` (bytes of one HTTP/1.1 request, `Connection: close`) to the pod's `localhost:port`
    through the API server; the raw answer (up to the pod's side closing it)."""
    conf = api_client.configuration
    authorization = (conf.auth_settings().get("BearerToken") or {}).get("value")
    sock, host = _connect(conf)
    with sock:
        sock.sendall(build_upgrade_request(host, namespace, pod, authorization))
        head, rest = _read_head(sock)
        code, reason = parse_upgrade_response(head)
        if code != 101:
            body = rest.decode(errors="replace").strip()
            raise PortForwardError(f"cannot port-forward to pod {namespace}/{pod}: {code} {body or reason}")
        session, state = S.Session(), ForwardState()
        error_id, data_id = 1, 3
        sock.sendall(session.build_syn_stream(error_id, build_stream_headers("error", port)) +
                     session.build_syn_stream(data_id, build_stream_headers("data", port)) +
                     S.build_data(data_id, request))
        pending = rest
        while not state.done:
            for reply in read_portforward(state, session.feed(pending), error_id, data_id):
                sock.sendall(reply)
            if state.done:
                break
            pending = sock.recv(65536)
            if not pending:
                break
    if state.error:
        raise PortForwardError(state.error.decode(errors="replace").strip())
    return bytes(state.data)


def parse_http_response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.1 answer read to the end (Content-Length, chunked, or to the close)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    code, _ = parse_upgrade_response(head + b"\r\n\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:])}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return code, decode_chunked(body)
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return code, body


def decode_chunked(body: bytes) -> bytes:
    out, offset = bytearray(), 0
    while True:
        line_end = body.find(b"\r\n", offset)
        if line_end < 0:
            raise PortForwardError("chunked answer cut short")
        size = int(body[offset:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        start = line_end + 2
        if start + size > len(body):
            raise PortForwardError("chunked answer cut short")
        out += body[start:start + size]
        offset = start + size + 2


def fetch_pod_admin(api_client: Any, namespace: str, pod: str, path: str, port: int = 15000,
                    method: str = "GET") -> bytes:
    """The Envoy admin answer at `path` of the proxy in the pod (its admin on localhost:15000, as Istio's)."""
    request = (f"{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n"
               "Content-Length: 0\r\n\r\n").encode()
    code, body = parse_http_response(fetch_pod_http(api_client, namespace, pod, port, request))
    if code != 200:
        raise PortForwardError(f"{namespace}/{pod} admin {path}: HTTP {code}: {body[:200].decode(errors='replace')}")
    return body
