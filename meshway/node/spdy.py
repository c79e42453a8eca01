"""SPDY/3.1 framing, sans I/O: the protocol the Kubernetes API server speaks to a kubelet for
`kubectl exec`, `attach` and `port-forward` (its stream translator and stream tunnel proxies turn
kubectl's WebSocket into SPDY towards the node, `k8s.io/apiserver/pkg/util/proxy`).

`Session.feed(bytes)` returns the frames the peer sent (`SynStream` with its decoded headers,
`Data`, `RstStream`, `Ping`, `GoAway`; the rest as `Other`); the `build_*` functions return the
bytes of the frames a kubelet sends back (SYN_REPLY, DATA, RST_STREAM, PING, GOAWAY). Header blocks
are zlib-compressed with SPDY/3's dictionary, one compression context per direction for the whole
session, as the spec and Go's framer (`github.com/moby/spdystream/spdy`) do. Flow control is not
enforced by that peer (spdystream sends and reads no WINDOW_UPDATE), so none is kept here either.
"""
from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
MAX_FRAME = 1 << 24  # 24-bit length
MAX_DATA = 0xFFFFFF
RST_PROTOCOL_ERROR, RST_CANCEL, RST_INTERNAL_ERROR = 1, 5, 6
# SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1; 1423 bytes)
DICTIONARY = base64.b64decode(
    "AAAAB29wdGlvbnMAAAAEaGVhZAAAAARwb3N0AAAAA3B1dAAAAAZkZWxldGUAAAAFdHJhY2UAAAAGYWNjZXB0AAAADmFjY2Vw"
    "dC1jaGFyc2V0AAAAD2FjY2VwdC1lbmNvZGluZwAAAA9hY2NlcHQtbGFuZ3VhZ2UAAAANYWNjZXB0LXJhbmdlcwAAAANhZ2UA"
    "AAAFYWxsb3cAAAANYXV0aG9yaXphdGlvbgAAAA1jYWNoZS1jb250cm9sAAAACmNvbm5lY3Rpb24AAAAMY29udGVudC1iYXNl"
    "AAAAEGNvbnRlbnQtZW5jb2RpbmcAAAAQY29udGVudC1sYW5ndWFnZQAAAA5jb250ZW50LWxlbmd0aAAAABBjb250ZW50LWxv"
    "Y2F0aW9uAAAAC2NvbnRlbnQtbWQ1AAAADWNvbnRlbnQtcmFuZ2UAAAAMY29udGVudC10eXBlAAAABGRhdGUAAAAEZXRhZwAA"
    "AAZleHBlY3QAAAAHZXhwaXJlcwAAAARmcm9tAAAABGhvc3QAAAAIaWYtbWF0Y2gAAAARaWYtbW9kaWZpZWQtc2luY2UAAAAN"
    "aWYtbm9uZS1tYXRjaAAAAAhpZi1yYW5nZQAAABNpZi11bm1vZGlmaWVkLXNpbmNlAAAADWxhc3QtbW9kaWZpZWQAAAAIbG9j"
    "YXRpb24AAAAMbWF4LWZvcndhcmRzAAAABnByYWdtYQAAABJwcm94eS1hdXRoZW50aWNhdGUAAAATcHJveHktYXV0aG9yaXph"
    "dGlvbgAAAAVyYW5nZQAAAAdyZWZlcmVyAAAAC3JldHJ5LWFmdGVyAAAABnNlcnZlcgAAAAJ0ZQAAAAd0cmFpbGVyAAAAEXRy"
    "YW5zZmVyLWVuY29kaW5nAAAAB3VwZ3JhZGUAAAAKdXNlci1hZ2VudAAAAAR2YXJ5AAAAA3ZpYQAAAAd3YXJuaW5nAAAAEHd3"
    "dy1hdXRoZW50aWNhdGUAAAAGbWV0aG9kAAAAA2dldAAAAAZzdGF0dXMAAAAGMjAwIE9LAAAAB3ZlcnNpb24AAAAISFRUUC8x"
    "LjEAAAADdXJsAAAABnB1YmxpYwAAAApzZXQtY29va2llAAAACmtlZXAtYWxpdmUAAAAGb3JpZ2luMTAwMTAxMjAxMjAyMjA1"
    "MjA2MzAwMzAyMzAzMzA0MzA1MzA2MzA3NDAyNDA1NDA2NDA3NDA4NDA5NDEwNDExNDEyNDEzNDE0NDE1NDE2NDE3NTAyNTA0"
    "NTA1MjAzIE5vbi1BdXRob3JpdGF0aXZlIEluZm9ybWF0aW9uMjA0IE5vIENvbnRlbnQzMDEgTW92ZWQgUGVybWFuZW50bHk0"
    "MDAgQmFkIFJlcXVlc3Q0MDEgVW5hdXRob3JpemVkNDAzIEZvcmJpZGRlbjQwNCBOb3QgRm91bmQ1MDAgSW50ZXJuYWwgU2Vy"
    "dmVyIEVycm9yNTAxIE5vdCBJbXBsZW1lbnRlZDUwMyBTZXJ2aWNlIFVuYXZhaWxhYmxlSmFuIEZlYiBNYXIgQXByIE1heSBK"
    "dW4gSnVsIEF1ZyBTZXB0IE9jdCBOb3YgRGVjIDAwOjAwOjAwIE1vbiwgVHVlLCBXZWQsIFRodSwgRnJpLCBTYXQsIFN1biwg"
    "R01UY2h1bmtlZCx0ZXh0L2h0bWwsaW1hZ2UvcG5nLGltYWdlL2pwZyxpbWFnZS9naWYsYXBwbGljYXRpb24veG1sLGFwcGxp"
    "Y2F0aW9uL3hodG1sK3htbCx0ZXh0L3BsYWluLHRleHQvamF2YXNjcmlwdCxwdWJsaWNwcml2YXRlbWF4LWFnZT1nemlwLGRl"
    "ZmxhdGUsc2RjaGNoYXJzZXQ9dXRmLThjaGFyc2V0PWlzby04ODU5LTEsdXRmLSwqLGVucT0wLg=="
)
Headers = dict[str, list[str]]


class SpdyError(ValueError):
    """The peer sent something that is not SPDY/3.1 (the session is over)."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    fin: bool  # the peer sends nothing more on it (a unidirectional or empty stream)


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int


@dataclass(frozen=True)
class Other:
    frame_type: int


Frame = SynStream | Data | RstStream | Ping | GoAway | Other


def parse_header_block(block: bytes) -> Headers:
    """`count (u32)` then `name length, name, value length, value` pairs; NUL separates values."""
    def take(offset: int) -> tuple[bytes, int]:
        if offset + 4 > len(block):
            raise SpdyError("header block cut short")
        (size,) = struct.unpack_from("!I", block, offset)
        end = offset + 4 + size
        if end > len(block):
            raise SpdyError("header block cut short")
        return block[offset + 4:end], end
    if len(block) < 4:
        raise SpdyError("header block cut short")
    (count,) = struct.unpack_from("!I", block, 0)
    headers: Headers = {}
    offset = 4
    for _ in range(count):
        name, offset = take(offset)
        value, offset = take(offset)
        headers[name.decode("latin-1").lower()] = value.decode("latin-1").split("\0")
    return headers


def build_header_block(headers: Headers) -> bytes:
    out = [struct.pack("!I", len(headers))]
    for name, values in headers.items():
        n, v = name.lower().encode("latin-1"), "\0".join(values).encode("latin-1")
        out += [struct.pack("!I", len(n)), n, struct.pack("!I", len(v)), v]
    return b"".join(out)


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def build_data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    """One DATA frame, or several when `data` is over the 24-bit limit (FIN on the last)."""
    chunks = [data[i:i + MAX_DATA] for i in range(0, len(data), MAX_DATA)] or [b""]
    return b"".join(struct.pack("!II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin and i == len(chunks) - 1 else 0) << 24)
                                | len(c)) + c for i, c in enumerate(chunks))


def build_rst_stream(stream_id: int, status: int = RST_CANCEL) -> bytes:
    return _control(RST_STREAM, 0, struct.pack("!II", stream_id & 0x7FFFFFFF, status))


def build_ping(ping_id: int) -> bytes:
    return _control(PING, 0, struct.pack("!I", ping_id))


def build_goaway(last_stream_id: int, status: int = 0) -> bytes:
    return _control(GOAWAY, 0, struct.pack("!II", last_stream_id & 0x7FFFFFFF, status))


@dataclass
class Session:
    """One SPDY/3.1 connection's state: the buffered input and both header-compression contexts."""

    buffer: bytearray = field(default_factory=bytearray)
    inflate: object = field(default_factory=lambda: zlib.decompressobj(zdict=DICTIONARY))
    deflate: object = field(default_factory=lambda: zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                                                     zlib.Z_DEFAULT_STRATEGY, DICTIONARY))

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= 8:
            first, second = struct.unpack_from("!II", self.buffer, 0)
            length = second & 0xFFFFFF
            if len(self.buffer) < 8 + length:
                break
            payload, flags = bytes(self.buffer[8:8 + length]), second >> 24
            del self.buffer[:8 + length]
            frames.append(self._control(first, flags, payload) if first & 0x80000000
                          else Data(first & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN)))
        return frames

    def _control(self, first: int, flags: int, payload: bytes) -> Frame:
        version, frame_type = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"SPDY version {version}, expected {VERSION}")
        if frame_type == SYN_STREAM:
            if len(payload) < 10:
                raise SpdyError("SYN_STREAM cut short")
            (stream_id,) = struct.unpack_from("!I", payload, 0)
            try:
                block = self.inflate.decompress(payload[10:])
            except zlib.error as exc:
                raise SpdyError(f"SYN_STREAM headers: {exc}") from None
            return SynStream(stream_id & 0x7FFFFFFF, parse_header_block(block), bool(flags & FLAG_FIN))
        if frame_type == RST_STREAM and len(payload) >= 8:
            stream_id, status = struct.unpack_from("!II", payload, 0)
            return RstStream(stream_id & 0x7FFFFFFF, status)
        if frame_type == PING and len(payload) >= 4:
            return Ping(struct.unpack_from("!I", payload, 0)[0])
        if frame_type == GOAWAY and len(payload) >= 4:
            return GoAway(struct.unpack_from("!I", payload, 0)[0] & 0x7FFFFFFF)
        if frame_type in (SYN_REPLY, HEADERS):  # keep the decompression context in step
            try:
                self.inflate.decompress(payload[4:])
            except zlib.error as exc:
                raise SpdyError(f"header block: {exc}") from None
        return Other(frame_type)

    def build_syn_reply(self, stream_id: int, headers: Headers | None = None, fin: bool = False) -> bytes:
        block = self.deflate.compress(build_header_block(headers or {})) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        return _control(SYN_REPLY, FLAG_FIN if fin else 0, struct.pack("!I", stream_id & 0x7FFFFFFF) + block)

    def build_syn_stream(self, stream_id: int, headers: Headers, fin: bool = False) -> bytes:
        """A client's SYN_STREAM (tests play the API server's side with it)."""
        block = self.deflate.compress(build_header_block(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        return _control(SYN_STREAM, FLAG_FIN if fin else 0,
                        struct.pack("!IIBB", stream_id & 0x7FFFFFFF, 0, 0, 0) + block)

    def parse_syn_reply(self, payload: bytes) -> Headers:
        """A SYN_REPLY's headers (tests read the kubelet's side with it)."""
        return parse_header_block(self.inflate.decompress(payload[4:]))
