"""RequestAuthentication -> jwt_authn as istiod builds it (pure, tables): provider fields, the
requirement that lets a request without a token pass, which chains get which policies, the clusters
jwksUri key sets are fetched through, the filter's place on the chain; istiod's validation errors;
the status meshway writes. Envoy accepting the result: the `jwt` golden case (test_xds_golden)."""
from __future__ import annotations

from pathlib import Path

import pytest

from xds_support import ENVOY, build_store, plain, translate

from meshway.model import InputError, find_kind, load_yaml
from meshway.model.istio import RequestAuthentication
from meshway.store import Store
from meshway.xds.build_jwt import PAYLOAD, UNRESOLVED_JWKS, build_jwt_filter, build_jwt_provider, find_jwt_rules, \
    find_waypoint_request_authns
from meshway.xds.protos import typed
from meshway.xds.validate import run_validate

JWKS = '{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",' \
       '"y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'

BASE = """
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec: {selector: {app: httpbin}, ports: [{name: http, port: 8000}, {name: tcp-raw, port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: foo}
spec: {selector: {app: other}, ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: unbound, namespace: foo, labels: {istio.io/use-waypoint: none}}
spec: {selector: {app: unbound}, ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: keys, namespace: foo, labels: {istio.io/use-waypoint: none}}
spec: {selector: {app: keys}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: keys-1, namespace: foo, labels: {app: keys}}
spec: {containers: [{name: keys, image: keys}]}
"""


def ra(spec: str, name: str = "jwt", namespace: str = "foo") -> str:
    return f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, " \
           f"namespace: {namespace}}}\nspec:\n  {spec}\n"


def model(spec: str) -> RequestAuthentication:
    return RequestAuthentication.model_validate(load_yaml(ra(spec), "ra.yaml")[0].body, strict=False)


@pytest.mark.parametrize("rule, expected", [
    ("{issuer: a, jwks: 'JWKS'}", {"issuer": "a", "local_jwks": {"inline_string": JWKS}}),
    ("{issuer: a, jwks: 'JWKS', audiences: [x, y]}", {"audiences": ["x", "y"]}),
    ("{issuer: a, jwks: 'JWKS', forwardOriginalToken: true}", {"forward": True}),
    ("{issuer: a, jwks: 'JWKS', forwardOriginalToken: false}", {}),
    ("{issuer: a, jwks: 'JWKS', outputPayloadToHeader: x-payload}", {"forward_payload_header": "x-payload"}),
    ("{issuer: a, jwks: 'JWKS', outputClaimToHeaders: [{header: x-sub, claim: sub}]}",
     {"claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}),
    ("{issuer: a, jwks: 'JWKS', fromHeaders: [{name: x-token}, {name: authorization, prefix: 'Bearer '}]}",
     {"from_headers": [{"name": "x-token"}, {"name": "authorization", "value_prefix": "Bearer "}]}),
    ("{issuer: a, jwks: 'JWKS', fromParams: [token]}", {"from_params": ["token"]}),
    ("{issuer: a, jwks: 'JWKS', fromCookies: [session]}", {"from_cookies": ["session"]}),
    ("{issuer: a, jwks: 'JWKS', spaceDelimitedClaims: [roles, scope]}",
     {"normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "roles", "scope"]}}),
    ("{issuer: a}", {"local_jwks": {"inline_string": UNRESOLVED_JWKS}}),
])
def test_provider_fields(rule: str, expected: dict) -> None:
    provider = build_jwt_provider(model(f"jwtRules: [{rule.replace('JWKS', JWKS)}]").spec.jwtRules[0], None)
    assert provider["payload_in_metadata"] == PAYLOAD  # where RBAC reads the claims
    assert {k: provider.get(k) for k in expected} == expected
    assert not {"forward", "audiences", "from_headers"} & set(provider) - set(expected)


def test_remote_jwks_through_the_cluster_with_the_rule_timeout() -> None:
    rule = model("jwtRules: [{issuer: a, jwksUri: 'http://keys.foo:80/k', timeout: 1.5s}]").spec.jwtRules[0]
    assert build_jwt_provider(rule, "outbound|80||keys.foo.svc.cluster.local")["remote_jwks"] == {
        "http_uri": {"uri": "http://keys.foo:80/k", "cluster": "outbound|80||keys.foo.svc.cluster.local",
                     "timeout": "1.5s"}, "cache_duration": "300s"}


def test_one_provider_or_a_missing_token() -> None:
    f = build_jwt_filter(find_jwt_rules([model(f"jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]")]))
    config = f["typed_config"]
    assert f["name"] == "envoy.filters.http.jwt_authn" and config["bypass_cors_preflight"] is True
    assert config["rules"] == [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
        {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}]


def test_several_providers_sorted_by_issuer_each_or_all_of_provider_or_missing() -> None:
    rules = find_jwt_rules([model(f"jwtRules: [{{issuer: b, jwks: '{JWKS}'}}]"),
                            model(f"jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]")])
    config = build_jwt_filter(rules)["typed_config"]
    assert [config["providers"][f"origins-{i}"]["issuer"] for i in range(2)] == ["a", "b"]
    any_of = config["rules"][0]["requires"]["requires_any"]["requirements"]
    assert any_of[:2] == [{"provider_name": "origins-0"}, {"provider_name": "origins-1"}]
    assert any_of[2] == {"requires_all": {"requirements": [
        {"requires_any": {"requirements": [{"provider_name": f"origins-{i}"}, {"allow_missing": {}}]}}
        for i in range(2)]}}
    assert build_jwt_filter([]) is None


@pytest.mark.parametrize("spec, chains", [
    ("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]", {None, "httpbin", "other"}),
    ("targetRefs: [{kind: Service, group: '', name: httpbin}]", {"httpbin"}),
    ("targetRefs: [{kind: Service, group: '', name: httpbin}, {kind: Service, group: '', name: other}]",
     {"httpbin", "other"}),
    ("targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]", set()),  # not that kind
    ("selector: {matchLabels: {app: httpbin}}", set()),  # sidecars and gateways only
    ("", set()),  # namespace-wide: the same
])
def test_which_chains_a_policy_applies_to(spec: str, chains: set) -> None:
    policy = model(f"{spec}\n  jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]")
    got = {svc for svc in (None, "httpbin", "other")
           if find_waypoint_request_authns([policy], "foo", "waypoint", "foo" if svc else None, svc)}
    assert got == chains


def test_gateway_class_policies_come_from_the_root_namespace() -> None:
    text = ra(f"targetRefs: [{{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}}]\n"
              f"  jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]", namespace="istio-system")
    root = RequestAuthentication.model_validate(load_yaml(text, "ra.yaml")[0].body, strict=False)
    elsewhere = RequestAuthentication.model_validate(
        load_yaml(text.replace("istio-system", "foo"), "ra.yaml")[0].body, strict=False)
    assert find_waypoint_request_authns([root, elsewhere], "foo", "waypoint") == [root]


def chain_filters(config: dict, name: str) -> list[str]:
    chain = next(c for c in config["Listener"]["main_internal"]["filter_chains"] if c["name"] == name)
    last = chain["filters"][-1]["typed_config"]
    return [f["name"] for f in last.get("http_filters", chain["filters"])]


def test_on_the_chain_after_ext_authz_and_before_rbac_http_only(tmp_path: Path) -> None:
    (tmp_path / "in.yaml").write_text(BASE + "---\n" + ra(
        f"targetRefs: [{{kind: Service, group: '', name: httpbin}}]\n  jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]")
        + """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: "", name: httpbin}]
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
""")
    config = plain(translate(build_store(tmp_path / "s", [tmp_path / "in.yaml"]), "foo"))
    assert chain_filters(config, "inbound-vip|8000|http|httpbin.foo.svc.cluster.local")[:2] == [
        "envoy.filters.http.jwt_authn", "envoy.filters.http.rbac"]
    assert "envoy.filters.http.jwt_authn" not in chain_filters(config, "inbound-vip|8000|http|other.foo.svc.cluster.local")
    assert chain_filters(config, "inbound-vip|9000|tcp|httpbin.foo.svc.cluster.local")[0] == \
        "envoy.filters.network.rbac"  # TCP: no JWT (an ALLOW on requestPrincipals admits nothing there)


@pytest.mark.parametrize("uri, cluster, kind", [
    ("http://keys.foo.svc.cluster.local/jwks", "outbound|80||keys.foo.svc.cluster.local", "EDS"),
    ("https://login.example.org/.well-known/jwks.json", "outbound|443||login.example.org", "STRICT_DNS"),
    ("http://127.0.0.1:8443/jwks", "outbound|8443||127.0.0.1", "STRICT_DNS"),
])
def test_jwks_uri_cluster(tmp_path: Path, uri: str, cluster: str, kind: str) -> None:
    (tmp_path / "in.yaml").write_text(BASE + "---\n" + ra(
        f"targetRefs: [{{kind: Service, group: '', name: httpbin}}]\n  jwtRules: [{{issuer: a, jwksUri: '{uri}'}}]"))
    config = plain(translate(build_store(tmp_path / "s", [tmp_path / "in.yaml"]), "foo"))
    assert config["Cluster"][cluster]["type"] == kind
    assert ("transport_socket" in config["Cluster"][cluster]) == uri.startswith("https")
    if kind == "EDS":
        (ep,) = config["ClusterLoadAssignment"][cluster]["endpoints"][0]["lb_endpoints"]
        assert ep["endpoint"]["address"]["socket_address"]["port_value"] == 8080  # the pod's targetPort


@pytest.mark.parametrize("rule, message", [
    ("{audiences: [a]}", "spec.jwtRules[0]: issuer or jwksUri must be non-empty string"),
    ("{issuer: a, audiences: ['']}", "spec.jwtRules[0].audiences: audience must be non-empty string"),
    ("{issuer: a, jwksUri: 'ftp://x/k'}", 'spec.jwtRules[0].jwksUri: URI scheme "ftp" is not supported'),
    ("{issuer: a, jwks: 'nope'}", "spec.jwtRules[0].jwks: jwks parse error: Expecting value"),
    ("{issuer: a, jwks: '{\"keys\": [{}]}'}", "spec.jwtRules[0].jwks: jwks parse error: expected a JSON Web Key Set"),
    ("{issuer: a, jwks: '{\"keys\": []}', jwksUri: 'http://x/k'}",
     "spec.jwtRules[0]: only one of jwks or jwksUri can be set"),
    ("{issuer: a, fromHeaders: [{name: ''}]}",
     "spec.jwtRules[0].fromHeaders[0]: location header name must be non-empty string"),
    ("{issuer: a, fromParams: ['']}", "spec.jwtRules[0].fromParams: location query must be non-empty string"),
    ("{issuer: a, fromCookies: ['']}", "spec.jwtRules[0].fromCookies: cookie name must be non-empty string"),
    ("{issuer: a, outputClaimToHeaders: [{header: '', claim: sub}]}",
     "outputClaimToHeaders header and claim value must be non-empty string"),
    ("{issuer: a, outputClaimToHeaders: [{header: 'a b', claim: sub}]}",
     "spec.jwtRules[0].outputClaimToHeaders[0].header: invalid header name 'a b'"),
    ("{issuer: a, timeout: soon}", "spec.jwtRules[0].timeout: invalid duration 'soon'"),
    ("{issuer: a, jwks_url: x}", "spec.jwtRules[0].jwks_url: unknown field"),
])
def test_istiod_validation_errors(rule: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        load_yaml(ra(f"jwtRules: [{rule}]"), "ra.yaml")
    assert str(err.value).startswith("ra.yaml: document 1 (RequestAuthentication foo/jwt): ")
    assert message in str(err.value)


def test_selector_and_target_refs_exclude_each_other() -> None:
    with pytest.raises(InputError, match="spec: only one of targetRefs or selector can be set"):
        load_yaml(ra("selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Service, name: x}]"), "ra.yaml")


@pytest.mark.parametrize("spec, expected", [
    ("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]",
     ("True", "Accepted", "bound to foo/waypoint")),
    ("targetRefs: [{kind: Service, group: '', name: httpbin}]", ("True", "Accepted", "bound to foo/waypoint")),
    ("targetRefs: [{kind: Service, group: '', name: unbound}]",
     ("False", "AncestorNotBound", "Service foo/unbound is not bound to a waypoint")),
    ("targetRefs: [{kind: Service, group: '', name: ghost}]",
     ("False", "TargetNotFound", "Service foo/ghost was not found")),
    ("selector: {matchLabels: {app: httpbin}}", ("False", "Ignored", "RequestAuthentication without targetRefs")),
    ("", ("False", "Ignored", "RequestAuthentication without targetRefs")),
])
def test_status(tmp_path: Path, spec: str, expected: tuple) -> None:
    store = Store(tmp_path / "s")
    store.apply(load_yaml(BASE + "---\n" + ra(f"{spec}\n  jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]"), "ra.yaml"))
    (cond,) = store.get(find_kind("ra"), "foo", "jwt")["status"]["conditions"]
    assert cond["type"] == "WaypointAccepted"
    assert (cond["status"], cond["reason"]) == expected[:2] and cond["message"].startswith(expected[2])


def test_kind_names() -> None:
    info = find_kind("ra")
    assert (info.kind, info.plural, info.short_names, info.api_versions()) == (
        "RequestAuthentication", "requestauthentications", ("ra",),
        ("security.istio.io/v1", "security.istio.io/v1beta1"))
    assert find_kind("requestauthentications.security.istio.io") is info


def test_envoy_accepts_a_filter_without_key_set_and_two_providers() -> None:
    rules = find_jwt_rules([model(f"jwtRules: [{{issuer: a}}, {{issuer: b, jwks: '{JWKS}'}}]")])
    hcm = typed("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                stat_prefix="t", route_config={"name": "r", "virtual_hosts": [
                    {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                                  "direct_response": {"status": 200}}]}]},
                http_filters=[build_jwt_filter(rules), {"name": "envoy.filters.http.router", "typed_config": typed(
                    "envoy.extensions.filters.http.router.v3.Router")}])
    listener = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}
    ok, output = run_validate({"type.googleapis.com/envoy.config.listener.v3.Listener": {"l": listener},
                               "type.googleapis.com/envoy.config.cluster.v3.Cluster": {},
                               "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": {},
                               "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": {}}, ENVOY)
    assert ok, output
