"""Applying EnvoyFilter patches to a waypoint's resource dicts (pure): matching listeners, filter
chains, filters, route configs, virtual hosts, routes and clusters, and Istio's operations on them.

- SIDECAR_INBOUND (and ANY) patches the chains of `main_internal`, the RouteConfigurations their
  HTTP chains take over RDS (and the inline one of `direct-http`); SIDECAR_OUTBOUND (and ANY)
  patches clusters; GATEWAY matches nothing on a waypoint. A patch cannot rename a
  RouteConfiguration (the listener names it).
  `listener.portNumber` is the service port of a chain (a waypoint has one internal listener).
- INSERT_BEFORE/INSERT_AFTER go next to the named (sub)filter or route, to the front/back without one;
  INSERT_FIRST; ADD; REPLACE; REMOVE; MERGE with proto merge semantics (MERGE_AND_REPLACE_LIST
  replaces lists); a filter MERGE merges the filters' typed configs as the existing type.
- Values are parsed into the Envoy object they name; a TypedStruct of a known type becomes that
  typed message, so that a bad field is reported here and `proxy-config` shows it readably.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from google.protobuf import json_format

from ..model.istio import EnvoyConfigObjectMatch
from . import protos as P

Body = dict[str, Any]
HCM = "envoy.filters.network.http_connection_manager"
INBOUND = frozenset({"ANY", "SIDECAR_INBOUND"})
OUTBOUND = frozenset({"ANY", "SIDECAR_OUTBOUND"})
MERGES = frozenset({"MERGE", "MERGE_AND_REPLACE_LIST"})
ROUTE_OBJECTS = ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE")
VALUE_TYPES = {
    "NETWORK_FILTER": "envoy.config.listener.v3.Filter",
    "HTTP_FILTER": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "ROUTE_CONFIGURATION": "envoy.config.route.v3.RouteConfiguration",
    "VIRTUAL_HOST": "envoy.config.route.v3.VirtualHost",
    "HTTP_ROUTE": "envoy.config.route.v3.Route",
    "CLUSTER": "envoy.config.cluster.v3.Cluster",
}
_ALL = ("MERGE", "MERGE_AND_REPLACE_LIST", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE")
OPERATIONS = {"NETWORK_FILTER": _ALL, "HTTP_FILTER": _ALL, "ROUTE_CONFIGURATION": _ALL[:2],
              "VIRTUAL_HOST": (*_ALL[:4], "REPLACE"), "HTTP_ROUTE": _ALL[:7], "CLUSTER": (*_ALL[:4], "REPLACE")}
TYPED_STRUCTS = ("type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct")
LEGACY_NAMES = {"envoy.http_connection_manager": HCM, "envoy.router": "envoy.filters.http.router",
                "envoy.tcp_proxy": "envoy.filters.network.tcp_proxy"}  # as older Istio docs write them
AUTHZ_FILTERS = ("envoy.filters.http.jwt_authn", "envoy.filters.http.ext_authz", "envoy.filters.http.rbac")


class PatchError(ValueError):
    pass


@dataclass
class Tally:
    """What the patches did while one waypoint's config was patched."""

    applied: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)

    def merge(self, p: "Patch", merged: Callable[[], Body], original: Body) -> Body:
        """`merged()`, counted for `p`; the original object, and the error noted, if it cannot merge."""
        try:
            out = merged()
        except PatchError as exc:
            self.failed.setdefault(p.index, str(exc))
            return original
        self.applied.add(p.index)
        return out


@dataclass(frozen=True)
class Patch:
    """One configPatch, its value already built into the Envoy object it names."""

    index: int
    where: str  # "EnvoyFilter <namespace>/<name>"
    label: str  # "configPatches[0] (HTTP_FILTER INSERT_BEFORE)"
    apply_to: str
    operation: str
    match: EnvoyConfigObjectMatch
    value: Body | None
    hosts: frozenset[str] | None
    filter_class: str | None = None


# -- patch values ---------------------------------------------------------------------------------
def _resolve_typed(node: Any) -> Any:
    """TypedStructs of a known type become that type; every `@type` named is made parseable."""
    if isinstance(node, list):
        return [_resolve_typed(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("@type") in TYPED_STRUCTS and P.find_message_class(str(node.get("type_url", ""))):
        return {"@type": node["type_url"], **_resolve_typed(node.get("value") or {})}
    if "@type" in node:
        P.find_message_class(str(node["@type"]))
    return {k: _resolve_typed(v) for k, v in node.items()}


def _parse(type_name: str, data: Body) -> Any:
    try:
        return json_format.ParseDict(_resolve_typed(data), P.find_message_class(type_name)())
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        raise PatchError(f"not a valid {type_name.rsplit('.', 1)[-1]}: {str(exc).splitlines()[0]}") from None


def build_patch_value(apply_to: str, value: Body) -> Body:
    """The patch value as the Envoy object `apply_to` names (proto field names, typed configs)."""
    return P.to_dict(_parse(VALUE_TYPES[apply_to], value))


def merge_object(type_name: str, dst: Body, src: Body, operation: str = "MERGE") -> Body:
    out = _parse(type_name, dst)
    P.merge_message(out, _parse(type_name, src), replace_lists=operation == "MERGE_AND_REPLACE_LIST")
    return P.to_dict(out)


def merge_filter(existing: Body, value: Body, operation: str = "MERGE") -> Body:
    """Istio's filter MERGE: the name may be replaced; typed configs merge as the existing type."""
    out = {**existing, "name": value.get("name") or existing["name"]}
    if "typed_config" in value and "typed_config" in existing:
        url = existing["typed_config"]["@type"]
        if P.find_message_class(url) is None:
            raise PatchError(f"cannot merge into {existing['name']}: its config type {url} is unknown")
        strip = {k: v for k, v in value["typed_config"].items() if k != "@type"}
        out["typed_config"] = {"@type": url, **merge_object(url, {k: v for k, v in existing["typed_config"].items()
                                                                   if k != "@type"}, strip, operation)}
    return out


# -- matching -------------------------------------------------------------------------------------
def find_owner(name: str) -> tuple[str | None, int | None]:
    """(service hostname, service port) of a chain, route config or cluster named `inbound-vip|port|kind|host`."""
    parts = name.split("|")
    if len(parts) == 4 and parts[0] == "inbound-vip" and parts[1].isdigit():
        return parts[3], int(parts[1])
    return None, None


def _in_scope(p: Patch, host: str | None) -> bool:
    return p.hosts is None or host in p.hosts


def _filter_name(p: Patch) -> str | None:
    fc = p.match.listener.filterChain if p.match.listener else None
    name = fc.filter.name if fc and fc.filter else None
    return LEGACY_NAMES.get(name, name) if name else None


def _sub_filter_name(p: Patch) -> str | None:
    fc = p.match.listener.filterChain if p.match.listener else None
    sub = fc.filter.subFilter if fc and fc.filter else None
    return LEGACY_NAMES.get(sub.name, sub.name) if sub and sub.name else None


def detect_chain_match(p: Patch, chain: str, port: int | None) -> bool:
    m = p.match.listener
    if m is None:
        return True
    if m.name and m.name != "main_internal" or m.portNumber and m.portNumber != port:
        return False
    fc = m.filterChain
    if fc is None:
        return True
    if fc.name and fc.name != chain or fc.destinationPort and fc.destinationPort != port:
        return False
    return not (fc.sni or fc.transportProtocol or fc.applicationProtocols)  # chains are matcher-selected


def detect_route_config_match(p: Patch, rc: Body) -> bool:
    m = p.match.routeConfiguration
    if m is None:
        return True
    name = rc.get("name", "")
    port = find_owner(name)[1] or (int(name) if name.isdigit() else 0)
    return not (m.portNumber and m.portNumber != port or m.name and m.name != name)


def _vhost_match(p: Patch, vhost: Body) -> bool:
    m = p.match.routeConfiguration
    return not (m and m.vhost and m.vhost.name and m.vhost.name != vhost.get("name"))


def _route_selector(p: Patch) -> Callable[[Body], bool] | None:
    m = p.match.routeConfiguration
    rm = m.vhost.route if m and m.vhost else None
    if rm is None:
        return None
    actions = {"ROUTE": "route", "REDIRECT": "redirect", "DIRECT_RESPONSE": "direct_response"}
    return lambda r: (not rm.name or rm.name == r.get("name")) and (rm.action == "ANY" or actions[rm.action] in r)


def detect_cluster_match(p: Patch, name: str) -> bool:
    m = p.match.cluster
    if m is None:
        return True
    if m.name:
        return m.name == name
    parts = name.split("|")
    if len(parts) != 4:
        return not (m.service or m.portNumber or m.subset)
    subset = parts[2].split("/", 1)[1] if "/" in parts[2] else parts[2]
    return not (m.service and m.service != parts[3] or m.portNumber and str(m.portNumber) != parts[1]
                or m.subset and m.subset not in (subset, parts[2]))


# -- operations -----------------------------------------------------------------------------------
def _named(name: str | None) -> Callable[[Body], bool] | None:
    return None if name is None else (lambda item: item.get("name") == name)


def apply_list_op(items: list[Body], op: str, value: Body | None,
                  selector: Callable[[Body], bool] | None) -> tuple[list[Body], bool]:
    """ADD/INSERT_*/REPLACE/REMOVE on a list of named objects; (new list, whether it applied)."""
    found = next((i for i, item in enumerate(items) if selector and selector(item)), None)
    new = copy.deepcopy(value)
    if op == "ADD" or op == "INSERT_AFTER" and selector is None:
        return [*items, new], True
    if op in ("INSERT_FIRST", "INSERT_BEFORE") and selector is None or op == "INSERT_FIRST" and found is not None:
        return [new, *items], True
    if found is None:
        return items, False
    if op == "INSERT_BEFORE":
        return [*items[:found], new, *items[found:]], True
    if op == "INSERT_AFTER":
        return [*items[:found + 1], new, *items[found + 1:]], True
    if op == "REPLACE":
        return [*items[:found], new, *items[found + 1:]], True
    if op == "REMOVE":
        return [item for item in items if not selector(item)], True
    return items, False


def _class_position(filters: list[Body], filter_class: str) -> int:
    """Where an ADD with filterClass goes: AUTHN before the auth filters, AUTHZ after them, STATS before the router."""
    auth = [i for i, f in enumerate(filters) if f.get("name") in AUTHZ_FILTERS]
    if filter_class == "AUTHN":
        return auth[0] if auth else 0
    if filter_class == "AUTHZ":
        return auth[-1] + 1 if auth else 0
    return next((i for i, f in enumerate(filters) if f.get("name") == "envoy.filters.http.router"), len(filters))


def _list_ops(items: list[Body], patches: list[Patch], selector: Callable[[Patch], Callable | None],
              tally: Tally) -> list[Body]:
    for p in patches:
        if p.operation not in MERGES:
            if p.operation == "ADD" and p.filter_class in ("AUTHN", "AUTHZ", "STATS"):
                at = _class_position(items, p.filter_class)
                items, ok = [*items[:at], copy.deepcopy(p.value), *items[at:]], True
            else:
                items, ok = apply_list_op(items, p.operation, p.value, selector(p))
            if ok:
                tally.applied.add(p.index)
    return items


def _patch_http_filters(hcm: Body, patches: list[Patch], tally: Tally) -> Body:
    filters = _list_ops(list(hcm.get("http_filters", [])), patches,
                        lambda p: None if p.operation == "INSERT_FIRST" else _named(_sub_filter_name(p)), tally)
    for p in patches:
        for i, f in enumerate(filters):
            if p.operation in MERGES and _sub_filter_name(p) == f.get("name"):
                filters[i] = tally.merge(p, lambda: merge_filter(f, p.value or {}, p.operation), f)
    return {**hcm, "http_filters": filters}


def _patch_network_filters(filters: list[Body], patches: list[Patch], tally: Tally) -> list[Body]:
    network = [p for p in patches if p.apply_to == "NETWORK_FILTER"]
    out = []
    for f in _list_ops(filters, network, lambda p: _named(_filter_name(p)), tally):
        for p in network:
            if p.operation in MERGES and _filter_name(p) == f.get("name"):
                f = tally.merge(p, lambda: merge_filter(f, p.value or {}, p.operation), f)
        http = [p for p in patches if p.apply_to == "HTTP_FILTER" and _filter_name(p) in (None, f.get("name"))]
        if f.get("name") == HCM and http:
            f = {**f, "typed_config": _patch_http_filters(f["typed_config"], http, tally)}
        out.append(f)
    return out


def _patch_routes(vhost: Body, patches: list[Patch], tally: Tally) -> Body:
    routes = []
    for route in vhost.get("routes", []):
        for p in patches:
            selector = _route_selector(p)
            if selector is not None and not selector(route):
                continue
            if p.operation == "REMOVE":
                tally.applied.add(p.index)
                route = None
                break
            if p.operation in MERGES:
                route = tally.merge(p, lambda: merge_object(VALUE_TYPES["HTTP_ROUTE"], route, p.value or {},
                                                            p.operation), route)
        if route is not None:
            routes.append(route)
    return {**vhost, "routes": _list_ops(routes, [p for p in patches if p.operation != "REMOVE"], _route_selector,
                                         tally)}


def _patch_vhost(vhost: Body, patches: list[Patch], tally: Tally) -> Body | None:
    for p in patches:
        if p.apply_to != "VIRTUAL_HOST" or not _vhost_match(p, vhost) or p.operation == "ADD":
            continue
        if p.operation == "REMOVE":
            tally.applied.add(p.index)
            return None
        if p.operation == "REPLACE":
            tally.applied.add(p.index)
            vhost = copy.deepcopy(p.value)
        else:
            vhost = tally.merge(p, lambda: merge_object(VALUE_TYPES["VIRTUAL_HOST"], vhost, p.value or {},
                                                        p.operation), vhost)
    routes = [p for p in patches if p.apply_to == "HTTP_ROUTE" and _vhost_match(p, vhost)]
    return _patch_routes(vhost, routes, tally) if routes else vhost


def _patch_route_config(rc: Body, patches: list[Patch], tally: Tally) -> Body:
    patches = [p for p in patches if detect_route_config_match(p, rc)]
    for p in patches:
        if p.apply_to == "ROUTE_CONFIGURATION":
            rc = tally.merge(p, lambda: merge_object(VALUE_TYPES["ROUTE_CONFIGURATION"], rc, p.value or {},
                                                     p.operation), rc)
    vhosts = [v for v in (_patch_vhost(v, patches, tally) for v in rc.get("virtual_hosts", [])) if v is not None]
    for p in patches:
        if p.apply_to == "VIRTUAL_HOST" and p.operation == "ADD":
            vhosts.append(copy.deepcopy(p.value))
            tally.applied.add(p.index)
    return {**rc, "virtual_hosts": vhosts}


def _patch_chain(chain: Body, patches: list[Patch], tally: Tally) -> Body:
    host, port = find_owner(chain.get("name", ""))
    mine = [p for p in patches if p.match.context in INBOUND and _in_scope(p, host)]
    routes = [p for p in mine if p.apply_to in ROUTE_OBJECTS]
    listeners = [p for p in mine if p.apply_to in ("NETWORK_FILTER", "HTTP_FILTER")
                 and detect_chain_match(p, chain.get("name", ""), port)]
    filters = []
    for f in chain.get("filters", []):
        config = f.get("typed_config") or {}
        if f.get("name") == HCM and routes and "route_config" in config:
            f = {**f, "typed_config": {**config, "route_config": _patch_route_config(config["route_config"], routes,
                                                                                     tally)}}
        filters.append(f)
    return {**chain, "filters": _patch_network_filters(filters, listeners, tally) if listeners else filters}


def _patch_rds(routes: dict[str, Body], patches: list[Patch], tally: Tally) -> dict[str, Body]:
    """The RouteConfigurations served over RDS, each patched by the route patches in its service's scope."""
    out = {}
    for name, rc in routes.items():
        mine = [p for p in patches if p.apply_to in ROUTE_OBJECTS and p.match.context in INBOUND
                and _in_scope(p, find_owner(name)[0])]
        out[name] = {**_patch_route_config(rc, mine, tally), "name": name} if mine else rc
    return out


def _patch_clusters(clusters: dict[str, Body], patches: list[Patch], tally: Tally) -> dict[str, Body]:
    patches = [p for p in patches if p.apply_to == "CLUSTER" and p.match.context in OUTBOUND]
    out = {}
    for name, cluster in clusters.items():
        for p in patches:
            if p.operation == "ADD" or not _in_scope(p, find_owner(name)[0]) or not detect_cluster_match(p, name):
                continue
            if p.operation == "REMOVE":
                tally.applied.add(p.index)
                cluster = None
                break
            if p.operation == "REPLACE":
                tally.applied.add(p.index)
                cluster = copy.deepcopy(p.value)
            else:
                cluster = tally.merge(p, lambda: merge_object(VALUE_TYPES["CLUSTER"], cluster, p.value or {},
                                                              p.operation), cluster)
        if cluster is not None:
            out[cluster.get("name") or name] = cluster
    for p in patches:
        if p.operation == "ADD":
            if p.value.get("name"):
                out[p.value["name"]] = copy.deepcopy(p.value)
                tally.applied.add(p.index)
            else:
                tally.failed[p.index] = "an added cluster needs a name"
    return out


def patch_resources(resources: dict[str, dict[str, Body]], patches: list[Patch]
                    ) -> tuple[dict[str, dict[str, Body]], Tally]:
    """The resources with `patches` applied in order, and what each patch did."""
    tally = Tally()
    out = dict(resources)
    listener = resources[P.LISTENER].get("main_internal")
    if listener is not None:
        chains = [_patch_chain(c, patches, tally) for c in listener.get("filter_chains", [])]
        out[P.LISTENER] = {**resources[P.LISTENER], "main_internal": {**listener, "filter_chains": chains}}
    if resources.get(P.ROUTE):
        out[P.ROUTE] = _patch_rds(resources[P.ROUTE], patches, tally)
    out[P.CLUSTER] = _patch_clusters(resources[P.CLUSTER], patches, tally)
    return out, tally
