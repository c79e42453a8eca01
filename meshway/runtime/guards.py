"""Guaranteed traversal on one node's pods (`meshway.mesh.traversal`), the node agents' part; both
node agents (one-host and Kubernetes) hold one `GuardKeeper`.

- A pod outside the mesh behind a required service: no node proxy sees its traffic, so its own
  namespace filters what arrives on each guarded port (only its waypoints' pods pass,
  `capture.build_guard_rules`), and the connections open from anyone else are closed at once.
- A mesh pod's guards are its node proxy's (over xDS); the connections opened before a guard (on
  the node proxy's replaced chain, which Envoy would close only when its drain time ends) are closed
  here `CLOSE_DELAY` after the change, when its node proxy has the new rules for the clients' new
  connections. Every connection to a mesh pod comes from its node proxy, so every connection on the
  port is closed, the waypoint's too (it opens a new one)."""
from __future__ import annotations

import logging
from typing import Callable, Mapping

from ..mesh.traversal import find_outside_guards, find_traversal_guards, plan_outside_filters
from ..mesh.view import MeshView
from .capture import apply_guard_rules, close_connections, plan_guard_kills

log = logging.getLogger("meshway.guards")
CLOSE_DELAY = 2.0  # seconds after a mesh pod's guards change
Key = tuple[str, str]


class GuardKeeper:
    def __init__(self, netns_of: Callable[[str, str], str], apply=apply_guard_rules, close=close_connections):
        self.netns_of, self.apply, self.close = netns_of, apply, close
        self.filters: dict[Key, tuple] = {}  # pods outside the mesh: the filters applied
        self.mesh: dict[Key, tuple] = {}  # mesh pods: (port, waypoints) guarded
        self.pending: list[tuple[float, Key, list[list[str]]]] = []  # (due, pod, ss -K commands)

    def sync(self, view: MeshView, pods: list[Key], addresses: Mapping[str, tuple[str, ...]], now: float) -> None:
        """`pods`: this node's running pods (their namespaces exist); `addresses`: "ns/name" of each
        waypoint -> its pods' addresses. A pod seen for the first time gets its filter written even
        when empty (a previous agent's may be there)."""
        outside, mesh = find_outside_guards(view), find_traversal_guards(view)
        for key in pods:
            wanted = plan_outside_filters(outside.get(key, ()), addresses)
            before = self.filters.get(key)
            if before != wanted:
                self.apply(self.netns_of(*key), before or (), wanted)
                self.filters[key] = wanted
            guarded = tuple((g.port, g.waypoints) for g in mesh.get(key, ()))
            seen = self.mesh.get(key)
            closes = plan_guard_kills(seen, guarded, by_address=False) if seen is not None else []
            if closes:
                self.pending.append((now + CLOSE_DELAY, key, closes))
            self.mesh[key] = guarded
        present = set(pods)
        for held in (self.filters, self.mesh):
            for key in [k for k in held if k not in present]:
                del held[key]

    def run_due(self, now: float) -> None:
        due = [c for c in self.pending if c[0] <= now]
        self.pending = [c for c in self.pending if c[0] > now]
        for _, key, cmds in due:
            if key in self.mesh:
                self.close(self.netns_of(*key), cmds)
                log.info("closed the connections opened before the traversal guards of %s/%s", *key)
