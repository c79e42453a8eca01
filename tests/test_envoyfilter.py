"""EnvoyFilter on waypoints: the pure patch engine (attachment, each operation, matching, order,
per-service targetRefs, problems), proto merge semantics, and a live waypoint Envoy that ACKs the
patched config while a filter Envoy would reject is left out and reported on its status."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import MappingProxyType

import pytest
from pydantic import ValidationError

from xds_support import BOOKINFO, ENVOY, GOLDEN, TRAFFIC, live_controlplane

from meshway.runtime.envoy_admin import fetch_admin
from meshway.mesh.view import ServiceInfo
from meshway.model import find_kind, load_yaml
from meshway.model.istio import EnvoyFilter
from meshway.store import Store
from meshway.xds import protos as P
from meshway.xds.envoyfilter import apply_envoy_filters, build_envoy_filter_condition, find_envoy_filters

HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TYPES = {"envoy.filters.http.rbac": "envoy.extensions.filters.http.rbac.v3.RBAC",
         "envoy.filters.http.fault": "envoy.extensions.filters.http.fault.v3.HTTPFault",
         "envoy.filters.http.router": "envoy.extensions.filters.http.router.v3.Router"}
REVIEWS, RATINGS = "reviews.default.svc.cluster.local", "ratings.default.svc.cluster.local"
LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def route_config_of(host: str, port: int = 9080) -> dict:
    name = f"inbound-vip|{port}|http|{host}"
    routes = [{"name": "first", "match": {"prefix": "/a"}, "direct_response": {"status": 200}},
              {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "0s"}}]
    return {"name": name, "virtual_hosts": [{"name": f"inbound|http|{port}", "domains": ["*"], "routes": routes}]}


def chain(host: str, port: int = 9080, filters: tuple = ("envoy.filters.http.fault", "envoy.filters.http.router")):
    """A service chain as the waypoint builds it: its routes come over RDS (`route_config_of`)."""
    name = f"inbound-vip|{port}|http|{host}"
    return {"name": name, "filters": [{"name": HCM, "typed_config": {
        "@type": HCM_TYPE, "stat_prefix": "inbound", "http_filters": [
            {"name": n, "typed_config": {"@type": f"type.googleapis.com/{TYPES[n]}"}} for n in filters],
        "rds": {"route_config_name": name, "config_source": {"ads": {}, "resource_api_version": "V3"}}}}]}


def direct_http() -> dict:
    """The chain of traffic addressed to a bound pod: its one route stays inline (Istio's `encap`)."""
    return {"name": "direct-http", "filters": [{"name": HCM, "typed_config": {
        "@type": HCM_TYPE, "stat_prefix": "direct", "http_filters": [],
        "route_config": {"name": "encap", "virtual_hosts": [{"name": "inbound|http|0", "domains": ["*"], "routes": [
            {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "encap"}}]}]}}}]}


def resources() -> dict:
    clusters = {f"inbound-vip|9080|{k}|{h}": {"name": f"inbound-vip|9080|{k}|{h}", "type": "EDS",
                                              "connect_timeout": "10s"}
                for h in (REVIEWS, RATINGS) for k in ("http", "http/v1")}
    chains = [chain(REVIEWS), chain(RATINGS), direct_http()]
    return {P.LISTENER: {"main_internal": {"name": "main_internal", "filter_chains": chains},
                         "connect_terminate": {"name": "connect_terminate"}},
            P.CLUSTER: clusters, P.ENDPOINT: {},
            P.ROUTE: {rc["name"]: rc for rc in (route_config_of(REVIEWS), route_config_of(RATINGS))}, P.SECRET: {}}


def service(name: str, kind: str = "Service") -> ServiceInfo:
    return ServiceInfo(kind, "default", name, MappingProxyType({}), ("10.96.0.1",), (), None, (), False, "")


def envoy_filter(patches: list, name: str = "ef", namespace: str = "default", refs: list | None = None,
                 priority: int = 0, created: str = "2026-01-01T00:00:00Z") -> EnvoyFilter:
    spec = {"targetRefs": refs if refs is not None else [{"kind": "Gateway", "name": "waypoint"}],
            "configPatches": patches, "priority": priority}
    return EnvoyFilter.model_validate({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                                       "metadata": {"name": name, "namespace": namespace,
                                                    "creationTimestamp": created}, "spec": spec}, strict=False)


def patched(*filters: EnvoyFilter, services=("reviews", "ratings")) -> tuple[dict, list]:
    attached = find_envoy_filters(filters, "default", "waypoint", [service(s) for s in services])
    return apply_envoy_filters(resources(), attached)


def http_filters(out: dict, host: str = REVIEWS) -> list[str]:
    c = next(c for c in out[P.LISTENER]["main_internal"]["filter_chains"] if c["name"].endswith(host))
    return [f["name"] for f in c["filters"][0]["typed_config"]["http_filters"]]


def route_config(out: dict, host: str = REVIEWS) -> dict:
    """The RouteConfiguration a service chain takes over RDS."""
    return out[P.ROUTE][f"inbound-vip|9080|http|{host}"]


def inline_route_config(out: dict) -> dict:
    c = next(c for c in out[P.LISTENER]["main_internal"]["filter_chains"] if c["name"] == "direct-http")
    return c["filters"][0]["typed_config"]["route_config"]


def http_patch(op: str, name: str | None = "x", sub: str | None = None, context: str = "SIDECAR_INBOUND",
               **extra) -> dict:
    flt = {"name": HCM, **({"subFilter": {"name": sub}} if sub else {})}
    value = {"name": name, "typed_config": {"@type": f"type.googleapis.com/{TYPES['envoy.filters.http.rbac']}"}}
    return {"applyTo": "HTTP_FILTER", "match": {"context": context, "listener": {"filterChain": {"filter": flt}}},
            "patch": {"operation": op, **({"value": value} if op != "REMOVE" else {}), **extra}}


# -- attachment ----------------------------------------------------------------------------------
@pytest.mark.parametrize("refs, namespace, expected", [
    ([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}], "default", None),
    ([{"kind": "Gateway", "name": "other"}], "default", "none"),
    ([{"kind": "Gateway", "name": "waypoint"}], "shop", "none"),  # another namespace's Gateway of that name
    ([{"kind": "GatewayClass", "name": "istio-waypoint"}], "istio-system", None),
    ([{"kind": "GatewayClass", "name": "istio-waypoint"}], "default", "none"),  # only from the root namespace
    ([{"kind": "Service", "group": "", "name": "reviews"}], "default", {REVIEWS}),
    ([{"kind": "Service", "name": "reviews"}, {"kind": "Service", "name": "ratings"}], "default", {REVIEWS, RATINGS}),
    ([{"kind": "Service", "name": "details"}], "default", "none"),  # not bound to this waypoint
    ([{"kind": "Service", "name": "reviews", "namespace": "other"}], "default", "none"),
    ([{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "reviews"}], "default", "none"),  # wrong kind
])
def test_which_filters_a_waypoint_applies(refs, namespace, expected) -> None:
    f = envoy_filter([], namespace=namespace, refs=refs)
    found = find_envoy_filters([f], "default", "waypoint", [service("reviews"), service("ratings")])
    if expected == "none":
        assert found == []
    else:
        assert len(found) == 1 and found[0].hosts == (None if expected is None else frozenset(expected))


def test_a_service_entry_bound_to_the_waypoint_limits_the_filter_to_its_host() -> None:
    se = ServiceInfo("ServiceEntry", "default", "httpbin", MappingProxyType({}), ("240.240.0.1",), (), None,
                     ("httpbin.org",), False, "")
    f = envoy_filter([], refs=[{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "httpbin"}])
    assert find_envoy_filters([f], "default", "waypoint", [se])[0].hosts == frozenset({"httpbin.org"})


def test_selector_filters_are_for_sidecars_not_waypoints() -> None:
    f = EnvoyFilter.model_validate({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                                    "metadata": {"name": "s", "namespace": "default"},
                                    "spec": {"workloadSelector": {"labels": {"app": "reviews"}}}}, strict=False)
    assert find_envoy_filters([f], "default", "waypoint", [service("reviews")]) == []
    assert build_envoy_filter_condition(False, [], [])["reason"] == "Ignored"


def test_order_is_priority_then_root_namespace_then_creation_then_name() -> None:
    filters = [envoy_filter([], "b", created="2026-01-02T00:00:00Z"),
               envoy_filter([], "a", created="2026-01-02T00:00:00Z"),
               envoy_filter([], "old", created="2026-01-01T00:00:00Z"),
               envoy_filter([], "late", priority=10),
               envoy_filter([], "early", priority=-10, created="2026-09-01T00:00:00Z"),
               envoy_filter([], "mesh", "istio-system", refs=[{"kind": "GatewayClass", "name": "istio-waypoint"}],
                            created="2026-12-01T00:00:00Z")]
    keys = [f.key for f in find_envoy_filters(filters, "default", "waypoint", [])]
    assert keys == ["default/early", "istio-system/mesh", "default/old", "default/a", "default/b", "default/late"]


def test_priority_decides_which_insert_first_ends_up_first() -> None:
    first = envoy_filter([http_patch("INSERT_FIRST", "one")], "one", priority=5)
    second = envoy_filter([http_patch("INSERT_FIRST", "two")], "two", priority=1)
    out, problems = patched(first, second)
    assert not problems
    assert http_filters(out)[:2] == ["one", "two"]  # "two" (priority 1) went first, then "one" went before it


# -- HTTP filter operations ----------------------------------------------------------------------
@pytest.mark.parametrize("op, sub, expected", [
    ("INSERT_BEFORE", None, ["x", "envoy.filters.http.fault", "envoy.filters.http.router"]),
    ("INSERT_BEFORE", "envoy.filters.http.router", ["envoy.filters.http.fault", "x", "envoy.filters.http.router"]),
    ("INSERT_BEFORE", "envoy.router", ["envoy.filters.http.fault", "x", "envoy.filters.http.router"]),  # legacy name
    ("INSERT_AFTER", None, ["envoy.filters.http.fault", "envoy.filters.http.router", "x"]),
    ("INSERT_AFTER", "envoy.filters.http.fault", ["envoy.filters.http.fault", "x", "envoy.filters.http.router"]),
    ("INSERT_FIRST", "envoy.filters.http.router", ["x", "envoy.filters.http.fault", "envoy.filters.http.router"]),
    ("ADD", None, ["envoy.filters.http.fault", "envoy.filters.http.router", "x"]),
    ("REPLACE", "envoy.filters.http.fault", ["x", "envoy.filters.http.router"]),
    ("REMOVE", "envoy.filters.http.fault", ["envoy.filters.http.router"]),
])
def test_http_filter_operations(op: str, sub: str | None, expected: list[str]) -> None:
    out, problems = patched(envoy_filter([http_patch(op, sub=sub)]))
    assert not problems
    assert http_filters(out, REVIEWS) == expected and http_filters(out, RATINGS) == expected


def test_add_with_filter_class_authz_goes_after_the_authorization_filters() -> None:
    res = resources()
    res[P.LISTENER]["main_internal"]["filter_chains"] = [
        chain(REVIEWS, filters=("envoy.filters.http.rbac", "envoy.filters.http.fault", "envoy.filters.http.router"))]
    attached = find_envoy_filters([envoy_filter([http_patch("ADD", filterClass="AUTHZ")])], "default", "waypoint", [])
    out, _ = apply_envoy_filters(res, attached)
    assert http_filters(out) == ["envoy.filters.http.rbac", "x", "envoy.filters.http.fault",
                                 "envoy.filters.http.router"]


def test_http_filter_merge_merges_the_typed_config_with_proto_semantics() -> None:
    merge = {"applyTo": "HTTP_FILTER",
             "match": {"listener": {"filterChain": {"filter": {"name": HCM, "subFilter": {"name": "x"}}}}},
             "patch": {"operation": "MERGE", "value": {"typed_config": {
                 "@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": LRL,
                 "value": {"token_bucket": {"max_tokens": 9, "fill_interval": "2s"},
                           "response_headers_to_add": [{"header": {"key": "b", "value": "2"}}]}}}}}
    insert = {"applyTo": "HTTP_FILTER",
              "match": {"listener": {"filterChain": {"filter": {"name": HCM}}}},
              "patch": {"operation": "INSERT_FIRST", "value": {"name": "x", "typed_config": {
                  "@type": LRL, "stat_prefix": "rl", "token_bucket": {"max_tokens": 4, "fill_interval": "1.5s"},
                  "response_headers_to_add": [{"header": {"key": "a", "value": "1"}}]}}}}
    out, problems = patched(envoy_filter([insert, merge]))
    assert not problems
    c = out[P.LISTENER]["main_internal"]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    config = c["typed_config"]
    assert config["@type"] == LRL and config["stat_prefix"] == "rl"
    assert config["token_bucket"] == {"max_tokens": 9, "fill_interval": "2s"}  # a Duration is replaced, not merged
    assert [h["header"]["key"] for h in config["response_headers_to_add"]] == ["a", "b"]  # lists append


def test_typed_struct_becomes_the_typed_message() -> None:
    value = {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": LRL,
        "value": {"stat_prefix": "http_local_rate_limiter",
                  "token_bucket": {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval": "60s"}}}}
    p = {"applyTo": "HTTP_FILTER", "match": {"context": "SIDECAR_INBOUND"},
         "patch": {"operation": "INSERT_BEFORE", "value": value}}
    out, problems = patched(envoy_filter([p]))
    assert not problems
    first = out[P.LISTENER]["main_internal"]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    assert first["typed_config"] == {"@type": LRL, "stat_prefix": "http_local_rate_limiter",
                                     "token_bucket": {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval": "60s"}}


def test_typed_struct_of_an_unknown_type_is_passed_on_for_envoy() -> None:
    value = {"name": "custom", "typed_config": {"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                                                "type_url": "type.googleapis.com/acme.Filter", "value": {"a": 1}}}
    p = {"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_FIRST", "value": value}}
    out, problems = patched(envoy_filter([p]))
    assert not problems
    first = out[P.LISTENER]["main_internal"]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    assert first["typed_config"]["type_url"] == "type.googleapis.com/acme.Filter"


# -- matching ------------------------------------------------------------------------------------
def test_service_target_refs_patch_only_that_services_chains_routes_and_clusters() -> None:
    ref = [{"kind": "Service", "name": "ratings"}]
    cluster = {"applyTo": "CLUSTER", "match": {"context": "SIDECAR_OUTBOUND"},
               "patch": {"operation": "MERGE", "value": {"connect_timeout": "2s"}}}
    route = {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_INBOUND"},
             "patch": {"operation": "MERGE", "value": {"route": {"timeout": "3s"}}}}
    out, problems = patched(envoy_filter([http_patch("INSERT_FIRST"), cluster, route], refs=ref))
    assert not problems
    assert http_filters(out, RATINGS)[0] == "x" and "x" not in http_filters(out, REVIEWS)
    assert route_config(out, RATINGS)["virtual_hosts"][0]["routes"][1]["route"]["timeout"] == "3s"
    assert route_config(out, REVIEWS)["virtual_hosts"][0]["routes"][1]["route"]["timeout"] == "0s"
    timeouts = {name: c["connect_timeout"] for name, c in out[P.CLUSTER].items()}
    assert {t for n, t in timeouts.items() if n.endswith(RATINGS)} == {"2s"}
    assert {t for n, t in timeouts.items() if n.endswith(REVIEWS)} == {"10s"}
    assert out[P.LISTENER]["connect_terminate"] == {"name": "connect_terminate"}  # not a patchable listener


@pytest.mark.parametrize("listener, hits", [
    ({"portNumber": 9080}, 2),
    ({"portNumber": 8080}, 0),
    ({"name": "main_internal"}, 2),
    ({"name": "connect_terminate"}, 0),
    ({"filterChain": {"name": f"inbound-vip|9080|http|{REVIEWS}"}}, 1),
    ({"filterChain": {"destinationPort": 9080}}, 2),
    ({"filterChain": {"sni": "example.com"}}, 0),
    ({"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}, 0),
])
def test_listener_match(listener: dict, hits: int) -> None:
    p = {"applyTo": "HTTP_FILTER", "match": {"context": "ANY", "listener": listener},
         "patch": {"operation": "INSERT_FIRST", "value": {"name": "x", "typed_config": {"@type": LRL,
                                                                                       "stat_prefix": "s"}}}}
    out, problems = patched(envoy_filter([p]))
    assert sum(http_filters(out, h)[0] == "x" for h in (REVIEWS, RATINGS)) == hits
    assert bool(problems) == (hits == 0)


@pytest.mark.parametrize("context, inbound, outbound", [
    ("ANY", True, True), ("SIDECAR_INBOUND", True, False), ("SIDECAR_OUTBOUND", False, True),
    ("GATEWAY", False, False)])
def test_contexts(context: str, inbound: bool, outbound: bool) -> None:
    cluster = {"applyTo": "CLUSTER", "match": {"context": context},
               "patch": {"operation": "MERGE", "value": {"connect_timeout": "2s"}}}
    out, _ = patched(envoy_filter([http_patch("INSERT_FIRST", context=context), cluster]))
    assert (http_filters(out)[0] == "x") == inbound
    assert (out[P.CLUSTER][f"inbound-vip|9080|http|{REVIEWS}"]["connect_timeout"] == "2s") == outbound


@pytest.mark.parametrize("vhost, op, names", [
    ({"name": "inbound|http|9080", "route": {"name": "default"}}, "REMOVE", ["first"]),
    ({"route": {"action": "DIRECT_RESPONSE"}}, "REMOVE", ["default"]),
    ({"route": {"action": "ROUTE"}}, "REMOVE", ["first"]),
    ({"route": {"name": "default"}}, "INSERT_BEFORE", ["first", "new", "default"]),
    ({"route": {"name": "first"}}, "INSERT_AFTER", ["first", "new", "default"]),
    ({"name": "inbound|http|9080"}, "INSERT_FIRST", ["new", "first", "default"]),
    ({"name": "inbound|http|9080"}, "ADD", ["first", "default", "new"]),
])
def test_http_route_operations(vhost: dict, op: str, names: list[str]) -> None:
    value = {"name": "new", "match": {"prefix": "/new"}, "direct_response": {"status": 204}}
    p = {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_INBOUND", "routeConfiguration": {"vhost": vhost}},
         "patch": {"operation": op, **({"value": value} if op != "REMOVE" else {})}}
    out, problems = patched(envoy_filter([p]))
    assert not problems
    assert [r["name"] for r in route_config(out)["virtual_hosts"][0]["routes"]] == names


def test_route_configuration_and_virtual_host_patches() -> None:
    rc = {"applyTo": "ROUTE_CONFIGURATION", "match": {"routeConfiguration": {"portNumber": 9080}},
          "patch": {"operation": "MERGE",
                    "value": {"response_headers_to_add": [{"header": {"key": "k", "value": "v"}}]}}}
    vh = {"applyTo": "VIRTUAL_HOST", "match": {"routeConfiguration": {"name": f"inbound-vip|9080|http|{RATINGS}"}},
          "patch": {"operation": "ADD", "value": {"name": "extra", "domains": ["extra.example"]}}}
    rm = {"applyTo": "VIRTUAL_HOST", "match": {"routeConfiguration": {
              "name": f"inbound-vip|9080|http|{REVIEWS}", "vhost": {"name": "inbound|http|9080"}}},
          "patch": {"operation": "REMOVE"}}
    out, problems = patched(envoy_filter([rc, vh, rm]))
    assert not problems
    assert route_config(out)["response_headers_to_add"][0]["header"]["key"] == "k"
    assert route_config(out)["virtual_hosts"] == []
    assert [v["name"] for v in route_config(out, RATINGS)["virtual_hosts"]] == ["inbound|http|9080", "extra"]


def test_route_patches_reach_the_rds_configs_and_the_inline_one_but_rename_nothing() -> None:
    rename = {"applyTo": "ROUTE_CONFIGURATION", "match": {"context": "SIDECAR_INBOUND"},
              "patch": {"operation": "MERGE", "value": {"name": "renamed", "validate_clusters": True}}}
    header = {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_INBOUND"},
              "patch": {"operation": "MERGE", "value": {"request_headers_to_add": [{"header": {"key": "k",
                                                                                              "value": "v"}}]}}}
    out, problems = patched(envoy_filter([rename, header]))
    assert not problems
    assert sorted(out[P.ROUTE]) == sorted(resources()[P.ROUTE])  # the listener names them: names stay
    for rc in (route_config(out), route_config(out, RATINGS)):
        assert rc["name"] != "renamed" and rc["validate_clusters"] is True
        assert all(r["request_headers_to_add"][0]["header"]["key"] == "k" for r in rc["virtual_hosts"][0]["routes"])
    assert inline_route_config(out)["validate_clusters"] is True  # the waypoint-wide filter patches encap too
    assert "rds" in out[P.LISTENER]["main_internal"]["filter_chains"][0]["filters"][0]["typed_config"]
    scoped, _ = patched(envoy_filter([header], refs=[{"kind": "Service", "name": "ratings"}]))
    assert "request_headers_to_add" not in inline_route_config(scoped)["virtual_hosts"][0]["routes"][0]


def test_cluster_remove_add_and_match_by_subset() -> None:
    remove = {"applyTo": "CLUSTER", "match": {"cluster": {"service": REVIEWS, "subset": "v1"}},
              "patch": {"operation": "REMOVE"}}
    add = {"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": {
        "name": "rate_limit_cluster", "type": "STRICT_DNS", "connect_timeout": "10s",
        "load_assignment": {"cluster_name": "rate_limit_cluster"}}}}
    out, problems = patched(envoy_filter([remove, add]))
    assert not problems
    assert f"inbound-vip|9080|http/v1|{REVIEWS}" not in out[P.CLUSTER]
    assert f"inbound-vip|9080|http/v1|{RATINGS}" in out[P.CLUSTER]
    assert out[P.CLUSTER]["rate_limit_cluster"]["type"] == "STRICT_DNS"


# -- problems ------------------------------------------------------------------------------------
def test_a_patch_that_matches_nothing_is_reported() -> None:
    p = {"applyTo": "HTTP_ROUTE", "match": {"routeConfiguration": {"vhost": {"name": "inbound|http|1234"}}},
         "patch": {"operation": "MERGE", "value": {"route": {"timeout": "1s"}}}}
    out, problems = patched(envoy_filter([http_patch("INSERT_FIRST"), p]))
    assert problems == [("EnvoyFilter default/ef",
                         "configPatches[1] (HTTP_ROUTE MERGE) matched nothing on this waypoint")]
    assert http_filters(out)[0] == "x"  # the other patch still applies


@pytest.mark.parametrize("value, message", [
    ({"timeout": "1s"}, 'no field named "timeout"'),
    ({"typed_per_filter_config": {"f": {"@type": "type.googleapis.com/acme.Nope"}}}, "acme.Nope"),
    ({"route": {"timeout": "soon"}}, "timeout"),
])
def test_a_value_that_is_not_an_envoy_object_is_reported_and_not_applied(value: dict, message: str) -> None:
    p = {"applyTo": "HTTP_ROUTE", "patch": {"operation": "MERGE", "value": value}}
    out, problems = patched(envoy_filter([p]))
    assert len(problems) == 1 and "configPatches[0] (HTTP_ROUTE MERGE): value is not a valid Route" in problems[0][1]
    assert message in problems[0][1]
    assert out == resources()


def test_unsupported_apply_to_and_operations_are_reported() -> None:
    listener = {"applyTo": "LISTENER",
                "patch": {"operation": "MERGE", "value": {"per_connection_buffer_limit_bytes": 1}}}
    rc_remove = {"applyTo": "ROUTE_CONFIGURATION", "patch": {"operation": "REMOVE"}}
    proxy = {"applyTo": "HTTP_FILTER", "match": {"proxy": {"proxyVersion": "^1\\.2.*"}},
             "patch": {"operation": "REMOVE"}}
    _, problems = patched(envoy_filter([listener, rc_remove, proxy]))
    assert [m.split(":")[0] for _, m in problems] == ["configPatches[0] (LISTENER MERGE)",
                                                       "configPatches[1] (ROUTE_CONFIGURATION REMOVE)",
                                                       "configPatches[2] (HTTP_FILTER REMOVE)"]


@pytest.mark.parametrize("spec, error", [
    ({"workloadSelector": {"labels": {"a": "b"}}, "targetRefs": [{"kind": "Service", "name": "x"}]},
     "only one of targetRefs or workloadSelector"),
    ({"configPatches": [{"applyTo": "HTTP_ROUTE", "match": {"listener": {}}, "patch": {"operation": "REMOVE"}}]},
     "needs a routeConfiguration match"),
    ({"configPatches": [{"applyTo": "HTTP_FILTER", "patch": {"operation": "MERGE"}}]}, "needs a value"),
    ({"configPatches": [{"applyTo": "HTTP_FILTER", "patch": {"operation": "DELETE"}}]}, "operation"),
])
def test_admission_rejects_inconsistent_envoy_filters(spec: dict, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        EnvoyFilter.model_validate({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                                    "metadata": {"name": "x", "namespace": "default"}, "spec": spec})


def test_proto_merge_semantics() -> None:
    dst = P.find_message_class("envoy.config.route.v3.Route")()
    src = P.find_message_class("envoy.config.route.v3.Route")()
    dst.route.timeout.FromJsonString("1.5s")
    dst.route.cluster = "a"
    dst.typed_per_filter_config["f"].type_url = "old"
    dst.request_headers_to_remove.append("x")
    src.route.timeout.FromJsonString("60s")
    src.typed_per_filter_config["f"].type_url = "new"
    src.request_headers_to_remove.append("y")
    P.merge_message(dst, src)
    assert dst.route.timeout.ToJsonString() == "60s" and dst.route.cluster == "a"
    assert dst.typed_per_filter_config["f"].type_url == "new" and list(dst.request_headers_to_remove) == ["x", "y"]
    P.merge_message(dst, src, replace_lists=True)
    assert list(dst.request_headers_to_remove) == ["y"]


# -- a live waypoint -----------------------------------------------------------------------------
REJECTED = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: envoy-says-no, namespace: default}
spec:
  targetRefs: [{kind: Service, name: details}]
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_INBOUND}
    patch:
      operation: INSERT_FIRST
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config: {"@type": %s, stat_prefix: ""}
""" % json.dumps(LRL)


def condition(store: Store, name: str) -> dict:
    return ((store.get(find_kind("envoyfilter"), "default", name).get("status") or {}).get("conditions") or [{}])[0]


def test_live_waypoint_acks_patched_config_and_a_rejected_filter_is_left_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    for f in (BOOKINFO, TRAFFIC, GOLDEN / "reviews.yaml", GOLDEN / "envoyfilter.yaml"):
        store.apply(load_yaml(f.read_text(), str(f)))
    store.apply(load_yaml(REJECTED, "rejected.yaml"))
    with live_controlplane(tmp_path / "state") as cp:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = cp.cache.status.get(next(iter(cp.replicas), ""), {})
            # Routes come over RDS after the listener that names them: wait for every type.
            if len(status) == 5 and all(v.get("state") == "SYNCED" for v in status.values()) \
                    and condition(store, "envoy-says-no"):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the patched waypoint config was never ACKed")
        assert {t.rsplit(".", 1)[-1]: v["state"] for t, v in status.items()} == {
            "Cluster": "SYNCED", "ClusterLoadAssignment": "SYNCED", "Listener": "SYNCED", "RouteConfiguration": "SYNCED",
            "Secret": "SYNCED"}
        rejected = condition(store, "envoy-says-no")
        assert rejected["status"] == "False" and rejected["reason"] == "PatchNotApplied"
        assert "Envoy rejects the patched config" in rejected["message"] and "StatPrefix" in rejected["message"]
        assert condition(store, "filter-local-ratelimit-svc") == {
            "type": "Reconciled", "status": "True", "reason": "Applied",
            "message": "applied on waypoint default/waypoint"}
        assert "matched nothing" in condition(store, "ratings-tweaks")["message"]
        assert condition(store, "for-sidecars")["reason"] == "Ignored"
        admin = next(iter(cp.replicas.values())).paths.admin
        dump = json.loads(fetch_admin(str(admin), "/config_dump?resource=dynamic_listeners"))
        main = next(c for c in dump["configs"] if c["name"] == "main_internal")["active_state"]["listener"]
        names = {c["name"]: [f["name"] for f in c["filters"][-1]["typed_config"].get("http_filters", [])]
                 for c in main["filter_chains"]}
        assert names[f"inbound-vip|9080|http|{REVIEWS}"][:2] == ["envoy.filters.http.local_ratelimit"] * 2
        assert names["inbound-vip|9080|http|details.default.svc.cluster.local"][:2] == [
            "envoy.filters.http.local_ratelimit", "envoy.filters.http.fault"]  # only the Gateway-wide one



def test_validation_verdicts_are_cached_by_content(monkeypatch) -> None:
    from meshway.xds import validate

    calls = []
    real = validate.run_validate
    monkeypatch.setattr(validate, "run_validate", lambda res, envoy: calls.append(1) or real(res, envoy))
    cache = validate.ValidationCache(ENVOY)
    res = resources()
    res[P.LISTENER] = {}
    res[P.CLUSTER] = {"c": {"name": "c", "type": "STATIC", "connect_timeout": "1s"}}
    assert cache.check(res) == (True, "") and cache.check(res) == (True, "") and len(calls) == 1
    res[P.CLUSTER]["c"]["connect_timeout"] = "-1s"
    ok, reason = cache.check(res)
    assert not ok and "Expected positive duration" in reason and "bootstrap.json" not in reason and len(calls) == 2
    res[P.CLUSTER]["c"]["typo"] = 1
    assert cache.check(res)[1].startswith("not a valid Envoy resource") and len(calls) == 2
