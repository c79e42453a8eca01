"""The ADS stream state machines (SotW and Delta) as event -> action tables, and the snapshot cache.

Each table row is one input (a request from Envoy, or a new snapshot) and what the stream must
do: the responses it returns, summarised as (type, resource names[, removed names], nonce), and the
ACK/NACK events it reports. Nonces are a per-stream counter, so "1" is the first response sent.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.config_source_pb2 import AggregatedConfigSource, ApiVersion, ConfigSource
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.rpc.status_pb2 import Status

from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (registers @type)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from meshway.xds.cache import (CLUSTER, ENDPOINT, LISTENER, NACKED, ROUTE, SECRET, STALE, SYNCED, InconsistentSnapshot,
                               Snapshot, SnapshotCache, check_consistency, resource_name)
from meshway.xds.stream import Acked, DeltaStream, Nacked, Sent, SotwStream

SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
TYPE = {v: k for k, v in SHORT.items()}
ADS = ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


# -- resources -----------------------------------------------------------------------------------
def cluster(name: str, timeout: int = 1) -> Cluster:
    msg = Cluster(name=name, type=Cluster.EDS)
    msg.eds_cluster_config.eds_config.CopyFrom(ADS)
    msg.connect_timeout.seconds = timeout
    return msg


def endpoints(name: str, port: int = 8080) -> ClusterLoadAssignment:
    return json_format.ParseDict({"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}, ClusterLoadAssignment())


def listener(name: str, port: int = 15000, route: str = "r") -> Listener:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": name, "rds": {"route_config_name": route, "config_source": {"ads": {}}},
           "http_filters": [{"name": "router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return json_format.ParseDict({"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                                               "port_value": port}},
                                  "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}, Listener())


def route(name: str, cluster_name: str = "a", header: str = "") -> RouteConfiguration:
    vhost: dict[str, Any] = {"name": "all", "domains": ["*"],
                             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}]}
    if header:
        vhost["response_headers_to_add"] = [{"header": {"key": "x-v", "value": header}}]
    return json_format.ParseDict({"name": name, "virtual_hosts": [vhost]}, RouteConfiguration())


def secret(name: str) -> Secret:
    return Secret(name=name)


def snap(*messages: Any) -> Snapshot:
    return Snapshot.of(messages)


BASE = snap(cluster("a"), cluster("b"), endpoints("a"), endpoints("b"), listener("l"), route("r"))


# -- requests and summaries ----------------------------------------------------------------------
def sotw(type_: str, names: tuple[str, ...] = (), nonce: str = "", version: str = "",
         error: str = "") -> DiscoveryRequest:
    request = DiscoveryRequest(type_url=TYPE[type_], resource_names=names, response_nonce=nonce, version_info=version)
    if error:
        request.error_detail.CopyFrom(Status(code=3, message=error))
    return request


def delta(type_: str, sub: tuple[str, ...] = (), unsub: tuple[str, ...] = (), nonce: str = "", error: str = "",
          initial: dict[str, str] | None = None) -> DeltaDiscoveryRequest:
    request = DeltaDiscoveryRequest(type_url=TYPE[type_], resource_names_subscribe=sub,
                                    resource_names_unsubscribe=unsub, response_nonce=nonce,
                                    initial_resource_versions=initial or {})
    if error:
        request.error_detail.CopyFrom(Status(code=3, message=error))
    return request


def _name(packed: Any) -> str:
    msg = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(packed.TypeName()))()
    packed.Unpack(msg)
    return resource_name(msg)


def summarize(response: Any) -> tuple:
    if hasattr(response, "removed_resources"):
        return (SHORT[response.type_url], tuple(r.name for r in response.resources),
                tuple(response.removed_resources), response.nonce)
    return SHORT[response.type_url], tuple(_name(r) for r in response.resources), response.nonce


def summarize_event(event: Any) -> tuple:
    if isinstance(event, Acked):
        return "ack", SHORT[event.type_url], event.nonce
    return "nack", SHORT[event.type_url], event.nonce, event.message


def run_table(stream: Any, events: list, steps: list[tuple[Any, list[tuple], list[tuple]]]) -> None:
    for i, (given, want_responses, want_events) in enumerate(steps):
        events.clear()
        out = stream.on_snapshot(given) if isinstance(given, Snapshot) else stream.on_request(given)
        step = f"step {i}: {given!r}"
        assert [summarize(r) for r in out] == want_responses, step
        assert [summarize_event(e) for e in events if not isinstance(e, Sent)] == want_events, step
        sent = [e for e in events if isinstance(e, Sent)]
        assert [(SHORT[e.type_url], e.nonce) for e in sent] == [(SHORT[r.type_url], r.nonce) for r in out], step


# -- SotW ----------------------------------------------------------------------------------------
CHANGED_ALL = snap(cluster("a", 2), cluster("b"), endpoints("a", 9), endpoints("b"), listener("l", 15001),
                   route("r", header="2"))
ONLY_B_ENDPOINTS = snap(cluster("a"), cluster("b"), endpoints("a"), endpoints("b", 9), listener("l"), route("r"))
MODIFIED_A = snap(cluster("a", 2), cluster("b"), endpoints("a"), endpoints("b"), listener("l"), route("r"))
WITH_C = snap(cluster("a"), cluster("b"), cluster("c"), endpoints("a"), endpoints("b"), endpoints("c"),
              listener("l"), route("r"))

SOTW_TABLES: dict[str, tuple[Snapshot | None, list]] = {
    "initial wildcard CDS gets every cluster, ACK reported, nothing resent": (BASE, [
        (sotw("CDS"), [("CDS", ("a", "b"), "1")], []),
        (sotw("CDS", nonce="1", version=BASE.version(CLUSTER)), [], [("ack", "CDS", "1")]),
    ]),
    "requests before the first snapshot are answered when it arrives": (None, [
        (sotw("CDS"), [], []),
        (sotw("LDS"), [], []),
        (BASE, [("CDS", ("a", "b"), "1"), ("LDS", ("l",), "2")], []),
    ]),
    "EDS, RDS and SDS carry only the requested names": (BASE, [
        (sotw("EDS", ("a",)), [("EDS", ("a",), "1")], []),
        (sotw("RDS", ("r",)), [("RDS", ("r",), "2")], []),
        (sotw("SDS", ("missing",)), [("SDS", (), "3")], []),
    ]),
    "NACK is reported and the rejected version is never resent": (BASE, [
        (sotw("LDS"), [("LDS", ("l",), "1")], []),
        (sotw("LDS", nonce="1", error="bad listener"), [], [("nack", "LDS", "1", "bad listener")]),
        (sotw("LDS", nonce="1", error="bad listener"), [], [("nack", "LDS", "1", "bad listener")]),
        (ONLY_B_ENDPOINTS, [], []),  # LDS unchanged: still not resent
        (CHANGED_ALL, [("LDS", ("l",), "2")], []),  # a new version is sent
    ]),
    "stale nonce is ignored, the follow-up ACK carries the new names": (BASE, [
        (sotw("EDS", ("a",)), [("EDS", ("a",), "1")], []),
        (CHANGED_ALL, [("EDS", ("a",), "2")], []),
        (sotw("EDS", ("a", "b"), nonce="1"), [], []),  # stale: answers response 1
        (sotw("EDS", ("a", "b"), nonce="1", error="old"), [], []),  # stale NACK too
        (sotw("EDS", ("a", "b"), nonce="2"), [("EDS", ("a", "b"), "3")], [("ack", "EDS", "2")]),
    ]),
    "changed resource_names trigger a response; same names do not": (BASE, [
        (sotw("EDS", ("a",)), [("EDS", ("a",), "1")], []),
        (sotw("EDS", ("a",), nonce="1"), [], [("ack", "EDS", "1")]),
        (sotw("EDS", ("b",), nonce="1"), [("EDS", ("b",), "2")], [("ack", "EDS", "1")]),
        (sotw("EDS", (), nonce="2"), [("EDS", (), "3")], [("ack", "EDS", "2")]),  # unsubscribe all
    ]),
    "a new snapshot pushes changed types in order CDS, EDS, LDS, RDS": (BASE, [
        (sotw("RDS", ("r",)), [("RDS", ("r",), "1")], []),
        (sotw("LDS"), [("LDS", ("l",), "2")], []),
        (sotw("EDS", ("a",)), [("EDS", ("a",), "3")], []),
        # the clusters are new to this stream: the endpoints they warm on follow
        (sotw("CDS"), [("CDS", ("a", "b"), "4"), ("EDS", ("a",), "5")], []),
        (CHANGED_ALL, [("CDS", ("a", "b"), "6"), ("EDS", ("a",), "7"), ("LDS", ("l",), "8"),
                       ("RDS", ("r",), "9")], []),
        (CHANGED_ALL, [], []),  # same content again: nothing
    ]),
    "only subscribed names count: another cluster's endpoints changing is not pushed": (BASE, [
        (sotw("EDS", ("a",)), [("EDS", ("a",), "1")], []),
        (ONLY_B_ENDPOINTS, [], []),
    ]),
    "a requested name that appears later is pushed": (BASE, [
        (sotw("RDS", ("r2",)), [("RDS", (), "1")], []),
        (snap(route("r"), route("r2")),
         [("RDS", ("r2",), "2")], []),
    ]),
    "wildcard: a removed listener means a new, smaller set": (BASE, [
        (sotw("LDS"), [("LDS", ("l",), "1")], []),
        (snap(cluster("a")), [("LDS", (), "2")], []),
    ]),
    "a modified EDS cluster gets its unchanged endpoints again right after CDS (it warms until then)": (BASE, [
        (sotw("CDS"), [("CDS", ("a", "b"), "1")], []),
        (sotw("EDS", ("a", "b")), [("EDS", ("a", "b"), "2")], []),
        (sotw("CDS", nonce="1"), [], [("ack", "CDS", "1")]),
        (sotw("EDS", ("a", "b"), nonce="2"), [], [("ack", "EDS", "2")]),
        (MODIFIED_A, [("CDS", ("a", "b"), "3"), ("EDS", ("a", "b"), "4")], []),
        (MODIFIED_A, [], []),
        (sotw("CDS", nonce="3"), [], [("ack", "CDS", "3")]),
        (sotw("EDS", ("a", "b"), nonce="4"), [], [("ack", "EDS", "4")]),  # the ACK gets no answer
        (BASE, [("CDS", ("a", "b"), "5"), ("EDS", ("a", "b"), "6")], []),  # changed back (DR deleted)
    ]),
    "no endpoints resent when no cluster was added or modified": (BASE, [
        (sotw("CDS"), [("CDS", ("a", "b"), "1")], []),
        (sotw("EDS", ("a", "b")), [("EDS", ("a", "b"), "2")], []),
        (sotw("LDS"), [("LDS", ("l",), "3")], []),
        (snap(cluster("a"), cluster("b"), endpoints("a"), endpoints("b"), listener("l", 15001), route("r")),
         [("LDS", ("l",), "4")], []),
        (snap(cluster("a"), endpoints("a"), endpoints("b"), listener("l", 15001), route("r")),
         [("CDS", ("a",), "5")], []),  # a removed cluster warms nothing
    ]),
    "an added cluster's endpoints go out when Envoy subscribes to them": (BASE, [
        (sotw("CDS"), [("CDS", ("a", "b"), "1")], []),
        (sotw("EDS", ("a", "b")), [("EDS", ("a", "b"), "2")], []),
        (WITH_C, [("CDS", ("a", "b", "c"), "3")], []),
        (sotw("EDS", ("a", "b", "c"), nonce="2"), [("EDS", ("a", "b", "c"), "4")], [("ack", "EDS", "2")]),
    ]),
    "a CDS response sent on a request also re-sends the endpoints it warms": (BASE, [
        (sotw("EDS", ("a",)), [("EDS", ("a",), "1")], []),
        (sotw("CDS"), [("CDS", ("a", "b"), "2"), ("EDS", ("a",), "3")], []),
    ]),
}


@pytest.mark.parametrize("name", list(SOTW_TABLES))
def test_sotw_table(name: str) -> None:
    initial, steps = SOTW_TABLES[name]
    events: list = []
    run_table(SotwStream("node", initial, events.append), events, steps)


def test_sotw_versions_are_content_hashes_of_the_requested_names() -> None:
    events: list = []
    stream = SotwStream("node", BASE, events.append)
    [cds] = stream.on_request(sotw("CDS"))
    [eds] = stream.on_request(sotw("EDS", ("a",)))
    assert cds.version_info == BASE.version(CLUSTER)
    assert eds.version_info == BASE.version(ENDPOINT, ["a"]) != BASE.version(ENDPOINT)
    events.clear()
    assert stream.on_request(sotw("EDS", ("a",), nonce="2", version="v0", error="no")) == []
    assert events == [Nacked(ENDPOINT, eds.version_info, "2", "no", "v0")]


# -- Delta ---------------------------------------------------------------------------------------
WITHOUT_B = snap(cluster("a"), endpoints("a"), listener("l"), route("r"))

DELTA_TABLES: dict[str, tuple[Snapshot | None, list]] = {
    "initial wildcard CDS gets every cluster, ACK reported": (BASE, [
        (delta("CDS"), [("CDS", ("a", "b"), (), "1")], []),
        (delta("CDS", nonce="1"), [], [("ack", "CDS", "1")]),
    ]),
    "first request with nothing to send is still answered (Envoy waits for it)": (snap(cluster("a")), [
        (delta("LDS"), [("LDS", (), (), "1")], []),
    ]),
    "requests before the first snapshot are answered when it arrives": (None, [
        (delta("LDS"), [], []),
        (delta("CDS"), [], []),
        (BASE, [("CDS", ("a", "b"), (), "1"), ("LDS", ("l",), (), "2")], []),
    ]),
    "subscribed names we do not have are removed at once": (BASE, [
        (delta("EDS", ("a", "zzz")), [("EDS", ("a",), ("zzz",), "1")], []),
        (delta("EDS", nonce="1"), [], [("ack", "EDS", "1")]),
        (BASE, [], []),  # told once is enough
    ]),
    "initial_resource_versions: only what differs is sent, unknown names removed": (BASE, [
        (delta("CDS", initial={"a": BASE.resource_version(CLUSTER, "a"), "gone": "x"}),
         [("CDS", ("b",), ("gone",), "1")], []),
    ]),
    "new snapshot: only changed resources, disappeared ones removed, order CDS EDS LDS RDS": (BASE, [
        (delta("RDS", ("r",)), [("RDS", ("r",), (), "1")], []),
        (delta("LDS"), [("LDS", ("l",), (), "2")], []),
        (delta("EDS", ("a", "b")), [("EDS", ("a", "b"), (), "3")], []),
        # the clusters are new to this stream: the endpoints they warm on follow
        (delta("CDS"), [("CDS", ("a", "b"), (), "4"), ("EDS", ("a", "b"), (), "5")], []),
        (snap(cluster("a", 2), endpoints("a", 9), listener("l"), route("r", header="2")),
         [("CDS", ("a",), ("b",), "6"), ("EDS", ("a",), ("b",), "7"), ("RDS", ("r",), (), "8")], []),
    ]),
    "NACK is reported and the rejected resources are never resent": (BASE, [
        (delta("LDS"), [("LDS", ("l",), (), "1")], []),
        (delta("LDS", nonce="1", error="bad listener"), [], [("nack", "LDS", "1", "bad listener")]),
        (ONLY_B_ENDPOINTS, [], []),
        (CHANGED_ALL, [("LDS", ("l",), (), "2")], []),
    ]),
    "unsubscribe stops pushes; resubscribe sends again": (BASE, [
        (delta("EDS", ("a", "b")), [("EDS", ("a", "b"), (), "1")], []),
        (delta("EDS", unsub=("a",), nonce="1"), [], [("ack", "EDS", "1")]),
        (CHANGED_ALL, [], []),  # only a's endpoints changed
        (delta("EDS", ("a",)), [("EDS", ("a",), (), "2")], []),
    ]),
    "equal contents settle a type without a walk; a resubscription after that is still answered": (BASE, [
        (delta("EDS", ("a", "b")), [("EDS", ("a", "b"), (), "1")], []),
        (delta("EDS", nonce="1"), [], [("ack", "EDS", "1")]),
        (snap(cluster("a"), cluster("b"), endpoints("a"), endpoints("b"), listener("l"), route("r")), [], []),
        (delta("EDS", unsub=("a",)), [], []),
        (delta("EDS", ("a",)), [("EDS", ("a",), (), "2")], []),
    ]),
    "subscription changes apply even with a stale nonce": (BASE, [
        (delta("EDS", ("a",)), [("EDS", ("a",), (), "1")], []),
        (CHANGED_ALL, [("EDS", ("a",), (), "2")], []),
        (delta("EDS", ("b",), nonce="0"), [("EDS", ("b",), (), "3")], []),
        (delta("EDS", nonce="2"), [], [("ack", "EDS", "2")]),
    ]),
    "every response is answered: an ACK for an older nonce is still an ACK": (BASE, [
        (delta("EDS", ("a",)), [("EDS", ("a",), (), "1")], []),
        (delta("EDS", ("b",)), [("EDS", ("b",), (), "2")], []),
        (delta("EDS", nonce="1"), [], [("ack", "EDS", "1")]),
        (delta("EDS", nonce="2"), [], [("ack", "EDS", "2")]),
        (delta("EDS", nonce="2"), [], []),  # answered already
    ]),
    "explicit * makes any type wildcard; unsubscribing * ends it": (BASE, [
        (delta("EDS", ("*",)), [("EDS", ("a", "b"), (), "1")], []),
        (delta("EDS", unsub=("*",), sub=("a",), nonce="1"), [("EDS", ("a",), (), "2")], [("ack", "EDS", "1")]),
        (ONLY_B_ENDPOINTS, [], []),
    ]),
    "wildcard: removed clusters are removed once": (BASE, [
        (delta("CDS"), [("CDS", ("a", "b"), (), "1")], []),
        (WITHOUT_B, [("CDS", (), ("b",), "2")], []),
        (WITHOUT_B, [], []),
        (BASE, [("CDS", ("b",), (), "3")], []),
    ]),
    "a modified EDS cluster gets its unchanged endpoints again right after CDS (it warms until then)": (BASE, [
        (delta("CDS"), [("CDS", ("a", "b"), (), "1")], []),
        (delta("EDS", ("a", "b")), [("EDS", ("a", "b"), (), "2")], []),
        (delta("CDS", nonce="1"), [], [("ack", "CDS", "1")]),
        (delta("EDS", nonce="2"), [], [("ack", "EDS", "2")]),
        (MODIFIED_A, [("CDS", ("a",), (), "3"), ("EDS", ("a",), (), "4")], []),
        (MODIFIED_A, [], []),
        (delta("EDS", nonce="4"), [], [("ack", "EDS", "4")]),
        (BASE, [("CDS", ("a",), (), "5"), ("EDS", ("a",), (), "6")], []),  # changed back (DR deleted)
    ]),
    "no endpoints resent when no cluster was added or modified": (BASE, [
        (delta("CDS"), [("CDS", ("a", "b"), (), "1")], []),
        (delta("EDS", ("a", "b")), [("EDS", ("a", "b"), (), "2")], []),
        (WITHOUT_B, [("CDS", (), ("b",), "3"), ("EDS", (), ("b",), "4")], []),
        (snap(cluster("a"), endpoints("a"), listener("l", 15001), route("r")), [], []),
    ]),
    "an added cluster's endpoints go out when Envoy subscribes to them": (BASE, [
        (delta("CDS"), [("CDS", ("a", "b"), (), "1")], []),
        (delta("EDS", ("a", "b")), [("EDS", ("a", "b"), (), "2")], []),
        (WITH_C, [("CDS", ("c",), (), "3")], []),
        (delta("EDS", ("c",), nonce="2"), [("EDS", ("c",), (), "4")], [("ack", "EDS", "2")]),
    ]),
    "reconnect: a cluster changed while away gets its endpoints even if Envoy has them": (MODIFIED_A, [
        (delta("CDS", initial={n: BASE.resource_version(CLUSTER, n) for n in ("a", "b")}),
         [("CDS", ("a",), (), "1")], []),
        (delta("EDS", ("a", "b"), initial={n: BASE.resource_version(ENDPOINT, n) for n in ("a", "b")}),
         [("EDS", ("a",), (), "2")], []),
    ]),
}


@pytest.mark.parametrize("name", list(DELTA_TABLES))
def test_delta_table(name: str) -> None:
    initial, steps = DELTA_TABLES[name]
    events: list = []
    run_table(DeltaStream("node", initial, events.append), events, steps)


def test_delta_resources_carry_per_resource_versions_and_nack_names_the_accepted_version() -> None:
    events: list = []
    stream = DeltaStream("node", BASE, events.append)
    [first] = stream.on_request(delta("CDS"))
    assert first.system_version_info == BASE.version(CLUSTER)
    assert {r.name: r.version for r in first.resources} == {n: BASE.resource_version(CLUSTER, n) for n in ("a", "b")}
    stream.on_request(delta("CDS", nonce="1"))
    [second] = stream.on_snapshot(CHANGED_ALL)
    stream.on_request(delta("CDS", nonce=second.nonce, error="rejected"))
    assert events[-1] == Nacked(CLUSTER, CHANGED_ALL.version(CLUSTER), second.nonce, "rejected", BASE.version(CLUSTER))


# -- snapshot ------------------------------------------------------------------------------------
def test_versions_are_content_hashes() -> None:
    again = snap(route("r"), listener("l"), endpoints("b"), endpoints("a"), cluster("b"), cluster("a"))
    assert again.version(CLUSTER) == BASE.version(CLUSTER)
    assert again.resource_version(ROUTE, "r") == BASE.resource_version(ROUTE, "r")
    assert CHANGED_ALL.version(CLUSTER) != BASE.version(CLUSTER)
    assert ONLY_B_ENDPOINTS.version(ENDPOINT, ["a"]) == BASE.version(ENDPOINT, ["a"])
    assert ONLY_B_ENDPOINTS.version(ENDPOINT) != BASE.version(ENDPOINT)
    assert BASE.version(ENDPOINT, ["a", "zzz"]) != BASE.version(ENDPOINT, ["a"])
    assert set(BASE) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    assert BASE.resources(SECRET) == {}
    with pytest.raises(ValueError, match="duplicate Cluster 'a'"):
        snap(cluster("a"), cluster("a"))


def tls_listener(name: str, cluster_name: str, secret_name: str) -> Listener:
    tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
           "common_tls_context": {"tls_certificate_sds_secret_configs": [
               {"name": secret_name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}]}}
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "t", "cluster": cluster_name}
    return json_format.ParseDict({"name": name, "filter_chains": [{
        "filters": [{"name": "tcp", "typed_config": tcp}],
        "transport_socket": {"name": "tls", "typed_config": tls}}]}, Listener())


def test_consistency_check_names_everything_missing() -> None:
    broken = snap(cluster("a"), listener("l", route="nope"), tls_listener("t", "ghost", "cert"),
                  route("r", cluster_name="phantom"))
    with pytest.raises(InconsistentSnapshot) as caught:
        check_consistency(broken)
    assert caught.value.missing == (
        "Cluster 'ghost' (referenced by Listener 't')",
        "Cluster 'phantom' (referenced by RouteConfiguration 'r')",
        "ClusterLoadAssignment 'a' (referenced by Cluster 'a')",
        "RouteConfiguration 'nope' (referenced by Listener 'l')",
        "Secret 'cert' (referenced by Listener 't')",
    )
    check_consistency(BASE)
    check_consistency(snap(cluster("ghost"), endpoints("ghost"), tls_listener("t", "ghost", "cert"), secret("cert")))


def test_cache_refuses_inconsistent_snapshot_and_keeps_the_old_one() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n", BASE)
    with pytest.raises(InconsistentSnapshot):
        cache.set_snapshot("n", snap(cluster("a")))
    assert cache.get("n") is BASE and cache.generation("n") == 1 and cache.get("other") is None


def test_cache_status_follows_sent_ack_nack() -> None:
    cache = SnapshotCache()
    cache.record_sent("n", LISTENER, "v1", "1")
    assert cache.status["n"][LISTENER]["state"] == STALE
    cache.record_ack("n", LISTENER, "v1", "1")
    assert cache.status["n"][LISTENER] == {"version": "v1", "sent": "v1", "nonce": "1", "state": SYNCED, "error": None}
    cache.record_sent("n", LISTENER, "v2", "2")
    cache.record_ack("n", LISTENER, "v1", "1")  # a late ACK of an older response does not sync
    assert cache.status["n"][LISTENER]["state"] == STALE
    cache.record_nack("n", LISTENER, "v1", "2", "bad")
    assert cache.status["n"][LISTENER] == {"version": "v1", "sent": "v2", "nonce": "2", "state": NACKED, "error": "bad"}
    assert cache.pushes["n"] == 2


def test_cache_wakes_waiters_set_from_another_thread() -> None:
    cache = SnapshotCache()

    async def wait() -> int:
        waiter = asyncio.ensure_future(cache.changed("n", 0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        threading.Thread(target=cache.set_snapshot, args=("n", BASE)).start()
        return await asyncio.wait_for(waiter, 2)

    assert asyncio.run(wait()) == 1
    assert asyncio.run(cache.changed("n", 0)) == 1  # already past: returns at once
    seen: list[int] = []
    unwatch = cache.watch("n", seen.append)
    cache.set_snapshot("n", BASE)
    unwatch()
    cache.set_snapshot("n", BASE)
    assert seen == [2]


# -- ECDS (TypedExtensionConfig) -----------------------------------------------------------------
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig  # noqa: E402
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: E402,F401  (registers @type)

from meshway.xds.cache import EXTENSION_CONFIG  # noqa: E402

SHORT[EXTENSION_CONFIG] = "ECDS"
TYPE["ECDS"] = EXTENSION_CONFIG


def extension(name: str, prefix: str = "p") -> TypedExtensionConfig:
    return json_format.ParseDict({"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules_stat_prefix": prefix}},
        TypedExtensionConfig())


def ecds_listener(name: str, *filters: str) -> Listener:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager", "stat_prefix": name, "route_config": {},
           "http_filters": [*({"name": f, "config_discovery": {"config_source": {"ads": {}}, "type_urls": [
               "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"]}} for f in filters),
               {"name": "router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return json_format.ParseDict({"name": name, "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]},
                                 Listener())


E_AB = snap(ecds_listener("l", "x", "y"), extension("x"), extension("y"))
E_A2B = snap(ecds_listener("l", "x", "y"), extension("x", "changed"), extension("y"))
E_B = snap(ecds_listener("l", "y"), extension("y"))
E_NONE = snap(ecds_listener("l"))

ECDS_SOTW: list = [
    (sotw("LDS"), [("LDS", ("l",), "1")], []),
    (sotw("ECDS", ("x", "y")), [("ECDS", ("x", "y"), "2")], []),
    (E_A2B, [("ECDS", ("x", "y"), "3")], []),  # one plugin's module changed: ECDS only, no LDS
    (E_B, [("LDS", ("l",), "4"), ("ECDS", ("y",), "5")], []),  # LDS first; then the names still there
    (sotw("ECDS", ("y",), nonce="5"), [("ECDS", ("y",), "6")], [("ack", "ECDS", "5")]),  # new names: answered
    (E_NONE, [("LDS", ("l",), "7")], []),  # no ECDS response without any subscribed name: Envoy NACKs it
    (sotw("ECDS", (), nonce="6"), [], [("ack", "ECDS", "6")]),  # unsubscribed: nothing to send
]
ECDS_DELTA: list = [
    (delta("LDS"), [("LDS", ("l",), (), "1")], []),
    (delta("ECDS", ("x", "y")), [("ECDS", ("x", "y"), (), "2")], []),
    (E_A2B, [("ECDS", ("x",), (), "3")], []),
    (E_B, [("LDS", ("l",), (), "4")], []),  # x is not removed while a draining chain may still name it
    (delta("ECDS", unsub=("x",), nonce="3"), [], [("ack", "ECDS", "3")]),
    (delta("ECDS", ("ghost",)), [("ECDS", (), ("ghost",), "5")], []),  # never had: removed (default config now)
]


@pytest.mark.parametrize("stream, steps", [(SotwStream, ECDS_SOTW), (DeltaStream, ECDS_DELTA)], ids=["sotw", "delta"])
def test_ecds_after_lds_one_resource_per_name(stream: Any, steps: list) -> None:
    events: list = []
    run_table(stream("node", E_AB, events.append), events, steps)


def test_consistency_names_a_missing_extension_config() -> None:
    with pytest.raises(InconsistentSnapshot) as caught:
        check_consistency(snap(ecds_listener("l", "x", "y"), extension("y")))
    assert caught.value.missing == ("TypedExtensionConfig 'x' (referenced by Listener 'l')",)
    check_consistency(E_AB)
