"""What a waypoint does with one HTTP request, read from the config the waypoint gets (pure).

`simulate_at_waypoint(config, vip, port, request, conn)` takes a `WaypointConfig` built by
`build_waypoint_config` (the same config pushed to the waypoint's Envoy) and follows Envoy: the
`main_internal` filter chain for the destination VIP:port, its HTTP filters in order (CUSTOM's
shadow RBAC + ext_authz, jwt_authn, RBAC AUDIT/DENY/ALLOW, fault), the route of its
RouteConfiguration (first match wins), and the route's clusters and their endpoints (pods).
"""
from __future__ import annotations

import base64
import ipaddress
import json
import re
from dataclasses import replace
from typing import Any

from . import protos as P
from .build_authz import JWT_FILTER
from .build_extauthz import BAD_SUFFIX, SHADOW_STAT_PREFIX
from .envoy_match import Connection, HttpRequest, find_route, match_policy, parse_query, percent_of

Body = dict[str, Any]
RBAC_NAME = re.compile(r"(?:istio-ext-authz-(?P<provider>.+)-)?ns\[(?P<ns>[^\]]*)\]-policy\[(?P<name>[^\]]*)\]"
                       r"-rule\[(?P<rule>\d+)\](?P<bad>" + re.escape(BAD_SUFFIX) + ")?")
ISTIO_ACTION = {"ALLOW": "ALLOW", "DENY": "DENY", "LOG": "AUDIT"}
REDIRECT = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307,
            "PERMANENT_REDIRECT": 308}


def select_matcher(matcher: Body, inputs: dict[str, Any]) -> str | None:
    """Envoy's unified matcher over a listener's filter chains: the chain name it selects (None:
    no chain). `inputs` by input type name: DestinationIPInput, SourceIPInput, DestinationPortInput,
    ApplicationProtocolInput."""
    tree = matcher.get("matcher_tree")
    chosen = None
    if tree:
        kind = tree["input"]["typed_config"]["@type"].rsplit(".", 1)[-1]
        value = inputs.get(kind)
        if "exact_match_map" in tree:
            chosen = tree["exact_match_map"]["map"].get(str(value))
        elif "custom_match" in tree:
            best = -1
            for entry in tree["custom_match"]["typed_config"].get("range_matchers") or []:
                for r in entry["ranges"]:
                    if value is not None and _in_prefix(value, r) and r.get("prefix_len", 32) > best:
                        best, chosen = r.get("prefix_len", 32), entry["on_match"]
    if chosen is not None:
        found = _on_match(chosen, inputs)
        if found is not None:
            return found
    return _on_match(matcher["on_no_match"], inputs) if matcher.get("on_no_match") else None


def _on_match(on_match: Body, inputs: dict[str, Any]) -> str | None:
    if "action" in on_match:
        return on_match["action"]["typed_config"]["value"]
    return select_matcher(on_match["matcher"], inputs)


def _in_prefix(ip: str, r: Body) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(f"{r['address_prefix']}/{r.get('prefix_len', 32)}",
                                                                strict=False)
    except ValueError:
        return False


def find_chain(listener: Body, inputs: dict[str, Any]) -> Body | None:
    name = select_matcher(listener["filter_chain_matcher"], inputs) if listener.get("filter_chain_matcher") else None
    return next((c for c in listener["filter_chains"] if c.get("name") == name), None)


def _hcm(chain: Body) -> Body | None:
    return next((f["typed_config"] for f in chain.get("filters") or []
                 if f["name"] == "envoy.filters.network.http_connection_manager"), None)


# -- authorization -----------------------------------------------------------------------------------
def _policy_ref(name: str) -> Body:
    m = RBAC_NAME.fullmatch(name)
    if not m:
        return {"rbac_policy": name}
    return {"policy": f"{m['ns']}/{m['name']}", "rule": int(m["rule"]), "rbac_policy": name}


def _tri(value: bool | None) -> str:
    return {True: "match", False: "no match", None: "unknown"}[value]


def evaluate_rbac(config: Body, request: HttpRequest | None, conn: Connection) -> list[Body]:
    """Each policy of one RBAC filter (enforced rules, then shadow rules) with its match."""
    out = []
    for key, enforced in (("rules", True), ("shadow_rules", False)):
        rules = config.get(key)
        if rules is None:
            continue
        for name, policy in sorted((rules.get("policies") or {}).items()):
            out.append({**_policy_ref(name), "action": rules.get("action", "ALLOW"), "enforced": enforced,
                        "match": _tri(match_policy(policy, request, conn))})
    return out


def decide_rbac(config: Body, results: list[Body]) -> Body:
    """One RBAC filter's verdict: allow, deny, or unknown, and the policies that decided."""
    rules = config.get("rules")
    shadow = config.get("shadow_rules") or {}
    enforced = [r for r in results if r["enforced"]]
    if rules is None:
        kind = "CUSTOM" if config.get("shadow_rules_stat_prefix") == SHADOW_STAT_PREFIX else "dry-run"
        matched = [r for r in results if r["match"] == "match"]
        unknown = [r for r in results if r["match"] == "unknown"]
        action = shadow.get("action", "ALLOW")
        return {"kind": kind, "action": "CUSTOM" if kind == "CUSTOM" else ISTIO_ACTION.get(action, action),
                "verdict": "continue", "matched": matched, "unknown": unknown}
    action = rules.get("action", "ALLOW")
    matched = [r for r in enforced if r["match"] == "match"]
    unknown = [r for r in enforced if r["match"] == "unknown"]
    if action == "LOG":
        verdict = "continue"
    elif action == "DENY":
        verdict = "deny" if matched else "unknown" if unknown else "continue"
    else:
        verdict = "continue" if matched else "unknown" if unknown else "deny"
    return {"kind": "enforced", "action": ISTIO_ACTION.get(action, action), "verdict": verdict, "matched": matched,
            "unknown": unknown}


def find_decider(verdict: Body, results: list[Body]) -> Body:
    """The policy that denied (a DENY rule that matched), or, when an ALLOW filter denied, the note
    that none of its rules matched and which policies it had."""
    if verdict["matched"]:
        return verdict["matched"][0]
    names = sorted({r.get("policy", r["rbac_policy"]) for r in results if r["enforced"]})
    return {"rbac_policy": "no ALLOW rule matched", "allow_policies": names}


def _b64json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def find_token(provider: Body, request: HttpRequest) -> str | None:
    """Where jwt_authn looks for a provider's token (default: `Authorization: Bearer`, `?access_token=`)."""
    locations = provider.get("from_headers")
    params = provider.get("from_params")
    if not locations and not params and not provider.get("from_cookies"):
        locations, params = [{"name": "Authorization", "value_prefix": "Bearer "}], ["access_token"]
    for h in locations or []:
        value = request.header(h["name"])
        prefix = h.get("value_prefix", "")
        if value is not None and value.startswith(prefix):
            return value[len(prefix):].strip()
    query = parse_query(request.query)
    for p in params or []:
        if p in query:
            return query[p]
    return None


def evaluate_jwt(config: Body, request: HttpRequest, now: float) -> Body:
    """jwt_authn with Istio's requirement (each provider, or no token at all): the verdict, Envoy's
    status and body when it refuses, and the payload it puts in metadata. Signatures are not checked
    (the key set may be fetched by the waypoint): a token is taken as signed by its issuer."""
    providers = config.get("providers") or {}
    tokens = [(name, p, t) for name, p in sorted(providers.items()) if (t := find_token(p, request)) is not None]
    if not tokens:
        return {"verdict": "continue", "token": None, "note": "no token: the request passes without request.auth.*"}
    name, provider, token = tokens[0]
    try:
        header, payload, _ = token.split(".")
        claims = _b64json(payload)
        _b64json(header)
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
        return {"verdict": "deny", "status": 401, "body": "Jwt is not in the form of Header.Payload.Signature with two "
                                                             "dots and 3 sections", "token": None}
    # Envoy checks a token against the issuers of the providers that look where it was found
    issuers = {p.get("issuer"): n for n, p, t in tokens if t == token}
    if claims.get("iss") not in issuers:
        return {"verdict": "deny", "status": 401, "body": "Jwt issuer is not configured", "claims": claims}
    provider = providers[issuers[claims["iss"]]]
    if isinstance(claims.get("exp"), (int, float)) and claims["exp"] < now:
        return {"verdict": "deny", "status": 401, "body": "Jwt is expired", "claims": claims}
    if isinstance(claims.get("nbf"), (int, float)) and claims["nbf"] > now:
        return {"verdict": "deny", "status": 401, "body": "Jwt not yet valid", "claims": claims}
    auds = provider.get("audiences")
    token_aud = claims.get("aud")
    token_auds = token_aud if isinstance(token_aud, list) else [token_aud] if token_aud else []
    if auds and not set(auds) & set(token_auds):
        return {"verdict": "deny", "status": 403, "body": "Audiences in Jwt are not allowed", "claims": claims}
    payload = dict(claims)
    for claim in (provider.get("normalize_payload_in_metadata") or {}).get("space_delimited_claims") or []:
        if isinstance(payload.get(claim), str):
            payload[claim] = payload[claim].split(" ")
    return {"verdict": "continue", "claims": claims, "payload": payload,
            "request_principal": f"{claims.get('iss')}/{claims.get('sub')}",
            "note": "signature not checked by the simulation: assumed valid for issuer "
                    f"{claims.get('iss')!r} (provider {issuers[claims['iss']]})"}


# -- routes ------------------------------------------------------------------------------------------
def find_endpoints(resources: dict, cluster: str) -> list[Body]:
    """A cluster's endpoints as pods (`istio.workload` metadata: "pod;namespace")."""
    if cluster == "encap":  # traffic addressed to a pod: on to the pod itself
        return [{"pod": "", "namespace": "", "address": "the original destination"}]
    cla = resources[P.ENDPOINT].get(cluster) or (resources[P.CLUSTER].get(cluster) or {}).get("load_assignment") or {}
    out = []
    for group in cla.get("endpoints") or []:
        for lb in group.get("lb_endpoints") or []:
            meta = (lb.get("metadata") or {}).get("filter_metadata") or {}
            workload = (meta.get("istio") or {}).get("workload", "")
            pod, _, ns = workload.partition(";")
            sa = lb["endpoint"]["address"].get("socket_address")  # plain TCP to a pod outside the mesh
            address = (meta.get("envoy.filters.listener.original_dst") or {}).get("local") or \
                lb["endpoint"]["address"].get("envoy_internal_address", {}).get("endpoint_id", "") or \
                (f"{sa['address']}:{sa['port_value']}" if sa else "")
            out.append({"pod": pod, "namespace": ns, "address": address})
    return out


def _header_ops(route: Body) -> Body:
    """Header rewrites of a route (or weighted cluster): set, add (append), remove, per side."""
    out: Body = {}
    for side in ("request", "response"):
        for a in route.get(f"{side}_headers_to_add") or []:
            how = "add" if a.get("append_action") == "APPEND_IF_EXISTS_OR_ADD" else "set"
            out.setdefault(f"{side}_{how}", {})[a["header"]["key"]] = a["header"]["value"]
        if route.get(f"{side}_headers_to_remove"):
            out[f"{side}_remove"] = list(route[f"{side}_headers_to_remove"])
    return out


def describe_route(route: Body, resources: dict) -> Body:
    """What a matched route does: destinations with weights and pods, or a local answer; timeout,
    retries, fault, header and path rewrites, mirrors."""
    out: Body = {"name": route.get("name"), "match": route["match"]}
    meta = ((route.get("metadata") or {}).get("filter_metadata") or {}).get("istio") or {}
    if meta.get("config"):
        out["config"] = meta["config"]
    ops = _header_ops(route)
    if ops:
        out["headers"] = ops
    if "direct_response" in route:
        d = route["direct_response"]
        out["direct_response"] = {"status": d["status"], "body": (d.get("body") or {}).get("inline_string")}
        return out
    if "redirect" in route:
        r = route["redirect"]
        out["redirect"] = {"status": REDIRECT.get(r.get("response_code", "MOVED_PERMANENTLY"), 301),
                           **{k: r[k] for k in ("path_redirect", "host_redirect", "port_redirect", "scheme_redirect")
                              if k in r}}
        return out
    action = route["route"]
    if "weighted_clusters" in action:
        entries = action["weighted_clusters"]["clusters"]
        total = sum(e.get("weight", 0) for e in entries) or 1
        dests = [{"cluster": e["name"], "weight": round(100.0 * e.get("weight", 0) / total, 4),
                  **({"headers": _header_ops(e)} if _header_ops(e) else {})} for e in entries]
    else:
        dests = [{"cluster": action["cluster"], "weight": 100.0}]
    for d in dests:
        d["subset"] = _subset(d["cluster"])
        d["endpoints"] = find_endpoints(resources, d["cluster"])
    out["destinations"] = dests
    out["timeout"] = action.get("timeout", "15s")
    retry = action.get("retry_policy")
    out["retries"] = None if retry is None else {
        "attempts": retry.get("num_retries", 1), "retry_on": retry.get("retry_on"),
        **({"per_try_timeout": retry["per_try_timeout"]} if "per_try_timeout" in retry else {}),
        **({"retriable_status_codes": retry["retriable_status_codes"]} if "retriable_status_codes" in retry else {})}
    for key in ("prefix_rewrite", "host_rewrite_literal"):
        if key in action:
            out.setdefault("rewrite", {})[key] = action[key]
    if "regex_rewrite" in action:
        out.setdefault("rewrite", {})["regex_rewrite"] = {"pattern": action["regex_rewrite"]["pattern"]["regex"],
                                                         "substitution": action["regex_rewrite"]["substitution"]}
    if action.get("request_mirror_policies"):
        out["mirrors"] = [{"cluster": m["cluster"], "percent": percent_of(
            (m.get("runtime_fraction") or {}).get("default_value"))} for m in action["request_mirror_policies"]]
    if action.get("hash_policy"):
        out["hash_policy"] = action["hash_policy"]
    return out


def _subset(cluster: str) -> str | None:
    parts = cluster.split("|")
    return parts[2].split("/", 1)[1] if len(parts) == 4 and "/" in parts[2] else None


def describe_fault(route: Body) -> Body | None:
    fault = (route.get("typed_per_filter_config") or {}).get("envoy.filters.http.fault")
    if not fault:
        return None
    out: Body = {}
    if "delay" in fault:
        out["delay"] = {"fixed_delay": fault["delay"]["fixed_delay"], "percent": percent_of(fault["delay"].get(
            "percentage"))}
    if "abort" in fault:
        abort = fault["abort"]
        out["abort"] = {"status": abort["http_status"], "percent": percent_of(abort.get("percentage"))}
    return out


# -- the whole waypoint ------------------------------------------------------------------------------
class _FilterRun:
    """The HTTP filters of one chain run over one request, in order: each filter's record, the first
    local answer (after which Envoy runs no other filter: the rest are shown as not reached), and
    what the answer depends on that the simulation cannot know."""

    def __init__(self, request: HttpRequest, conn: Connection, route: Body | None, now: float):
        self.request, self.conn, self.route, self.now = request, conn, route, now
        self.filters: list[Body] = []
        self.answer: Body | None = None
        self.uncertain: list[str] = []
        self.custom_matched: list[Body] = []

    def run(self, http_filters: list[Body]) -> None:
        for f in http_filters:
            reached = self.answer is None
            known, count = len(self.uncertain), len(self.filters)
            step = {"envoy.filters.http.rbac": self.rbac, "envoy.filters.http.ext_authz": self.ext_authz,
                    JWT_FILTER: self.jwt, "envoy.filters.http.fault": self.fault}.get(f["name"])
            if step is not None:
                step(f.get("typed_config") or {})
            elif f["name"] not in ("envoy.filters.http.cors", "envoy.filters.http.router"):
                self.filters.append({"filter": f["name"], "verdict": "not simulated"})
                self.uncertain.append(f"filter {f['name']} (not simulated)")
            if not reached:
                del self.uncertain[known:]
                for later in self.filters[count:]:
                    later["reached"] = False
            elif self.answer is not None and len(self.filters) > count:
                self.filters[-1]["decided"] = True

    def decide(self, answer: Body) -> None:
        if self.answer is None:
            self.answer = answer

    def rbac(self, config: Body) -> None:
        results = evaluate_rbac(config, self.request, self.conn)
        verdict = decide_rbac(config, results)
        self.filters.append({"filter": "envoy.filters.http.rbac", **verdict, "policies": results})
        if verdict["kind"] == "CUSTOM":
            self.custom_matched = verdict["matched"]
            if verdict["unknown"]:
                self.uncertain.append("whether a CUSTOM policy's rules match (the external authorizer may be asked)")
        elif verdict["verdict"] == "deny":
            self.decide({"status": 403, "body": "RBAC: access denied", "by": verdict["action"],
                         "decided_by": find_decider(verdict, results)})
        elif verdict["verdict"] == "unknown":
            self.uncertain.append(f"{verdict['action']} policies: " + ", ".join(
                r.get("policy", r["rbac_policy"]) for r in verdict["unknown"]))

    def ext_authz(self, config: Body) -> None:
        if not self.custom_matched:
            self.filters.append({"filter": "envoy.filters.http.ext_authz", "verdict": "skipped",
                                 "note": "no CUSTOM rule matched: the authorizer is not asked"})
            return
        provider = RBAC_NAME.fullmatch(self.custom_matched[0]["rbac_policy"])
        self.filters.append({"filter": "envoy.filters.http.ext_authz", "verdict": "external",
                             "provider": provider["provider"] if provider else None, "policies": self.custom_matched})
        self.uncertain.append("the external authorizer's answer (CUSTOM policy "
                              f"{self.custom_matched[0].get('policy')}): allowed or denied by it")

    def jwt(self, config: Body) -> None:
        jwt = evaluate_jwt(config, self.request, self.now)
        self.filters.append({"filter": JWT_FILTER, **{k: v for k, v in jwt.items() if k != "payload"}})
        if jwt["verdict"] == "deny":
            self.decide({"status": jwt["status"], "body": jwt["body"], "by": "RequestAuthentication"})
        if jwt.get("payload") is not None:  # jwt_authn's metadata, which RBAC's request.auth.* matchers read
            self.conn = replace(self.conn, metadata={**self.conn.metadata, JWT_FILTER: {"payload": jwt["payload"]}})

    def fault(self, config: Body) -> None:
        fault = describe_fault(self.route) if self.route else None
        if not fault:
            return
        self.filters.append({"filter": "envoy.filters.http.fault", **fault})
        abort = fault.get("abort")
        if abort and abort["percent"] >= 100:
            self.decide({"status": abort["status"], "body": "fault filter abort", "by": "fault"})
        elif abort and abort["percent"] > 0:
            self.uncertain.append(f"fault abort {abort['status']} for {abort['percent']:g}% of requests")


def answer_from_route(described: Body | None, uncertain: list[str]) -> Body:
    """The router's part: 404 without a route, a direct response or redirect, 503 without endpoints,
    else forwarded."""
    if described is None:
        return {"status": 404, "body": "", "by": "no route matched"}
    if "direct_response" in described:
        return {"status": described["direct_response"]["status"], "body": described["direct_response"]["body"],
                "by": "direct response"}
    if "redirect" in described:
        return {"status": described["redirect"]["status"], "by": "redirect"}
    reachable = [d for d in described["destinations"] if d["weight"] > 0]
    if not any(d["endpoints"] for d in reachable):
        return {"status": 503, "body": "no healthy upstream", "by": "no endpoints"}
    if any(not d["endpoints"] for d in reachable):
        uncertain.append("a weighted destination has no endpoints: its share is answered 503")
    return {"forwarded": True, "by": "route"}


def simulate_at_waypoint(resources: dict, vip: str, port: int, request: HttpRequest, conn: Connection,
                         now: float) -> Body:
    """The waypoint's steps for one request to `vip:port`: `chain`, `filters` (each with its
    verdict), `route`, and `answer` ({"status": N, "by": ...} when the waypoint answers itself, else
    {"forwarded": true}); `uncertain` lists what the answer depends on that cannot be known here."""
    listener = resources[P.LISTENER]["main_internal"]
    chain = find_chain(listener, {"DestinationIPInput": vip, "DestinationPortInput": port,
                                  "ApplicationProtocolInput": "'http/1.1'"})
    if chain is None:
        return {"chain": None, "filters": [], "route": None, "uncertain": [], "notes": [],
                "answer": {"status": None,
                           "by": f"no chain for {vip}:{port} in main_internal: the connection is closed"}}
    hcm = _hcm(chain)
    if hcm is None:
        return {"chain": chain["name"], "filters": [], "route": None, "uncertain": [], "notes": [],
                "answer": {"tcp": True, "by": f"chain {chain['name']} is TCP: no HTTP routing or L7 policy"}}
    route_config = resources[P.ROUTE].get(hcm["rds"]["route_config_name"]) if "rds" in hcm else hcm.get("route_config")
    found = find_route(route_config or {}, request)
    route, index = found if found else (None, None)
    run = _FilterRun(request, conn, route, now)
    run.run(hcm.get("http_filters") or [])
    notes = []
    if (request.header("authorization") or "").startswith("Bearer ") and \
            not any(f["filter"] == JWT_FILTER for f in run.filters):
        notes.append("the request carries a bearer token, but no RequestAuthentication applies to this chain: "
                     "the waypoint does not validate it, so request.auth.* and requestPrincipals are empty "
                     "(rules that use them do not match)")
    described = describe_route(route, resources) if route else None
    if described is not None:
        described["index"] = index
    answer = run.answer or answer_from_route(described, run.uncertain)
    return {"chain": chain["name"], "filters": run.filters, "route": described, "answer": answer,
            "uncertain": run.uncertain, "notes": notes}
