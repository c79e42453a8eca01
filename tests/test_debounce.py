"""The push debouncer (istiod's PILOT_DEBOUNCE_AFTER / _MAX, and with a leading edge) as tables:
change times in, push times out."""
from __future__ import annotations

import pytest

from meshway.xds.debounce import NEVER, Debouncer


def pushes(changes: list[int], after: int, max_delay: int, until: int = 2000, leading: bool = False):
    """Run the debouncer on a 1 ms tick (times in whole milliseconds, exact): (push time, changes in it)."""
    d, out, pending = Debouncer(after, max_delay, leading), [], sorted(changes)
    for now in range(until + 1):
        while pending and pending[0] <= now:
            d.add(pending.pop(0))
        count = d.take(now)
        if count:
            out.append((now, count))
    return out


@pytest.mark.parametrize("changes, after, max_delay, expected", [
    ([], 10, 100, []),
    ([0], 10, 100, [(10, 1)]),  # a single change: pushed after the quiet period
    ([0, 5], 10, 100, [(15, 2)]),  # a change within the quiet period extends it
    ([0, 20], 10, 100, [(10, 1), (30, 1)]),  # quiet in between: two pushes
    # a change every 5 ms for half a second: a push every max_delay, never starved
    ([i * 5 for i in range(100)], 10, 100, [(100, 21), (205, 21), (310, 21), (415, 21), (505, 16)]),
    ([0, 50], 100, 80, [(80, 2)]),  # max_delay below after: the maximum wins
    ([1000, 1000, 1000], 10, 100, [(1010, 3)]),  # simultaneous changes: one push
    ([0], 0, 100, [(0, 1)]),  # no debounce at all
])
def test_debounce_table(changes, after, max_delay, expected):
    assert pushes(changes, after, max_delay) == expected


@pytest.mark.parametrize("changes, after, max_delay, expected", [
    ([], 10, 100, []),
    ([0], 10, 100, [(0, 1)]),  # a lone change: pushed at once
    ([0, 5], 10, 100, [(0, 1), (15, 1)]),  # the burst it starts is debounced from its second change
    ([0, 20], 10, 100, [(0, 1), (20, 1)]),  # quiet in between: each at once
    ([0, 20, 25], 10, 100, [(0, 1), (20, 1), (35, 1)]),
    # a change every 5 ms for half a second: one push at once, then one every max_delay
    ([i * 5 for i in range(100)], 10, 100, [(0, 1), (105, 21), (210, 21), (315, 21), (420, 21), (505, 15)]),
    ([0, 50], 100, 80, [(0, 1), (130, 1)]),  # 50 ms is not quiet enough for a leading push
    ([1000, 1000, 1000], 10, 100, [(1000, 3)]),  # simultaneous changes: one push
    ([0], 0, 100, [(0, 1)]),
])
def test_debounce_table_with_a_leading_edge(changes, after, max_delay, expected):
    assert pushes(changes, after, max_delay, leading=True) == expected


def test_due_and_take_without_a_tick():
    d = Debouncer(after=0.01, max_delay=0.1, leading=False)
    assert d.due() == NEVER and d.take(5.0) == 0
    d.add(1.0)
    assert d.due() == pytest.approx(1.01)
    assert d.take(1.009) == 0
    d.add(1.05)
    d.add(1.095)
    assert d.due() == pytest.approx(1.1)  # first + max_delay comes before last + after
    assert d.take(1.1) == 3 and d.due() == NEVER
    leading = Debouncer(after=0.01, max_delay=0.1)
    leading.add(1.0)
    assert leading.due() == 1.0 and leading.take(1.0) == 1
    leading.add(1.005)
    assert leading.due() == pytest.approx(1.015)
