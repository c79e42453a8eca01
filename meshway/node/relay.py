"""The path from a node's pods to the control plane's TCP port (what a Service VIP is in a cluster).

Pods here live in network namespaces that have no route to the host's (the runtime gives the host
namespace no link: `meshway.runtime.netns`), and the control plane listens on the host. So the node
agent relays: a Unix socket (filesystem paths cross network namespaces) that any pod may connect to,
each connection copied byte for byte to the control plane's HOST:PORT. TLS runs end to end between
the pod's Envoy and the control plane: the relay sees only ciphertext and proves nothing.

Run as a program (`python -m meshway.node.relay HOST:PORT SOCKET [HOST:PORT SOCKET ...]`), the other
direction: TCP ports inside a pod whose connections go to the agent's sockets (the `istiod` pod that
istioctl port-forwards to, `meshway.node.istiod`)."""
from __future__ import annotations

import logging
import os
import socket
import socketserver
import sys
import threading
from pathlib import Path

from ..xds.mtls import parse_address

log = logging.getLogger("meshway.node.relay")
CHUNK = 256 * 1024


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _splice(client: socket.socket, upstream: socket.socket) -> None:
    """Copy both ways until both directions have ended."""
    back = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
    back.start()
    _copy(client, upstream)
    back.join()


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        host, port = self.server.upstream
        try:
            upstream = socket.create_connection((host, port), timeout=5)
        except OSError as exc:
            log.warning("relay to the control plane at %s:%s: %s", host, port, exc)
            return
        upstream.settimeout(None)
        with upstream:
            _splice(self.request, upstream)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    upstream: tuple[str, int]


class XdsRelay:
    def __init__(self, path: Path, upstream: str) -> None:
        self.path = Path(path)
        self.upstream = parse_address(upstream)
        self.server: _Server | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        server = _Server(str(self.path), _Handler)
        server.upstream = self.upstream
        os.chmod(self.path, 0o666)  # every pod's user may connect (the control plane authenticates them)
        self.server = server
        threading.Thread(target=server.serve_forever, name="xds relay", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.path.unlink(missing_ok=True)


class _PodHandler(socketserver.BaseRequestHandler):
    server: "_PodServer"

    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.server.socket_path)
        except OSError as exc:
            upstream.close()
            print(f"relay to {self.server.socket_path}: {exc}", file=sys.stderr, flush=True)
            return
        with upstream:
            _splice(self.request, upstream)


class _PodServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    socket_path: str


def serve_port(listen: str, socket_path: str) -> _PodServer:
    """A TCP server on `listen` (HOST:PORT) relaying each connection to the Unix socket (not started)."""
    server = _PodServer(parse_address(listen), _PodHandler)
    server.socket_path = socket_path
    return server


def main(argv: list[str]) -> int:
    """`HOST:PORT SOCKET [HOST:PORT SOCKET ...]`: each port relayed to its socket."""
    if not argv or len(argv) % 2:
        print("usage: python -m meshway.node.relay HOST:PORT SOCKET [HOST:PORT SOCKET ...]", file=sys.stderr)
        return 2
    servers = [serve_port(listen, path) for listen, path in zip(argv[::2], argv[1::2])]
    for (listen, path), server in zip(zip(argv[::2], argv[1::2]), servers):
        print(f"relaying {listen} to {path}", flush=True)
        if server is not servers[-1]:
            threading.Thread(target=server.serve_forever, name=f"relay {listen}", daemon=True).start()
    servers[-1].serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
