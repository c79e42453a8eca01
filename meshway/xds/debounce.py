"""When to push after store changes: istiod's PILOT_DEBOUNCE_AFTER / PILOT_DEBOUNCE_MAX.

A change waits for `after` seconds of quiet (a burst of writes becomes one push), but never more
than `max_delay` after the first change of the batch (a steady stream of writes still gets pushed).
Pure: every method takes the time from the caller (the control plane's injected clock).
"""
from __future__ import annotations

from dataclasses import dataclass

NEVER = float("inf")


@dataclass
class Debouncer:
    after: float = 0.01  # PILOT_DEBOUNCE_AFTER (istiod: 100 ms)
    max_delay: float = 0.1  # PILOT_DEBOUNCE_MAX (istiod: 10 s)
    first: float | None = None  # the first change of the pending batch
    last: float | None = None  # its latest change
    count: int = 0  # changes in the pending batch

    def add(self, now: float, changes: int = 1) -> None:
        """Changes were seen at `now`."""
        if self.first is None:
            self.first = now
        self.last = now
        self.count += changes

    def due(self) -> float:
        """When the pending batch is to be pushed (NEVER when nothing is pending)."""
        if self.first is None or self.last is None:
            return NEVER
        return min(self.last + self.after, self.first + self.max_delay)

    def take(self, now: float) -> int:
        """If the batch is due at `now`: forget it and return how many changes it held; else 0."""
        if now < self.due():
            return 0
        count, self.first, self.last, self.count = self.count, None, None, 0
        return count
