"""`meshway controlplane --kubeconfig FILE`: the control plane as a Kubernetes controller. Watches
the API (`KubeSource`), and while it holds the Lease (`LeaderElector`) reconciles after every batch
of changes (debounced like istiod: `debounce` of quiet, at most `debounce_max` under a burst):
waypoint objects and statuses (`KubeController`). A follower keeps its caches warm, so a handover
costs one reconcile."""
from __future__ import annotations

import logging
import os
import select
import socket
import time
from dataclasses import dataclass, field

from .client import KubeClient
from .controller import CONTROLLER_KINDS, KubeController
from .leader import LeaderElector
from .source import KubeSource
from ..store.db import Expired

log = logging.getLogger("meshway.kube.controlplane")
CONTROLLER_KIND_SET = frozenset(CONTROLLER_KINDS)
SYNC_TIMEOUT = 60.0
RESYNC = 60.0  # a full reconcile at least this often (a write that failed is retried by then)


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


@dataclass
class KubeControlPlane:
    client: KubeClient
    identity: str = field(default_factory=default_identity)
    debounce: float = 0.1
    debounce_max: float = 1.0
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0
    reconciles: int = 0
    source: KubeSource | None = None  # shared with the translating control plane (`--xds-addr`)
    annotations: dict = field(default_factory=dict)  # written on the Lease while it holds it (its xDS address)
    _seen_rv: int = 0
    _force: bool = False

    def __post_init__(self) -> None:
        self.source = self.source or KubeSource(self.client)
        self.stop_event = self.source.stop_event
        self.controller = KubeController(self.client)
        self.leader = LeaderElector(self.client, self.identity, self.stop_event, on_change=self._on_leader,
                                    duration=self.lease_duration, renew_deadline=self.renew_deadline,
                                    retry=self.retry, annotations=lambda: dict(self.annotations))

    def _on_leader(self, leading: bool) -> None:
        self._force = leading  # a new leader reconciles at once
        self.source.wake()

    def run(self) -> None:
        """Until `stop()`: watch, elect, reconcile."""
        started = time.monotonic()
        self.source.start()
        missing = self.source.wait_synced(SYNC_TIMEOUT)
        if missing:
            log.warning("not yet listed after %gs: %s (they are retried)", SYNC_TIMEOUT, ", ".join(missing))
        log.info("listed %d objects of %d kinds in %.2fs", self.source.count(), len(self.source.reflectors),
                 time.monotonic() - started)
        self.leader.start()
        dirty, first_change, last_change, next_resync = True, time.monotonic(), 0.0, 0.0
        fd = self.source.fileno()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if not self.leader.leading:
                wait = self.retry  # a follower: only the caches are kept current
            elif dirty:
                wait = max(0.0, min(last_change + self.debounce, first_change + self.debounce_max) - now)
            else:
                wait = next_resync - now
            ready, _, _ = select.select([fd], [], [], min(wait, 1.0))
            now = time.monotonic()
            if ready and self.source.drain() and self._relevant_changes():
                if not dirty:
                    first_change = now
                dirty, last_change = True, now
            if self.stop_event.is_set():
                break
            due = dirty and (now >= last_change + self.debounce or now >= first_change + self.debounce_max)
            if (due or self._force or now >= next_resync) and self.leader.leading:
                self._force = False
                self.reconcile()
                dirty, next_resync = False, now + RESYNC
        self.leader.join()  # a clean stop hands the Lease over at once

    def _relevant_changes(self) -> bool:
        """Whether the changes since the last look touch what the controller reads (pod churn,
        e.g. the scheduler's retries, does not: it would only delay reconciles to `debounce_max`)."""
        try:
            changes = self.source.changes_since(self._seen_rv, limit=1_000_000)
        except Expired:
            self._seen_rv = self.source.current_rv()
            return True
        if changes:
            self._seen_rv = changes[-1].rv
        return any(c.kind in CONTROLLER_KIND_SET for c in changes)

    def reconcile(self) -> None:
        started = time.monotonic()
        _, snapshot = self.source.snapshot(CONTROLLER_KINDS)
        writes = self.controller.writes
        try:
            self.controller.reconcile(snapshot)
        except Exception:  # noqa: BLE001: a failed pass is logged; the next change or the resync retries
            log.exception("reconcile failed")
        self.reconciles += 1
        log.info("reconcile %d: %d writes in %.3fs", self.reconciles, self.controller.writes - writes,
                 time.monotonic() - started)

    def stop(self) -> None:
        self.stop_event.set()
        self.source.wake()
