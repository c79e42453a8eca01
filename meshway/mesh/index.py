"""Indexes over the routing and policy config of a MeshView (pure), so translation looks things up
instead of scanning: host -> VirtualServices, host -> DestinationRules, parent Service ->
HTTPRoutes, and every config object parsed into its model once per change of that object (a new
index reuses the models of objects whose uid and resourceVersion did not change).

Hosts are resolved the way Istio resolves short names (in the namespace of the config that names
them); an exact host is a dict lookup, a wildcard host is matched with fnmatch against the few
wildcard entries only.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .. import labels as L
from ..model.extensions import WasmPlugin
from ..model.gateway import HTTPRoute
from ..model.istio import AuthorizationPolicy, DestinationRule, EnvoyFilter, PeerAuthentication, \
    RequestAuthentication, Telemetry, VirtualService

Body = dict[str, Any]
MODELS = {"VirtualService": VirtualService, "DestinationRule": DestinationRule, "HTTPRoute": HTTPRoute,
          "AuthorizationPolicy": AuthorizationPolicy, "Telemetry": Telemetry, "EnvoyFilter": EnvoyFilter,
          "RequestAuthentication": RequestAuthentication, "PeerAuthentication": PeerAuthentication,
          "WasmPlugin": WasmPlugin}
WILDCARD = frozenset("*?[")


def resolve_host(host: str, namespace: str) -> str:
    """Short names resolve in the namespace of the config that uses them (Istio's ResolveShortnameToFQDN)."""
    if "*" in host or host.endswith(f".svc.{L.CLUSTER_DOMAIN}"):
        return host
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.{L.CLUSTER_DOMAIN}"
    if len(parts) == 2 or (len(parts) == 3 and parts[2] == "svc"):
        return f"{parts[0]}.{parts[1]}.svc.{L.CLUSTER_DOMAIN}"
    return host


@dataclass(frozen=True)
class HostIndex:
    """Objects by the (resolved) hosts they name: exact hosts in a dict, patterns in a list."""

    exact: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    patterns: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def build(entries: Iterable[tuple[str, Any]]) -> "HostIndex":
        exact: dict[str, list[Any]] = {}
        patterns = []
        for host, obj in entries:
            if WILDCARD & set(host):
                patterns.append((host, obj))
            else:
                exact.setdefault(host, []).append(obj)
        return HostIndex({h: tuple(objs) for h, objs in exact.items()}, tuple(patterns))

    def find(self, hosts: Iterable[str]) -> list[Any]:
        """Objects naming any of `hosts` (each once, in index order)."""
        found: dict[int, Any] = {}
        for host in hosts:
            for obj in self.exact.get(host, ()):
                found.setdefault(id(obj), obj)
            for pattern, obj in self.patterns:
                if fnmatch.fnmatchcase(host, pattern):
                    found.setdefault(id(obj), obj)
        return list(found.values())

    def with_swapped(self, swaps: Iterable[tuple[Any, Any]], hosts: Iterable[str]) -> "HostIndex":
        """The index with each `new` where its `old` was, for (old, new) in `swaps` that name the
        same `hosts` (the order of every entry is kept: the same index a build would give)."""
        by_old = {id(old): new for old, new in swaps}
        exact = dict(self.exact)
        for host in hosts:
            if host in exact:
                exact[host] = tuple(by_old.get(id(o), o) for o in exact[host])
        return HostIndex(exact, tuple((h, by_old.get(id(o), o)) for h, o in self.patterns))


@dataclass(frozen=True)
class ConfigIndex:
    models: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # kind -> models, store order
    virtual_services: HostIndex = field(default_factory=HostIndex)  # mesh VirtualServices by host
    destination_rules: HostIndex = field(default_factory=HostIndex)
    http_routes: Mapping[tuple[str, str], tuple[HTTPRoute, ...]] = field(default_factory=dict)  # parent Service
    _parsed: Mapping[tuple[str, str, str], Any] = field(default_factory=dict, repr=False, compare=False)
    # kind -> (body, key in _parsed) of each model, aligned with `models`: a body that is the same
    # object as last time (the control plane's object cache keeps them) is its model, unparsed
    _sources: Mapping[str, tuple[tuple[Body, tuple[str, str, str]], ...]] = field(
        default_factory=dict, repr=False, compare=False)

    def of(self, kind: str) -> tuple[Any, ...]:
        return self.models.get(kind, ())

    def with_config(self, config: Mapping[str, tuple[Body, ...]], kinds: Iterable[str]) -> "ConfigIndex":
        """The index after `kinds` changed (`config[kind]` is the complete list of each)."""
        kinds = [k for k in kinds if k in MODELS]
        if not kinds:
            return self
        models, sources = dict(self.models), dict(self._sources)
        parsed = {k: m for k, m in self._parsed.items() if k[0] not in kinds}
        for kind in kinds:
            bodies = tuple(config.get(kind, ()))
            keys, models[kind] = _find_models(kind, bodies, self._sources.get(kind, ()), self.of(kind), self._parsed)
            parsed.update(zip(keys, models[kind]))
            sources[kind] = tuple(zip(bodies, keys))
        out = ConfigIndex(models, self.virtual_services, self.destination_rules, self.http_routes, parsed, sources)
        if "VirtualService" in kinds:
            swaps = find_swaps(self.of("VirtualService"), models["VirtualService"], find_virtual_service_hosts)
            out = _replace(out, virtual_services=build_virtual_service_hosts(models["VirtualService"]) if swaps is None
                           else self.virtual_services.with_swapped(swaps, _hosts_of(swaps, find_virtual_service_hosts)))
        if "DestinationRule" in kinds:
            swaps = find_swaps(self.of("DestinationRule"), models["DestinationRule"], find_destination_rule_hosts)
            out = _replace(out, destination_rules=HostIndex.build(
                (h, dr) for dr in models["DestinationRule"] for h in find_destination_rule_hosts(dr))
                if swaps is None else
                self.destination_rules.with_swapped(swaps, _hosts_of(swaps, find_destination_rule_hosts)))
        if "HTTPRoute" in kinds:
            swaps = find_swaps(self.of("HTTPRoute"), models["HTTPRoute"], find_route_parents)
            out = _replace(out, http_routes=build_route_parents(models["HTTPRoute"]) if swaps is None
                           else swap_route_parents(self.http_routes, swaps))
        return out


def _find_models(kind: str, bodies: tuple[Body, ...], old_sources: tuple[tuple[Body, tuple[str, str, str]], ...],
                 old_models: tuple[Any, ...], parsed: Mapping[tuple[str, str, str], Any]
                 ) -> tuple[list[tuple[str, str, str]], tuple[Any, ...]]:
    """(keys, models) of `bodies`: a body that is the same object as last time (at the same
    position when none was added or removed) keeps its model; the others are parsed (`_parse`)."""
    keys, models = [], []
    positional = len(old_sources) == len(bodies)
    same = {} if positional else {id(b): (k, m) for (b, k), m in zip(old_sources, old_models)}
    for i, body in enumerate(bodies):
        if positional and old_sources[i][0] is body:
            key, model = old_sources[i][1], old_models[i]
        else:
            key, model = same.get(id(body)) or _parse(kind, body, parsed)
        keys.append(key)
        models.append(model)
    return keys, tuple(models)


MAX_SWAPS = 32  # more changed objects than this in one kind: the index is rebuilt


def find_swaps(old: tuple[Any, ...], new: tuple[Any, ...], entries) -> list[tuple[Any, Any]] | None:
    """(old model, new model) of the objects changed in place: same position, same namespace and
    name, same index `entries` (hosts, parents); None when the index must be rebuilt (objects
    added or removed, an object that moved in the index, or too many changed)."""
    if len(old) != len(new):
        return None
    swaps = [(o, n) for o, n in zip(old, new) if o is not n]
    if len(swaps) > MAX_SWAPS:
        return None
    for o, n in swaps:
        if (o.namespace, o.name) != (n.namespace, n.name) or entries(o) != entries(n):
            return None
    return swaps


def _hosts_of(swaps: list[tuple[Any, Any]], entries) -> list[str]:
    return [h for old, _ in swaps for h in entries(old)]


def find_virtual_service_hosts(vs: VirtualService) -> list[str]:
    """The hosts a VirtualService is indexed by: none unless it applies to mesh traffic."""
    if "mesh" not in (vs.spec.gateways or ["mesh"]):
        return []
    return list(dict.fromkeys(resolve_host(h, vs.namespace) for h in vs.spec.hosts or []))


def find_destination_rule_hosts(dr: DestinationRule) -> list[str]:
    return [resolve_host(dr.spec.host, dr.namespace)]


def find_route_parents(route: HTTPRoute) -> list[tuple[str, str]]:
    """The Services an HTTPRoute attaches to ((namespace, name) of its Service parentRefs)."""
    return list(dict.fromkeys((ref.namespace or route.namespace, ref.name) for ref in route.spec.parentRefs
                              if ref.kind == "Service" and (ref.group or "") in ("", "core")))


def swap_route_parents(index: Mapping[tuple[str, str], tuple[HTTPRoute, ...]], swaps: list[tuple[Any, Any]]
                       ) -> Mapping[tuple[str, str], tuple[HTTPRoute, ...]]:
    by_old = {id(old): new for old, new in swaps}
    out = dict(index)
    for old, _ in swaps:
        for parent in find_route_parents(old):
            out[parent] = tuple(by_old.get(id(r), r) for r in out[parent])
    return out


def _replace(index: ConfigIndex, **changes: Any) -> ConfigIndex:
    fields = {"models": index.models, "virtual_services": index.virtual_services,
              "destination_rules": index.destination_rules, "http_routes": index.http_routes,
              "_parsed": index._parsed, "_sources": index._sources}
    return ConfigIndex(**{**fields, **changes})


def _parse(kind: str, body: Body, old: Mapping[tuple[str, str, str], Any]) -> tuple[tuple[str, str, str], Any]:
    """(key, model) of a body: the model of the same uid and resourceVersion if there is one."""
    meta = body["metadata"]
    key = (kind, meta.get("uid") or f"{meta.get('namespace')}/{meta['name']}", str(meta.get("resourceVersion")))
    model = old.get(key)
    if model is None or not meta.get("uid"):
        model = MODELS[kind].model_validate(body, strict=False)
    return key, model


def build_virtual_service_hosts(services: Iterable[VirtualService]) -> HostIndex:
    """VirtualServices that apply to mesh traffic (gateways absent or naming `mesh`), by host."""
    return HostIndex.build((host, vs) for vs in services for host in find_virtual_service_hosts(vs))


def build_route_parents(routes: Iterable[HTTPRoute]) -> Mapping[tuple[str, str], tuple[HTTPRoute, ...]]:
    """HTTPRoutes by the Services they attach to ((namespace, name) of a Service parentRef)."""
    out: dict[tuple[str, str], list[HTTPRoute]] = {}
    for route in routes:
        for parent in find_route_parents(route):
            out.setdefault(parent, []).append(route)
    return {k: tuple(v) for k, v in out.items()}
