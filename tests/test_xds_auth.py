"""Authenticated xDS and scoped secrets, as an attacker on the host would try them.

A raw gRPC client (the ADS stubs of xds-protos) connects to the control plane's real ADS server and
claims node ids: without the token of the id it claims it gets PERMISSION_DENIED and no resource;
with a proxy's token it gets only that proxy's secrets (a waypoint: its service account and ROOTCA;
a node proxy: the pods of its node and ROOTCA), whatever names it asks for.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import Node
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from conftest import apply
from meshway import labels as L
from meshway.ca import cert_from_pem, find_uri_sans
from meshway.ca.tokens import TOKEN_KEY_FILE, TOKEN_METADATA, ProxyTokens
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.xds.protos import MessageCache
from meshway.runtime.controlplane import ControlPlane
from meshway.xds import protos as P
from meshway.xds.proxy import build_node_id

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews}}
spec: {serviceAccountName: bookinfo-reviews, nodeName: node-1, containers: [{name: reviews, image: reviews}]}
---
apiVersion: v1
kind: Pod
metadata: {name: productpage, namespace: default, labels: {app: productpage}}
spec: {serviceAccountName: bookinfo-productpage, nodeName: node-1, containers: [{name: p, image: productpage}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings, namespace: default, labels: {app: ratings}}
spec: {serviceAccountName: bookinfo-ratings, nodeName: node-2, containers: [{name: ratings, image: ratings}]}
"""


def spiffe(sa: str) -> str:
    return f"spiffe://cluster.local/ns/default/sa/{sa}"


NODE1_IDENTITIES = {spiffe("bookinfo-reviews"), spiffe("bookinfo-productpage")}
NODE2_IDENTITIES = {spiffe("bookinfo-ratings")}


def ztunnel_id(n: int) -> str:
    return build_node_id("ztunnel", f"10.244.{n}.1", f"ztunnel-node-{n}", L.ROOT_NAMESPACE)


@pytest.fixture
def cp(state_dir: Path, store) -> ControlPlane:
    """A control plane with the snapshots of one waypoint replica and two node proxies published
    (translated as the running control plane does; no Envoy started)."""
    store.set_nodes(2)
    apply(store, MANIFESTS)
    cp = ControlPlane(state_dir)
    cp.view = MeshView.build(cp.store.snapshot(XDS_KINDS)[1])
    cp.sync()
    assert len(cp.replicas) == 1
    for n in (1, 2):
        cp._publish(ztunnel_id(n), cp._node_messages(ztunnel_id(n), f"node-{n}", MessageCache()))
    return cp


def waypoint_id(cp: ControlPlane) -> str:
    [node_id] = cp.replicas
    return node_id


# -- a raw ADS client ------------------------------------------------------------------------------
async def ask_secrets(socket: Path, node_id: str, token: str | None, names: list[str],
                      delta: bool) -> tuple[grpc.StatusCode | None, dict[str, Secret]]:
    """(the status the server ended the stream with, or None if it stayed open; the secrets received)."""
    node = Node(id=node_id, cluster="attacker")
    if token is not None:
        node.metadata.update({TOKEN_METADATA: token})
    got: dict[str, Secret] = {}
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        if delta:
            call = stub.DeltaAggregatedResources()
            await call.write(DeltaDiscoveryRequest(node=node, type_url=P.SECRET, resource_names_subscribe=names))
        else:
            call = stub.StreamAggregatedResources()
            await call.write(DiscoveryRequest(node=node, type_url=P.SECRET, resource_names=names))
        try:
            while True:
                response = await asyncio.wait_for(call.read(), 1.0)
                if response is grpc.aio.EOF:
                    return None, got
                for packed in (r.resource for r in response.resources) if delta else response.resources:
                    secret = Secret()
                    assert packed.Unpack(secret)
                    got[secret.name] = secret
        except asyncio.TimeoutError:
            return None, got
        except grpc.aio.AioRpcError as exc:
            return exc.code(), got
        finally:
            call.cancel()


def run_against(cp: ControlPlane, tmp_path: Path, attempts: list[tuple[str, str | None, list[str], bool]]) -> list:
    async def main() -> list:
        socket = tmp_path / "xds.sock"
        await cp.server.start(socket)
        try:
            return [await ask_secrets(socket, *attempt) for attempt in attempts]
        finally:
            await cp.server.stop(0)

    return asyncio.run(main())


def identity_of(secret: Secret) -> str:
    [uri] = find_uri_sans(cert_from_pem(secret.tls_certificate.certificate_chain.inline_bytes))
    return uri


# -- tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_stream_claiming_another_node_gets_permission_denied_and_no_secret(cp, tmp_path, delta):
    tokens = ProxyTokens(cp.state_dir)
    node1, node2, waypoint = ztunnel_id(1), ztunnel_id(2), waypoint_id(cp)
    results = run_against(cp, tmp_path, [
        (node1, None, [], delta),  # no credential
        (node1, "", [], delta),  # an empty one
        (node1, "guess" * 9, sorted(NODE1_IDENTITIES), delta),  # a made-up one
        (node1, tokens.token(waypoint), [], delta),  # the waypoint's token for a node proxy's id
        (node2, tokens.token(node1), [], delta),  # node-1's token for node-2's id
        (waypoint, ProxyTokens(cp.state_dir / "other").token(waypoint), [], delta),  # another CA's key
    ])
    assert results == [(grpc.StatusCode.PERMISSION_DENIED, {})] * 6
    assert cp.server.denied == {node1: 4, node2: 1, waypoint: 1}
    metrics = {s.label("node"): s.value for f in cp._collect_metrics() if f.name == "meshway_xds_denied"
               for s in f.samples}
    assert metrics == {node1: 4, node2: 1, waypoint: 1}
    assert not cp.server.connected


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_the_right_token_gets_only_its_own_secrets(cp, tmp_path, delta):
    tokens = ProxyTokens(cp.state_dir)
    waypoint = waypoint_id(cp)
    everything = ["default", "ROOTCA", *sorted(NODE1_IDENTITIES | NODE2_IDENTITIES)]
    (wp_status, wp), (n1_status, n1), (n2_status, n2) = run_against(cp, tmp_path, [
        (waypoint, tokens.token(waypoint), everything, delta),
        (ztunnel_id(1), tokens.token(ztunnel_id(1)), everything, delta),
        (ztunnel_id(2), tokens.token(ztunnel_id(2)), everything, delta),
    ])
    assert (wp_status, n1_status, n2_status) == (None, None, None)
    assert set(wp) == {"default", "ROOTCA"}
    assert identity_of(wp["default"]) == spiffe(cp.replicas[waypoint].replica.service_account)
    assert set(n1) == NODE1_IDENTITIES | {"ROOTCA"}
    assert set(n2) == NODE2_IDENTITIES | {"ROOTCA"}
    for name in NODE1_IDENTITIES | NODE2_IDENTITIES:
        assert identity_of((n1 | n2)[name]) == name
    assert not cp.server.denied


def test_a_waypoint_credential_cannot_obtain_node_proxy_identities(cp, tmp_path):
    """Wildcard or by name, SotW or Delta: the waypoint's stream holds only its own key material."""
    tokens = ProxyTokens(cp.state_dir)
    waypoint = waypoint_id(cp)
    token = tokens.token(waypoint)
    node_names = sorted(NODE1_IDENTITIES | NODE2_IDENTITIES)
    results = run_against(cp, tmp_path, [
        (waypoint, token, [], False),  # no names: SDS is never wildcard in SotW
        (waypoint, token, node_names, False),
        (waypoint, token, node_names, True),
        (waypoint, token, ["*"], True),
    ])
    node_keys = {s.tls_certificate.private_key.inline_bytes
                 for name in (1, 2) for s in cp.cache.get(ztunnel_id(name)).resources(P.SECRET).values()
                 if s.HasField("tls_certificate")}
    assert len(node_keys) == 3
    for status, got in results:
        assert status is None
        assert set(got) <= {"default", "ROOTCA"}
        assert not {s.tls_certificate.private_key.inline_bytes for s in got.values()} & node_keys


def test_tokens_survive_a_restart_and_are_bound_to_the_state_folder(state_dir, tmp_path):
    first, again, other = ProxyTokens(state_dir), ProxyTokens(state_dir), ProxyTokens(tmp_path / "elsewhere")
    node = ztunnel_id(1)
    assert first.token(node) == again.token(node) != other.token(node)
    assert first.token(node) != first.token(ztunnel_id(2))
    assert first.verify(node, first.token(node)) and not first.verify(node, other.token(node))
    assert not first.verify("", first.token(""))
    key = state_dir / "ca" / TOKEN_KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and (state_dir / "ca").stat().st_mode & 0o777 == 0o700


def test_the_bootstrap_carries_the_token_of_its_node(cp):
    """What `_supervise` writes: the waypoint's bootstrap proves its own id and no other."""
    import json

    cp.envoy = "/bin/true"  # a process that exits at once: only the bootstrap matters here
    cp._supervise()
    [state] = cp.replicas.values()
    bootstrap = json.loads(state.paths.bootstrap.read_text())
    token = bootstrap["node"]["metadata"][TOKEN_METADATA]
    tokens = ProxyTokens(cp.state_dir)
    assert tokens.verify(state.node_id, token) and not tokens.verify(ztunnel_id(1), token)
    assert state.paths.bootstrap.stat().st_mode & 0o777 == 0o600
    assert bootstrap["admin"]["address"]["pipe"]["mode"] == 0o600


# -- the workload certificate lifetime (istiod's SECRET_TTL) ---------------------------------------
@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("2m", 120), ("90s", 90), ("1h30m", 5400), ("4s", 4)])
def test_secret_ttl_takes_go_durations(text, seconds):
    from meshway.cli.controlplane import parse_secret_ttl

    assert parse_secret_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("args,env,message", [
    (["--secret-ttl", "1s"], {}, "shorter than 2s"),
    (["--secret-ttl", "2 minutes"], {}, "invalid duration"),
    ([], {"SECRET_TTL": "tomorrow"}, "SECRET_TTL"),
])
def test_a_bad_secret_ttl_stops_the_control_plane_before_it_starts(state_dir, args, env, message):
    from click.testing import CliRunner

    from meshway.cli.main import cli
    from meshway.cli import controlplane  # noqa: F401  (registers the command)

    result = CliRunner().invoke(cli, ["--state-dir", str(state_dir), "controlplane", *args], env=env)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (state_dir / "run").exists()


def test_the_ca_issues_for_the_configured_lifetime_and_renews_at_half_life(state_dir):
    from meshway.ca import CertificateAuthority

    clock = [datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)]
    ca = CertificateAuthority(state_dir, clock=lambda: clock[0], workload_lifetime=timedelta(minutes=2))
    first = ca.issue("default", "reviews")
    cert = cert_from_pem(first.cert_pem)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(minutes=2)
    clock[0] += timedelta(seconds=60)
    assert ca.issue("default", "reviews") is first  # exactly half: not yet
    clock[0] += timedelta(seconds=1)
    assert ca.issue("default", "reviews").cert_pem != first.cert_pem
    with pytest.raises(ValueError):
        CertificateAuthority(state_dir, workload_lifetime=timedelta(0))


def test_the_resync_runs_at_least_every_quarter_of_the_lifetime(state_dir):
    assert ControlPlane(state_dir, secret_ttl=timedelta(minutes=2)).resync == 30
    assert ControlPlane(state_dir, secret_ttl=timedelta(seconds=4)).resync == 1
    assert ControlPlane(state_dir).resync == 60


def test_refusals_are_counted_without_growing_without_bound(cp):
    """Claimed node ids are the caller's word: past MAX_DENIED_IDS names they count as "(other)"."""
    from meshway.xds.server import MAX_DENIED_IDS

    for n in range(MAX_DENIED_IDS + 50):
        cp.server._deny(f"made-up-{n}\nforged log line " + "x" * 1000)
    assert len(cp.server.denied) == MAX_DENIED_IDS + 1 and cp.server.denied["(other)"] == 50
    assert max(len(k) for k in cp.server.denied) <= 200


def test_a_state_path_that_is_a_link_is_narrowed_through_the_link(tmp_path):
    real = tmp_path / "real-state"
    real.mkdir()
    real.chmod(0o755)
    (tmp_path / "state").symlink_to(real)
    cp = ControlPlane(tmp_path / "state")
    assert cp.state_dir == tmp_path / "state" and real.stat().st_mode & 0o777 == 0o700
