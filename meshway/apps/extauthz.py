"""`python -m meshway.apps.extauthz`: Istio's sample external authorizer (samples/extauthz, image
`gcr.io/istio-testing/ext-authz`), answering Envoy's ext_authz check API.

- HTTP check on `-http` (default 8000): allowed (200) when the request carries `x-ext-authz: allow`,
  else 403 with the body "denied by ext_authz for not found header `x-ext-authz: allow` in the
  request". Both answers carry `x-ext-authz-check-result: allowed|denied`,
  `x-ext-authz-check-received` (what was checked) and `x-ext-authz-additional-header-override`
  (echoing that request header).
- gRPC `envoy.service.auth.v3.Authorization/Check` on `-grpc` (default 9000): when the checked
  request has an `x-ext-authz` header, allowed iff it is `allow`; without it, allowed iff the
  caller's principal ends in `/sa/<-allow_service_account>` (default `a`). OK responses add
  `x-ext-authz-check-result: allowed` upstream; denials are 403 with the same body as HTTP.
  The caller's principal is the check's `source.principal` (a sidecar's TLS peer), else the `URI`
  of the nearest `x-forwarded-client-cert` element (what a meshway waypoint sends: its HBONE peer).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .server import Handler, Request, Response, listen_address, serve

CHECK_HEADER = "x-ext-authz"
ALLOWED_VALUE = "allow"
RESULT_HEADER = "x-ext-authz-check-result"
RECEIVED_HEADER = "x-ext-authz-check-received"
OVERRIDE_HEADER = "x-ext-authz-additional-header-override"
OVERRIDE_GRPC_VALUE = "grpc-additional-header-override-value"
DENY_BODY = f"denied by ext_authz for not found header `{CHECK_HEADER}: {ALLOWED_VALUE}` in the request"


def _header_value(text: str) -> str:
    """One line, at most 60,000 bytes (Envoy refuses larger headers), as the sample keeps it."""
    text = " ".join(text.split("\n")).strip()
    return text if len(text) <= 60000 else "<too-long>"


def decide_http(req: Request) -> Response:
    received = _header_value(f"{req.method} {req.header('host') or ''}{req.target}, headers: {req.header_dict()}, "
                             f"body: [{req.body.decode('utf-8', 'replace')}]")
    allowed = req.header(CHECK_HEADER) == ALLOWED_VALUE
    print(f"[HTTP][{'allowed' if allowed else 'denied'}]: {received}", flush=True)
    headers = ((RESULT_HEADER, "allowed" if allowed else "denied"),
               (OVERRIDE_HEADER, req.header(OVERRIDE_HEADER) or ""), (RECEIVED_HEADER, received))
    if allowed:
        return Response(200, b"", "text/plain; charset=utf-8", headers)
    return Response(403, DENY_BODY.encode(), "text/plain; charset=utf-8", headers)


def find_principal(source_principal: str, headers: dict[str, str]) -> str:
    """The caller: Envoy's TLS peer, else the `URI=` of the last `x-forwarded-client-cert` element."""
    if source_principal:
        return source_principal
    last = headers.get("x-forwarded-client-cert", "").split(",")[-1]
    return next((part[4:].strip('"') for part in last.split(";") if part.strip().startswith("URI=")), "")


def decide_grpc(headers: dict[str, str], principal: str, service_account: str) -> bool:
    if CHECK_HEADER in headers:
        return headers[CHECK_HEADER] == ALLOWED_VALUE
    return bool(principal) and principal.endswith(f"/sa/{service_account}")


def make_http_handler() -> Handler:
    async def handle(req: Request) -> Response:
        return decide_http(req)
    return handle


def make_grpc_server(address: str, service_account: str):
    """A grpc.aio server with the v3 Authorization service (imported here: only the gRPC port needs it)."""
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.auth.v3 import external_auth_pb2 as pb, external_auth_pb2_grpc as pb_grpc
    from envoy.type.v3 import http_status_pb2
    from google.rpc import code_pb2, status_pb2

    def header(key: str, value: str) -> base_pb2.HeaderValueOption:
        return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))

    class Authorization(pb_grpc.AuthorizationServicer):
        async def Check(self, request: pb.CheckRequest, context) -> pb.CheckResponse:  # noqa: N802 (gRPC name)
            attrs = request.attributes
            http = attrs.request.http
            principal = find_principal(attrs.source.principal, dict(http.headers))
            allowed = decide_grpc(dict(http.headers), principal, service_account)
            received = _header_value(str(attrs))
            print(f"[gRPCv3][{'allowed' if allowed else 'denied'}]: {http.host}{http.path}, "
                  f"principal: {principal or '-'}, attributes: {received}", flush=True)
            headers = [header(RESULT_HEADER, "allowed" if allowed else "denied"), header(RECEIVED_HEADER, received),
                       header(OVERRIDE_HEADER, OVERRIDE_GRPC_VALUE)]
            if allowed:
                return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                        ok_response=pb.OkHttpResponse(headers=headers))
            return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                                    denied_response=pb.DeniedHttpResponse(
                                        status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                                        body=DENY_BODY, headers=headers))

    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(Authorization(), server)
    server.add_insecure_port(address)
    return server


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The sample's Go flags: `-http 8000 -grpc 9000 -allow_service_account a` (also `--x=y`)."""
    parser = argparse.ArgumentParser(prog="extauthz", prefix_chars="-")
    parser.add_argument("-http", "--http", default=None)
    parser.add_argument("-grpc", "--grpc", default="9000")
    parser.add_argument("-allow_service_account", "--allow_service_account", default="a")
    args, _ = parser.parse_known_args(argv)
    return args


async def run(host: str, http_port: int, grpc_port: int, service_account: str) -> None:
    grpc_server = make_grpc_server(f"{host}:{grpc_port}", service_account)
    await grpc_server.start()
    print(f"Starting gRPC server at {host}:{grpc_port}", flush=True)
    try:
        await serve(make_http_handler(), host, http_port, "ext-authz HTTP")
    finally:
        await grpc_server.stop(None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    host, port = listen_address(os.environ, 8000, [])
    asyncio.run(run(host, int(args.http or port), int(args.grpc), args.allow_service_account))


if __name__ == "__main__":
    main()
