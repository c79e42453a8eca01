"""RequestAuthentication -> Envoy `envoy.filters.http.jwt_authn` (pure), as istiod builds it
(`pilot/pkg/security/authn/policy_applier.go:convertToEnvoyJwtConfig`).

- Which policies apply: as AuthorizationPolicies, by `targetRefs` only (the waypoint Gateway, a
  Service or ServiceEntry bound to it, the `istio-waypoint` GatewayClass from the root namespace).
  Waypoints ignore selector and namespace-wide RequestAuthentications, and ztunnel has no JWT at
  all: those apply to sidecars and gateways only, which meshway does not run (the policy's status
  says so, see `meshway.mesh.policy_status`).
- One provider `origins-<i>` per JWT rule of every policy on the chain, sorted by issuer. The
  requirement is `{provider OR allow_missing}` per provider (ANDed when there are several, and ORed
  with each provider alone, for providers that share a token location): a request without a token
  passes, a request with a token that fails verification gets Envoy's 401 (`Jwt verification
  fails`, `Jwt is expired`, `Jwt issuer is not configured`, ...). CORS preflights bypass.
- Every provider writes the verified payload to dynamic metadata `payload` (Istio's
  `EnvoyJwtFilterPayload`), where the RBAC rules of `requestPrincipals` and `request.auth.*` read it
  (`build_authz`); `scope` and `permission` (plus `spaceDelimitedClaims`) are split into lists.
- `jwks` inline -> `local_jwks`. `jwksUri` -> `remote_jwks` fetched by Envoy through a cluster
  (istiod's `PILOT_JWT_ENABLE_REMOTE_JWKS=envoy` mode: istiod itself never fetches): the mesh
  Service or ServiceEntry the URI's host names (`outbound|PORT||HOST`, as Istio's LookupCluster), or
  else a DNS cluster to the host. A rule with neither gets Istio's stand-in key set that verifies
  no token (istiod would look the key set up through OpenID discovery; meshway does not fetch).
- The filter goes after CUSTOM ext_authz and before RBAC; route cache is not cleared (waypoints
  are inbound listeners for Istio's builder).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..mesh.view import MeshView
from ..model.durations import parse_duration
from ..model.istio import JWTRule, RequestAuthentication, parse_jwks_uri
from .build_authz import detect_waypoint_target, find_policy_targets
from .build_provider_cluster import build_provider_cluster
from .protos import typed
from .scope import cluster_name

Body = dict[str, Any]
JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD = "payload"  # Istio's filters.EnvoyJwtFilterPayload
SPACE_DELIMITED = ("permission", "scope")
DEFAULT_TIMEOUT = 5.0
CACHE_DURATION = "300s"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"  # trust for https jwksUri hosts outside the mesh
# A key set that verifies no token: a rule whose keys cannot be had rejects every token it sees.
UNRESOLVED_JWKS = ('{"keys":[{"kty":"RSA","kid":"meshway-unresolved","alg":"RS256","e":"AQAB","n":"'
                   'lvfDpZ0w-7Tau1OnVHMe-VdKdQzTtEehkfBXQZntXPiXWuo2YebAiNhvTDkfy2_uW91GcBsjnZ44LcJBDq5mbbgyCfFGmHRH'
                   'yubQyrn_GQrZCVF-tD3-yus5Txde0h6mQaMg_z346JK6QGbopXSYxdHUoG7tctp27JGz-Lv4t_OUxMiG18iHF5pYD82MyOIz'
                   'dNHkBxvNzH78ge7Yo5UUDBt17JWp2g3evYKPDeKnKXOa37Y0ibBTsH6R7x2ckOuoymx1WJG8QxeivgBoFW3aYiSUwnnwkLvA'
                   'KYdVarhK8uwSL1Sh8_HqzTBKPfoBJqtvJ6gi3VN7hGuAfRylHbsJhw'
                   '"}]}')  # a public key whose private key was thrown away


def _same(ip: str) -> str:
    return ip


def find_waypoint_request_authns(policies: Iterable[RequestAuthentication], waypoint_ns: str, waypoint: str,
                                 service_ns: str | None = None, service: str | None = None,
                                 service_kind: str = "Service") -> list[RequestAuthentication]:
    """The RequestAuthentications a waypoint applies on one service's chain (every chain when
    service is None), in Istio's config order (oldest first, then namespace and name)."""
    found = [p for p in policies
             if detect_waypoint_target(p, waypoint_ns, waypoint, service_ns, service, service_kind)]
    return sorted(found, key=lambda p: (p.metadata.creationTimestamp or "", p.namespace, p.name))


def find_request_authn_targets(policies: Iterable[RequestAuthentication]) -> frozenset[tuple[str, str, str]]:
    return find_policy_targets(policies)


def find_jwt_rules(policies: Iterable[RequestAuthentication]) -> list[JWTRule]:
    """Every JWT rule of the policies, sorted (stably) by issuer, as istiod's newPolicyApplier."""
    rules = [r for p in policies for r in p.spec.jwtRules or []]
    return sorted(rules, key=lambda r: r.issuer or "")


@dataclass
class JwksSetup:
    """The clusters Envoy fetches remote key sets through: jwksUri -> cluster name, the clusters
    and endpoints to send, and problems to report."""

    cluster_for: dict[str, str] = field(default_factory=dict)
    clusters: dict[str, Body] = field(default_factory=dict)
    endpoints: dict[str, Body] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)


def build_jwks_setup(view: MeshView, chains: Iterable[list[RequestAuthentication]],
                     dial: Callable[[str], str] = _same) -> JwksSetup:
    setup = JwksSetup()
    for policies in chains:
        for p in policies:
            for rule in p.spec.jwtRules or []:
                uri = rule.uri
                if uri is None and rule.jwks is None:
                    setup.problems.append((f"RequestAuthentication {p.namespace}/{p.name}", (
                        f"jwtRules issuer {rule.issuer!r}: neither jwks nor jwksUri is set and meshway does not "
                        "look key sets up by OpenID discovery: tokens of this issuer are rejected")))
                if uri is None or uri in setup.cluster_for:
                    continue
                _add_jwks_cluster(view, uri, dial, setup)
    return setup


def _add_jwks_cluster(view: MeshView, uri: str, dial: Callable[[str], str], setup: JwksSetup) -> None:
    scheme, host, port = parse_jwks_uri(uri)
    try:
        built = build_provider_cluster(view, host, port, dial)
        cluster, endpoints = built.cluster, built.endpoints
    except LookupError:  # not a mesh service: Envoy resolves the host itself
        name = cluster_name(port, "", host, "outbound")
        cluster = {"name": name, "type": "STRICT_DNS", "connect_timeout": "10s", "dns_lookup_family": "V4_PREFERRED",
                   "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                       {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}}
        endpoints = None
    if scheme == "https":
        cluster = {**cluster, "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", sni=host, common_tls_context={
                "validation_context": {"trusted_ca": {"filename": SYSTEM_CA}}})}}
    setup.cluster_for[uri] = cluster["name"]
    setup.clusters[cluster["name"]] = cluster
    if endpoints is not None:
        setup.endpoints[cluster["name"]] = endpoints


def _seconds(value: float) -> str:
    return f"{value:.9g}s"


def build_jwt_provider(rule: JWTRule, jwks_cluster: str | None) -> Body:
    """One JwtProvider for an Istio JWTRule."""
    provider: Body = {"issuer": rule.issuer or "", "payload_in_metadata": PAYLOAD,
                      "normalize_payload_in_metadata": {"space_delimited_claims": sorted(
                          set(SPACE_DELIMITED) | set(rule.spaceDelimitedClaims or []))}}
    if rule.audiences:
        provider["audiences"] = list(rule.audiences)
    if rule.forwardOriginalToken:
        provider["forward"] = True
    if rule.outputPayloadToHeader:
        provider["forward_payload_header"] = rule.outputPayloadToHeader
    if rule.outputClaimToHeaders:
        provider["claim_to_headers"] = [{"header_name": c.header, "claim_name": c.claim}
                                        for c in rule.outputClaimToHeaders]
    if rule.fromHeaders:
        provider["from_headers"] = [{"name": h.name, **({"value_prefix": h.prefix} if h.prefix else {})}
                                    for h in rule.fromHeaders]
    if rule.fromParams:
        provider["from_params"] = list(rule.fromParams)
    if rule.fromCookies:
        provider["from_cookies"] = list(rule.fromCookies)
    timeout = parse_duration(rule.timeout) if rule.timeout else DEFAULT_TIMEOUT
    if rule.uri and jwks_cluster:
        provider["remote_jwks"] = {"http_uri": {"uri": rule.uri, "cluster": jwks_cluster, "timeout": _seconds(timeout)},
                                   "cache_duration": CACHE_DURATION}
    else:
        provider["local_jwks"] = {"inline_string": rule.jwks or UNRESOLVED_JWKS}
    return provider


def build_jwt_filter(rules: list[JWTRule], jwks: JwksSetup | None = None) -> Body | None:
    """The jwt_authn filter for a chain's rules (None without rules)."""
    if not rules:
        return None
    cluster_for = jwks.cluster_for if jwks else {}
    providers = {f"origins-{i}": build_jwt_provider(r, cluster_for.get(r.uri or "")) for i, r in enumerate(rules)}
    inner = [{"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}}
             for name in providers]
    if len(inner) == 1:
        requires = inner[0]
    else:
        requires = {"requires_any": {"requirements": [
            *({"provider_name": name} for name in providers), {"requires_all": {"requirements": inner}}]}}
    config = typed("envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication", providers=providers,
                   rules=[{"match": {"prefix": "/"}, "requires": requires}], bypass_cors_preflight=True)
    return {"name": JWT_FILTER, "typed_config": config}
