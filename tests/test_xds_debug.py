"""Istio's debug xDS type `istio.io/debug/syncz` on the control plane's TCP port (what `istioctl
proxy-status` asks istiod for, and `meshway --kubeconfig FILE proxy-status` reads):

- the pure parts as tables: who may ask and what they see, the answer and its reading back, when a
  debug stream is answered, the Lease that names the control plane's xDS address;
- the real ADS server over TLS: a waypoint's stream ACKs its secrets, then a debug client with a
  token of istio-system sees it SYNCED, a token of another namespace sees nothing, no token or a
  token for another audience is UNAUTHENTICATED, and the proxy stream is not disturbed.
"""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from envoy.service.status.v3 import csds_pb2

from test_xds_mtls import WAYPOINT, ZTUNNEL, cp, waypoint_of  # noqa: F401 (cp: the fixture)
from meshway.cli.controlplane import write_proxy_status
from meshway.kube.leader import decide_lease, format_micro_time
from meshway.kube.xdsdebug import (METRICS_ADDRESS_ANNOTATION, XDS_ADDRESS_ANNOTATION, NoControlPlane, fetch_syncz,
                                   find_advertised_address, find_metrics_address, find_xds_address)
from meshway.xds import protos as P
from meshway.xds.debug import (SYNCZ, DebugCaller, SyncSource, build_control_plane_id, build_syncz,
                               decide_debug_caller, detect_answer_due, detect_debug_type, read_syncz)
from meshway.xds.istiod import XDS_SNI
from meshway.xds.mtls import build_mtls_listener

TD = "cluster.local"


def review(user: str, audiences=("istio-ca",), authenticated: bool = True) -> dict:
    return {"authenticated": authenticated, "user": {"username": user}, "audiences": list(audiences)}


@pytest.mark.parametrize("ids, token_review, allowed, namespace, says", [
    ((), review("system:serviceaccount:istio-system:default"), True, "", ""),  # istioctl's token: everything
    ((), review("system:serviceaccount:default:curl"), True, "default", ""),  # its own namespace only
    ((f"spiffe://{TD}/ns/istio-system/sa/istiod",), None, True, "", ""),  # a mesh certificate
    ((f"spiffe://{TD}/ns/bookinfo/sa/reviews",), None, True, "bookinfo", ""),
    ((), None, False, "", "authentication required"),  # istiod's words
    ((), review("system:serviceaccount:istio-system:default", audiences=("https://kubernetes.default.svc",)),
     False, "", "not for audience 'istio-ca'"),
    ((), review("admin"), False, "", "is not a service account"),
    ((), review("x", authenticated=False), False, "", "authentication failed"),
    (("spiffe://other.domain/ns/istio-system/sa/istiod",), None, False, "", "authentication required"),
])
def test_who_may_ask_and_what_they_see(ids, token_review, allowed, namespace, says):
    caller = decide_debug_caller(ids, token_review, TD)
    assert (caller.allowed, caller.namespace) == (allowed, namespace)
    assert says in caller.reason
    if not allowed:
        assert caller.code == "UNAUTHENTICATED"


@pytest.mark.parametrize("type_url, debug", [(SYNCZ, True), ("istio.io/debug", True),
                                             ("istio.io/debug/config_dump", True), (P.SECRET, False),
                                             ("istio.io/debugger", False), ("", False)])
def test_debug_types(type_url, debug):
    assert detect_debug_type(type_url) is debug


@pytest.mark.parametrize("nonce, answered, due", [
    ("2026-12-03 10:00:00 +0000 UTC", False, True),  # istioctl's first request carries a nonce of its own
    ("", False, True), ("", True, True),  # asked again
    ("abc", True, False),  # an ACK of our answer
])
def test_when_a_debug_stream_is_answered(nonce, answered, due):
    assert detect_answer_due(nonce, answered) is due


SOURCE = SyncSource(
    status={WAYPOINT: {P.CLUSTER: {"sent": "v1", "version": "v1", "nonce": "1", "state": "SYNCED"},
                       P.LISTENER: {"sent": "v2", "version": "v1", "nonce": "2", "state": "STALE"},
                       P.ROUTE: {"sent": "v3", "version": "v0", "nonce": "3", "state": "NACKED",
                                 "error": "route: bad regex"}},
            ZTUNNEL: {P.SECRET: {"sent": "s1", "version": "s1", "nonce": "4", "state": "SYNCED"}},
            "gone~1.2.3.4~x.default~default.svc.cluster.local": {}},
    connected=frozenset({WAYPOINT, ZTUNNEL, "istioctl-without-a-meshway-node-id"}),
    sent_at={(WAYPOINT, P.CLUSTER): 1_700_000_000.5})


def test_the_answer_lists_connected_proxies_with_their_types():
    cp_id = build_control_plane_id("host_42", "0.9")
    response = build_syncz(SOURCE, DebugCaller(True), cp_id, "0.9", "n1")
    assert response.type_url == SYNCZ and response.nonce == "n1"
    assert json.loads(response.control_plane.identifier) == {
        "Component": "istiod", "ID": "host_42",
        "Info": {"version": "meshway-0.9", "revision": "", "golang_version": "", "status": "", "tag": ""}}
    configs = []
    for packed in response.resources:
        config = csds_pb2.ClientConfig()
        assert packed.Unpack(config)
        configs.append(config)
    assert [c.node.id for c in configs] == sorted([WAYPOINT, ZTUNNEL])  # connected, and meshway's node ids only
    waypoint = next(c for c in configs if c.node.id == WAYPOINT)
    assert dict(waypoint.node.metadata) == {"CLUSTER_ID": "Kubernetes", "NAMESPACE": "default",
                                            "ISTIO_VERSION": "meshway-0.9"}
    assert [(g.type_url, csds_pb2.ConfigStatus.Name(g.config_status)) for g in waypoint.generic_xds_configs] == [
        (P.CLUSTER, "SYNCED"), (P.LISTENER, "STALE"), (P.ROUTE, "ERROR")]  # sorted by type URL
    assert waypoint.generic_xds_configs[0].last_updated.ToNanoseconds() == 1_700_000_000_500_000_000
    assert waypoint.generic_xds_configs[2].error_state.details == "route: bad regex"
    only_default = build_syncz(SOURCE, DebugCaller(True, "default"), cp_id, "0.9", "n2")
    assert len(only_default.resources) == 1  # the node proxy is istio-system's


def test_the_answer_reads_back_as_meshways_table():
    status = read_syncz(build_syncz(SOURCE, DebugCaller(True), build_control_plane_id("h", "0.9"), "0.9", "n"))
    assert status[WAYPOINT]["xds"] == {"Cluster": {"state": "SYNCED", "sent": True},
                                       "Listener": {"state": "STALE", "sent": True},
                                       "RouteConfiguration": {"state": "NACKED", "sent": True,
                                                              "error": "route: bad regex"}}
    table = write_proxy_status(status).splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "SDS", "VERSION"]
    assert table[1].split()[:7] == ["waypoint-7d9f-x2.default", "waypoint", "Kubernetes", "SYNCED", "STALE", "NOT",
                                    "SENT"]
    assert table[2].split() == ["ztunnel-node-1.istio-system", "ztunnel", "Kubernetes", "NOT", "SENT", "NOT", "SENT",
                                "NOT", "SENT", "NOT", "SENT", "SYNCED", "meshway-0.9"]
    assert table[3] == "waypoint-7d9f-x2.default RouteConfiguration NACKED: route: bad regex"


NOW = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)


def lease(renewed: datetime, annotations: dict | None = None) -> dict:
    return {"metadata": {"name": "meshway-controlplane", "namespace": "istio-system",
                         "annotations": annotations or {}},
            "spec": {"holderIdentity": "host_7", "leaseDurationSeconds": 15, "renewTime": format_micro_time(renewed)}}


def test_the_lease_names_the_xds_address_of_a_live_control_plane():
    assert find_xds_address(lease(NOW, {XDS_ADDRESS_ANNOTATION: "127.0.0.1:35012"}), NOW) == "127.0.0.1:35012"
    with pytest.raises(NoControlPlane, match="not running"):
        find_xds_address(lease(NOW - timedelta(seconds=60), {XDS_ADDRESS_ANNOTATION: "127.0.0.1:1"}), NOW)
    with pytest.raises(NoControlPlane, match="not running"):
        find_xds_address(None, NOW)
    with pytest.raises(NoControlPlane, match="host_7 serves no xDS port"):
        find_xds_address(lease(NOW), NOW)


@pytest.mark.parametrize("lease_, found", [
    (lease(NOW, {XDS_ADDRESS_ANNOTATION: "127.0.0.1:1", METRICS_ADDRESS_ANNOTATION: "127.0.0.1:41014"}),
     "127.0.0.1:41014"),
    (lease(NOW, {XDS_ADDRESS_ANNOTATION: "127.0.0.1:1"}), "host_7 serves no monitoring port (started without "
                                                          "--metrics-addr)"),
    (lease(NOW - timedelta(seconds=60), {METRICS_ADDRESS_ANNOTATION: "127.0.0.1:41014"}), "not running"),
    (None, "not running"),
])
def test_the_lease_names_the_monitoring_address_of_a_live_control_plane(lease_, found):
    """`meshway --kubeconfig metrics` reads the control plane's tally there (`fetch_kube_tally`)."""
    if found.startswith("127."):
        assert find_metrics_address(lease_, NOW) == found
    else:
        with pytest.raises(NoControlPlane) as caught:
            find_metrics_address(lease_, NOW)
        assert found in str(caught.value)


@pytest.mark.parametrize("bound, ips, advertised", [
    ("127.0.0.1:35012", (), "127.0.0.1:35012"), ("0.0.0.0:15012", ("10.0.0.5",), "10.0.0.5:15012"),
    ("[::]:15012", ("fd00::5",), "[fd00::5]:15012"), ("0.0.0.0:15012", (), "0.0.0.0:15012")])
def test_the_advertised_address(bound, ips, advertised):
    assert find_advertised_address(bound, ips) == advertised


def test_the_holder_writes_its_annotations_on_the_lease():
    created = decide_lease(None, "me", NOW, annotations={XDS_ADDRESS_ANNOTATION: "127.0.0.1:1"})
    assert created.body["metadata"]["annotations"] == {XDS_ADDRESS_ANNOTATION: "127.0.0.1:1"}
    taken = decide_lease(lease(NOW - timedelta(seconds=60), {XDS_ADDRESS_ANNOTATION: "10.0.0.9:1"}), "me", NOW)
    assert "annotations" not in taken.body["metadata"]  # a previous holder's word is not kept (PUT)


# -- over TLS, against the real ADS server ----------------------------------------------------------
TOKENS = {"istio-system-default": review("system:serviceaccount:istio-system:default"),
          "other-ns": review("system:serviceaccount:other:default"),
          "api-audience": review("system:serviceaccount:istio-system:default", audiences=("kubernetes",))}


def test_syncz_over_tls_with_a_token(cp, tmp_path):
    waypoint, sa = waypoint_of(cp)
    own = cp.ca.issue("default", sa)

    async def main():
        tcp = build_mtls_listener("127.0.0.1:0", cp.ca, cp._service_account_of, review_token=TOKENS.get,
                                  instance="host_1")
        await cp.server.start(tmp_path / "xds.sock", tcp)
        credentials = grpc.ssl_channel_credentials(cp.ca.root_pem().encode(), own.key_pem.encode(), own.cert_pem.encode())
        try:
            async with grpc.aio.secure_channel(cp.server.tcp_address, credentials,
                                               options=[("grpc.ssl_target_name_override", XDS_SNI)]) as channel:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
                await call.write(DiscoveryRequest(node=Node(id=waypoint), type_url=P.SECRET, resource_names=["default"]))
                sent = await asyncio.wait_for(call.read(), 5)
                await call.write(DiscoveryRequest(node=Node(id=waypoint), type_url=P.SECRET, resource_names=["default"],
                                                  version_info=sent.version_info, response_nonce=sent.nonce))
                await asyncio.sleep(0.2)
                answers = []
                for token in ("istio-system-default", "other-ns", "api-audience", None):
                    try:
                        answers.append(await asyncio.to_thread(fetch_syncz, cp.server.tcp_address, token or "",
                                                               cp.ca.root_pem(), 5))
                    except grpc.RpcError as exc:
                        answers.append((exc.code(), exc.details()))
                assert waypoint in cp.server.connected  # the proxy's stream is still open
                call.cancel()
                return answers
        finally:
            await cp.server.stop(0)

    everything, other, wrong_audience, none = asyncio.run(main())
    status = read_syncz(everything)
    assert status[waypoint]["xds"] == {"Secret": {"state": "SYNCED", "sent": True}}
    assert json.loads(everything.control_plane.identifier)["ID"] == "host_1"
    assert read_syncz(other) == {}  # another namespace's caller sees none of default's proxies
    assert wrong_audience[0] == grpc.StatusCode.UNAUTHENTICATED and "not for audience" in wrong_audience[1]
    assert none == (grpc.StatusCode.UNAUTHENTICATED, "authentication required")
    assert cp.server.debug.answered == 2
    assert not cp.server.denied  # debug callers are not proxies claiming a node id


def test_the_cli_reads_the_tally_from_the_monitoring_port_the_lease_names():
    from meshway.cli.kubeproxies import fetch_kube_tally
    from meshway.observe.metrics import Family, Sample
    from meshway.runtime.monitoring import MetricsServer

    sample = Sample("istio_requests_total", (("reporter", "waypoint"), ("source_workload", "caller-a")), 3)
    server = MetricsServer("127.0.0.1:0", lambda: [Family("istio_requests_total", "counter", "h", (sample,))])
    server.start()

    class Client:
        def __init__(self, annotations: dict) -> None:
            self.annotations = annotations

        def get(self, path: str) -> dict:
            assert path.endswith("/namespaces/istio-system/leases/meshway-controlplane"), path
            return lease(datetime.now(timezone.utc), self.annotations)
    try:
        text, problem = fetch_kube_tally(Client({METRICS_ADDRESS_ANNOTATION: server.address}))
        assert problem == "" and 'istio_requests_total{reporter="waypoint",source_workload="caller-a"} 3' in text
    finally:
        server.stop()
    assert fetch_kube_tally(Client({})) == (None, "the control plane host_7 serves no monitoring port "
                                                  "(started without --metrics-addr)")
    text, problem = fetch_kube_tally(Client({METRICS_ADDRESS_ANNOTATION: server.address}), timeout=2)
    assert text is None and problem.startswith(f"the control plane's monitoring port {server.address}: "), problem
