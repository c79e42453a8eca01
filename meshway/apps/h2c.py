"""HTTP/2 over cleartext (h2c) for the built-in apps, on the sans-I/O `h2` state machine: prior
knowledge (the client starts with the HTTP/2 preface) and `Upgrade: h2c` from HTTP/1.1. Each
stream's request goes to the same handler as HTTP/1.1; streams are answered concurrently."""
from __future__ import annotations

import asyncio

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import H2Error

from .server import Handler, Request, Response, call_handler, detect_bodyless


def build_request(headers: list[tuple[str, str]], body: bytes, client: str) -> Request:
    pseudo = {k: v for k, v in headers if k.startswith(":")}
    regular = tuple((k, v) for k, v in headers if not k.startswith(":"))
    if ":authority" in pseudo and not any(k == "host" for k, _ in regular):
        regular = (("host", pseudo[":authority"]), *regular)
    return Request(pseudo.get(":method", "GET"), pseudo.get(":path", "/"), regular, body, client, "HTTP/2.0")


def build_response_headers(resp: Response) -> list[tuple[str, str]]:
    headers = [(":status", str(resp.status))]
    if resp.status not in (204, 304):
        headers += [("content-type", resp.content_type), ("content-length", str(len(resp.body)))]
    return headers + [(k.lower(), v) for k, v in resp.headers]


class H2Session:
    """One h2c connection: feeds bytes to `h2`, answers each finished request stream."""

    def __init__(self, writer: asyncio.StreamWriter, handler: Handler, client: str) -> None:
        self.conn = H2Connection(config=H2Configuration(client_side=False, header_encoding="utf-8"))
        self.writer = writer
        self.handler = handler
        self.client = client
        self.requests: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        self.window_open = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def receive(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = (list(event.headers), bytearray())
            elif isinstance(event, DataReceived):
                if event.stream_id in self.requests:
                    self.requests[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded) and event.stream_id in self.requests:
                headers, body = self.requests.pop(event.stream_id)
                self.spawn(event.stream_id, build_request(headers, bytes(body), self.client))
            elif isinstance(event, StreamReset):
                self.requests.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self.closed = True
        self.window_open.set()  # settings or window updates may have opened a stream's window
        self.flush()

    def spawn(self, stream_id: int, req: Request) -> None:
        task = asyncio.get_running_loop().create_task(self.respond(stream_id, req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def respond(self, stream_id: int, req: Request) -> None:
        resp = await call_handler(self.handler, req)
        body = b"" if detect_bodyless(resp.status, req.method) else resp.body
        try:
            self.conn.send_headers(stream_id, build_response_headers(resp), end_stream=not body)
            self.flush()
            while body:
                window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                if window <= 0:
                    self.window_open.clear()
                    await self.window_open.wait()
                    continue
                chunk, body = body[:window], body[window:]
                self.conn.send_data(stream_id, chunk, end_stream=not body)
                self.flush()
        except H2Error:  # the client reset the stream or closed the connection
            return


async def serve_h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler, client: str,
                   upgrade: Request | None, initial: bytes) -> None:
    session = H2Session(writer, handler, client)
    if upgrade is not None:
        session.conn.initiate_upgrade_connection(upgrade.header("http2-settings"))
        session.flush()
        session.spawn(1, upgrade)
    else:
        session.conn.initiate_connection()
        session.flush()
    data = initial
    try:
        while not session.closed:
            if data:
                session.receive(data)
                await writer.drain()
            data = await reader.read(65536)
            if not data:
                break
    except H2Error:
        pass
    finally:
        for task in list(session.tasks):
            task.cancel()
