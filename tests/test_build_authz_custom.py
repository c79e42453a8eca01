"""AuthorizationPolicy CUSTOM (ext_authz), AUDIT and dry-run, as istiod builds them for a waypoint,
plus the node-proxy side (ztunnel supports none of the three by default)."""
from __future__ import annotations

from pathlib import Path

import pytest

from xds_support import build_store, plain, translate, view_of

from meshway.mesh.providers import find_ext_authz_provider, find_provider_service
from meshway.model import load_yaml
from meshway.model.istio import AuthorizationPolicy
from meshway.xds.build_authz import WAYPOINT, ZTUNNEL, Policy, build_rbac_filters

BASE = """
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: foo, labels: {istio.io/use-waypoint: none}}
spec:
  selector: {app: ext-authz}
  ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: ext-authz-1, namespace: foo, labels: {app: ext-authz}}
spec: {containers: [{name: ext-authz, image: "gcr.io/istio-testing/ext-authz:latest"}]}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec: {selector: {app: httpbin}, ports: [{name: http, port: 8000, targetPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: foo}
spec: {selector: {app: db}, ports: [{name: tcp, port: 5432}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: sample-ext-authz-grpc
      envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: "9000"}
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        {service: ext-authz.foo.svc.cluster.local, port: "8000", includeRequestHeadersInCheck: [x-ext-authz]}
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
    - name: bad-status
      envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000, statusOnError: "999", pathPrefix: check}
    - name: nowhere
      envoyExtAuthzGrpc: {service: ghost.foo.svc.cluster.local, port: 9000}
    - name: wildcard
      envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000, headersToUpstreamOnAllow: ["*"]}
"""
HTTPBIN = "inbound-vip|8000|http|httpbin.foo.svc.cluster.local"
DB = "inbound-vip|5432|tcp|db.foo.svc.cluster.local"


def policy(name: str, action: str, target: str = "httpbin", provider: str | None = None, dry_run: bool = False,
           rules: str = '[{to: [{operation: {paths: ["/headers"]}}]}]') -> str:
    annotations = ', annotations: {istio.io/dry-run: "true"}' if dry_run else ""
    extra = f"\n  provider: {{name: {provider}}}" if provider else ""
    return (f"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {name}, namespace: foo{annotations}}}\nspec:\n"
            f"  targetRefs: [{{kind: Service, group: \"\", name: {target}}}]\n  action: {action}{extra}\n"
            f"  rules: {rules}\n")


def build(tmp_path: Path, *policies: str) -> tuple[dict, tuple]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "in.yaml"
    path.write_text(BASE + "".join(policies))
    config = translate(build_store(tmp_path / "s", [path]), "foo")
    return plain(config), config.problems


def chain_filters(config: dict, chain: str) -> list[dict]:
    found = next(c for c in config["Listener"]["main_internal"]["filter_chains"] if c["name"] == chain)
    hcm = found["filters"][-1]
    if hcm["name"] == "envoy.filters.network.http_connection_manager":
        return hcm["typed_config"]["http_filters"]
    return found["filters"]


def test_custom_http_provider_shadow_rbac_then_ext_authz(tmp_path: Path) -> None:
    config, problems = build(tmp_path, policy("ext-authz", "CUSTOM", provider="sample-ext-authz-http"))
    filters = chain_filters(config, HTTPBIN)
    assert [f["name"] for f in filters][:2] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"]
    shadow, ext = filters[0]["typed_config"], filters[1]["typed_config"]
    assert "rules" not in shadow and shadow["shadow_rules_stat_prefix"] == "istio_ext_authz_"
    assert shadow["shadow_rules"]["action"] == "DENY"
    assert list(shadow["shadow_rules"]["policies"]) == [
        "istio-ext-authz-sample-ext-authz-http-ns[foo]-policy[ext-authz]-rule[0]"]
    assert ext["filter_enabled_metadata"] == {
        "filter": "envoy.filters.http.rbac", "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"string_match": {"prefix": "istio-ext-authz-sample-ext-authz-http"}}}
    assert ext["http_service"]["server_uri"] == {"uri": "http://ext-authz.foo.svc.cluster.local", "timeout": "600s",
                                                 "cluster": "outbound|8000||ext-authz.foo.svc.cluster.local"}
    assert ext["allowed_headers"] == {"patterns": [{"exact": "x-ext-authz", "ignore_case": True}]}
    assert ext["transport_api_version"] == "V3" and "failure_mode_allow" not in ext
    # The caller's identity in the check request only (Envoy's source.principal needs a TLS peer).
    assert ext["http_service"]["authorization_request"]["headers_to_add"] == [{
        "key": "x-forwarded-client-cert",
        "value": "By=%FILTER_STATE(io.istio.local_principal:PLAIN)%;URI=%FILTER_STATE(io.istio.peer_principal:PLAIN)%"}]
    eps = config["ClusterLoadAssignment"]["outbound|8000||ext-authz.foo.svc.cluster.local"]
    assert eps["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] == 8000
    assert not problems
    # An HTTP provider does not apply to TCP chains (Istio leaves it out there).
    config, _ = build(tmp_path / "tcp", policy("db-authz", "CUSTOM", target="db", provider="sample-ext-authz-http"))
    assert [f["name"] for f in chain_filters(config, DB)] == ["envoy.filters.network.tcp_proxy"]


def test_custom_grpc_provider_on_http_and_tcp_chains(tmp_path: Path) -> None:
    config, _ = build(tmp_path, policy("ext-authz", "CUSTOM", provider="sample-ext-authz-grpc"),
                      policy("db-authz", "CUSTOM", target="db", provider="sample-ext-authz-grpc"))
    filters = chain_filters(config, HTTPBIN)
    # The caller's identity: set before the check (it carries every header), removed after it.
    assert [f["name"] for f in filters[:4]] == ["envoy.filters.http.rbac", "istio.ext_authz_peer",
                                                "envoy.filters.http.ext_authz", "istio.ext_authz_peer_remove"]
    set_peer = filters[1]["typed_config"]["mutations"]["request_mutations"]
    assert set_peer == [{"append": {"header": {"key": "x-forwarded-client-cert", "value": "By=%FILTER_STATE("
                                               "io.istio.local_principal:PLAIN)%;URI=%FILTER_STATE("
                                               "io.istio.peer_principal:PLAIN)%"},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]
    assert filters[3]["typed_config"]["mutations"]["request_mutations"] == [{"remove": "x-forwarded-client-cert"}]
    ext = filters[2]["typed_config"]
    assert ext["grpc_service"] == {"envoy_grpc": {"cluster_name": "outbound|9000||ext-authz.foo.svc.cluster.local",
                                                  "authority": "outbound_.9000_._.ext-authz.foo.svc.cluster.local"},
                                   "timeout": "600s"}
    tcp = chain_filters(config, DB)
    assert [f["name"] for f in tcp] == ["envoy.filters.network.rbac", "envoy.filters.network.ext_authz",
                                        "envoy.filters.network.tcp_proxy"]
    assert tcp[1]["typed_config"]["filter_enabled_metadata"]["filter"] == "envoy.filters.network.rbac"
    assert tcp[0]["typed_config"]["stat_prefix"] == "tcp."
    # A TCP chain cannot see paths: the trigger is more general (as for a DENY), never narrower.
    rule = tcp[0]["typed_config"]["shadow_rules"]["policies"]["istio-ext-authz-sample-ext-authz-grpc-ns[foo]-"
                                                               "policy[db-authz]-rule[0]"]
    assert rule == {"permissions": [{"any": True}], "principals": [{"any": True}]}
    cluster = config["Cluster"]["outbound|9000||ext-authz.foo.svc.cluster.local"]
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])


@pytest.mark.parametrize("provider", ["not-defined", "zipkin", "bad-status", "nowhere", "wildcard"])
def test_unusable_provider_fails_closed_on_the_policy_rules(tmp_path: Path, provider: str) -> None:
    config, problems = build(tmp_path, policy("ext-authz", "CUSTOM", provider=provider))
    filters = chain_filters(config, HTTPBIN)
    assert filters[1]["name"] != "envoy.filters.http.ext_authz"
    rbac = filters[0]["typed_config"]
    assert rbac["rules"]["action"] == "DENY" and "shadow_rules" not in rbac
    assert rbac["rules"]["policies"] == {
        f"istio-ext-authz-{provider}-ns[foo]-policy[ext-authz]-rule[0]-deny-due-to-bad-CUSTOM-action": {
            "permissions": [{"url_path": {"path": {"exact": "/headers"}}}], "principals": [{"any": True}]}}
    assert not [c for c in config["Cluster"] if c.startswith("outbound|")]
    assert not problems  # the policy's WaypointAccepted condition says why (test_policy_status)


def test_two_providers_on_one_chain_deny_both(tmp_path: Path) -> None:
    config, problems = build(tmp_path, policy("a", "CUSTOM", provider="sample-ext-authz-http"),
                             policy("b", "CUSTOM", provider="sample-ext-authz-grpc"))
    filters = chain_filters(config, HTTPBIN)
    names = [list(f["typed_config"]["rules"]["policies"]) for f in filters[:2]]
    assert names == [["istio-ext-authz-sample-ext-authz-grpc-ns[foo]-policy[b]-rule[0]-deny-due-to-bad-CUSTOM-action"],
                     ["istio-ext-authz-sample-ext-authz-http-ns[foo]-policy[a]-rule[0]-deny-due-to-bad-CUSTOM-action"]]
    assert "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS" in problems[0][1]


def test_dry_run_custom_is_left_out(tmp_path: Path) -> None:
    config, _ = build(tmp_path, policy("ext-authz", "CUSTOM", provider="sample-ext-authz-http", dry_run=True))
    assert [f["name"] for f in chain_filters(config, HTTPBIN)][0] != "envoy.filters.http.rbac"
    assert not [c for c in config["Cluster"] if c.startswith("outbound|")]


def test_audit_and_dry_run_on_the_waypoint(tmp_path: Path) -> None:
    config, _ = build(tmp_path, policy("audit", "AUDIT", rules="[{to: [{operation: {methods: [POST]}}]}]"),
                      policy("deny-dry", "DENY", dry_run=True), policy("deny", "DENY", rules="[{to: [{operation: "
                                                                                           "{methods: [DELETE]}}]}]"),
                      policy("allow-dry", "ALLOW", dry_run=True, rules="[{from: [{source: {namespaces: [foo]}}]}]"))
    rbac = [f["typed_config"] for f in chain_filters(config, HTTPBIN) if f["name"] == "envoy.filters.http.rbac"]
    assert [(r.get("rules", {}).get("action", "ALLOW" if "rules" in r else None),
             r.get("shadow_rules", {}).get("action", "ALLOW" if "shadow_rules" in r else None),
             r.get("shadow_rules_stat_prefix")) for r in rbac] == [
        ("LOG", None, None), ("DENY", "DENY", "istio_dry_run_deny_"), (None, "ALLOW", "istio_dry_run_allow_")]
    assert list(rbac[0]["rules"]["policies"]) == ["ns[foo]-policy[audit]-rule[0]"]
    assert list(rbac[1]["rules"]["policies"]) == ["ns[foo]-policy[deny]-rule[0]"]
    assert list(rbac[1]["shadow_rules"]["policies"]) == ["ns[foo]-policy[deny-dry]-rule[0]"]
    assert list(rbac[2]["shadow_rules"]["policies"]) == ["ns[foo]-policy[allow-dry]-rule[0]"]


def _policies(*docs: str) -> list[Policy]:
    return [Policy.of(AuthorizationPolicy.model_validate(m.body, strict=False))
            for d in docs for m in load_yaml(d, "p.yaml")]


def test_node_proxies_get_no_audit_and_no_dry_run() -> None:
    applied = _policies(policy("audit", "AUDIT", rules="[{}]"), policy("dry", "DENY", dry_run=True, rules="[{}]"))
    assert build_rbac_filters(applied, ZTUNNEL) == []
    assert len(build_rbac_filters(applied, WAYPOINT)) == 2


def test_dry_run_annotation_reads_like_go_parse_bool() -> None:
    for value, expected in (("true", True), ("1", True), ("T", True), ("false", False), ("yes", False)):
        doc = policy("p", "DENY").replace('namespace: foo}', f'namespace: foo, annotations: {{istio.io/dry-run: '
                                                                f'"{value}"}}}}')
        assert _policies(doc)[0].dry_run is expected, value


@pytest.mark.parametrize("name,error", [
    ("not-defined", 'available providers are [sample-ext-authz-grpc sample-ext-authz-http bad-status nowhere '
                    'wildcard] but found "not-defined"'),
    ("zipkin", 'available providers are [sample-ext-authz-grpc sample-ext-authz-http bad-status nowhere wildcard] '
               'but found "zipkin"'),
    ("bad-status", "found errors in provider bad-status: unsupported statusOnError 999; pathPrefix must begin with "
                   '`/`, found: "check"'),
    ("nowhere", "found errors in provider nowhere: could not find service ghost.foo.svc.cluster.local:9000 in Istio "
                "service registry"),
    ("wildcard", 'found errors in provider wildcard: a single wildcard ("*") is not supported, change it to either '
                 "prefix or suffix match: HeadersToUpstreamOnAllow"),
])
def test_provider_errors_in_istiods_words(tmp_path: Path, name: str, error: str) -> None:
    store = build_store(tmp_path / "s", [])
    store.apply(load_yaml(BASE, "base.yaml"))
    assert find_ext_authz_provider(view_of(store), name) == (None, error)


def test_provider_service_lookup(tmp_path: Path) -> None:
    store = build_store(tmp_path / "s", [])
    store.apply(load_yaml(BASE + """---
apiVersion: v1
kind: Namespace
metadata: {name: bar}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-authz, namespace: bar}
spec: {hosts: [ext-authz.foo.svc.cluster.local], ports: [{name: http, number: 8000}], resolution: DNS}
""", "base.yaml"))
    view = view_of(store)
    found, _ = find_provider_service(view, "foo/ext-authz.foo.svc.cluster.local", 8000)
    assert (found.service.kind, found.service.namespace, found.cluster) == (
        "Service", "foo", "outbound|8000||ext-authz.foo.svc.cluster.local")
    assert find_provider_service(view, "bar/ext-authz.foo.svc.cluster.local", 8000)[0].service.kind == "ServiceEntry"
    assert find_provider_service(view, "ext-authz.foo.svc.cluster.local", 8000) == (None, (
        "found ext-authz.foo.svc.cluster.local in multiple namespaces [bar foo], specify the namespace explicitly in "
        "the format of <Namespace>/<Hostname>"))
    assert find_provider_service(view, "ext-authz", 8000)[1] == \
        "could not find service ext-authz:8000 in Istio service registry"
