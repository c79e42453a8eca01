"""RequestAuthentication end to end through a real waypoint Envoy, on loopback (no root needed; the
harness of test_waypoint_e2e): JWTs signed here with `cryptography` (RS256 whose key set the
waypoint fetches from a mesh Service through `jwksUri`, ES256 with an inline `jwks`); Envoy's 401s
for a bad signature, an expired token and an unknown issuer; no token passes; AuthorizationPolicy
`requestPrincipals` and `request.auth.claims[...]` then decide."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from test_waypoint_e2e import Mesh

from meshway.model import find_kind, load_yaml

RS_ISSUER, ES_ISSUER = "https://accounts.example.com", "testing@secure.istio.io"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int, size: int) -> str:
    return b64(n.to_bytes(size, "big"))


class Keys:
    """An RSA and an EC P-256 key pair, their JWKS, and tokens signed with them."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def rsa_jwks(self) -> str:
        n = self.rsa.public_key().public_numbers()
        return json.dumps({"keys": [{"kty": "RSA", "kid": "rs", "alg": "RS256", "use": "sig",
                                     "n": _int(n.n, 256), "e": _int(n.e, 3)}]})

    def ec_jwks(self) -> str:
        n = self.ec.public_key().public_numbers()
        return json.dumps({"keys": [{"kty": "EC", "kid": "es", "alg": "ES256", "crv": "P-256",
                                     "x": _int(n.x, 32), "y": _int(n.y, 32)}]})

    def token(self, alg: str, claims: dict, key=None) -> str:
        header = {"alg": alg, "typ": "JWT", "kid": "rs" if alg == "RS256" else "es"}
        now = int(time.time())
        body = {"iat": now, "exp": now + 600, **claims}
        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}".encode()
        if alg == "RS256":
            sig = (key or self.rsa).sign(signing, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature((key or self.ec).sign(signing, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing.decode()}.{b64(sig)}"


def serve_jwks(ip: str, jwks: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            data = jwks.encode()
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((ip, 8080), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


JWKS_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: jwks, namespace: default, labels: {istio.io/use-waypoint: none}}
spec: {selector: {app: jwks}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: jwks-1, namespace: default, labels: {app: jwks}}
spec: {containers: [{name: jwks, image: jwks}]}
"""

REQUEST_AUTHN = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: reviews-jwt, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules:
  - issuer: https://accounts.example.com
    audiences: [reviews]
    jwksUri: http://jwks.default.svc.cluster.local:8000/jwks.json
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
  - issuer: testing@secure.istio.io
    jwks: 'EC_JWKS'
    fromHeaders: [{name: x-jwt-assertion}]
    forwardOriginalToken: true
"""

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["https://accounts.example.com/alice"]}}]
  - from: [{source: {requestPrincipals: ["testing@secure.istio.io/*"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: [admins]}
    - {key: "request.auth.claims[org][team]", values: [reviews]}
"""


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def echo_headers(backend: ThreadingHTTPServer) -> None:
    """The reviews backends answer `/headers` with the request headers they got."""
    cls = backend.RequestHandlerClass
    original = cls.do_GET

    def do_get(self) -> None:
        if self.path == "/headers":
            return self._reply(200, {k.lower(): v for k, v in self.headers.items()})
        return original(self)

    cls.do_GET = do_get


@pytest.fixture
def mesh(tmp_path: Path, keys: Keys):
    m = Mesh(tmp_path)
    try:
        for backend in m.backends:
            echo_headers(backend)
        m.store.apply(load_yaml(JWKS_SERVICE, "jwks.yaml"))
        pod = m.store.get(find_kind("pod"), "default", "jwks-1")
        m.store.write_status("Pod", "default", "jwks-1", {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]})
        m.backends.append(serve_jwks(m.placement.dial(pod["status"]["podIP"]), keys.rsa_jwks()))
        m.wait_programmed()
        m.store.apply(load_yaml(REQUEST_AUTHN.replace("EC_JWKS", keys.ec_jwks()), "ra.yaml"))
        yield m
    finally:
        m.close()


def call(mesh: Mesh, headers: dict | None = None, path: str = "/"):
    conn = mesh.client("sleep")
    try:
        return conn.open(f"{mesh.vip()}:9080").request("GET", path, headers, host="reviews")
    finally:
        conn.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def wait_for(mesh: Mesh, headers: dict, status: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := call(mesh, headers).status) != status:
        assert time.monotonic() < deadline, f"still {got}, expected {status}"
        time.sleep(0.1)


def test_tokens_are_verified_and_a_request_without_one_passes(mesh: Mesh, keys: Keys) -> None:
    wait_for(mesh, bearer("not-a-jwt"), 401)  # the RequestAuthentication is in force
    rs = keys.token("RS256", {"iss": RS_ISSUER, "sub": "alice", "aud": "reviews"})
    wait_for(mesh, bearer(rs), 200)  # the first use fetches the key set through jwksUri
    es = keys.token("ES256", {"iss": ES_ISSUER, "sub": "bob"})
    assert call(mesh, {"x-jwt-assertion": es}).status == 200  # fromHeaders, inline jwks
    assert call(mesh).status == 200  # no token: RequestAuthentication alone requires none

    forged = keys.token("RS256", {"iss": RS_ISSUER, "sub": "alice", "aud": "reviews"},
                        rsa.generate_private_key(public_exponent=65537, key_size=2048))
    r = call(mesh, bearer(forged))
    assert (r.status, r.body) == (401, b"Jwt verification fails")
    assert r.headers.get("www-authenticate", "").startswith('Bearer realm="http://reviews/"')
    hour_ago = int(time.time()) - 3600  # beyond Envoy's 60 s of allowed clock skew
    expired = keys.token("ES256", {"iss": ES_ISSUER, "sub": "bob", "iat": hour_ago - 600, "exp": hour_ago})
    r = call(mesh, {"x-jwt-assertion": expired})
    assert (r.status, r.body) == (401, b"Jwt is expired")
    stranger = keys.token("RS256", {"iss": "https://evil.example", "sub": "alice"})
    r = call(mesh, bearer(stranger))
    assert (r.status, r.body) == (401, b"Jwt issuer is not configured")
    wrong_audience = keys.token("RS256", {"iss": RS_ISSUER, "sub": "alice", "aud": "ratings"})
    r = call(mesh, bearer(wrong_audience))
    assert (r.status, r.body) == (403, b"Audiences in Jwt are not allowed")  # Envoy's one 403 of jwt_authn


def test_claims_to_headers_and_the_original_token(mesh: Mesh, keys: Keys) -> None:
    rs = keys.token("RS256", {"iss": RS_ISSUER, "sub": "alice", "aud": "reviews"})
    wait_for(mesh, bearer(rs), 200)
    got = json.loads(call(mesh, bearer(rs), "/headers").body)
    assert got["x-jwt-sub"] == "alice"  # outputClaimToHeaders
    payload = json.loads(base64.urlsafe_b64decode(got["x-jwt-payload"] + "=="))  # outputPayloadToHeader
    assert (payload["iss"], payload["sub"]) == (RS_ISSUER, "alice")
    assert "authorization" not in got  # forwardOriginalToken unset: the token is removed
    es = keys.token("ES256", {"iss": ES_ISSUER, "sub": "bob"})
    got = json.loads(call(mesh, {"x-jwt-assertion": es}, "/headers").body)
    assert got["x-jwt-assertion"] == es and "x-jwt-sub" not in got  # forwardOriginalToken: true
    spoofed = json.loads(call(mesh, {"x-jwt-sub": "admin", "x-jwt-payload": "e30"}, "/headers").body)
    assert "x-jwt-sub" not in spoofed and "x-jwt-payload" not in spoofed  # a client cannot forge them


def test_authorization_policy_matches_request_principals_and_claims(mesh: Mesh, keys: Keys) -> None:
    alice = keys.token("RS256", {"iss": RS_ISSUER, "sub": "alice", "aud": "reviews"})
    wait_for(mesh, bearer(alice), 200)
    mesh.store.apply(load_yaml(POLICY, "ap.yaml"))
    wait_for(mesh, {}, 403)  # no token: no request principal
    r = call(mesh)
    assert r.body == b"RBAC: access denied"
    assert call(mesh, bearer(alice)).status == 200
    carol = keys.token("RS256", {"iss": RS_ISSUER, "sub": "carol", "aud": "reviews"})
    assert call(mesh, bearer(carol)).status == 403  # valid token, another subject

    def es(groups, team: str = "reviews") -> int:
        token = keys.token("ES256", {"iss": ES_ISSUER, "sub": "bob", "groups": groups, "org": {"team": team}})
        return call(mesh, {"x-jwt-assertion": token}).status

    assert es(["users", "admins"]) == 200  # a list claim holding the value
    assert es("admins") == 200  # a string claim equal to it
    assert es(["users"]) == 403
    assert es(["admins"], team="ratings") == 403  # the nested claim [org][team] differs


def test_a_rule_without_key_set_refuses_its_tokens_and_says_so(mesh: Mesh, keys: Keys) -> None:
    mesh.store.apply(load_yaml("""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: discovery-only, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules: [{issuer: https://discovery.example}]
""", "ra.yaml"))
    token = keys.token("RS256", {"iss": "https://discovery.example", "sub": "alice"})
    wait_for(mesh, bearer(token), 401)
    assert call(mesh, bearer(token)).body == b"Jwks doesn't have key to match kid or alg from Jwt"
    deadline = time.monotonic() + 5
    while True:
        conditions = {c["type"]: c for c in (mesh.store.get(find_kind("ra"), "default", "discovery-only")
                                             .get("status") or {}).get("conditions") or []}
        if "Reconciled" in conditions or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert conditions["WaypointAccepted"]["status"] == "True"
    assert conditions["Reconciled"]["status"] == "False"
    assert "neither jwks nor jwksUri is set" in conditions["Reconciled"]["message"]
