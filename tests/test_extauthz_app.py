"""The stand-in for Istio's sample external authorizer (gcr.io/istio-testing/ext-authz): its
decisions, as samples/extauthz/cmd/extauthz/main.go makes them."""
from __future__ import annotations

from meshway.apps.extauthz import DENY_BODY, decide_grpc, decide_http, parse_args
from meshway.apps.images import resolve_image
from meshway.apps.server import Request


def request(headers: tuple = ()) -> Request:
    return Request("GET", "/headers", (("host", "httpbin:8000"), *headers), b"", "10.0.0.1:1", "HTTP/1.1")


def test_http_check() -> None:
    allowed = decide_http(request((("x-ext-authz", "allow"),)))
    assert allowed.status == 200 and ("x-ext-authz-check-result", "allowed") in allowed.headers
    denied = decide_http(request((("x-ext-authz", "deny"),)))
    assert (denied.status, denied.body.decode()) == (403, DENY_BODY)
    assert ("x-ext-authz-check-result", "denied") in denied.headers
    assert decide_http(request()).status == 403
    assert all("\n" not in v for _, v in denied.headers)  # header values stay one line


def test_grpc_check_header_first_then_service_account() -> None:
    assert decide_grpc({"x-ext-authz": "allow"}, "", "a")
    assert not decide_grpc({"x-ext-authz": "deny"}, "spiffe://cluster.local/ns/foo/sa/a", "a")
    assert decide_grpc({}, "spiffe://cluster.local/ns/foo/sa/a", "a")
    assert not decide_grpc({}, "spiffe://cluster.local/ns/foo/sa/b", "a")
    assert not decide_grpc({}, "", "a")


def test_image_and_flags() -> None:
    app = resolve_image("gcr.io/istio-testing/ext-authz:latest", python="python3")
    assert app.argv == ("python3", "-P", "-u", "-m", "meshway.apps.extauthz")
    args = parse_args(["-http", "8001", "-grpc=9001", "--allow_service_account", "curl"])
    assert (args.http, args.grpc, args.allow_service_account) == ("8001", "9001", "curl")


def test_principal_from_the_tls_peer_else_the_waypoints_xfcc_header() -> None:
    from meshway.apps.extauthz import find_principal
    curl = "spiffe://cluster.local/ns/default/sa/curl"
    waypoint = "By=spiffe://cluster.local/ns/default/sa/waypoint;URI=" + curl
    assert find_principal("spiffe://x/ns/a/sa/b", {"x-forwarded-client-cert": waypoint}) == "spiffe://x/ns/a/sa/b"
    assert find_principal("", {"x-forwarded-client-cert": waypoint}) == curl
    assert find_principal("", {"x-forwarded-client-cert": f'By=a;URI="spiffe://old",{waypoint}'}) == curl
    assert find_principal("", {}) == ""
    assert decide_grpc({}, find_principal("", {"x-forwarded-client-cert": waypoint}), "curl")
