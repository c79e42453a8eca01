"""A request as a user writes it for `explain --request`: `[METHOD] http://HOST[:PORT]/PATH[?QUERY]
[-H 'NAME: VALUE']... [-X METHOD]`, curl's spelling. Pure."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlsplit

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
USAGE = "expected '[METHOD] http://HOST[:PORT]/PATH [-H NAME: VALUE]...'"


class RequestError(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    method: str
    host: str  # as written: a short name, FQDN, ServiceEntry host or IP
    port: int
    path: str  # with the query string
    headers: tuple[tuple[str, str], ...] = field(default=())  # lower-case names, in order

    @property
    def authority(self) -> str:
        """The Host header curl sends (the port only when it is not the scheme's), unless -H sets one."""
        given = [v for k, v in self.headers if k == "host"]
        if given:
            return given[-1]
        return self.host if self.port == 80 else f"{self.host}:{self.port}"

    def header_map(self) -> dict[str, str]:
        """Headers as Envoy matches them: one value per name, repeated ones joined with ","."""
        out: dict[str, str] = {}
        for k, v in self.headers:
            if k == "host":
                continue
            out[k] = f"{out[k]},{v}" if k in out else v
        return out

    def to_json(self) -> dict:
        return {"method": self.method, "host": self.host, "port": self.port, "path": self.path,
                "authority": self.authority, "headers": [[k, v] for k, v in self.headers]}


def _split_headers(text: str) -> list[str]:
    """`GET URL -H x-user: jason -H 'a: b'`: tokens, where an unquoted header value keeps its spaces."""
    try:
        parts = re.split(r"\s+(?=-[HX]\s)", text.strip())
    except re.error:  # pragma: no cover
        parts = [text]
    out: list[str] = []
    for part in parts:
        flag, _, rest = part.partition(" ")
        if flag in ("-H", "-X"):
            rest = rest.strip()
            if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "'\"":
                rest = rest[1:-1]
            out += [flag, rest]
        else:
            try:
                out += shlex.split(part)
            except ValueError as exc:
                raise RequestError(f"cannot parse request {text!r}: {exc}") from None
    return out


def parse_request(text: str) -> Request:
    tokens = _split_headers(text)
    method, url, headers = None, None, []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("-H", "-X"):
            if i + 1 >= len(tokens) or not tokens[i + 1]:
                raise RequestError(f"cannot parse request {text!r}: {token} needs a value; {USAGE}")
            value = tokens[i + 1]
            if token == "-X":
                method = value.upper()
            else:
                name, sep, v = value.partition(":")
                if not sep or not name.strip() or " " in name.strip():
                    raise RequestError(f"cannot parse request {text!r}: header {value!r} is not NAME: VALUE; {USAGE}")
                headers.append((name.strip().lower(), v.strip()))
            i += 2
            continue
        if token.upper() in METHODS and method is None and url is None:
            method = token.upper()
        elif url is None:
            url = token
        else:
            raise RequestError(f"cannot parse request {text!r}: unexpected {token!r}; {USAGE}")
        i += 1
    if url is None:
        raise RequestError(f"cannot parse request {text!r}: no URL; {USAGE}")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise RequestError(f"cannot parse request {text!r}: only http:// requests can be simulated "
                           f"(a {parts.scheme}:// request is TLS the waypoint sees as TCP)")
    try:
        port = parts.port or 80
    except ValueError:
        raise RequestError(f"cannot parse request {text!r}: invalid port; {USAGE}") from None
    if not parts.hostname:
        raise RequestError(f"cannot parse request {text!r}: no host; {USAGE}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Request(method or "GET", parts.hostname, port, path, tuple(headers))
