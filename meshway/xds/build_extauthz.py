"""AuthorizationPolicy action CUSTOM -> Envoy external authorization (pure), as istiod builds it
(`pilot/pkg/security/authz/builder/{builder,extauthz}.go`, Istio 1.30+).

Per provider used on a chain, two filters, before every other authorization filter:
- an RBAC filter whose `shadow_rules` (action DENY, never enforced) are the CUSTOM policies' rules,
  named `istio-ext-authz-<provider>-ns[NS]-policy[NAME]-rule[I]`, stats prefix `istio_ext_authz_`:
  a request matching a rule gets that name as dynamic metadata
  `envoy.filters.http.rbac/istio_ext_authz_shadow_effective_policy_id`;
- `envoy.filters.http.ext_authz` with `filter_enabled_metadata` on that key (prefix
  `istio-ext-authz-<provider>`): only requests matching the policy are sent to the authorizer.
On TCP chains only a gRPC provider applies (network RBAC + network ext_authz, stat prefix `tcp.`).

Fail closed: when a provider is undefined, of another type, or invalid (or a chain would need two
providers: Istio allows one per workload unless PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS is
set), the policies' rules become an enforced DENY, each renamed `...-deny-due-to-bad-CUSTOM-action`.
Dry-run CUSTOM policies are left out: the authorizer is not asked for them (as before Istio 1.30).

The caller's identity (beyond Istio, whose waypoints send none: istio/istio#56379): Envoy fills the
check's `source.principal` from the downstream TLS peer, and a waypoint's HTTP chain runs on an
internal connection with no TLS, so the waypoint passes the HBONE peer (filter state
`io.istio.peer_principal`) in the header Envoy uses for client certificates,
`x-forwarded-client-cert: By=<waypoint>;URI=<caller>`, overwriting any the client sent: added to the
HTTP check request only (`authorization_request.headers_to_add`), and for gRPC set on the request
before the ext_authz filter (the check carries every request header) and removed after it, so the
application does not get it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..mesh.providers import ExtAuthzProvider, find_ext_authz_provider
from ..mesh.view import MeshView
from ..model.durations import parse_duration
from ..model.meshconfig import ExtAuthzGrpcProvider
from .build_authz import WAYPOINT, Policy, build_rbac_filter, build_rbac_policies
from .build_provider_cluster import build_provider_cluster
from .protos import typed

Body = dict[str, Any]
MATCH_PREFIX = "istio-ext-authz"
SHADOW_STAT_PREFIX = "istio_ext_authz_"
BAD_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
DEFAULT_TIMEOUT = "600s"
PEER_HEADER = "x-forwarded-client-cert"
PEER_VALUE = "By=%FILTER_STATE(io.istio.local_principal:PLAIN)%;URI=%FILTER_STATE(io.istio.peer_principal:PLAIN)%"


@dataclass
class ExtAuthzSetup:
    """The providers the CUSTOM policies of one waypoint name: each usable one with its cluster name
    and hostname, or the reason it is not (the policy's status says it too); the clusters to send;
    problems to report (a chain with two providers)."""

    usable: dict[str, tuple[ExtAuthzProvider, str, str]] = field(default_factory=dict)  # name -> (p, cluster, host)
    errors: dict[str, str] = field(default_factory=dict)
    clusters: dict[str, Body] = field(default_factory=dict)
    endpoints: dict[str, Body] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _same(ip: str) -> str:
    return ip


def build_ext_authz_setup(view: MeshView, chains: Iterable[list[Policy]],
                          dial: Callable[[str], str] = _same) -> ExtAuthzSetup:
    """Resolve the providers of the CUSTOM policies applied to each chain (a list of policies)."""
    setup = ExtAuthzSetup()
    for policies in chains:
        live = [p for p in policies if p.action == "CUSTOM" and not p.dry_run and p.provider]
        names = sorted({p.provider for p in live})
        for p in live:
            if len(names) > 1:
                setup.problems.append((f"AuthorizationPolicy {p.namespace}/{p.name}", (
                    "multiple CUSTOM authorization providers per workload requires PILOT_ENABLE_MULTIPLE_CUSTOM_"
                    f"AUTHZ_PROVIDERS feature flag, found {len(names)} providers: [{' '.join(names)}]; requests "
                    "matching the policies' rules are denied")))
            if p.provider not in setup.usable and p.provider not in setup.errors:
                _resolve(view, p.provider, dial, setup)  # an unusable one: the policy's status says why
    return setup


def _resolve(view: MeshView, name: str, dial: Callable[[str], str], setup: ExtAuthzSetup) -> None:
    provider, error = find_ext_authz_provider(view, name)
    if provider is None:
        setup.errors[name] = error
        return
    try:
        built = build_provider_cluster(view, provider.config.service, provider.config.port, dial, http2=provider.grpc)
    except LookupError as exc:
        setup.errors[name] = str(exc)
        return
    setup.usable[name] = (provider, built.cluster["name"], built.hostname)
    setup.clusters[built.cluster["name"]] = built.cluster
    if built.endpoints is not None:
        setup.endpoints[built.cluster["name"]] = built.endpoints


def _header_matchers(headers: list[str] | None) -> Body | None:
    """Istio's header lists: `x-id` exact, `x-*` prefix, `*-id` suffix, all case-insensitive."""
    patterns = []
    for h in headers or []:
        if h.startswith("*"):
            patterns.append({"suffix": h[1:], "ignore_case": True})
        elif h.endswith("*"):
            patterns.append({"prefix": h[:-1], "ignore_case": True})
        else:
            patterns.append({"exact": h, "ignore_case": True})
    return {"patterns": patterns} if patterns else None


def _enabled_metadata(name: str, network: bool) -> Body:
    return {"filter": f"envoy.filters.{'network' if network else 'http'}.rbac",
            "path": [{"key": f"{SHADOW_STAT_PREFIX}shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": f"{MATCH_PREFIX}-{name}"}}}


def _timeout(text: str | None) -> str:
    return f"{parse_duration(text):.9g}s" if text else DEFAULT_TIMEOUT


def build_ext_authz_filter(name: str, provider: ExtAuthzProvider, cluster: str, host: str,
                           network: bool = False) -> Body | None:
    """The ext_authz filter for a provider; None for an HTTP provider on a TCP chain (Istio skips it)."""
    c = provider.config
    common: Body = {"transport_api_version": "V3", "filter_enabled_metadata": _enabled_metadata(name, network)}
    if c.failOpen:
        common["failure_mode_allow"] = True
    if isinstance(c, ExtAuthzGrpcProvider):
        grpc = {"envoy_grpc": {"cluster_name": cluster, "authority": cluster.replace("|", "_.")},
                "timeout": _timeout(c.timeout)}
        if network:
            return {"name": "envoy.filters.network.ext_authz", "typed_config": typed(
                "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz", stat_prefix="tcp.", grpc_service=grpc,
                **common)}
        config: Body = {"grpc_service": grpc}
    elif network:
        return None
    else:
        service: Body = {"server_uri": {"uri": f"http://{host}", "cluster": cluster, "timeout": _timeout(c.timeout)}}
        if c.pathPrefix:
            service["path_prefix"] = c.pathPrefix
        service["authorization_request"] = {"headers_to_add": [
            *({"key": k, "value": v} for k, v in sorted((c.includeAdditionalHeadersInCheck or {}).items())
              if k.lower() != PEER_HEADER), {"key": PEER_HEADER, "value": PEER_VALUE}]}
        response = {k: m for k, m in (("allowed_upstream_headers", _header_matchers(c.headersToUpstreamOnAllow)),
                                      ("allowed_client_headers", _header_matchers(c.headersToDownstreamOnDeny)),
                                      ("allowed_client_headers_on_success",
                                       _header_matchers(c.headersToDownstreamOnAllow))) if m}
        if response:
            service["authorization_response"] = response
        config = {"http_service": service}
        allowed = _header_matchers(c.includeRequestHeadersInCheck or c.includeHeadersInCheck)
        if allowed:
            config["allowed_headers"] = allowed
    if c.statusOnError:
        config["status_on_error"] = {"code": int(c.statusOnError)}
    if c.clearRouteCache:
        config["clear_route_cache"] = True
    if c.includeRequestBodyInCheck:
        body = c.includeRequestBodyInCheck.model_dump(exclude_none=True)
        config["with_request_body"] = {{"maxRequestBytes": "max_request_bytes", "allowPartialMessage":
                                        "allow_partial_message", "packAsBytes": "pack_as_bytes"}[k]: v
                                       for k, v in body.items()}
    return {"name": "envoy.filters.http.ext_authz",
            "typed_config": typed("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", **config, **common)}


def build_peer_header_filters() -> tuple[Body, Body]:
    """(before, after) a gRPC ext_authz filter: set the caller's identity header, then remove it."""
    def mutation(name: str, change: Body) -> Body:
        return {"name": name, "typed_config": typed(
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            mutations={"request_mutations": [change]})}
    return (mutation("istio.ext_authz_peer", {"append": {
                "header": {"key": PEER_HEADER, "value": PEER_VALUE}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}),
            mutation("istio.ext_authz_peer_remove", {"remove": PEER_HEADER}))


def build_custom_filters(policies: list[Policy], setup: ExtAuthzSetup, network: bool = False) -> list[Body]:
    """The CUSTOM filters of one chain (to go before the AUDIT/DENY/ALLOW RBAC filters)."""
    live = [p for p in policies if p.action == "CUSTOM" and not p.dry_run and p.provider]
    names = sorted({p.provider for p in live})
    filters = []
    for name in names:
        rules = build_rbac_policies([p for p in live if p.provider == name], "CUSTOM", WAYPOINT, network,
                                    prefix=f"{MATCH_PREFIX}-{name}-")
        if len(names) > 1 or name not in setup.usable:
            filters.append(build_rbac_filter(network, rules={
                "action": "DENY", "policies": {k + BAD_SUFFIX: v for k, v in rules.items()}}))
            continue
        ext = build_ext_authz_filter(name, *setup.usable[name], network=network)
        if ext is None:
            continue
        shadow = build_rbac_filter(network, shadow={"action": "DENY", "policies": rules},
                                   shadow_prefix=SHADOW_STAT_PREFIX)
        if network or "http_service" in ext["typed_config"]:
            filters += [shadow, ext]
        else:
            before, after = build_peer_header_filters()
            filters += [shadow, before, ext, after]
    return filters
