"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it, so
that of several control planes exactly one writes (waypoint objects, statuses). A candidate takes
the Lease when it is free or its holder has not renewed it for `leaseDurationSeconds`; the holder
renews it every `retry` seconds and steps down when it could not renew for `renew_deadline`.
Every write carries the resourceVersion it read (optimistic concurrency): of two candidates
racing for an expired Lease, one gets 409 Conflict and stays a follower.

`decide_lease` is the pure decision; `LeaderElector` the thin loop (one thread)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from .. import labels as L
from .client import ApiError, KubeClient

log = logging.getLogger("meshway.kube.leader")
Body = dict[str, Any]
LEASE_NAME = "meshway-controlplane"
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 15.0, 10.0, 2.0  # client-go's defaults


def lease_path(namespace: str = L.ROOT_NAMESPACE, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


def format_micro_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str | None) -> datetime | None:
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def find_live_holder(lease: Body | None, now: datetime, duration: float = LEASE_DURATION) -> str:
    """Who holds the Lease now: its holder if it renewed within its duration, else "" (free)."""
    spec = (lease or {}).get("spec") or {}
    renewed = parse_micro_time(spec.get("renewTime")) or parse_micro_time(spec.get("acquireTime"))
    if not spec.get("holderIdentity") or renewed is None:
        return ""
    held_for = float(spec.get("leaseDurationSeconds") or duration)
    return spec["holderIdentity"] if (now - renewed).total_seconds() <= held_for else ""


@dataclass(frozen=True)
class LeaseDecision:
    action: str  # "create" | "update" | "wait"
    body: Body | None = None
    holder: str = ""  # who holds the Lease now (for "wait")


def decide_lease(lease: Body | None, me: str, now: datetime, duration: float = LEASE_DURATION,
                 name: str = LEASE_NAME, namespace: str = L.ROOT_NAMESPACE,
                 annotations: dict[str, str] | None = None) -> LeaseDecision:
    """What `me` does with the Lease as read (None: it does not exist). `annotations`: what the holder
    says about itself (the control plane: its xDS address), replacing a previous holder's."""
    spec_now = format_micro_time(now)
    if lease is None:
        return LeaseDecision("create", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, **({"annotations": annotations} if annotations else {})},
            "spec": {"holderIdentity": me, "leaseDurationSeconds": int(duration), "acquireTime": spec_now,
                     "renewTime": spec_now, "leaseTransitions": 0}}, me)
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    live = find_live_holder(lease, now, duration)
    if live and live != me:
        return LeaseDecision("wait", None, live)
    new_spec = {**spec, "holderIdentity": me, "leaseDurationSeconds": int(duration), "renewTime": spec_now}
    if holder != me:
        new_spec["acquireTime"] = spec_now
        new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
    meta = lease["metadata"]
    return LeaseDecision("update", {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                                 "resourceVersion": meta.get("resourceVersion"),
                                                 **({"annotations": annotations} if annotations else {})},
                                    "spec": new_spec}, me)


class LeaderElector:
    def __init__(self, client: KubeClient, identity: str, stop: threading.Event,
                 on_change: Callable[[bool], None] = lambda leading: None, name: str = LEASE_NAME,
                 duration: float = LEASE_DURATION, renew_deadline: float = RENEW_DEADLINE,
                 retry: float = RETRY_PERIOD, clock: Callable[[], float] = time.monotonic,
                 annotations: Callable[[], dict[str, str]] = dict) -> None:
        self.client, self.identity, self.stop, self.on_change = client, identity, stop, on_change
        self.annotations = annotations  # read at every write: the holder's current word about itself
        self.name, self.duration, self.renew_deadline, self.retry, self.clock = name, duration, renew_deadline, retry, clock
        self.holder = ""
        self._renewed_at: float | None = None  # clock time of our last successful write
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        """After `stop` is set: wait for the loop to end (and release the Lease if it held it)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def try_once(self) -> bool:
        """One read-decide-write; True when we hold the Lease after it."""
        try:
            lease = self.client.get(lease_path(name=self.name))
        except ApiError as exc:
            if not exc.not_found:
                raise
            lease = None
        decision = decide_lease(lease, self.identity, datetime.now(timezone.utc), self.duration, self.name,
                                annotations=self.annotations())
        self.holder = decision.holder
        if decision.action == "wait":
            return False
        try:
            if decision.action == "create":
                self.client.create(lease_path(), decision.body)
            else:
                self.client.replace(lease_path(name=self.name), decision.body)
        except ApiError as exc:
            if exc.conflict:  # another candidate wrote first
                return False
            raise
        self._renewed_at = self.clock()
        return True

    def run(self) -> None:
        was = False
        while not self.stop.is_set():
            try:
                self.try_once()
            except Exception as exc:  # noqa: BLE001: API unreachable: keep leading until the renew deadline
                log.warning("lease %s: %s", self.name, exc)
            now_leading = self.leading
            if now_leading != was:
                log.warning("%s %s the lease %s", self.identity, "acquired" if now_leading else "lost", self.name)
                self.on_change(now_leading)
                was = now_leading
            self.stop.wait(self.retry)
        if was and self._renewed_at is not None:
            self.release()

    def release(self) -> None:
        """On a clean stop the holder gives the Lease up (renewTime in the past), so a successor
        takes over at once instead of after `duration` (client-go's ReleaseOnCancel)."""
        try:
            lease = self.client.get(lease_path(name=self.name))
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            self.client.replace(lease_path(name=self.name), lease)
        except Exception as exc:  # noqa: BLE001: the Lease then simply expires
            log.info("lease %s not released: %s", self.name, exc)
        self._renewed_at = None
