"""Istio's CA API (`istio.v1.auth.IstioCertificateService/CreateCertificate`): the decision as tables
(the TokenReview's answer, the CSR, the requested lifetime -> allowed or which status and why), the
message types built at run time, the signed chain, the caller's side (the TokenRequest the node
agent sends, the bearer token it presents, renewal at half life), the waypoint container and its
Envoy bootstrap, and the service over the control plane's real TLS port with a raw gRPC client."""
from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshway.ca import CertificateAuthority, cert_from_pem, find_uri_sans
from meshway.ca.certs import build_key
from meshway.ca.csr import (MAX_WORKLOAD_TTL, build_csr, build_token_request, decide_certificate_request,
                            decide_lifetime, find_metadata_token, find_renewal_time, find_token_identity,
                            find_token_projection)
from meshway.ca.istio_api import CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse
from meshway.mesh.waypoint_objects import build_waypoint_objects
from meshway.node.waypoint import (build_envoy_container, build_waypoint_bootstrap, detect_waypoint_container,
                                   find_ca_address)
from meshway.xds.bootstrap import XdsCertFiles
from meshway.xds.ca_service import CertificateService
from meshway.xds.mtls import build_mtls_listener
from meshway.xds.server import XdsServer
from meshway.xds.cache import SnapshotCache

TD = "cluster.local"
WAYPOINT = f"spiffe://{TD}/ns/default/sa/waypoint"
DAY = timedelta(hours=24)


def review(user: str = "system:serviceaccount:default:waypoint", audiences=("istio-ca",), ok: bool = True) -> dict:
    return {"authenticated": ok, "user": {"username": user}, "audiences": list(audiences)}


def csr_for(*uris: str, dns: tuple[str, ...] = ()) -> str:
    """A CSR with exactly these SANs (none: no SAN extension at all)."""
    from cryptography.hazmat.primitives import serialization

    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    sans = [*(x509.UniformResourceIdentifier(u) for u in uris), *(x509.DNSName(d) for d in dns)]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    return builder.sign(build_key(), hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


# -- the token ------------------------------------------------------------------------------------
@pytest.mark.parametrize("status,identity,says", [
    (review(), WAYPOINT, ""),
    (review("system:serviceaccount:shop:reviews"), f"spiffe://{TD}/ns/shop/sa/reviews", ""),
    (review(audiences=("https://kubernetes.default.svc.cluster.local",)), None, "not for audience 'istio-ca'"),
    (review(audiences=()), None, "not for audience"),
    (review(ok=False), None, "the token is not valid"),
    ({"authenticated": False, "error": "token has expired"}, None, "token has expired"),
    (review("meshway-admin"), None, "is not a service account"),
    (review("system:node:node-1"), None, "is not a service account"),
    (review("system:serviceaccount:a:b:c"), None, "is not a service account"),
    ({}, None, "authentication failed"),
], ids=["own-sa", "other-namespace", "api-audience", "no-audience", "not-authenticated", "expired", "a-user",
        "a-node", "malformed-sa", "empty"])
def test_the_token_names_a_service_account_for_audience_istio_ca(status, identity, says):
    found, why = find_token_identity(status, TD)
    assert found == identity
    assert (says in why) if says else why == ""


# -- the CSR and the decision -----------------------------------------------------------------------
@pytest.mark.parametrize("status,csr,validity,allowed,code,says", [
    (review(), "waypoint", 0, True, "OK", ""),
    (review(), "waypoint", 3600, True, "OK", ""),
    (None, "waypoint", 0, False, "UNAUTHENTICATED", "no bearer token"),
    (review(audiences=("api",)), "waypoint", 0, False, "UNAUTHENTICATED", "audience"),
    (review("system:serviceaccount:default:default"), "waypoint", 0, False, "PERMISSION_DENIED",
     f"the CSR asks for {WAYPOINT}; the token's service account may only be certified as "
     f"spiffe://{TD}/ns/default/sa/default"),
    (review("system:serviceaccount:other:waypoint"), "waypoint", 0, False, "PERMISSION_DENIED", "/ns/other/sa/waypoint"),
    (review(), "other-td", 0, False, "PERMISSION_DENIED", "spiffe://evil.example/ns/default/sa/waypoint"),
    (review(), "no-san", 0, False, "PERMISSION_DENIED", "asks for no URI SAN"),
    (review(), "extra-dns", 0, False, "PERMISSION_DENIED", "and 1 other SAN(s)"),
    (review(), "two-uris", 0, False, "PERMISSION_DENIED", "asks for"),
    (review(), "garbage", 0, False, "INVALID_ARGUMENT", "cannot be parsed"),
    (review(), "small-rsa", 0, False, "INVALID_ARGUMENT", "at least 2048"),
    (review(), "p521", 0, False, "INVALID_ARGUMENT", "P-256 or P-384"),
    (review(), "waypoint", -1, False, "INVALID_ARGUMENT", "negative"),
    (review(), "waypoint", int(MAX_WORKLOAD_TTL.total_seconds()) + 1, False, "INVALID_ARGUMENT",
     "requested TTL 2160h0m1s is greater than the max allowed TTL 2160h0m0s"),
], ids=["default-ttl", "asked-ttl", "no-token", "wrong-audience", "other-sa", "other-namespace", "other-trust-domain",
        "no-san", "extra-dns-san", "two-uris", "garbage", "small-rsa", "p521", "negative-ttl", "over-max-ttl"])
def test_only_the_tokens_identity_is_signed(status, csr, validity, allowed, code, says):
    pems = {
        "waypoint": lambda: build_csr(build_key(), WAYPOINT),
        "other-td": lambda: build_csr(build_key(), "spiffe://evil.example/ns/default/sa/waypoint"),
        "no-san": lambda: csr_for(),
        "extra-dns": lambda: csr_for(WAYPOINT, dns=("waypoint.default.svc",)),
        "two-uris": lambda: _two_uris(),
        "garbage": lambda: "-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
        "small-rsa": lambda: build_csr(rsa.generate_private_key(65537, 1024), WAYPOINT),
        "p521": lambda: build_csr(ec.generate_private_key(ec.SECP521R1()), WAYPOINT),
    }
    decision = decide_certificate_request(status, pems[csr](), validity, DAY, TD)
    assert (decision.allowed, decision.code) == (allowed, code), decision.reason
    assert (says in decision.reason) if says else decision.reason == ""
    if allowed:
        assert decision.identity == WAYPOINT
        assert decision.lifetime == (DAY if validity == 0 else timedelta(seconds=validity))
        assert decision.public_key is not None


def _two_uris() -> str:
    return csr_for(WAYPOINT, f"spiffe://{TD}/ns/default/sa/x")


@pytest.mark.parametrize("seconds,default,expected", [(0, DAY, DAY), (60, DAY, timedelta(seconds=60)),
                                                      (0, timedelta(days=400), MAX_WORKLOAD_TTL),
                                                      (int(MAX_WORKLOAD_TTL.total_seconds()), DAY, MAX_WORKLOAD_TTL)])
def test_validity(seconds, default, expected):
    assert decide_lifetime(seconds, default) == (expected, "")


def test_the_signed_chain_is_leaf_then_root_for_the_callers_key_with_the_asked_lifetime(tmp_path):
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    ca = CertificateAuthority(tmp_path, clock=lambda: now)
    key = build_key()
    decision = decide_certificate_request(review(), build_csr(key, WAYPOINT), 7200, DAY, TD)
    chain = ca.sign(decision.public_key, decision.identity, decision.lifetime)
    assert len(chain) == 2 and chain[1] == ca.root_pem()
    leaf = cert_from_pem(chain[0])
    leaf.verify_directly_issued_by(cert_from_pem(ca.root_pem()))
    assert find_uri_sans(leaf) == [WAYPOINT]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=2)
    assert find_renewal_time(chain) == now + timedelta(hours=1)  # half life


def test_the_messages_are_istios_wire_format():
    request = IstioCertificateRequest(csr="PEM", validity_duration=3600)
    request.metadata.fields["WorkloadName"].string_value = "waypoint"
    # csr = 1 (string), validity_duration = 3 (int64), metadata = 4 (Struct), as ca.proto numbers them
    wire = request.SerializeToString()
    assert wire.startswith(b"\x0a\x03PEM\x18\x90\x1c\x22")
    assert IstioCertificateResponse.FromString(IstioCertificateResponse(cert_chain=["a", "b"]).SerializeToString()
                                               ).cert_chain == ["a", "b"]
    assert CREATE_CERTIFICATE == "/istio.v1.auth.IstioCertificateService/CreateCertificate"


# -- the caller's side -------------------------------------------------------------------------------
def test_the_token_request_is_bound_to_the_pod_for_the_projected_audience():
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "waypoint", "namespace": "default", "uid": "u"},
               "spec": {"gatewayClassName": "istio-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    deployment = dict(build_waypoint_objects(gateway))["Deployment"]
    pod = {"metadata": {"name": "waypoint-abc", "namespace": "default", "uid": "pod-uid"},
           "spec": deployment["spec"]["template"]["spec"]}
    assert find_token_projection(pod) == 43200  # istiod's istio-token volume
    assert build_token_request(pod) == {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["istio-ca"], "expirationSeconds": 43200,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "waypoint-abc", "uid": "pod-uid"}}}
    bare = {"metadata": {"name": "p", "uid": "u"}, "spec": {}}
    assert find_token_projection(bare) is None and build_token_request(bare)["spec"]["expirationSeconds"] == 3600
    (container,) = pod["spec"]["containers"]
    assert detect_waypoint_container(container)
    assert find_ca_address(container, None) == "istiod.istio-system.svc:15012"
    assert find_ca_address(container, "127.0.0.1:4000") == "127.0.0.1:4000"


@pytest.mark.parametrize("metadata,token", [((("authorization", "Bearer abc"),), "abc"),
                                            ((("Authorization", "bearer  abc "),), "abc"),
                                            ((("authorization", "Basic abc"),), None),
                                            ((("authorization", "Bearer "),), None), ((), None)])
def test_the_bearer_token(metadata, token):
    assert find_metadata_token(metadata) == token


@pytest.mark.parametrize("image,args,waypoint", [
    ("meshway/waypoint-envoy", [], True), ("docker.io/istio/proxyv2:1.28.0", ["proxy", "waypoint", "--domain", "x"], True),
    ("gcr.io/istio-release/proxyv2:1.28.0", ["proxy", "waypoint"], True),
    ("istio/proxyv2:1.28.0", ["proxy", "sidecar"], False), ("istio/ztunnel:1.28.0", [], False),
    ("docker.io/istio/examples-bookinfo-ratings-v1:1.20.1", [], False)])
def test_the_waypoint_container(image, args, waypoint):
    assert detect_waypoint_container({"name": "c", "image": image, "args": args}) == waypoint


def test_the_waypoint_bootstrap_is_the_control_planes_node_id_with_a_readiness_listener():
    pod = {"metadata": {"name": "waypoint-abc", "namespace": "shop",
                        "labels": {"gateway.networking.k8s.io/gateway-name": "wp"}},
           "spec": {"serviceAccountName": "wp-sa"}}
    b = build_waypoint_bootstrap(pod, "10.244.1.7", "unix:/run/x.sock", XdsCertFiles.under("/c"), "/c-sds.json")
    assert b["node"]["id"] == "waypoint~10.244.1.7~waypoint-abc.shop~shop.svc.cluster.local"
    assert b["node"]["cluster"] == "wp-sa.shop"
    assert b["node"]["metadata"] == {"NAMESPACE": "shop", "WORKLOAD_NAME": "wp", "SERVICE_ACCOUNT": "wp-sa",
                                     "NODE_TYPE": "waypoint", "INSTANCE_IPS": "10.244.1.7", "POD_NAME": "waypoint-abc"}
    assert b["admin"]["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}
    (status,) = b["static_resources"]["listeners"]
    assert status["address"]["socket_address"]["port_value"] == 15021
    route = status["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route["match"] == {"path": "/healthz/ready"} and route["direct_response"]["status"] == 200
    assert b["dynamic_resources"]["cds_config"]["initial_fetch_timeout"] == "0s"
    assert b["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] == "0s"
    (xds,) = b["static_resources"]["clusters"]
    assert xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] == {
        "address": {"pipe": {"path": "/run/x.sock"}}}
    assert xds["transport_socket"]["typed_config"]["sni"] == "istiod.istio-system.svc"
    container = build_envoy_container({"name": "istio-proxy", "image": "meshway/waypoint-envoy",
                                       "args": ["proxy", "waypoint"]}, "/bin/envoy", "/c/envoy-rev.json")
    assert container["command"][:3] == ["/bin/envoy", "-c", "/c/envoy-rev.json"] and container["args"] == []


def test_envoy_accepts_the_waypoint_pod_bootstrap(tmp_path):
    import json
    import subprocess

    from test_xds_mtls import require_envoy, write_certs

    envoy = require_envoy()
    ca = CertificateAuthority(tmp_path)
    files = write_certs(tmp_path / "certs", ca.issue("default", "waypoint"), ca.root_pem())
    pod = {"metadata": {"name": "waypoint-abc", "namespace": "default"}, "spec": {"serviceAccountName": "waypoint"}}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(build_waypoint_bootstrap(pod, "10.244.1.7", f"unix:{tmp_path}/x.sock", files,
                                                        tmp_path / "certs-sds.json")))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- over the control plane's TLS port ----------------------------------------------------------------
def test_create_certificate_over_the_tls_port_without_a_client_certificate(tmp_path):
    """A raw gRPC client with no client certificate: the token decides; the review runs per call."""
    ca = CertificateAuthority(tmp_path)
    reviews = {"good": review(), "other": review("system:serviceaccount:default:default")}
    asked: list[str] = []

    def review_token(token: str) -> dict | None:
        asked.append(token)
        return reviews.get(token, {"authenticated": False, "error": "invalid bearer token"})

    service = CertificateService(ca, review_token, DAY)
    server = XdsServer(SnapshotCache())
    csr = build_csr(build_key(), WAYPOINT)

    async def call(token: str | None) -> tuple[grpc.StatusCode, str, list[str]]:
        credentials = grpc.ssl_channel_credentials(ca.root_pem().encode())
        async with grpc.aio.secure_channel(server.tcp_address, credentials,
                                           options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")]) as ch:
            method = ch.unary_unary(CREATE_CERTIFICATE, request_serializer=IstioCertificateRequest.SerializeToString,
                                    response_deserializer=IstioCertificateResponse.FromString)
            try:
                answer = await method(IstioCertificateRequest(csr=csr), timeout=10,
                                      metadata=(("authorization", f"Bearer {token}"),) if token else None)
                return grpc.StatusCode.OK, "", list(answer.cert_chain)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or "", []

    async def main() -> list:
        await server.start(tmp_path / "xds.sock", build_mtls_listener("127.0.0.1:0", ca, lambda _: None,
                                                                       handlers=(service.handler(),)))
        try:
            return [await call(t) for t in ("good", "other", "forged", None)]
        finally:
            await server.stop(0)

    good, other, forged, none = asyncio.run(main())
    assert good[0] == grpc.StatusCode.OK and len(good[2]) == 2 and find_uri_sans(cert_from_pem(good[2][0])) == [WAYPOINT]
    assert other[0] == grpc.StatusCode.PERMISSION_DENIED and "may only be certified as" in other[1]
    assert forged[:2] == (grpc.StatusCode.UNAUTHENTICATED, "authentication failed: invalid bearer token")
    assert none[0] == grpc.StatusCode.UNAUTHENTICATED and "no bearer token" in none[1]
    assert asked == ["good", "other", "forged"]
    assert service.decisions == {"OK": 1, "PERMISSION_DENIED": 1, "UNAUTHENTICATED": 2}


def test_the_certificate_folder_is_a_secret_volume_swapped_atomically(tmp_path):
    """As the kubelet writes a Secret volume: `NAME -> ..data/NAME`, `..data` moved to each new
    generation at once, older generations removed; root's, readable by the container's group only."""
    import os

    from meshway.node.identity import write_secret_volume

    if os.geteuid() != 0:
        pytest.skip("writes root-owned files for another group (the node agent runs as root)")
    folder = tmp_path / "certs"
    write_secret_volume(folder, {"cert-chain.pem": "one", "key.pem": "k1"}, 1337)
    first = os.readlink(folder / "..data")
    assert os.readlink(folder / "cert-chain.pem") == "..data/cert-chain.pem"
    for generation in range(2, 5):
        write_secret_volume(folder, {"cert-chain.pem": f"gen {generation}", "key.pem": "k"}, 1337)
    assert (folder / "cert-chain.pem").read_text() == "gen 4" and os.readlink(folder / "..data") != first
    assert len([p for p in folder.iterdir() if p.name.startswith("..20")]) <= 2
    key = folder / "..data" / "key.pem"
    info = os.stat(key)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 1337, 0o640)
    assert os.stat(folder).st_mode & 0o777 == 0o750


def test_the_relay_copies_bytes_to_the_control_plane(tmp_path):
    """A pod's way to the control plane (its namespace has no route to the host): a Unix socket whose
    connections are copied to HOST:PORT, both ways."""
    import socket
    import threading

    from meshway.node.relay import XdsRelay

    upstream = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = upstream.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    relay = XdsRelay(tmp_path / "xds.sock", f"127.0.0.1:{upstream.getsockname()[1]}")
    relay.start()
    try:
        assert os.stat(tmp_path / "xds.sock").st_mode & 0o777 == 0o666
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "xds.sock"))
            client.sendall(b"hello")
            assert client.recv(1024) == b"HELLO"
    finally:
        relay.stop()
        upstream.close()
    assert not (tmp_path / "xds.sock").exists()


def test_a_node_proxys_certificate_is_bound_to_the_node_of_its_pod_bound_token(tmp_path):
    """The ztunnel service account's certificate names the node the token's pod runs on (Kubernetes
    puts it in the TokenReview's user extra); the xDS port then lets it claim that node only
    (tests/test_xds_mtls.py). A ztunnel token without a node gets nothing."""
    from meshway.ca.certs import find_cert_node

    ca = CertificateAuthority(tmp_path / "ca", trust_domain=TD)
    key = build_key()
    ztunnel = f"spiffe://{TD}/ns/istio-system/sa/ztunnel"
    bound = review("system:serviceaccount:istio-system:ztunnel")
    bound["user"]["extra"] = {"authentication.kubernetes.io/node-name": ["node-2"],
                              "authentication.kubernetes.io/pod-name": ["ztunnel-x7k2p"]}
    decision = decide_certificate_request(bound, build_csr(key, ztunnel), 0, DAY, TD)
    assert (decision.allowed, decision.identity, decision.node) == (True, ztunnel, "node-2")
    leaf = ca.sign(decision.public_key, decision.identity, decision.lifetime, decision.node)[0]
    assert find_cert_node(leaf) == "node-2"
    unbound = decide_certificate_request(review("system:serviceaccount:istio-system:ztunnel"),
                                         build_csr(key, ztunnel), 0, DAY, TD)
    assert (unbound.allowed, unbound.code) == (False, "PERMISSION_DENIED") and "bound to its node" in unbound.reason
    waypoint = decide_certificate_request(review(), build_csr(key, WAYPOINT), 0, DAY, TD)
    assert waypoint.allowed and waypoint.node is None  # only node proxies are bound to a node
    assert find_cert_node(ca.sign(waypoint.public_key, waypoint.identity, waypoint.lifetime)[0]) is None
