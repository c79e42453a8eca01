"""The Envoy admin API of a waypoint replica, reached over its Unix socket. Thin I/O, nothing else."""
from __future__ import annotations

import http.client
import socket
from pathlib import Path

TIMEOUT = 5.0


class AdminError(Exception):
    """The admin socket is missing, refused the connection, timed out or answered non-200."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def fetch_admin(socket_path: str | Path, path: str, timeout: float = TIMEOUT, method: str = "GET") -> bytes:
    """GET `path` (e.g. `/config_dump?include_eds`) from the Envoy admin listening on `socket_path`
    (`method="POST"` for the endpoints that change something, e.g. `/logging?level=debug`)."""
    socket_path = str(socket_path)
    if not Path(socket_path).exists():
        raise AdminError(f"Envoy admin socket {socket_path} does not exist (is the waypoint replica running?)")
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
    except TimeoutError as exc:
        raise AdminError(f"Envoy admin {socket_path}: {method} {path} timed out after {timeout:g}s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise AdminError(f"Envoy admin {socket_path}: {method} {path} failed: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        text = body.decode(errors="replace").strip()
        raise AdminError(f"Envoy admin {socket_path}: {method} {path} returned {response.status}: {text}")
    return body
