"""The Kubernetes API as the control plane's source of truth: one `Reflector` thread per watched
kind feeds one ordered change log, read the way the embedded store's change feed is read
(`snapshot(kinds)` then `changes_since(rv)`; `rv` here is this process's own sequence number, since
the API server's resourceVersions are per-kind opaque strings). A change wakes the reader through
a pipe (`fileno()`/`drain()`, the embedded store's `CommitListener` shape)."""
from __future__ import annotations

import os
import threading
from typing import Any, Iterable

from .. import labels as L
from ..mesh.view import XDS_KINDS
from ..model.registry import BY_KIND
from ..store.db import Change, Expired
from .client import KubeClient, resource_path
from .reflector import Reflector, Watched

Body = dict[str, Any]
KEEP_CHANGES = 100_000  # a reader this far behind re-lists (`changes_since` raises Expired)


def plan_watches(kinds: Iterable[str] = XDS_KINDS + ("ServiceAccount",)) -> list[Watched]:
    """What to list and watch for each kind (pure): every namespace, except the mesh config (only
    ConfigMap `istio` in the root namespace) and ServiceAccounts (only the waypoints')."""
    out = []
    for kind in kinds:
        info = BY_KIND[kind]
        api_version = info.api_versions()[0]
        if kind == "ConfigMap":
            out.append(Watched(kind, resource_path(info, L.ROOT_NAMESPACE), api_version,
                               {"fieldSelector": "metadata.name=istio"}))
        elif kind == "ServiceAccount":
            out.append(Watched(kind, resource_path(info), api_version, {"labelSelector": L.GATEWAY_NAME}))
        else:
            out.append(Watched(kind, resource_path(info), api_version, {}))
    return out


class Wakeup:
    """A non-blocking pipe: `wake()` makes `fileno()` readable until `drain()`."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def wake(self) -> None:
        try:
            os.write(self._write_fd, b"x")
        except (BlockingIOError, OSError):  # the pipe is full (the reader will read everything) or closed
            pass

    def fileno(self) -> int:
        return self._read_fd

    def drain(self) -> int:
        count = 0
        while True:
            try:
                data = os.read(self._read_fd, 4096)
            except (BlockingIOError, OSError):
                return count
            if not data:
                return count
            count += len(data)

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class KubeSource:
    def __init__(self, client: KubeClient, kinds: Iterable[str] = XDS_KINDS + ("ServiceAccount",)) -> None:
        self.client = client
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._objects: dict[str, dict[tuple[str, str], Body]] = {}
        self._log: list[Change] = []
        self._rv = 0
        self._wakeups: list[Wakeup] = []
        self._default = self.subscribe()
        self.reflectors = [Reflector(client, w, self._emit, self.stop_event) for w in plan_watches(kinds)]
        for r in self.reflectors:
            self._objects[r.watched.kind] = {}
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the watches (once; a second call does nothing)."""
        if self._threads:
            return
        for r in self.reflectors:
            t = threading.Thread(target=r.run, name=f"watch-{r.watched.kind}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_synced(self, timeout: float) -> list[str]:
        """Waits until every kind was listed once; the kinds still not listed (empty when all were)."""
        for r in self.reflectors:
            r.synced.wait(timeout)
        return [r.watched.kind for r in self.reflectors if not r.synced.is_set()]

    def close(self) -> None:
        self.stop_event.set()
        for wakeup in self._wakeups:
            wakeup.close()

    def subscribe(self) -> "Wakeup":
        """A wake-up of one's own (each reader drains only its own pipe)."""
        wakeup = Wakeup()
        self._wakeups.append(wakeup)
        return wakeup

    # -- the change log ---------------------------------------------------------------------------
    def _emit(self, kind: str, change_type: str, body: Body) -> None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        with self._lock:
            if change_type == "DELETED":
                self._objects[kind].pop(key, None)
            else:
                self._objects[kind][key] = body
            self._rv += 1
            self._log.append(Change(self._rv, change_type, kind, key[0], key[1], body))
            if len(self._log) > KEEP_CHANGES:
                del self._log[: len(self._log) - KEEP_CHANGES]
        self.wake()

    def wake(self) -> None:
        """Make every subscriber's `fileno()` readable (a change, or an owner's reason to look again)."""
        for wakeup in self._wakeups:
            wakeup.wake()

    def fileno(self) -> int:
        return self._default.fileno()

    def drain(self) -> int:
        return self._default.drain()

    def current_rv(self) -> int:
        with self._lock:
            return self._rv

    def changes_since(self, rv: int, limit: int = 10_000) -> list[Change]:
        with self._lock:
            if self._log and rv < self._log[0].rv - 1:
                raise Expired(f"resourceVersion {rv} is older than the kept changes")
            start = max(0, rv - (self._log[0].rv - 1)) if self._log else 0
            return self._log[start:start + limit]

    def snapshot(self, kinds: Iterable[str]) -> tuple[int, dict[str, list[Body]]]:
        """(rv, {kind: objects in namespace/name order}) as of one point of the change log."""
        with self._lock:
            return self._rv, {k: [v for _, v in sorted(self._objects.get(k, {}).items())] for k in kinds}

    def count(self) -> int:
        with self._lock:
            return sum(len(objects) for objects in self._objects.values())

    def get(self, kind: str, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self._objects.get(kind, {}).get((namespace or "", name))
