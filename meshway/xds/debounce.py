"""When to push after store changes: istiod's PILOT_DEBOUNCE_AFTER / PILOT_DEBOUNCE_MAX, with a
leading edge.

A change waits for `after` seconds of quiet (a burst of writes becomes one push), but never more
than `max_delay` after the first change of the batch (a steady stream of writes still gets pushed).
With `leading` (the default), a change that comes after at least `after` seconds without any change
is pushed at once: a lone change costs no debounce at all, and the burst it may start is debounced
from its second change on (so a burst costs at most one push more). istiod waits on every change
(its pushes are full pushes); ours are incremental, so the first one is cheap.
Pure: every method takes the time from the caller (the control plane's injected clock).
"""
from __future__ import annotations

from dataclasses import dataclass

NEVER = float("inf")


@dataclass
class Debouncer:
    after: float = 0.01  # PILOT_DEBOUNCE_AFTER (istiod: 100 ms)
    max_delay: float = 0.1  # PILOT_DEBOUNCE_MAX (istiod: 10 s)
    leading: bool = True  # a change after `after` of quiet is due at once
    first: float | None = None  # the first change of the pending batch
    last: float | None = None  # its latest change
    count: int = 0  # changes in the pending batch
    at_once: bool = False  # the pending batch started after a quiet period (`leading`)
    previous: float = -NEVER  # the latest change seen, of any batch

    def add(self, now: float, changes: int = 1) -> None:
        """Changes were seen at `now`."""
        if self.first is None:
            self.first = now
            self.at_once = self.leading and now - self.previous >= self.after
        self.last = self.previous = now
        self.count += changes

    def due(self) -> float:
        """When the pending batch is to be pushed (NEVER when nothing is pending)."""
        if self.first is None or self.last is None:
            return NEVER
        if self.at_once:
            return self.first
        return min(self.last + self.after, self.first + self.max_delay)

    def take(self, now: float) -> int:
        """If the batch is due at `now`: forget it and return how many changes it held; else 0."""
        if now < self.due():
            return 0
        count, self.first, self.last, self.count, self.at_once = self.count, None, None, 0, False
        return count
