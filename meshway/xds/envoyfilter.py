"""EnvoyFilter (networking.istio.io/v1alpha3) on waypoints (pure): which filters a waypoint applies,
in which order, their patches, and what is reported on their status.

- Attachment as Istio's for waypoints: only `targetRefs` filters. A Gateway of the waypoint (same
  namespace) or the istio-waypoint GatewayClass (from the root namespace) patches the whole waypoint;
  a Service or ServiceEntry bound to it (same namespace) only that service's chains, routes and
  clusters. `workloadSelector` filters are for sidecars and gateways: ignored by waypoints.
- Order: priority, root namespace first, creation time, name; then `configPatches` in list order.
- A patch whose value is not a valid Envoy object, that meshway cannot apply on a waypoint, or that
  matches nothing is reported (Istio is silent about the last; this says so on the status).
  How patches apply: `envoyfilter_patch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .. import labels as L
from ..mesh.view import ServiceInfo
from ..model.istio import EnvoyFilter, EnvoyFilterSpec
from .envoyfilter_patch import OPERATIONS, VALUE_TYPES, Patch, PatchError, build_patch_value, patch_resources

Body = dict[str, Any]


@dataclass(frozen=True)
class AttachedFilter:
    key: str  # <namespace>/<name>
    spec: EnvoyFilterSpec
    hosts: frozenset[str] | None  # the service hostnames it is limited to; None: the whole waypoint


def find_envoy_filters(filters: Iterable[EnvoyFilter], waypoint_ns: str, waypoint: str,
                       services: Iterable[ServiceInfo]) -> list[AttachedFilter]:
    """The EnvoyFilters a waypoint applies, in Istio's order, each with the services it is limited to."""
    filters = list(filters)
    if not filters:
        return []
    bound = {(s.kind, s.namespace, s.name): s.hostname for s in services}
    ranked = []
    for f in filters:
        hosts: set[str] | None = set()
        for ref in f.spec.targetRefs or []:
            ns = ref.namespace or f.namespace
            if ref.kind == "Gateway" and ns == f.namespace == waypoint_ns and ref.name == waypoint \
                    or ref.kind == "GatewayClass" and ref.name == L.WAYPOINT_CLASS and f.namespace == L.ROOT_NAMESPACE:
                hosts = None
                break
            if ref.kind in ("Service", "ServiceEntry") and ns == f.namespace and (ref.kind, ns, ref.name) in bound:
                hosts.add(bound[(ref.kind, ns, ref.name)])
        if hosts is None or hosts:
            rank = (f.spec.priority, f.namespace != L.ROOT_NAMESPACE, f.metadata.creationTimestamp or "",
                    f"{f.name}.{f.namespace}")
            ranked.append((rank, AttachedFilter(f"{f.namespace}/{f.name}", f.spec,
                                                None if hosts is None else frozenset(hosts))))
    return [a for _, a in sorted(ranked, key=lambda r: r[0])]


def build_patches(filters: Iterable[AttachedFilter], problems: list[tuple[str, str]]) -> list[Patch]:
    """The filters' patches in order, values built; those that cannot apply are added to `problems`."""
    out = []
    for f in filters:
        for i, cp in enumerate(f.spec.configPatches):
            where, label = f"EnvoyFilter {f.key}", f"configPatches[{i}] ({cp.applyTo} {cp.patch.operation})"
            if cp.applyTo not in VALUE_TYPES:
                problems.append((where, f"{label}: applyTo {cp.applyTo} is not supported on meshway waypoints"))
                continue
            operation = cp.patch.operation
            if operation.startswith("INSERT_") and cp.applyTo not in ("HTTP_FILTER", "NETWORK_FILTER", "HTTP_ROUTE"):
                operation = "ADD"  # as Istio: order does not matter there
            if operation not in OPERATIONS[cp.applyTo]:
                problems.append((where, f"{label}: {cp.applyTo} supports only {', '.join(OPERATIONS[cp.applyTo])}"))
                continue
            if cp.match.proxy is not None:
                problems.append((where, f"{label}: match.proxy is not supported (meshway waypoints carry no "
                                        "Istio proxy version or metadata)"))
                continue
            try:
                value = build_patch_value(cp.applyTo, cp.patch.value) if cp.patch.value else None
            except PatchError as exc:
                problems.append((where, f"{label}: value is {exc}"))
                continue
            out.append(Patch(len(out), where, label, cp.applyTo, operation, cp.match, value, f.hosts,
                             cp.patch.filterClass if cp.applyTo == "HTTP_FILTER" else None))
    return out


def apply_envoy_filters(resources: dict[str, dict[str, Body]], filters: Iterable[AttachedFilter]
                        ) -> tuple[dict[str, dict[str, Body]], list[tuple[str, str]]]:
    """(patched resources, problems): a patch that is invalid or matches nothing is reported."""
    problems: list[tuple[str, str]] = []
    patches = build_patches(filters, problems)
    if not patches:
        return resources, problems
    out, tally = patch_resources(resources, patches)
    for p in patches:
        if p.index in tally.failed:
            problems.append((p.where, f"{p.label}: {tally.failed[p.index]}"))
        elif p.index not in tally.applied:
            problems.append((p.where, f"{p.label} matched nothing on this waypoint"))
    return out, problems


def build_envoy_filter_condition(has_target_refs: bool, waypoints: list[str], problems: list[str]) -> Body:
    """An EnvoyFilter's `Reconciled` condition from what the waypoints made of it."""
    if problems:
        return {"type": "Reconciled", "status": "False", "reason": "PatchNotApplied", "message": "; ".join(problems)}
    if waypoints:
        return {"type": "Reconciled", "status": "True", "reason": "Applied",
                "message": f"applied on waypoint {', '.join(waypoints)}"}
    if not has_target_refs:
        return {"type": "Reconciled", "status": "False", "reason": "Ignored",
                "message": "waypoints apply only EnvoyFilters with targetRefs (workloadSelector is for sidecars "
                           "and gateways, which meshway does not run)"}
    return {"type": "Reconciled", "status": "False", "reason": "TargetNotFound",
            "message": "no running waypoint is targeted: targetRefs must name a waypoint Gateway in the same "
                       "namespace, GatewayClass istio-waypoint (from istio-system), or a Service or ServiceEntry "
                       "in the same namespace that is bound to a waypoint"}
