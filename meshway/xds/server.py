"""The ADS gRPC server (grpc.aio; a Unix socket, and optionally TCP + mTLS): moves messages
between Envoy and a stream object.

All protocol decisions live in `meshway.xds.stream`; all state worth keeping lives in the
`SnapshotCache`. A handler reads the node id from the first request, then waits for whichever comes
first, the next request or a new snapshot for that node, and writes what the stream returns.

Authentication: given `authenticate` (a predicate on the first request's `Node`, e.g.
`meshway.ca.tokens.ProxyTokens.authenticate`), a stream whose node does not prove its id is ended
with PERMISSION_DENIED before anything is sent, logged and counted in `denied`. A proven stream
receives only what that node's snapshot holds: a secret name not in it is never served. The socket
is 0600 in a 0700 folder whatever the umask.

Over TCP (`start(..., tcp=MtlsListener)`, istiod's port 15012; `meshway.xds.mtls`) the proof is the
client's certificate instead of a token: one from the mesh CA (verified by the TLS front,
`meshway.xds.tls_front`), whose SPIFFE ID must be the one the claimed node id requires
(`meshway.xds.peer`); a stream without one, or failing that, is refused and counted the same way.
The same port also serves the listener's other services (the CA API), and Istio's debug xDS type
`istio.io/debug/syncz` (`meshway.xds.debug_service`: what `istioctl proxy-status` asks istiod), to a
stream whose first request asks for it, proven by a token or a client certificate instead. The two listeners are
separate grpc servers, so the port a stream arrived on decides which proof it owes. Given a sink,
both also serve Envoy's access log service (`meshway.xds.access_log_service`: waypoints' request
logs), whose streams owe the same proof.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc

from .. import __version__
from ..private import make_private, make_private_dir
from .access_log_service import Sink, add_access_log_service
from .cache import SnapshotCache
from .debug import SyncSource, build_control_plane_id, detect_debug_type
from .debug_service import DebugService
from .mtls import MtlsListener, decide_stream_peer, parse_address
from .tls_front import TlsFront
from .stream import Acked, DeltaStream, Event, Nacked, Sent, SotwStream

log = logging.getLogger(__name__)

StreamFactory = Callable[..., SotwStream | DeltaStream]
MAX_DENIED_IDS = 256  # distinct claimed node ids counted by name in `denied`
NO_TOKEN = "no valid credential for the node id claimed"
# (first request's node, the stream's context) -> why the stream is refused, "" to serve it
Authenticator = Callable[[Node, grpc.aio.ServicerContext], str]
DebugHandler = Callable[[Any, grpc.aio.ServicerContext], Any]  # (first request, context) -> awaitable


class XdsServer:
    def __init__(self, cache: SnapshotCache, on_event: Callable[[str, Event], None] | None = None,
                 authenticate: Callable[[Node], bool] | None = None, access_logs: Sink | None = None) -> None:
        self.cache = cache
        self.access_logs = access_logs  # given: the access log service too, for waypoints' request logs
        self.on_event = on_event  # also told every stream event (node id, event), e.g. for metrics
        self.authenticate = authenticate  # None: any node id is believed (tests of the protocol only)
        self.denied: Counter[str] = Counter()  # refused streams by the node id they claimed
        self.connected: set[str] = set()  # node ids with at least one open ADS stream
        self.sent_at: dict[tuple[str, str], float] = {}  # (node id, type URL) -> when last sent (epoch seconds)
        self.debug: DebugService | None = None  # the debug types on the TCP port (`start(..., tcp=...)`)
        self.socket_path: Path | None = None
        self.tcp_address: str | None = None  # HOST:PORT the mTLS listener is bound to, if any
        self._streams: Counter[str] = Counter()
        self._server: grpc.aio.Server | None = None
        self._tcp_server: grpc.aio.Server | None = None
        self._front: TlsFront | None = None
        self._closing = asyncio.Event()  # set by stop(): open streams end with OK instead of being cancelled

    async def start(self, socket_path: str | os.PathLike[str], tcp: MtlsListener | None = None) -> None:
        path = Path(socket_path)
        make_private_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left over from a previous run; binding would fail
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self, self._check_token), server)
        if self.access_logs is not None:
            add_access_log_service(server, self.access_logs, self._check_token)
        if server.add_insecure_port(f"unix:{path}") == 0:
            raise OSError(f"cannot listen on unix:{path}")
        make_private(path)  # bound by now; nobody else could reach it inside the 0700 folder anyway
        tcp_server, front = None, None
        try:
            if tcp is not None:
                tcp_server, front = self._bind_tcp(tcp, Path(tempfile.mkdtemp(prefix="meshway-xds-")))  # short: socket names
                await tcp_server.start()
                host = parse_address(tcp.address)[0]
                try:
                    bound = await front.start()
                except OSError as exc:
                    raise OSError(f"cannot listen on {tcp.address} (xDS over TCP + mTLS): {exc}") from exc
                self.tcp_address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        except (OSError, ValueError):
            await server.stop(None)
            if tcp_server is not None:
                await tcp_server.stop(None)
            path.unlink(missing_ok=True)
            raise
        await server.start()
        self._server, self._tcp_server, self._front = server, tcp_server, front
        self.socket_path, self._closing = path, asyncio.Event()

    def _bind_tcp(self, listener: MtlsListener, inner_dir: Path) -> tuple[grpc.aio.Server, TlsFront]:
        """The gRPC server behind the TLS front (`meshway.xds.tls_front`): ADS, whose streams must
        present the certificate their node id needs, and the listener's other services (the CA API)."""
        host, port = parse_address(listener.address)
        front = TlsFront(host, port, listener.certificate, listener.root_pem, inner_dir)
        server = grpc.aio.server()

        def by_certificate(node: Node, context: grpc.aio.ServicerContext) -> str:
            return decide_stream_peer(node.id, front.peer_certificate(context.peer()), listener).reason
        self.debug = DebugService(self.sync_source, build_control_plane_id(listener.instance, __version__),
                                  listener.trust_domain, listener.review_token)

        async def debug(first: Any, context: grpc.aio.ServicerContext) -> None:
            await self.debug.serve(first, context, front.peer_certificate(context.peer()))  # type: ignore[union-attr]
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self, by_certificate, debug), server)
        if self.access_logs is not None:
            add_access_log_service(server, self.access_logs, by_certificate)
        if listener.handlers:
            server.add_generic_rpc_handlers(listener.handlers)
        if server.add_insecure_port(front.prepare()) == 0:
            raise OSError(f"cannot listen on {front.inner_socket}")
        return server, front

    def sync_source(self) -> SyncSource:
        """What `istio.io/debug/syncz` reports, copied on the loop's thread."""
        return SyncSource({n: {t: dict(v) for t, v in types.items()} for n, types in list(self.cache.status.items())},
                          frozenset(self.connected), dict(self.sent_at))

    def _check_token(self, node: Node, context: grpc.aio.ServicerContext) -> str:
        return "" if self.authenticate is None or self.authenticate(node) else NO_TOKEN

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            # End every open stream first (Envoy reconnects to the next control plane): grpc.aio would
            # otherwise cancel the handlers after `grace` and log each CancelledError as a traceback.
            self._closing.set()
            deadline = asyncio.get_running_loop().time() + (grace or 0.5)
            while self._streams and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            await self._server.stop(grace)
            self._server = None
        if self._front is not None:
            await self._front.stop()
            shutil.rmtree(self._front.inner_dir, ignore_errors=True)
            self._front = None
        if self._tcp_server is not None:
            await self._tcp_server.stop(grace)
            self._tcp_server, self.tcp_address = None, None
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def handle_stream(self, context: grpc.aio.ServicerContext, make_stream: StreamFactory,
                            authenticate: Authenticator | None = None, debug: DebugHandler | None = None) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if debug is not None and detect_debug_type(first.type_url):
            return await debug(first, context)  # a debug client (istioctl), not a proxy
        node_id = first.node.id
        if not node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        refusal = (authenticate or self._check_token)(first.node, context)
        if refusal:
            self._deny(node_id, refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        generation = self.cache.generation(node_id)
        stream = make_stream(node_id, self.cache.get(node_id), lambda event: self._record(node_id, event))
        self._connect(node_id)
        reading: asyncio.Future[Any] | None = None
        watching: asyncio.Future[int] | None = None
        closing: asyncio.Future[Any] | None = None
        try:
            for response in stream.on_request(first):
                await context.write(response)
            reading = asyncio.ensure_future(context.read())
            watching = asyncio.ensure_future(self.cache.changed(node_id, generation))
            closing = asyncio.ensure_future(self._closing.wait())
            while True:
                done, _ = await asyncio.wait({reading, watching, closing}, return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    return
                if watching in done:
                    generation = watching.result()
                    snapshot = self.cache.get(node_id)
                    for response in stream.on_snapshot(snapshot) if snapshot is not None else []:
                        await context.write(response)
                    watching = asyncio.ensure_future(self.cache.changed(node_id, generation))
                if reading in done:
                    request = reading.result()
                    if request is grpc.aio.EOF:
                        return
                    for response in stream.on_request(request):
                        await context.write(response)
                    reading = asyncio.ensure_future(context.read())
        finally:
            for task in (reading, watching, closing):
                if task is not None:
                    task.cancel()
            self._disconnect(node_id)

    def _deny(self, node_id: str, reason: str = NO_TOKEN) -> None:
        """Count and log a refused stream; the node id is the caller's word, so it is quoted, cut,
        and counted under its own name only for the first MAX_DENIED_IDS names."""
        claimed = node_id[:200]
        self.denied[claimed if claimed in self.denied or len(self.denied) < MAX_DENIED_IDS else "(other)"] += 1
        log.warning("refused an xDS stream claiming node %r: %s", claimed, reason[:600])

    def _record(self, node_id: str, event: Event) -> None:
        match event:
            case Sent():
                self.cache.record_sent(node_id, event.type_url, event.version, event.nonce)
                self.sent_at[(node_id, event.type_url)] = time.time()
            case Acked():
                self.cache.record_ack(node_id, event.type_url, event.version, event.nonce)
            case Nacked():
                log.warning("%s NACKed %s version %s: %s", node_id, event.type_url, event.version, event.message)
                self.cache.record_nack(node_id, event.type_url, event.accepted_version, event.nonce, event.message)
        if self.on_event is not None:
            self.on_event(node_id, event)

    def _connect(self, node_id: str) -> None:
        self._streams[node_id] += 1
        self.connected.add(node_id)

    def _disconnect(self, node_id: str) -> None:
        self._streams[node_id] -= 1
        if self._streams[node_id] <= 0:
            del self._streams[node_id]
            self.connected.discard(node_id)


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, server: XdsServer, authenticate: Authenticator, debug: DebugHandler | None = None) -> None:
        self._server, self._authenticate, self._debug = server, authenticate, debug

    async def StreamAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._server.handle_stream(context, SotwStream, self._authenticate, self._debug)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._server.handle_stream(context, DeltaStream, self._authenticate)
