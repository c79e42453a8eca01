"""Rebuild only what a change touches (Istio's krt collections, in miniature): a `Memo` keeps, per
unit of a proxy's config (a service's clusters, a route configuration, a service's filter chains),
the inputs it was built from and what it built. A unit whose inputs are the same as last time
returns the same objects, so the protobuf conversion (`protos.MessageCache`) and the snapshot
(`cache.Snapshot(previous=...)`) see identical objects and skip them too.

Inputs are compared by identity first (models from the config index are shared between views while
their object's resourceVersion is unchanged; dicts a unit returned are reused as they are), then by
equality (the view's frozen records, small lists). A unit may also record lookups it made into the
rest of the config (`Lookups`): it is reused only if each lookup still gives the same answer.

Dirty keys: a unit may also say which keys it reads (`reads`, e.g. ("VirtualService", host); see
`meshway.xds.dirty`). A build told which keys changed since the memo's last complete build
(`begin(changed)`) reuses a unit whose keys were not among them without computing or comparing its
inputs (`reuse`); `changed=None` (what changed is not known) checks every unit as above.

One memo per proxy; a build starts with `begin()` and ends with `sweep()`, which forgets the units
that build did not use (`built` / `reused` then count that build's units). A build
without a memo (`Memo()` each time) is the from-scratch translation the incremental one must equal.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, NamedTuple

Keys = frozenset  # of hashable keys a unit reads / a change touched
MISSING = object()


def detect_same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y or (type(x) is type(y) and x == y) for x, y in zip(a, b))


class Lookups:
    """A recording function: calls pass through to `fn` and are remembered with their answers."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seen = fn, {}

    def __call__(self, *args: Any) -> Any:
        if args not in self.seen:
            self.seen[args] = self.fn(*args)
        return self.seen[args]

    def still_valid(self, fn: Callable[..., Any]) -> bool:
        return all(fn(*args) == answer for args, answer in self.seen.items())


class Unit(NamedTuple):
    inputs: tuple
    recorders: tuple[Lookups, ...]
    value: Any
    reads: Keys | None  # None: not declared (the unit is always checked)


class Memo:
    def __init__(self) -> None:
        self._units: dict[Hashable, Unit] = {}
        self._used: set[Hashable] = set()
        self._changed: Keys | None = None
        self.built = self.reused = 0  # units, since the last sweep
        self.skipped = 0  # of the reused: without being checked (`reuse`)

    def reuse(self, key: Hashable) -> Any:
        """The unit's value if this build was told what changed and the unit reads none of it;
        else MISSING (compute the inputs and call `get`)."""
        entry = self._units.get(key)
        if entry is None or self._changed is None or entry.reads is None or not entry.reads.isdisjoint(self._changed):
            return MISSING
        self._used.add(key)
        self.reused += 1
        self.skipped += 1
        return entry.value

    def get(self, key: Hashable, inputs: tuple, build: Callable[..., Any],
            lookups: tuple[Callable[..., Any], ...] = (),
            reads: Callable[..., Iterable[Hashable]] | None = None) -> Any:
        """The unit's value: reused when `inputs` match and every recorded lookup still answers the
        same through `lookups` (the current functions); else `build(*recorders)`, recorded.
        `reads(*recorders)`: the keys the unit read (called after its build or check)."""
        self._used.add(key)
        entry = self._units.get(key)
        if entry is not None and detect_same(entry.inputs, inputs) and \
                all(rec.still_valid(fn) for rec, fn in zip(entry.recorders, lookups)):
            self.reused += 1
            value, recorders = entry.value, entry.recorders
        else:
            recorders = tuple(Lookups(fn) for fn in lookups)
            value = build(*recorders)
            self.built += 1
        self._units[key] = Unit(inputs, recorders, value, None if reads is None else Keys(reads(*recorders)))
        return value

    def begin(self, changed: Iterable[Hashable] | None = None) -> None:
        """A build starts; `changed`: the keys changed since the last build that ended with
        `sweep` (None: unknown, every unit is checked)."""
        self._used = set()
        self._changed = None if changed is None else Keys(changed)
        self.built = self.reused = self.skipped = 0

    def sweep(self) -> None:
        if len(self._used) == len(self._units):  # every unit was used (`_used` holds only units' keys)
            return
        for key in [k for k in self._units if k not in self._used]:
            del self._units[key]
