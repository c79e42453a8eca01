"""Which units of a waypoint's config a change can touch, as keys (pure): a change to a
VirtualService touches ("VirtualService", host) for each host it names, a DestinationRule
("DestinationRule", host), an HTTPRoute ("HTTPRoute", namespace, name) for each Service it attaches
to, a pod ("Pod", namespace). Units say which of these keys they read (`Memo.get(reads=...)`), so a
build told the keys of what changed rebuilds or re-checks only the units that read one of them.

Every other kind (Services, Namespaces, Gateways, policies, telemetry, MeshConfig, ...) and a
wildcard host give None: what changed is not known precisely, and every unit is checked as before.
Hosts are resolved as the config index resolves them (`resolve_host`), both before and after the
change, so a VirtualService that moves from one host to another touches both.
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable

from ..mesh.index import WILDCARD, resolve_host

Body = dict[str, Any]
Keys = frozenset


def find_object_keys(kind: str, body: Body | None) -> frozenset[Hashable] | None:
    """The keys one version of an object touches (empty for None: the object did not exist);
    None when they cannot be told."""
    if body is None:
        return frozenset()
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    namespace = meta.get("namespace") or ""
    if kind == "Pod":
        return frozenset({pods_key(namespace)})
    if kind == "VirtualService":
        hosts = [resolve_host(h, namespace) for h in spec.get("hosts") or []]
    elif kind == "DestinationRule":
        hosts = [resolve_host(spec.get("host") or "", namespace)]
    elif kind == "HTTPRoute":
        return frozenset(route_parent_key(ref.get("namespace") or namespace, ref.get("name"))
                         for ref in spec.get("parentRefs") or [])
    else:
        return None
    if any(WILDCARD & set(h) for h in hosts):
        return None
    return frozenset(host_keys(kind, hosts))


def find_change_keys(changes: Iterable[tuple[str, Body | None, Body | None]]) -> frozenset[Hashable] | None:
    """The keys a batch of (kind, object before, object after) changes touches; None: unknown."""
    out: set[Hashable] = set()
    for kind, before, after in changes:
        for body in (before, after):
            keys = find_object_keys(kind, body)
            if keys is None:
                return None
            out |= keys
    return frozenset(out)


def merge_keys(a: frozenset[Hashable] | None, b: frozenset[Hashable] | None) -> frozenset[Hashable] | None:
    """Keys changed over two periods (None: unknown)."""
    return None if a is None or b is None else a | b


def host_keys(kind: str, hosts: Iterable[str]) -> list[Hashable]:
    """What a unit reads when it looks up `kind` (VirtualService, DestinationRule) by `hosts`."""
    return [(kind, h) for h in hosts]


def pods_key(namespace: str) -> Hashable:
    """What a unit reads when it looks up the pods of `namespace`."""
    return ("Pod", namespace)


def route_parent_key(namespace: str, service: str) -> Hashable:
    """What a unit reads when it looks up the HTTPRoutes attached to a Service."""
    return ("HTTPRoute", namespace, service)
