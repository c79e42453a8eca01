"""AuthorizationPolicy status as istiod writes it (pure): `ZtunnelAccepted` for selector and
namespace policies (node proxies), `WaypointAccepted` for targetRefs policies (waypoints).

RequestAuthentication: istiod writes no status on it. meshway writes `WaypointAccepted` with the
same reasons as for an AuthorizationPolicy when it has targetRefs, and `WaypointAccepted=False`
(reason `Ignored`) when it has a selector or none: in ambient mode such a policy applies only to
sidecars and gateways (waypoints ignore selector policies, ztunnel does not read
RequestAuthentication), and meshway runs neither, so nothing enforces it.

PeerAuthentication: istiod writes no status on it either. meshway writes `ZtunnelAccepted` (ztunnel
enforces it): `Accepted`, `UnsupportedValue` (still True) where it uses DISABLE, which ztunnel
treats as PERMISSIVE, and False with reason `Ignored` for what ambient never applies: a selector
policy in the root namespace, and a policy an older one at the same level overrides."""
from __future__ import annotations

from typing import Any

from .. import labels as L
from ..model.istio import AuthorizationPolicy, PeerAuthentication, RequestAuthentication, Rule
from .peer_authentication import DISABLE, find_overriding_policy
from .providers import find_ext_authz_provider
from .selection import ACCEPTED, NOT_READY, decide_service
from .view import MeshView

Body = dict[str, Any]
HTTP_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
HTTP_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals")
HTTP_WHEN_PREFIXES = ("request.", "experimental.")
DRY_RUN = "istio.io/dry-run"
DENY_BOILERPLATE = "DENY policy with HTTP attributes is enforced without the HTTP rules. " \
                   "This will be more restrictive than requested."
ALLOW_BOILERPLATE = "Within an ALLOW policy, rules matching HTTP attributes are omitted. " \
                    "This will be more restrictive than requested."


def detect_dry_run(policy: AuthorizationPolicy) -> bool:
    """The `istio.io/dry-run` annotation, read as Go's strconv.ParseBool reads it."""
    return (policy.metadata.annotations or {}).get(DRY_RUN) in ("1", "t", "T", "true", "TRUE", "True")


def find_http_attributes(rule: Rule) -> list[str]:
    """The HTTP attributes a rule uses, by Istio's names (a node proxy cannot enforce them)."""
    found = [f for t in rule.to or [] for f in HTTP_OPERATION_FIELDS if getattr(t.operation, f)]
    found += [f for s in rule.from_ or [] for f in HTTP_SOURCE_FIELDS if getattr(s.source, f)]
    found += [c.key for c in rule.when or [] if c.key.startswith(HTTP_WHEN_PREFIXES)]
    return found


def _cond(type_: str, status: bool, reason: str, message: str) -> Body:
    return {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message}


def build_ztunnel_condition(policy: AuthorizationPolicy) -> Body:
    action = policy.spec.action
    if detect_dry_run(policy):  # ztunnel's dry-run support is behind a flag, off by default
        return _cond("ZtunnelAccepted", False, "UnsupportedValue",
                     f'found policy "{policy.namespace}/{policy.name}" using dry-run annotation, but support for '
                     "ambient dry-run authorizationPolicies isn't enabled")
    if action not in ("ALLOW", "DENY"):
        return _cond("ZtunnelAccepted", False, "UnsupportedValue", f"ztunnel does not support the {action} action")
    found = sorted({a for rule in policy.spec.rules or [] for a in find_http_attributes(rule)})
    if found:
        boilerplate = DENY_BOILERPLATE if action == "DENY" else ALLOW_BOILERPLATE
        return _cond("ZtunnelAccepted", True, "UnsupportedValue",
                     f"ztunnel does not support HTTP attributes (found: {', '.join(found)}). In ambient mode you "
                     f"must use a waypoint proxy to enforce HTTP rules. {boilerplate}")
    return _cond("ZtunnelAccepted", True, "Accepted", "attached to ztunnel")


def build_waypoint_condition(policy: AuthorizationPolicy | RequestAuthentication, view: MeshView) -> Body:
    refs = list(policy.spec.targetRefs or []) + ([policy.spec.targetRef] if policy.spec.targetRef else [])
    bound, problems = [], []
    for ref in refs:
        ns = ref.namespace or policy.namespace
        if ref.kind == "Gateway":
            if (ns, ref.name) in view.waypoints:
                bound.append(f"{ns}/{ref.name}")
            else:
                problems.append(("TargetNotFound", f"Gateway {ns}/{ref.name} was not found"))
        elif ref.kind == "GatewayClass":
            if ref.name == L.WAYPOINT_CLASS and policy.namespace == L.ROOT_NAMESPACE:
                bound.append(f"GatewayClass {ref.name}")
            else:
                problems.append(("Invalid", f"GatewayClass {ref.name} must be {L.WAYPOINT_CLASS} and the policy "
                                            f"in the root namespace {L.ROOT_NAMESPACE}"))
        elif ref.kind in ("Service", "ServiceEntry"):
            svc = view.services.get((ref.kind, ns, ref.name))
            if svc is None:
                problems.append(("TargetNotFound", f"{ref.kind} {ns}/{ref.name} was not found"))
                continue
            decision = decide_service(view, svc)
            if decision.reason in (ACCEPTED, NOT_READY) and decision.requested:
                bound.append(decision.requested)
            else:
                problems.append(("AncestorNotBound", f"{ref.kind} {ns}/{ref.name} is not bound to a waypoint"))
        else:
            problems.append(("Invalid", f"Invalid targetRefs: unsupported kind {ref.kind}"))
    if problems and not bound:
        reason, message = problems[0]
        return _cond("WaypointAccepted", False, reason, "; ".join(m for _, m in problems) if len(problems) > 1
                     else message)
    custom = find_custom_problem(policy, view) if isinstance(policy, AuthorizationPolicy) else None
    if custom:
        return _cond("WaypointAccepted", False, "Invalid", custom)
    if problems:
        return _cond("WaypointAccepted", True, "PartiallyInvalid",
                     "Invalid targetRefs: " + "; ".join(m for _, m in problems))
    return _cond("WaypointAccepted", True, "Accepted", f"bound to {', '.join(dict.fromkeys(bound))}")


def find_custom_problem(policy: AuthorizationPolicy, view: MeshView) -> str | None:
    """Why a CUSTOM policy's extension provider cannot be used, if it cannot. istiod only logs this
    and fails closed; meshway also says so on the policy."""
    if policy.spec.action != "CUSTOM" or detect_dry_run(policy):
        return None
    name = (policy.spec.provider or {}).get("name", "")
    provider, error = find_ext_authz_provider(view, name)
    if provider:
        return None
    return (f"CUSTOM action cannot use extension provider \"{name}\": {error}. Requests matching this policy's rules "
            "are denied (fail closed, as istiod does)")


def build_policy_conditions(policy: AuthorizationPolicy, view: MeshView) -> list[Body]:
    """The conditions istiod writes. A targetRefs policy with the dry-run annotation also gets a
    ZtunnelAccepted=False (istiod checks dry-run before it skips targetRefs policies for ztunnel)."""
    if policy.spec.targetRefs or policy.spec.targetRef:
        extra = [build_ztunnel_condition(policy)] if detect_dry_run(policy) else []
        return [build_waypoint_condition(policy, view), *extra]
    return [build_ztunnel_condition(policy)]


REQUEST_AUTHN_IGNORED = ("RequestAuthentication without targetRefs applies to sidecars and gateways selected by "
                         "its namespace and labels: waypoints ignore selector policies and ztunnel does not process "
                         "RequestAuthentication, so no proxy enforces it. Attach it to a waypoint with targetRefs "
                         "(the waypoint Gateway, or a Service or ServiceEntry bound to it)")


def build_request_authn_conditions(policy: RequestAuthentication, view: MeshView) -> list[Body]:
    """meshway's `WaypointAccepted` on a RequestAuthentication (istiod writes none)."""
    if policy.spec.targetRefs or policy.spec.targetRef:
        return [build_waypoint_condition(policy, view)]
    return [_cond("WaypointAccepted", False, "Ignored", REQUEST_AUTHN_IGNORED)]


PEER_AUTHN_ROOT_SELECTOR = ("PeerAuthentication policies with workload selectors are ignored when deployed in the root "
                            f"namespace {L.ROOT_NAMESPACE}")
PEER_AUTHN_DISABLE = ("ztunnel does not support DISABLE mode: it is treated as PERMISSIVE (plaintext is accepted; "
                      "HBONE between mesh workloads is always mutual TLS)")


def build_peer_authn_conditions(policy: PeerAuthentication, policies: list[PeerAuthentication]) -> list[Body]:
    """meshway's `ZtunnelAccepted` on a PeerAuthentication (istiod writes none)."""
    selector = policy.spec.selector.matchLabels if policy.spec.selector else {}
    if selector and policy.namespace == L.ROOT_NAMESPACE:
        return [_cond("ZtunnelAccepted", False, "Ignored", PEER_AUTHN_ROOT_SELECTOR)]
    older = find_overriding_policy(policy, policies)
    if older is not None:
        scope = "workload selector" if selector else "mesh" if policy.namespace == L.ROOT_NAMESPACE else "namespace"
        return [_cond("ZtunnelAccepted", False, "Ignored",
                      f"the older PeerAuthentication {older.namespace}/{older.name} with the same {scope} scope "
                      "applies instead (the oldest wins)")]
    modes = [policy.spec.mode, *(m.mode for m in (policy.spec.portLevelMtls or {}).values())]
    if DISABLE in modes:
        return [_cond("ZtunnelAccepted", True, "UnsupportedValue", PEER_AUTHN_DISABLE)]
    return [_cond("ZtunnelAccepted", True, "Accepted", "attached to ztunnel")]
