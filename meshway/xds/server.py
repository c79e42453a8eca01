"""The ADS gRPC server (grpc.aio, Unix socket): moves messages between Envoy and a stream object.

All protocol decisions live in `meshway.xds.stream`; all state worth keeping lives in the
`SnapshotCache`. A handler reads the node id from the first request, then waits for whichever comes
first, the next request or a new snapshot for that node, and writes what the stream returns.

Authentication: given `authenticate` (a predicate on the first request's `Node`, e.g.
`meshway.ca.tokens.ProxyTokens.authenticate`), a stream whose node does not prove its id is ended
with PERMISSION_DENIED before anything is sent, logged and counted in `denied`. A proven stream
receives only what that node's snapshot holds: a secret name not in it is never served. The socket
is 0600 in a 0700 folder whatever the umask.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc

from ..private import make_private, make_private_dir
from .cache import SnapshotCache
from .stream import Acked, DeltaStream, Event, Nacked, Sent, SotwStream

log = logging.getLogger(__name__)

StreamFactory = Callable[..., SotwStream | DeltaStream]
MAX_DENIED_IDS = 256  # distinct claimed node ids counted by name in `denied`


class XdsServer:
    def __init__(self, cache: SnapshotCache, on_event: Callable[[str, Event], None] | None = None,
                 authenticate: Callable[[Node], bool] | None = None) -> None:
        self.cache = cache
        self.on_event = on_event  # also told every stream event (node id, event), e.g. for metrics
        self.authenticate = authenticate  # None: any node id is believed (tests of the protocol only)
        self.denied: Counter[str] = Counter()  # refused streams by the node id they claimed
        self.connected: set[str] = set()  # node ids with at least one open ADS stream
        self.socket_path: Path | None = None
        self._streams: Counter[str] = Counter()
        self._server: grpc.aio.Server | None = None
        self._closing = asyncio.Event()  # set by stop(): open streams end with OK instead of being cancelled

    async def start(self, socket_path: str | os.PathLike[str]) -> None:
        path = Path(socket_path)
        make_private_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left over from a previous run; binding would fail
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        if server.add_insecure_port(f"unix:{path}") == 0:
            raise OSError(f"cannot listen on unix:{path}")
        make_private(path)  # bound by now; nobody else could reach it inside the 0700 folder anyway
        await server.start()
        self._server, self.socket_path, self._closing = server, path, asyncio.Event()

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
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def handle_stream(self, context: grpc.aio.ServicerContext, make_stream: StreamFactory) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        node_id = first.node.id
        if not node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        if self.authenticate is not None and not self.authenticate(first.node):
            self._deny(node_id)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no valid credential for the node id claimed")
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

    def _deny(self, node_id: str) -> None:
        """Count and log a refused stream; the node id is the caller's word, so it is quoted, cut,
        and counted under its own name only for the first MAX_DENIED_IDS names."""
        claimed = node_id[:200]
        self.denied[claimed if claimed in self.denied or len(self.denied) < MAX_DENIED_IDS else "(other)"] += 1
        log.warning("refused an xDS stream claiming node %r: no valid credential for it", claimed)

    def _record(self, node_id: str, event: Event) -> None:
        match event:
            case Sent():
                self.cache.record_sent(node_id, event.type_url, event.version, event.nonce)
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
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._server.handle_stream(context, SotwStream)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._server.handle_stream(context, DeltaStream)
