"""A small asyncio HTTP/1.1 server shared by the built-in apps: one request type, one response
type, an async handler between them. HTTP/2 (h2c) is handed to an optional `h2_handler` when the
client sends the prior-knowledge preface or asks for `Upgrade: h2c`."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
H2_PREFACE_HEAD = b"PRI * HTTP/2.0\r\n\r\n"


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query as sent
    headers: tuple[tuple[str, str], ...]  # lower-case names, in order
    body: bytes
    client: str  # "ip:port" of the peer
    protocol: str  # "HTTP/1.1", "HTTP/1.0" or "HTTP/2.0"

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def header_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.headers:
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]
# (reader, writer, handler, client, the HTTP/1.1 request that asked to upgrade or None, bytes already read)
H2Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Handler, str, "Request | None", bytes],
                     Awaitable[None]]


def json_response(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, (json.dumps(obj, indent=1) + "\n").encode(), "application/json", headers)


def html_response(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, text.encode(), "text/html; charset=utf-8", headers)


def detect_bodyless(status: int, method: str) -> bool:
    return method == "HEAD" or status in (204, 304) or status < 200


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def listen_address(env: Mapping[str, str], default_port: int, argv: list[str]) -> tuple[str, int]:
    """HOST/PORT from the environment (default 0.0.0.0:<default_port>); a bare number as the first
    argument is the port too, as Istio's bookinfo images take it."""
    port = int(env.get("PORT") or default_port)
    if argv and argv[0].isdigit():
        port = int(argv[0])
    return env.get("HOST") or "0.0.0.0", port


def log_access(req: Request, status: int) -> None:
    print(f'{req.client} "{req.method} {req.target} {req.protocol}" {status}', flush=True)


async def call_handler(handler: Handler, req: Request) -> Response:
    try:
        resp = await handler(req)
    except Exception as exc:  # an app bug answers 500 and keeps the server up
        print(f"error handling {req.method} {req.target}: {exc!r}", file=sys.stderr, flush=True)
        resp = json_response(500, {"error": f"internal error: {exc}"})
    log_access(req, resp.status)
    return resp


# -- HTTP/1.1 --------------------------------------------------------------------------------
def parse_head(head: bytes) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.lower(), value.strip()))
    return parts[0], parts[1], parts[2], tuple(headers)


def encode_response(resp: Response, method: str, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {reason(resp.status)}"]
    bodyless = detect_bodyless(resp.status, method)
    if resp.status not in (204, 304):
        lines.append(f"Content-Type: {resp.content_type}")
        lines.append(f"Content-Length: {len(resp.body)}")
    lines += [f"{k}: {v}" for k, v in resp.headers]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if bodyless else head + resp.body


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise ValueError("body too large")
            body += await reader.readexactly(size)
            await reader.readuntil(b"\r\n")
    length = int(headers.get("content-length") or 0)
    if length < 0 or length > MAX_BODY:
        raise ValueError("bad content-length")
    return await reader.readexactly(length) if length else b""


def detect_keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def detect_h2c_upgrade(headers: dict[str, str]) -> bool:
    return "h2c" in headers.get("upgrade", "").lower() and "http2-settings" in headers


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                           h2_handler: H2Handler | None) -> None:
    peer = writer.get_extra_info("peername") or ("?", 0)
    client = f"{peer[0]}:{peer[1]}"
    try:
        await serve_http1(reader, writer, handler, h2_handler, client)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def serve_http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                      h2_handler: H2Handler | None, client: str) -> None:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        if head == H2_PREFACE_HEAD and h2_handler:
            await h2_handler(reader, writer, handler, client, None, head)
            return
        try:
            method, target, version, headers = parse_head(head)
            hmap = dict(headers)
            if version not in ("HTTP/1.1", "HTTP/1.0"):
                raise ValueError(f"unsupported version {version}")
            if hmap.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await read_body(reader, hmap)
        except (ValueError, UnicodeDecodeError) as exc:
            writer.write(encode_response(json_response(400, {"error": str(exc)}), "GET", False))
            await writer.drain()
            return
        req = Request(method, target, headers, body, client, version)
        if h2_handler and detect_h2c_upgrade(hmap):
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
            await h2_handler(reader, writer, handler, client, req, b"")
            return
        keep_alive = detect_keep_alive(version, hmap)
        resp = await call_handler(handler, req)
        writer.write(encode_response(resp, method, keep_alive))
        await writer.drain()
        if not keep_alive:
            return


# -- process entry ---------------------------------------------------------------------------
async def serve(handler: Handler, host: str, port: int, name: str, h2_handler: H2Handler | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then close the listener and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, handler, h2_handler)

    server = await asyncio.start_server(on_connection, host, port, limit=MAX_HEAD, reuse_address=True)
    print(f"{name} listening on {host}:{port} (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()
    print(f"{name} stopping", flush=True)
