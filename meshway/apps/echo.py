"""`python -m meshway.apps.echo`: replies to every request with JSON naming the pod that answered
(pod, namespace, version, ip) and echoing the request (method, path, headers, client).

HTTP/1.1 and h2c (prior knowledge or `Upgrade: h2c`) on HOST:PORT (default 0.0.0.0:8080).
`/status/<code>` answers with that status, `/delay/<seconds>` waits first, `/healthz` is 200.
Arguments of the images it stands in for (`-listen=:5678`, `--port N`) set the port; others are
ignored."""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from .server import H2Handler, Handler, Request, Response, json_response, listen_address, serve

MAX_DELAY = 300.0
STATUS_PATH = re.compile(r"/status/(\d{3})")
DELAY_PATH = re.compile(r"/delay/(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Identity:
    pod: str
    namespace: str
    version: str
    ip: str


def build_identity(env: Mapping[str, str]) -> Identity:
    return Identity(pod=env.get("POD_NAME") or env.get("HOSTNAME", ""), namespace=env.get("POD_NAMESPACE", ""),
                    version=env.get("VERSION") or env.get("SERVICE_VERSION") or "v1", ip=env.get("POD_IP", ""))


def build_echo(identity: Identity, req: Request, status: int = 200) -> Response:
    return json_response(status, {
        "pod": identity.pod, "namespace": identity.namespace, "version": identity.version, "ip": identity.ip,
        "method": req.method, "path": req.target, "protocol": req.protocol, "headers": req.header_dict(),
        "client": req.client, "status": status,
    })


def make_handler(identity: Identity) -> Handler:
    async def handle(req: Request) -> Response:
        if req.path == "/healthz":
            return json_response(200, {"status": "ok", "pod": identity.pod})
        if m := STATUS_PATH.fullmatch(req.path):
            code = int(m.group(1))
            if code < 200:
                return json_response(400, {"error": f"status {code} cannot be a final response"})
            return build_echo(identity, req, code)
        if m := DELAY_PATH.fullmatch(req.path):
            await asyncio.sleep(min(float(m.group(1)), MAX_DELAY))
        return build_echo(identity, req)
    return handle


def find_h2_handler() -> H2Handler | None:
    try:
        from .h2c import serve_h2
    except ImportError:  # without the h2 package the server speaks HTTP/1.1 only
        return None
    return serve_h2


def parse_port_args(argv: list[str]) -> int | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--port", type=int)
    parser.add_argument("-listen")
    args, _ = parser.parse_known_args(argv)
    if args.port:
        return args.port
    if args.listen and args.listen.rpartition(":")[2].isdigit():
        return int(args.listen.rpartition(":")[2])
    return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    host, port = listen_address(os.environ, 8080, [])
    port = parse_port_args(argv) or port
    identity = build_identity(os.environ)
    asyncio.run(serve(make_handler(identity), host, port, "echo", find_h2_handler()))


if __name__ == "__main__":
    main()
