"""AuthorizationPolicy -> Envoy RBAC, with Istio's semantics (pure).

- Which policies apply: targetRefs policies to waypoints (Gateway, Service, ServiceEntry, the
  istio-waypoint GatewayClass from the root namespace); selector and namespace-wide policies to
  node proxies (ztunnel), root-namespace ones mesh-wide.
- Evaluation: AUDIT, then DENY, then ALLOW filters; once any ALLOW policy applies a request must
  match one of its rules; an ALLOW policy without rules allows nothing; `rules: [{}]` matches all.
- Identity: on a waypoint the caller is the HBONE peer, carried in filter state
  `io.istio.peer_principal`; on a node proxy it is the mTLS peer of the HBONE connection.
- A rule a proxy cannot enforce (HTTP attributes on a node proxy, unknown `when` keys) fails
  closed: dropped from an ALLOW, and matching everything in a DENY.
- AUDIT policies are an RBAC filter with action LOG (logged, never enforced); policies annotated
  `istio.io/dry-run: "true"` go to `shadow_rules` (evaluated and counted under the
  `istio_dry_run_allow_` / `istio_dry_run_deny_` stats, never enforced). Node proxies get neither:
  ztunnel supports no AUDIT, and dry-run only behind a feature flag that is off by default.
- CUSTOM (external authorization) is built in `build_extauthz` and goes before these filters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .. import labels as L
from ..mesh.policy_status import HTTP_OPERATION_FIELDS, HTTP_SOURCE_FIELDS, HTTP_WHEN_PREFIXES, \
    detect_dry_run, find_http_attributes
from ..model.istio import AuthorizationPolicy, RequestAuthentication, Rule
from .protos import typed

Body = dict[str, Any]
WAYPOINT = "waypoint"
ZTUNNEL = "ztunnel"  # HBONE inbound: identity from the mTLS peer, port from the CONNECT :authority
ZTUNNEL_TCP = "ztunnel-tcp"  # plaintext inbound: no identity, port from the original destination
DRY_RUN_STAT_PREFIX = {"ALLOW": "istio_dry_run_allow_", "DENY": "istio_dry_run_deny_"}
ENVOY_ACTION = {"AUDIT": "LOG", "DENY": "DENY", "ALLOW": "ALLOW"}


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    action: str
    rules: tuple[Rule, ...] | None
    dry_run: bool = False
    provider: str | None = None  # CUSTOM: the MeshConfig extension provider

    @staticmethod
    def of(p: AuthorizationPolicy) -> "Policy":
        rules = tuple(p.spec.rules) if p.spec.rules is not None else None
        return Policy(p.namespace, p.name, p.spec.action, rules, detect_dry_run(p),
                      (p.spec.provider or {}).get("name"))


def _target_refs(p: AuthorizationPolicy | RequestAuthentication) -> list:
    return list(p.spec.targetRefs or []) + ([p.spec.targetRef] if p.spec.targetRef else [])


def detect_waypoint_target(p: AuthorizationPolicy | RequestAuthentication, waypoint_ns: str, waypoint: str,
                           service_ns: str | None = None, service: str | None = None,
                           service_kind: str = "Service") -> bool:
    """Whether a policy's targetRefs attach it to a waypoint's chain for a service (every chain when
    service is None): Istio's ShouldAttachPolicy for waypoints, the same for every policy kind."""
    for ref in _target_refs(p):
        ns = ref.namespace or p.namespace
        if ref.kind == "Gateway" and ns == waypoint_ns and ref.name == waypoint and p.namespace == waypoint_ns:
            return True
        if ref.kind == "GatewayClass" and ref.name == L.WAYPOINT_CLASS and p.namespace == L.ROOT_NAMESPACE:
            return True
        if ref.kind == service_kind and service and ns == service_ns and ref.name == service \
                and p.namespace == service_ns:
            return True
    return False


def find_waypoint_policies(policies: Iterable[AuthorizationPolicy], waypoint_ns: str, waypoint: str,
                           service_ns: str | None = None, service: str | None = None,
                           service_kind: str = "Service") -> list[Policy]:
    """Policies a waypoint enforces on one service's chain (or on every chain when service is None)."""
    return [Policy.of(p) for p in policies
            if detect_waypoint_target(p, waypoint_ns, waypoint, service_ns, service, service_kind)]


def find_policy_targets(policies: Iterable[AuthorizationPolicy | RequestAuthentication]
                        ) -> frozenset[tuple[str, str, str]]:
    """(kind, namespace, name) of every targetRef: a service no policy names gets exactly the
    waypoint-wide policies (`find_waypoint_policies` without a service)."""
    return frozenset((ref.kind, ref.namespace or p.namespace, ref.name) for p in policies for ref in _target_refs(p))


def find_workload_policies(policies: Iterable[AuthorizationPolicy], namespace: str,
                           labels: dict[str, str]) -> list[Policy]:
    """Selector / namespace-wide / root-namespace policies a node proxy enforces for a pod."""
    out = []
    for p in policies:
        if _target_refs(p):
            continue
        if p.namespace not in (namespace, L.ROOT_NAMESPACE):
            continue
        sel = p.spec.selector.matchLabels if p.spec.selector else {}
        if all(labels.get(k) == v for k, v in sel.items()):
            out.append(Policy.of(p))
    return out


def _spiffe(value: str) -> str:
    return value if value.startswith("spiffe://") else f"spiffe://{value}"


def _wild(value: str, exact_key: str = "exact") -> Body:
    """Istio's string forms: exact, `prefix*`, `*suffix`, `*` (presence)."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.endswith("*"):
        return {"prefix": value[:-1]}
    if value.startswith("*"):
        return {"suffix": value[1:]}
    return {exact_key: value}


JWT_FILTER = "envoy.filters.http.jwt_authn"  # where RequestAuthentication puts the token's claims (build_jwt)


def _header(name: str, value: str, ignore_case: bool = False) -> Body:
    """Istio's HeaderMatcher: `*` is presence; hosts compare case-insensitively."""
    if value == "*":
        return {"header": {"name": name, "present_match": True}}
    match = _wild(value)
    if ignore_case:
        match["ignore_case"] = True
    return {"header": {"name": name, "string_match": match}}


def _path(value: str) -> Body:
    """`{*}` / `{**}` path templates use Envoy's URI template matcher (its `*` / `**`), as Istio does."""
    if "{*}" in value or "{**}" in value:
        return {"uri_template": {"name": "uri-template", "typed_config": typed(
            "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            path_template=value.replace("{**}", "**").replace("{*}", "*"))}}
    return {"url_path": {"path": _wild(value)}}


def _claims(claims: list[str], values: list[str]) -> Body:
    """A JWT claim (string or list of strings) among `values`, read from jwt_authn's payload."""
    path = [{"key": "payload"}, *({"key": c} for c in claims)]
    one = {"or_match": {"value_matchers": [{"string_match": _wild(v)} for v in values]}} if len(values) > 1 \
        else {"string_match": _wild(values[0])}
    return {"or_ids": {"ids": [{"metadata": {"filter": JWT_FILTER, "path": path, "value": one}},
                               {"metadata": {"filter": JWT_FILTER, "path": path,
                                             "value": {"list_match": {"one_of": one}}}}]}}


def _request_principal(value: str) -> Body:
    """`iss/sub` of the request's JWT (Istio's requestPrincipalGenerator, `*` forms included)."""
    iss, slash, sub = value.rpartition("/")
    if not slash:
        iss, sub = value, ""
    any_ = {"safe_regex": {"regex": ".+"}}
    if value == "*":
        m_iss, m_sub = any_, any_
    elif value.startswith("*"):
        m_iss = (any_ if iss == "*" else {"suffix": iss[1:]}) if slash else any_
        m_sub = {"exact": sub} if slash else {"suffix": value[1:]}
    elif value.endswith("*"):
        m_iss = {"exact": iss} if slash else {"prefix": value[:-1]}
        m_sub = (any_ if sub == "*" else {"prefix": sub[:-1]}) if slash else any_
    else:
        m_iss, m_sub = {"exact": iss}, {"exact": sub}
    return {"and_ids": {"ids": [
        {"metadata": {"filter": JWT_FILTER, "path": [{"key": "payload"}, {"key": k}], "value": {"string_match": m}}}
        for k, m in (("iss", m_iss), ("sub", m_sub))]}}


def _bracketed(text: str) -> list[str] | None:
    """`[a][b]` -> ["a", "b"]; `[a.b]` -> ["a.b"]; None if malformed."""
    if not text.startswith("[") or not text.endswith("]"):
        return None
    parts = text[1:-1].split("][")
    return parts if all(parts) and not any("[" in x or "]" in x for x in parts) else None


class _Builder:
    def __init__(self, proxy: str, namespace: str = ""):
        self.proxy = proxy
        self.policy_ns = namespace  # the default namespace of `serviceAccounts` entries

    def principal_id(self, match: Body) -> Body:
        if self.proxy == WAYPOINT:
            return {"filter_state": {"key": "io.istio.peer_principal", "string_match": match}}
        return {"authenticated": {"principal_name": match}}

    def principal(self, value: str) -> Body:
        if value == "*":
            return self.principal_id({"safe_regex": {"regex": ".+"}})
        m = _wild(_spiffe(value)) if not value.startswith("*") else _wild(value)
        return self.principal_id(m)

    def namespace(self, ns: str) -> Body:
        return self.principal_id({"safe_regex": {"regex": f".*/ns/{ns.replace('*', '.*')}/.*"}})

    def service_account(self, value: str) -> Body:
        """`NAME` (in the policy's namespace) or `NS/NAME`, by Istio's serviceAccountRegex."""
        ns, slash, sa = value.partition("/")
        if not slash:
            ns, sa = self.policy_ns, value
        return self.principal_id({"safe_regex": {"regex": f"spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?"}})

    def ip(self, cidr: str, remote: bool = False) -> Body:
        prefix, _, length = cidr.partition("/")
        return {"remote_ip" if remote else "direct_remote_ip": {
            "address_prefix": prefix, "prefix_len": int(length or (128 if ":" in prefix else 32))}}

    def port(self, port: str) -> Body:
        if self.proxy == ZTUNNEL:  # the CONNECT :authority carries the destination port
            return {"header": {"name": ":authority", "string_match": {"suffix": f":{port}"}}}
        return {"destination_port": int(port)}

    @staticmethod
    def _or(items: list[Body], key: str) -> Body | None:
        if not items:
            return None
        return items[0] if len(items) == 1 else {key: {"ids" if key == "or_ids" else "rules": items}}

    def _field(self, values, make, key: str, negate: bool) -> Body | None:
        body = self._or([make(v) for v in values or []], key)
        if body is None:
            return None
        if negate:
            return {"not_id" if key == "or_ids" else "not_rule": body}
        return body

    def source(self, s) -> list[Body]:
        parts = [
            self._field(s.principals, self.principal, "or_ids", False),
            self._field(s.notPrincipals, self.principal, "or_ids", True),
            self._field(s.namespaces, self.namespace, "or_ids", False),
            self._field(s.notNamespaces, self.namespace, "or_ids", True),
            self._field(s.serviceAccounts, self.service_account, "or_ids", False),
            self._field(s.notServiceAccounts, self.service_account, "or_ids", True),
            self._field(s.requestPrincipals, _request_principal, "or_ids", False),
            self._field(s.notRequestPrincipals, _request_principal, "or_ids", True),
            self._field(s.ipBlocks, self.ip, "or_ids", False),
            self._field(s.notIpBlocks, self.ip, "or_ids", True),
            self._field(s.remoteIpBlocks, lambda c: self.ip(c, True), "or_ids", False),
            self._field(s.notRemoteIpBlocks, lambda c: self.ip(c, True), "or_ids", True),
        ]
        return [p for p in parts if p]

    def operation(self, o) -> list[Body]:
        def header(name: str, ignore_case: bool = False):
            return lambda v: _header(name, v, ignore_case)

        path = _path
        parts = [
            self._field(o.ports, self.port, "or_rules", False),
            self._field(o.notPorts, self.port, "or_rules", True),
            self._field(o.methods, header(":method"), "or_rules", False),
            self._field(o.notMethods, header(":method"), "or_rules", True),
            self._field(o.paths, path, "or_rules", False),
            self._field(o.notPaths, path, "or_rules", True),
            self._field(o.hosts, header(":authority", True), "or_rules", False),
            self._field(o.notHosts, header(":authority", True), "or_rules", True),
        ]
        return [p for p in parts if p]

    def condition(self, key: str, values: list[str]) -> tuple[str, Body] | None:
        """('permission'|'principal', matcher) for a `when` key, None when unsupported."""
        if key.startswith("request.headers[") and key.endswith("]"):
            name = key[len("request.headers["):-1].lower()
            return "principal", self._or([{"header": _header(name, v)["header"]} for v in values], "or_ids")
        if key.startswith("request.auth.claims["):
            claims = _bracketed(key[len("request.auth.claims"):])
            return ("principal", _claims(claims, values)) if claims and values else None
        if key.startswith("experimental.envoy.filters.") and key.endswith("]"):
            filter_name, _, field = key.removeprefix("experimental.")[:-1].partition("[")
            return "permission", self._or([{"metadata": {"filter": filter_name, "path": [{"key": field}],
                                                         "value": {"string_match": _wild(v)}}} for v in values],
                                          "or_rules")
        jwt = {"request.auth.principal": lambda: self._or([_request_principal(v) for v in values], "or_ids"),
               "request.auth.audiences": lambda: _claims(["aud"], values),
               "request.auth.presenter": lambda: _claims(["azp"], values)}
        if key in jwt:
            return ("principal", jwt[key]()) if values else None
        simple = {
            "source.ip": ("principal", lambda v: self.ip(v)),
            "remote.ip": ("principal", lambda v: self.ip(v, True)),
            "source.namespace": ("principal", self.namespace),
            "source.principal": ("principal", self.principal),
            "destination.port": ("permission", self.port),
            "destination.ip": ("permission", lambda v: {"destination_ip": self.ip(v)["direct_remote_ip"]}),
            "connection.sni": ("permission", lambda v: {"requested_server_name": _wild(v)}),
        }
        if key not in simple:
            return None
        side, make = simple[key]
        return side, self._or([make(v) for v in values], "or_ids" if side == "principal" else "or_rules")


def detect_http_rule(rule: Rule) -> list[str]:
    """The HTTP attributes a rule uses (a node proxy, or a TCP chain, cannot enforce them)."""
    return find_http_attributes(rule)


def strip_http(rule: Rule) -> Rule:
    """The rule without its HTTP attributes: what a node proxy enforces of a DENY (more restrictive)."""
    data = rule.model_dump(by_alias=True, exclude_none=True)
    for t in data.get("to") or []:
        for f in HTTP_OPERATION_FIELDS:
            t["operation"].pop(f, None)
    for f_ in data.get("from") or []:
        for f in HTTP_SOURCE_FIELDS:
            f_["source"].pop(f, None)
    if data.get("when"):
        data["when"] = [c for c in data["when"] if not c["key"].startswith(HTTP_WHEN_PREFIXES)]
    return Rule.model_validate(data, strict=False)


def build_rule(rule: Rule, proxy: str, network: bool = False, namespace: str = "") -> Body | None:
    """One Envoy RBAC Policy for an Istio rule, or None if the proxy (or a TCP chain) cannot enforce it."""
    b = _Builder(proxy, namespace)
    if (network or proxy in (ZTUNNEL, ZTUNNEL_TCP)) and detect_http_rule(rule):
        return None
    principals: list[Body] = []
    permissions: list[Body] = []
    if rule.from_:
        ids = [{"and_ids": {"ids": parts}} if len(parts) > 1 else parts[0] if parts else {"any": True}
               for parts in (b.source(f.source) for f in rule.from_)]
        principals.append(ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}})
    if rule.to:
        ops = [{"and_rules": {"rules": parts}} if len(parts) > 1 else parts[0] if parts else {"any": True}
               for parts in (b.operation(t.operation) for t in rule.to)]
        permissions.append(ops[0] if len(ops) == 1 else {"or_rules": {"rules": ops}})
    for cond in rule.when or []:
        # `values` must match and `notValues` must not (both may be given).
        for values, negate in ((cond.values, False), (cond.notValues, True)):
            if not values:
                continue
            built = b.condition(cond.key, values)
            if built is None or built[1] is None:
                return None
            side, matcher = built
            if side == "principal":
                principals.append({"not_id": matcher} if negate else matcher)
            else:
                permissions.append({"not_rule": matcher} if negate else matcher)
    principal = ({"and_ids": {"ids": principals}} if len(principals) > 1 else principals[0]) if principals \
        else {"any": True}
    permission = ({"and_rules": {"rules": permissions}} if len(permissions) > 1 else permissions[0]) if permissions \
        else {"any": True}
    return {"permissions": [permission], "principals": [principal]}


def build_rbac_policies(policies: list[Policy], action: str, proxy: str, network: bool = False,
                        prefix: str = "") -> Body:
    """{policy name: RBAC Policy} for one action, names `[PREFIX]ns[NS]-policy[NAME]-rule[I]`."""
    out: Body = {}
    for p in policies:
        if p.action != action or p.rules is None:
            continue
        for i, rule in enumerate(p.rules):
            built = build_rule(rule, proxy, network, p.namespace)
            if built is None and action in ("DENY", "AUDIT", "CUSTOM"):
                # Fail closed: a DENY is enforced without the parts this proxy cannot see (Istio's rule;
                # istiod builds CUSTOM and AUDIT rules the same way).
                built = build_rule(strip_http(rule), proxy, network, p.namespace) or \
                    {"permissions": [{"any": True}], "principals": [{"any": True}]}
            if built is None:
                continue
            out[f"{prefix}ns[{p.namespace}]-policy[{p.name}]-rule[{i}]"] = built
    return out


def build_rbac_filter(network: bool, rules: Body | None = None, shadow: Body | None = None,
                      shadow_prefix: str = "") -> Body:
    """One HTTP or network RBAC filter: enforced `rules`, evaluated-only `shadow_rules`."""
    kind = "network" if network else "http"
    config: Body = {}
    if rules is not None:
        config["rules"] = rules
    if shadow is not None:
        config["shadow_rules"] = shadow
        if shadow_prefix:
            config["shadow_rules_stat_prefix"] = shadow_prefix
    if network:
        config["stat_prefix"] = "tcp."
    return {"name": f"envoy.filters.{kind}.rbac",
            "typed_config": typed(f"envoy.extensions.filters.{kind}.rbac.v3.RBAC", **config)}


def build_rbac_filters(policies: list[Policy], proxy: str, network: bool = False) -> list[Body]:
    """The RBAC filters for a chain, in Istio's order: AUDIT, DENY, ALLOW (each with its dry-run
    policies as shadow rules). A DENY or AUDIT filter is left out when it has no rule to match;
    an ALLOW filter is there as soon as one ALLOW policy applies (then it denies what no rule allows)."""
    if not policies:
        return []
    if proxy != WAYPOINT:
        policies = [p for p in policies if not p.dry_run and p.action != "AUDIT"]
    filters = []
    for action, envoy_action in ENVOY_ACTION.items():
        live = [p for p in policies if p.action == action and not p.dry_run]
        dry = [p for p in policies if p.action == action and p.dry_run]
        rules = {"action": envoy_action, "policies": build_rbac_policies(live, action, proxy, network)}
        shadow = {"action": envoy_action, "policies": build_rbac_policies(dry, action, proxy, network)}
        keep_rules = bool(live) if action == "ALLOW" else bool(rules["policies"])
        keep_shadow = bool(dry) if action == "ALLOW" else bool(shadow["policies"])
        if keep_rules or keep_shadow:
            filters.append(build_rbac_filter(network, rules if keep_rules else None, shadow if keep_shadow else None,
                                             DRY_RUN_STAT_PREFIX.get(action, "")))
    return filters
