"""AuthorizationPolicy rule forms -> Envoy RBAC as istiod builds them (pure), and Envoy accepting
every form: principals, namespaces, serviceAccounts, request principals (JWT), hosts (case
insensitive), paths with wildcards and templates, `when` keys with values and notValues."""
from __future__ import annotations

import json

import pytest

from xds_support import ENVOY

from meshway.model import InputError, load_yaml
from meshway.model.istio import AuthorizationPolicy, Condition, Rule
from meshway.xds.build_authz import WAYPOINT, ZTUNNEL, Policy, build_rbac_filters, build_rule
from meshway.xds.protos import typed
from meshway.xds.validate import run_validate

JWT = "envoy.filters.http.jwt_authn"


def rule(text: str) -> Policy:
    doc = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: foo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: httpbin}}]
  rules:
  - {text}
"""
    return Policy.of(AuthorizationPolicy.model_validate(load_yaml(doc, "p.yaml")[0].body, strict=False))


def built(text: str, proxy: str = WAYPOINT) -> dict:
    p = rule(text)
    return build_rule(p.rules[0], proxy, namespace=p.namespace)


def ids(text: str) -> dict:
    return built(text)["principals"][0]


def perms(text: str) -> dict:
    return built(text)["permissions"][0]


def test_service_accounts_default_to_the_policy_namespace() -> None:
    got = ids("from: [{source: {serviceAccounts: [curl, bar/sleep]}}]")
    regexes = [i["filter_state"]["string_match"]["safe_regex"]["regex"] for i in got["or_ids"]["ids"]]
    assert regexes == ["spiffe://.+/ns/foo/(.+/|)sa/curl(/.+)?", "spiffe://.+/ns/bar/(.+/|)sa/sleep(/.+)?"]
    assert "not_id" in ids("from: [{source: {notServiceAccounts: [curl]}}]")


@pytest.mark.parametrize("value, iss, sub", [
    ("https://issuer.example/alice", {"exact": "https://issuer.example"}, {"exact": "alice"}),
    ("*", {"safe_regex": {"regex": ".+"}}, {"safe_regex": {"regex": ".+"}}),
    ("https://issuer.example/*", {"exact": "https://issuer.example"}, {"safe_regex": {"regex": ".+"}}),
    ("*/alice", {"safe_regex": {"regex": ".+"}}, {"exact": "alice"}),
])
def test_request_principals_match_the_jwt_issuer_and_subject(value, iss, sub) -> None:
    got = ids(f"from: [{{source: {{requestPrincipals: ['{value}']}}}}]")
    (m_iss, m_sub) = got["and_ids"]["ids"]
    assert m_iss["metadata"] == {"filter": JWT, "path": [{"key": "payload"}, {"key": "iss"}],
                                 "value": {"string_match": iss}}
    assert m_sub["metadata"]["value"] == {"string_match": sub}


def test_hosts_compare_without_case_and_star_is_presence() -> None:
    assert perms("to: [{operation: {hosts: [Reviews.Example.COM]}}]") == {"header": {
        "name": ":authority", "string_match": {"exact": "Reviews.Example.COM", "ignore_case": True}}}
    assert perms("to: [{operation: {hosts: ['*']}}]") == {"header": {"name": ":authority", "present_match": True}}
    assert perms("to: [{operation: {hosts: ['*.example.com']}}]")["header"]["string_match"] == {
        "suffix": ".example.com", "ignore_case": True}


def test_path_templates_use_the_uri_template_matcher() -> None:
    got = perms("to: [{operation: {paths: ['/api/{*}/reviews/{**}']}}]")
    assert got["uri_template"]["typed_config"]["path_template"] == "/api/*/reviews/**"
    assert perms("to: [{operation: {paths: ['/api/*']}}]") == {"url_path": {"path": {"prefix": "/api/"}}}


def test_when_values_and_not_values_both_apply() -> None:
    got = ids("when: [{key: 'request.headers[x-user]', values: ['a*'], notValues: [admin]}]")
    first, second = got["and_ids"]["ids"]
    assert first == {"header": {"name": "x-user", "string_match": {"prefix": "a"}}}
    assert second == {"not_id": {"header": {"name": "x-user", "string_match": {"exact": "admin"}}}}


@pytest.mark.parametrize("key, value, side, expected", [
    ("request.auth.claims[groups]", "admins", "principals", {"filter": JWT, "path": [
        {"key": "payload"}, {"key": "groups"}]}),
    ("request.auth.claims[nested][key]", "v", "principals", {"filter": JWT, "path": [
        {"key": "payload"}, {"key": "nested"}, {"key": "key"}]}),
    ("request.auth.audiences", "bookinfo", "principals", {"filter": JWT, "path": [
        {"key": "payload"}, {"key": "aud"}]}),
    ("request.auth.presenter", "app", "principals", {"filter": JWT, "path": [{"key": "payload"}, {"key": "azp"}]}),
])
def test_jwt_claim_keys(key: str, value: str, side: str, expected: dict) -> None:
    got = built(f"when: [{{key: '{key}', values: ['{value}']}}]")[side][0]
    string, listed = got["or_ids"]["ids"]
    assert {k: v for k, v in string["metadata"].items() if k != "value"} == expected
    assert string["metadata"]["value"] == {"string_match": {"exact": value}}
    assert listed["metadata"]["value"] == {"list_match": {"one_of": {"string_match": {"exact": value}}}}


@pytest.mark.parametrize("key, value, expected", [
    ("destination.ip", "10.96.0.0/16", {"destination_ip": {"address_prefix": "10.96.0.0", "prefix_len": 16}}),
    ("destination.port", "9080", {"destination_port": 9080}),
    ("connection.sni", "*.example.com", {"requested_server_name": {"suffix": ".example.com"}}),
    ("experimental.envoy.filters.http.foo[bar]", "baz", {"metadata": {
        "filter": "envoy.filters.http.foo", "path": [{"key": "bar"}], "value": {"string_match": {"exact": "baz"}}}}),
])
def test_when_permission_keys(key: str, value: str, expected: dict) -> None:
    assert perms(f"when: [{{key: '{key}', values: ['{value}']}}]") == expected


@pytest.mark.parametrize("cond, message", [
    ("{key: source.unknown, values: [x]}", "spec.rules[0].when[0]: unknown attribute: source.unknown"),
    ("{key: source.ip}", "at least one of values or notValues must be set for key source.ip"),
    ("{key: request.headers, values: [a]}", "expecting format request.headers[<NAME>]"),
    ("{key: destination.port, values: [http]}", "invalid port 'http' for key destination.port"),
])
def test_bad_when_keys_are_refused_on_apply(cond: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        rule(f"when: [{cond}]")
    assert message in str(err.value) and "p.yaml" in str(err.value)


def test_a_key_this_proxy_cannot_build_fails_closed() -> None:
    """Apply refuses unknown keys; should one reach the builder it is dropped from an ALLOW (so the
    ALLOW admits less) and, in a DENY, stripped to what remains (see build_rbac_policies)."""
    cond = Condition.model_construct(key="source.unknown", values=["x"], notValues=None)
    assert build_rule(Rule.model_construct(from_=None, to=None, when=[cond]), WAYPOINT, namespace="foo") is None


def test_a_node_proxy_has_no_jwt_or_http() -> None:
    assert built("from: [{source: {requestPrincipals: ['*']}}]", ZTUNNEL) is None


def test_envoy_accepts_every_form() -> None:
    rules = [
        "from: [{source: {principals: [cluster.local/ns/foo/sa/curl], notNamespaces: [bar], serviceAccounts: [x]}}]",
        "from: [{source: {requestPrincipals: ['iss/sub', '*'], ipBlocks: [10.0.0.0/8], remoteIpBlocks: [1.2.3.4]}}]",
        "to: [{operation: {hosts: ['*.example.com', A.B], notPaths: ['/admin/*'], methods: [GET], ports: ['9080']}}]",
        "to: [{operation: {paths: ['/api/{*}/x/{**}', '*.json', '*']}}]",
        "when: [{key: 'request.auth.claims[groups]', values: [a, b]}, {key: request.auth.audiences, values: [x]},"
        " {key: destination.ip, values: [10.96.0.1]}, {key: connection.sni, values: [x]},"
        " {key: 'experimental.envoy.filters.http.foo[bar]', values: [y]},"
        " {key: 'request.headers[x-a]', values: ['*'], notValues: [b]}]",
    ]
    policies = [Policy("foo", f"p{i}", action, rule(r).rules) for i, r in enumerate(rules)
                for action in ("ALLOW", "DENY")]
    filters = build_rbac_filters(policies, WAYPOINT)
    hcm = typed("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                stat_prefix="t", route_config={"name": "r", "virtual_hosts": [
                    {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                                  "direct_response": {"status": 200}}]}]},
                http_filters=[*filters, {"name": "envoy.filters.http.router", "typed_config": typed(
                    "envoy.extensions.filters.http.router.v3.Router")}])
    listener = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}
    ok, output = run_validate({"type.googleapis.com/envoy.config.listener.v3.Listener": {"l": listener},
                               "type.googleapis.com/envoy.config.cluster.v3.Cluster": {},
                               "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": {},
                               "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": {}}, ENVOY)
    assert ok, output + json.dumps(filters)[:2000]


def test_a_service_no_policy_targets_gets_exactly_the_waypoint_wide_policies() -> None:
    import random

    from meshway.xds.build_authz import find_policy_targets, find_waypoint_policies

    rng = random.Random(3)
    refs = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"},
            {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"},
            {"kind": "Service", "group": "", "name": "a"}, {"kind": "Service", "group": "", "name": "b"},
            {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "a"}]
    policies = []
    for i in range(40):
        ns = rng.choice(["default", "other", "istio-system"])
        spec = {"targetRefs": rng.sample(refs, rng.randint(1, 2)), "action": "DENY",
                "rules": [{"to": [{"operation": {"methods": ["PUT"]}}]}]}
        policies.append(AuthorizationPolicy.model_validate(
            {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
             "metadata": {"name": f"p{i}", "namespace": ns}, "spec": spec}, strict=False))
    for count in range(0, 41, 4):
        chosen = policies[:count]
        targets, wide = find_policy_targets(chosen), find_waypoint_policies(chosen, "default", "waypoint")
        for kind in ("Service", "ServiceEntry"):
            for ns in ("default", "other"):
                for name in ("a", "b", "c"):
                    if (kind, ns, name) not in targets:
                        assert find_waypoint_policies(chosen, "default", "waypoint", ns, name, kind) == wide
