"""The objects of some kinds as last read, kept current from the store's change feed (what a
Kubernetes informer's store is to a controller): a change costs a dict update instead of
re-reading and re-decoding every object of its kind. Lists come in the store's own order
(namespace, then name), so whoever builds from them sees exactly what a fresh read would give."""
from __future__ import annotations

import bisect
from typing import Any, Iterable, Mapping

from .db import Change

Body = dict[str, Any]


class ObjectCache:
    def __init__(self, snapshot: Mapping[str, Iterable[Body]]) -> None:
        self._objects: dict[str, dict[tuple[str, str], Body]] = {
            kind: {(b["metadata"].get("namespace") or "", b["metadata"]["name"]): b for b in bodies}
            for kind, bodies in snapshot.items()}
        self._sorted: dict[str, tuple[list[tuple[str, str]], list[Body]]] = {}  # kind -> sorted keys, bodies

    def apply(self, changes: Iterable[Change]) -> None:
        """Changes in resourceVersion order; kinds the cache does not hold are ignored. An object
        modified in place keeps its position in the sorted list; an added or deleted one re-sorts."""
        for change in changes:
            objects = self._objects.get(change.kind)
            if objects is None:
                continue
            key = (change.namespace or "", change.name)
            if change.type == "DELETED":
                objects.pop(key, None)
                self._sorted.pop(change.kind, None)
                continue
            sorted_ = self._sorted.get(change.kind)
            if key in objects and sorted_ is not None:
                keys, bodies = sorted_
                bodies[bisect.bisect_left(keys, key)] = change.body
            else:
                self._sorted.pop(change.kind, None)
            objects[key] = change.body

    def find(self, kind: str, namespace: str, name: str) -> Body | None:
        """The object as last read; None if absent (or its kind is not held)."""
        return self._objects.get(kind, {}).get((namespace or "", name))

    def lists(self, kinds: Iterable[str]) -> dict[str, list[Body]]:
        """{kind: every object of that kind}, as `Store.snapshot(kinds)` returns them."""
        out = {}
        for kind in kinds:
            if kind not in self._sorted:
                objects = self._objects.get(kind, {})
                keys = sorted(objects)
                self._sorted[kind] = (keys, [objects[k] for k in keys])
            out[kind] = list(self._sorted[kind][1])
        return out
