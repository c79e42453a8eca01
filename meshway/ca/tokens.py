"""xDS credentials of the proxies the control plane starts: how a proxy proves its node id.

Any local process can connect to a Unix socket it can reach, and an ADS request names its node
id itself; the SDS secrets of that node (private keys) must go only to the Envoy the control plane
started for it. The control plane starts every Envoy itself, so it gives each one a credential
nobody else has: a token in the node metadata of its bootstrap (`MESHWAY_XDS_TOKEN`), which Envoy
sends with its node on the first request of every ADS stream. The server recomputes the token of
the node id the request claims and compares in constant time; a stream whose token does not match
gets PERMISSION_DENIED before any resource is sent.

The token is an HMAC-SHA256 of the node id under a 256-bit key kept in the CA folder
(`<state>/ca/xds-token.key`, 0600 in a 0700 folder): it is bound to one node id (a waypoint's token
is worthless for a node proxy's id), needs no table of issued tokens, and a restarted control plane
derives the same tokens from the same key, so the Envoys it adopts (still running with their
bootstrap) are accepted. The bootstrap files live in 0700 run folders and Envoy admin sockets
(which can dump the bootstrap) are 0600 in 0700 folders, so only the control plane's user (who
can read the CA key anyway) can learn a token.

Why not Unix peer credentials (SO_PEERCRED: is the peer the pid we started for that node?):
grpc-python does not expose them. With `grpc.local_server_credentials(LocalConnectionType.UDS)`,
`context.auth_context()` holds only `transport_security_type: local` and `context.peer()` is
`unix:`, with no pid or uid (checked with grpcio 1.85). Over TCP a proxy would prove itself with its
mTLS certificate instead (the Kubernetes mode's port 15012).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from envoy.config.core.v3.base_pb2 import Node

from ..private import make_private_dir
from .authority import CAStateError, _exclusive, write_atomic

TOKEN_KEY_FILE = "xds-token.key"
TOKEN_METADATA = "MESHWAY_XDS_TOKEN"  # the node metadata field that carries the token
_CONTEXT = b"meshway xds token v1\x00"


class ProxyTokens:
    """Tokens for node ids, derived from the key in `<state_dir>/ca/` (created on first use)."""

    def __init__(self, state_dir: Path | str):
        folder = make_private_dir(Path(state_dir) / "ca")
        self.path = folder / TOKEN_KEY_FILE
        self._key = _load_or_create_key(self.path)

    def token(self, node_id: str) -> str:
        digest = hmac.new(self._key, _CONTEXT + node_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def verify(self, node_id: str, presented: str) -> bool:
        return bool(node_id) and hmac.compare_digest(self.token(node_id).encode(), presented.encode())

    def authenticate(self, node: Node) -> bool:
        """True when the node's metadata carries the token of the node id it claims."""
        field = node.metadata.fields.get(TOKEN_METADATA)
        presented = field.string_value if field is not None else ""
        return self.verify(node.id, presented)


def _load_or_create_key(path: Path) -> bytes:
    with _exclusive(path.parent / ".lock"):
        if path.exists():
            os.chmod(path, 0o600)
            try:
                key = bytes.fromhex(path.read_text().strip())
            except ValueError:
                key = b""
            if len(key) < 32:
                raise CAStateError(f"{path} does not hold a 256-bit key in hex")
            return key
        key = secrets.token_bytes(32)
        write_atomic(path, key.hex() + "\n", 0o600)
        return key
