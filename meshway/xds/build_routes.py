"""Route configs of a waypoint's HTTP chains, served over RDS (istio-facts §1.8): Istio's default route, or
the routes of the VirtualServices (and HTTPRoutes, converted to VirtualServices) for the service.

`build_route_config` returns the config and a list of problems: a route to a destination that does
not exist (unknown service or DestinationRule subset) is answered by Envoy with 503/500 locally
instead of being pushed as a reference Envoy would have to resolve, and the problem is reported."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..model.durations import parse_duration
from ..model.istio import HTTPMatchRequest, HTTPRoute, StringMatch, VirtualService
from .protos import typed
from .scope import cluster_name

Body = dict[str, Any]
RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                  308: "PERMANENT_REDIRECT"}


@dataclass(frozen=True)
class RouteTarget:
    """What the route builder needs to know about the service a chain serves."""

    host: str  # FQDN
    namespace: str
    port: int
    # (host, port, subset) -> cluster name, or None when the destination does not exist
    resolve: Callable[[str, int | None, str | None], str | None]
    # cluster name -> the route hash_policy its DestinationRule's consistentHash asks for, if any
    hash_policy: Callable[[str], list[Body] | None] = lambda cluster: None


@dataclass
class Problems:
    items: list[tuple[str, str]] = field(default_factory=list)  # (config path, message)

    def add(self, where: str, message: str) -> None:
        self.items.append((where, message))


def _dur(text: str) -> str:
    return f"{parse_duration(text):.9g}s"


def build_default_retry() -> Body:
    return {"retry_on": RETRY_ON, "num_retries": 2, "host_selection_retry_max_attempts": "5",
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": typed(
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")}]}


def build_default_route(target: RouteTarget) -> Body:
    cluster = cluster_name(target.port, "http", target.host)
    action = {"cluster": cluster, "timeout": "0s", "retry_policy": build_default_retry(),
              "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}
    _add_hash_policy(action, target.hash_policy(cluster))
    return {"name": "default", "match": {"prefix": "/"}, "route": action,
            "decorator": {"operation": f"{target.host}:{target.port}/*"}}


def _add_hash_policy(action: Body, hash_policy: list[Body] | None) -> None:
    """Consistent hashing: the route hashes the request; retries may then go to the same host
    (Istio leaves out the previous_hosts predicate)."""
    if not hash_policy:
        return
    action["hash_policy"] = hash_policy
    if action.get("retry_policy"):
        action["retry_policy"].pop("retry_host_predicate", None)


def _shared_hash_policy(target: RouteTarget, clusters: list[str]) -> list[Body] | None:
    """The hash policy of the route's clusters when they all ask for the same one."""
    policies = [target.hash_policy(c) for c in clusters]
    return policies[0] if policies and all(p == policies[0] for p in policies) else None


def _string_match(m: StringMatch, ignore_case: bool = False) -> Body:
    out: Body
    if m.exact is not None:
        out = {"exact": m.exact}
    elif m.prefix is not None:
        out = {"prefix": m.prefix}
    elif m.regex is not None:
        out = {"safe_regex": {"regex": m.regex}}
    else:
        out = {"prefix": ""}
    if ignore_case:
        out["ignore_case"] = True
    return out


def build_match(m: HTTPMatchRequest | None) -> Body:
    if m is None:
        return {"prefix": "/"}
    out: Body = {}
    if m.uri is None:
        out["prefix"] = "/"
    elif m.uri.exact is not None:
        out["path"] = m.uri.exact
    elif m.uri.prefix is not None:
        out["prefix"] = m.uri.prefix
    elif m.uri.regex is not None:
        out["safe_regex"] = {"regex": m.uri.regex}
    else:
        out["prefix"] = "/"
    if m.ignoreUriCase:
        out["case_sensitive"] = False
    headers = []
    for name, sm in (m.headers or {}).items():
        headers.append({"name": name, "string_match": _string_match(sm)})
    for pseudo, sm in ((":method", m.method), (":authority", m.authority), (":scheme", m.scheme)):
        if sm is not None:
            headers.append({"name": pseudo, "string_match": _string_match(sm)})
    for name, sm in (m.withoutHeaders or {}).items():
        headers.append({"name": name, "string_match": _string_match(sm), "invert_match": True})
    if headers:
        out["headers"] = headers
    if m.queryParams:
        out["query_parameters"] = [{"name": k, "string_match": _string_match(v)} for k, v in m.queryParams.items()]
    return out


def _headers(ops, prefix: str) -> Body:
    out: Body = {}
    if ops is None:
        return out
    adds = [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in (ops.set or {}).items()]
    adds += [{"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}
             for k, v in (ops.add or {}).items()]
    if adds:
        out[f"{prefix}_headers_to_add"] = adds
    if ops.remove:
        out[f"{prefix}_headers_to_remove"] = list(ops.remove)
    return out


def _percent(value: float) -> Body:
    return {"numerator": int(round(value * 10000)), "denominator": "MILLION"}


def build_fault(route: HTTPRoute) -> Body | None:
    fault = route.fault
    if fault is None:
        return None
    out: Body = {}
    if fault.delay and fault.delay.fixedDelay:
        pct = fault.delay.percentage.value if fault.delay.percentage else (fault.delay.percent or 100)
        out["delay"] = {"fixed_delay": _dur(fault.delay.fixedDelay), "percentage": _percent(pct)}
    if fault.abort and fault.abort.httpStatus:
        pct = fault.abort.percentage.value if fault.abort.percentage else 100
        out["abort"] = {"http_status": fault.abort.httpStatus, "percentage": _percent(pct)}
    return typed("envoy.extensions.filters.http.fault.v3.HTTPFault", **out) if out else None


def build_retry(route: HTTPRoute) -> Body | None:
    retries = route.retries
    if retries is None:
        return build_default_retry()
    if retries.attempts == 0:
        return None
    policy = build_default_retry()
    if retries.attempts:
        policy["num_retries"] = retries.attempts
    if retries.retryOn:
        codes = [p for p in retries.retryOn.split(",") if p.strip().isdigit()]
        ons = [p.strip() for p in retries.retryOn.split(",") if p.strip() and not p.strip().isdigit()]
        if codes:
            policy["retriable_status_codes"] = [int(c) for c in codes]
            ons.append("retriable-status-codes")
        policy["retry_on"] = ",".join(dict.fromkeys(ons))
    if retries.perTryTimeout:
        policy["per_try_timeout"] = _dur(retries.perTryTimeout)
    if retries.backoff:
        policy["retry_back_off"] = {"base_interval": _dur(retries.backoff)}
    if retries.retryIgnorePreviousHosts is False:
        policy.pop("retry_host_predicate")
    return policy


def _action(route: HTTPRoute, target: RouteTarget, where: str, problems: Problems) -> Body:
    """The route/redirect/direct_response part of an Envoy route."""
    if route.redirect:
        r = route.redirect
        red: Body = {"response_code": REDIRECT_CODES.get(r.redirectCode or 301, "MOVED_PERMANENTLY")}
        if r.uri:
            red["path_redirect"] = r.uri
        if r.authority:
            red["host_redirect"] = r.authority
        if r.port:
            red["port_redirect"] = r.port
        if r.scheme:
            red["scheme_redirect"] = r.scheme
        return {"redirect": red}
    if route.directResponse:
        body = route.directResponse.body
        out: Body = {"direct_response": {"status": route.directResponse.status}}
        if body and body.string is not None:
            out["direct_response"]["body"] = {"inline_string": body.string}
        return out
    dests = [d for d in route.route or [] if d.weight != 0 or len(route.route or []) == 1]
    clusters = []
    for i, d in enumerate(dests):
        name = target.resolve(d.destination.host, d.destination.port.number if d.destination.port else None,
                              d.destination.subset)
        if name is None:
            what = d.destination.host + (f" subset {d.destination.subset}" if d.destination.subset else "")
            problems.add(f"{where}.route[{i}].destination", f"destination {what} is not a service (or subset) "
                                                            "served by this waypoint")
            return {"direct_response": {"status": 503, "body": {"inline_string": f"no destination {what}\n"}}}
        clusters.append((name, d))
    # With max_stream_duration present (even zero) Envoy ignores the route timeout, so a route with
    # a timeout carries only `timeout` (Istio's setTimeout does the same).
    action: Body = ({"timeout": _dur(route.timeout)} if route.timeout else
                    {"timeout": "0s", "max_stream_duration": {"max_stream_duration": "0s",
                                                              "grpc_timeout_header_max": "0s"}})
    if len(clusters) == 1:
        action["cluster"] = clusters[0][0]
    else:
        weights = [d.weight or 0 for _, d in clusters]
        if not any(weights):
            weights = [1] * len(clusters)
        action["weighted_clusters"] = {"clusters": [
            {"name": name, "weight": w, **_headers(d.headers.request if d.headers else None, "request"),
             **_headers(d.headers.response if d.headers else None, "response")}
            for (name, d), w in zip(clusters, weights) if w]}
    retry = build_retry(route)
    if retry:
        action["retry_policy"] = retry
    _add_hash_policy(action, _shared_hash_policy(target, [name for name, _ in clusters]))
    if route.rewrite:
        if route.rewrite.uri is not None:
            action["prefix_rewrite"] = route.rewrite.uri
        if route.rewrite.uriRegexRewrite:
            action["regex_rewrite"] = {"pattern": {"regex": route.rewrite.uriRegexRewrite.match},
                                       "substitution": route.rewrite.uriRegexRewrite.rewrite}
        if route.rewrite.authority:
            action["host_rewrite_literal"] = route.rewrite.authority
    mirrors = [(m.destination, m.percentage.value if m.percentage else 100.0) for m in route.mirrors or []]
    if route.mirror:
        mirrors.append((route.mirror, route.mirrorPercentage.value if route.mirrorPercentage else 100.0))
    policies = []
    for dest, pct in mirrors:
        name = target.resolve(dest.host, dest.port.number if dest.port else None, dest.subset)
        if name is None:
            problems.add(f"{where}.mirror", f"mirror destination {dest.host} is not served by this waypoint")
            continue
        policies.append({"cluster": name, "runtime_fraction": {"default_value": _percent(pct)}})
    if policies:
        action["request_mirror_policies"] = policies
    return {"route": action}


def build_vs_routes(vs: VirtualService, target: RouteTarget, problems: Problems) -> list[Body]:
    """Envoy routes for one VirtualService's `http` section, in order, stopping after a catch-all."""
    routes: list[Body] = []
    meta = {"filter_metadata": {"istio": {
        "config": f"/apis/networking.istio.io/v1/namespaces/{vs.namespace}/virtual-service/{vs.name}"}}}
    for i, http in enumerate(vs.spec.http or []):
        where = f"VirtualService {vs.namespace}/{vs.name} spec.http[{i}]"
        matches = [m for m in (http.match or [None]) if m is None or m.port in (None, target.port)]
        if not matches:
            continue
        action = _action(http, target, where, problems)
        extra = {**_headers(http.headers.request if http.headers else None, "request"),
                 **_headers(http.headers.response if http.headers else None, "response")}
        per_filter: Body = {}
        fault = build_fault(http)
        if fault:
            per_filter["envoy.filters.http.fault"] = fault
        catch_all = False
        for m in matches:
            route: Body = {"match": build_match(m), **action, "metadata": meta, **extra,
                           "decorator": {"operation": f"{vs.name}:{target.port}/*"}}
            name = ".".join(p for p in (http.name, m.name if m else None) if p)
            if name:
                route["name"] = name
            if per_filter:
                route["typed_per_filter_config"] = per_filter
            routes.append(route)
            catch_all = catch_all or m is None or (m.uri is None and not m.headers and not m.method and
                                                   not m.queryParams and not m.authority and not m.withoutHeaders)
        if catch_all:
            break
    return routes


def build_route_config(name: str, target: RouteTarget, virtual_services: list[VirtualService],
                       problems: Problems) -> Body:
    routes: list[Body] = []
    for vs in virtual_services:
        routes += build_vs_routes(vs, target, problems)
    if not virtual_services:
        routes = [build_default_route(target)]
    return {"name": name, "validate_clusters": False,
            "virtual_hosts": [{"name": f"inbound|http|{target.port}", "domains": ["*"], "routes": routes}]}
