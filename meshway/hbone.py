"""A small HBONE client: HTTP/2 CONNECT over mutual TLS 1.3 (ALPN h2, no SNI), carrying HTTP/1.1
inside the tunnel. What a source ztunnel does, usable from tests, benchmarks and tools."""
from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events


class HboneError(Exception):
    pass


def build_client_context(cert_pem: str, key_pem: str, root_pem: str, tmpdir: str) -> ssl.SSLContext:
    """TLS 1.3 only, ALPN h2, client certificate, peers verified against the mesh root (no SNI,
    no hostname check: identities are SPIFFE URIs)."""
    import os

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=root_pem)
    cert, key = os.path.join(tmpdir, "hbone-cert.pem"), os.path.join(tmpdir, "hbone-key.pem")
    with open(cert, "w") as f:
        f.write(cert_pem)
    with open(key, "w") as f:
        f.write(key_pem)
    os.chmod(key, 0o600)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class HboneConnection:
    """One mTLS HTTP/2 connection to a waypoint or node proxy's :15008."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, timeout: float = 10.0):
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname=None) if context else raw
        if context and self.sock.selected_alpn_protocol() != "h2":
            raise HboneError(f"ALPN negotiated {self.sock.selected_alpn_protocol()!r}, expected 'h2'")
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self._flush()
        self.buffers: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.responses: dict[int, int] = {}

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise HboneError("connection closed by peer")
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id] = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.buffers.setdefault(event.stream_id, bytearray()).extend(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                self.ended.add(event.stream_id)
        self._flush()

    def open(self, authority: str) -> "Tunnel":
        """CONNECT to `authority` (IP:port); raises HboneError unless the proxy answers 200."""
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, [(":method", "CONNECT"), (":authority", authority)])
        self._flush()
        while stream not in self.responses and stream not in self.ended:
            self._pump()
        status = self.responses.get(stream, 0)
        if status != 200:
            raise HboneError(f"CONNECT {authority} answered {status or 'reset'}")
        return Tunnel(self, stream)

    def close(self) -> None:
        try:
            self.h2.close_connection()
            self._flush()
        except Exception:
            pass
        self.sock.close()


class Tunnel:
    """A CONNECT stream: a byte pipe; `request` speaks HTTP/1.1 with keep-alive through it."""

    def __init__(self, conn: HboneConnection, stream: int):
        self.conn, self.stream = conn, stream

    def send(self, data: bytes) -> None:
        self.conn.h2.send_data(self.stream, data)
        self.conn._flush()

    def _buffer(self) -> bytearray:
        return self.conn.buffers.setdefault(self.stream, bytearray())

    def request(self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
                host: str = "service") -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = self._buffer()
        while b"\r\n\r\n" not in buf:
            if self.stream in self.conn.ended:
                raise HboneError("tunnel closed before a response")
            self.conn._pump()
        head, _, _ = bytes(buf).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(hdrs.get("content-length", "0"))
        start = len(head) + 4
        while len(buf) < start + length:
            if self.stream in self.conn.ended:
                break
            self.conn._pump()
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        return Response(int(status_line.split()[1]), hdrs, body)

    def close(self) -> None:
        try:
            self.conn.h2.end_stream(self.stream)
            self.conn._flush()
        except Exception:
            pass
