"""TLS for the control plane's TCP port (istiod's 15012), with the client certificate optional:
verified against the mesh root when one is presented, absent otherwise (Go's
`tls.VerifyClientCertIfGiven`, what istiod's 15012 does). One port then serves both callers: proxies
that prove their node id with their workload certificate (ADS), and callers that have no
certificate yet and prove who they are with a Kubernetes token (the CA API).

grpc's Python server cannot do that: it either requires a client certificate or never asks for one.
So this terminates TLS itself (`ssl`, CERT_OPTIONAL, ALPN h2) and relays each connection's plaintext
HTTP/2 to the gRPC server on a Unix socket in a private folder. Each relayed connection binds its own
socket name there first, which the gRPC server reports as the call's peer (`context.peer()` =
`unix:<that name>`): `peer_certificate(peer)` gives the certificate verified on the public side of
that connection, or None.

The serving certificate is asked for at every handshake and the TLS context rebuilt when it changed
(renewed at half life), so a renewed certificate is served without a restart."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..ca import WorkloadCert
from ..private import make_private_dir

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
HANDSHAKE_TIMEOUT = 10.0


def build_tls_context(cert: WorkloadCert, root_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=root_pem)
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="meshway-tls-") as folder:  # 0700; ssl loads chains from files only
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cert.key_pem)
        cert_path.write_text(cert.cert_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


class TlsFront:
    def __init__(self, host: str, port: int, certificate: Callable[[], WorkloadCert], root_pem: str,
                 inner_dir: Path) -> None:
        self.host, self.port = host, port
        self.certificate, self.root_pem = certificate, root_pem
        self.inner_dir = Path(inner_dir)
        self.inner_socket = self.inner_dir / "grpc.sock"
        self._served = ""
        self._context: ssl.SSLContext | None = None
        self._peers: dict[str, str | None] = {}  # "unix:<name>" -> the verified client certificate (PEM) or None
        self._names = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    def prepare(self) -> str:
        """The inner socket's gRPC target (bind the gRPC server there before `start`)."""
        make_private_dir(self.inner_dir)  # 0700: only this process may connect to the gRPC server
        for stale in self.inner_dir.glob("*.sock"):
            stale.unlink(missing_ok=True)
        return f"unix:{self.inner_socket}"

    def context(self) -> ssl.SSLContext:
        """The TLS context with the current serving certificate (a new one once it was renewed)."""
        cert = self.certificate()
        if self._context is None or cert.cert_pem != self._served:
            context = build_tls_context(cert, self.root_pem)
            context.sni_callback = self._pick_context
            self._context, self._served = context, cert.cert_pem
        return self._context

    def _pick_context(self, tls: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        """During each handshake (the ClientHello): the context of the current certificate."""
        current = self.context()
        if tls.context is not current:
            tls.context = current

    async def start(self) -> int:
        """Listen; the bound port (the one asked for, or a free one for 0)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = await asyncio.start_server(self._accept, self.host, self.port, family=family,
                                                  reuse_address=True, ssl=self.context(),
                                                  ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        return self._server.sockets[0].getsockname()[1]

    def peer_certificate(self, peer: str) -> str | None:
        return self._peers.get(peer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._relay(reader, writer)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("xDS/CA connection from %s: %s", writer.get_extra_info("peername"), exc)
        except asyncio.CancelledError:  # `stop()`: the connection ends here (asyncio would log it otherwise)
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            with contextlib.suppress(Exception):
                writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode() if der else None
        name = self.inner_dir / f"c{next(self._names)}.sock"
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer = f"unix:{name}"
        try:
            inner.bind(str(name))
            inner.setblocking(False)
            self._peers[peer] = pem  # before a byte reaches the gRPC server
            await asyncio.get_running_loop().sock_connect(inner, str(self.inner_socket))
            name.unlink(missing_ok=True)  # the peer name stays the socket's; the file is not needed
            up_reader, up_writer = await asyncio.open_unix_connection(sock=inner, limit=CHUNK)
        except BaseException:
            inner.close()
            self._peers.pop(peer, None)
            name.unlink(missing_ok=True)
            raise
        try:
            pumps = [asyncio.ensure_future(_pump(reader, up_writer)), asyncio.ensure_future(_pump(up_reader, writer))]
            done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for p in pending:  # one side closed: give the other a moment to flush, then end both
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(p), 1.0)
                p.cancel()
        finally:
            self._peers.pop(peer, None)
            with contextlib.suppress(Exception):
                up_writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ConnectionError, ssl.SSLError):
        pass
