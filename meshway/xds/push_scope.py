"""Which waypoints a batch of changes can touch (istiod's push scoping, `ConfigsUpdated`): pure.

Every namespaced kind a waypoint's config reads is looked up by namespace: VirtualServices,
DestinationRules, AuthorizationPolicies, RequestAuthentications, Telemetry and EnvoyFilters apply
when they live in the namespace of the service or of the waypoint (the root namespace: everywhere),
pods feed the endpoints of the services of their namespace, and an HTTPRoute attaches to the
Services its parentRefs name. So a change in namespace N can touch only the waypoints in N and those
serving a service or workload of N, before or after the change, and, through the endpoints of
MeshConfig's extension providers (collectors, external authorizers) and of the services
RequestAuthentications fetch key sets from (`jwksUri`), every waypoint when N holds one of those.
Changes to the kinds that decide bindings (Namespace, Service, ServiceEntry, Gateway, GatewayClass,
Deployment) and MeshConfig touch every waypoint.
"""
from __future__ import annotations

from typing import Any, Iterable

from .. import labels as L
from ..mesh.meshconfig import find_mesh_config
from ..mesh.providers import find_provider_service
from ..mesh.view import MeshView
from ..model.istio import parse_jwks_uri
from ..model.meshconfig import Service
from .scope import WaypointScope

NAMESPACED = frozenset({"VirtualService", "DestinationRule", "AuthorizationPolicy", "Telemetry", "EnvoyFilter",
                        "Pod", "HTTPRoute", "RequestAuthentication", "WasmPlugin"})
Body = dict[str, Any]


def find_changed_namespaces(changes: Iterable[tuple[str, str, Body | None]],
                            old_route_parents: dict[tuple[str, str], frozenset[str]]) -> frozenset[str] | None:
    """The namespaces a batch of (kind, namespace, body) changes can affect; None for "all".
    `old_route_parents`: (namespace, name) of an HTTPRoute -> the namespaces its parentRefs named
    before the change (a route that moves away still changes where it was attached)."""
    out: set[str] = set()
    for kind, namespace, body in changes:
        if kind not in NAMESPACED or namespace == L.ROOT_NAMESPACE:
            return None
        out.add(namespace)
        if kind == "HTTPRoute":
            refs = ((body or {}).get("spec") or {}).get("parentRefs") or []
            out |= {ref.get("namespace") or namespace for ref in refs}
            name = ((body or {}).get("metadata") or {}).get("name", "")
            out |= old_route_parents.get((namespace, name), frozenset())
    return frozenset(out)


def find_parent_namespaces(route: Body | None) -> frozenset[str]:
    """The namespaces an HTTPRoute's parentRefs name (none for a route that did not exist)."""
    if route is None:
        return frozenset()
    namespace = route["metadata"].get("namespace") or ""
    return frozenset(ref.get("namespace") or namespace for ref in (route.get("spec") or {}).get("parentRefs") or [])


def detect_scope_touched(scope: WaypointScope, namespaces: frozenset[str] | None,
                         providers: frozenset[str] = frozenset()) -> bool:
    """Whether a waypoint with this scope reads anything of `namespaces` (None: everything);
    `providers`: the namespaces of extension providers' services, read by every waypoint."""
    if namespaces is None or scope.waypoint.namespace in namespaces or providers & namespaces:
        return True
    return any(s.namespace in namespaces for s in scope.services) or \
        any(p.namespace in namespaces for p in scope.workloads)


def find_provider_namespaces(view: MeshView) -> frozenset[str]:
    """Namespaces of the services MeshConfig's extension providers and RequestAuthentications'
    `jwksUri`s name (their pods are endpoints of every waypoint that uses them); computed once per
    view."""
    def build() -> frozenset[str]:
        targets = [(value.service, int(value.port)) for provider in find_mesh_config(view).extensionProviders or []
                   for value in provider.__dict__.values() if isinstance(value, Service)]
        targets += [parse_jwks_uri(rule.uri)[1:] for ra in view.index.of("RequestAuthentication")
                    for rule in ra.spec.jwtRules or [] if rule.uri]
        out = set()
        for service, port in targets:
            found, _ = find_provider_service(view, service, port)
            if found is not None:
                out.add(found.service.namespace)
        return frozenset(out)
    return view.remember("provider-namespaces", build, ("ConfigMap", "Service", "ServiceEntry",
                                                        "RequestAuthentication"))
