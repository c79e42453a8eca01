"""List and watch one kind, the way client-go's reflector does: LIST (paged), then WATCH from the
list's resourceVersion with bookmarks; a watch that ends is resumed from the last resourceVersion
seen (an event's or a bookmark's); 410 Gone (etcd compacted past it) relists, and the relist is
diffed against what is held so that objects deleted meanwhile come out as DELETED (no lost delete);
other API errors back off exponentially (0.2 s to 30 s, with jitter) and resume.

The decisions are pure (`diff_relist`, `apply_event`, `next_backoff`); `Reflector.run` is the thin
loop around `KubeClient.list`/`watch`. Each change goes to `emit(kind, type, body)`."""
from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .client import ApiError, KubeClient
from .project import project

log = logging.getLogger("meshway.kube")
Body = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
Emit = Callable[[str, str, Body], None]
MIN_BACKOFF, MAX_BACKOFF = 0.2, 30.0
WATCH_TIMEOUT = 300  # seconds the server keeps one watch open (then it is resumed)
MISSING_RETRY = 5.0  # seconds between LISTs of a kind the API does not serve (a CRD not installed yet)


def key_of(body: Body) -> Key:
    meta = body["metadata"]
    return meta.get("namespace") or "", meta["name"]


def diff_relist(held: dict[Key, Body], listed: list[Body]) -> list[tuple[str, Body]]:
    """[(type, body)] that turn `held` into `listed`: ADDED for new keys, MODIFIED for a new
    resourceVersion or uid, DELETED (with the last body held) for keys the list no longer has."""
    out: list[tuple[str, Body]] = []
    seen = set()
    for body in listed:
        key = key_of(body)
        seen.add(key)
        old = held.get(key)
        if old is None:
            out.append(("ADDED", body))
        elif old["metadata"].get("uid") != body["metadata"].get("uid"):  # deleted and created again meanwhile
            out += [("DELETED", old), ("ADDED", body)]
        elif old["metadata"].get("resourceVersion") != body["metadata"].get("resourceVersion"):
            out.append(("MODIFIED", body))
    out += [("DELETED", held[key]) for key in sorted(set(held) - seen)]
    return out


def apply_event(held: dict[Key, Body], event_type: str, body: Body) -> tuple[str, Body] | None:
    """Update `held` with one watch event; the change to emit, or None (a bookmark, a replay)."""
    if event_type == "BOOKMARK":
        return None
    key = key_of(body)
    if event_type == "DELETED":
        old = held.pop(key, None)
        return ("DELETED", body) if old is not None else None
    old = held.get(key)
    if old is not None and old["metadata"].get("resourceVersion") == body["metadata"].get("resourceVersion"):
        return None
    held[key] = body
    return ("ADDED" if old is None else "MODIFIED", body)


def next_backoff(current: float) -> float:
    return min(MAX_BACKOFF, max(MIN_BACKOFF, current * 2))


def jittered(delay: float, rng: random.Random = random.Random()) -> float:
    return delay * (0.8 + 0.4 * rng.random())


@dataclass
class Watched:
    """One watched kind: where to list it and what to keep."""

    kind: str
    path: str  # the collection (all namespaces, or one)
    api_version: str
    query: dict[str, str]  # labelSelector / fieldSelector narrowing it


class Reflector:
    def __init__(self, client: KubeClient, watched: Watched, emit: Emit, stop: threading.Event) -> None:
        self.client, self.watched, self.emit, self.stop = client, watched, emit, stop
        self.held: dict[Key, Body] = {}
        self.resource_version: str | None = None
        self.synced = threading.Event()  # set after the first successful LIST (or one the API answers 404)
        self.relists = 0
        self.last_error: str = ""

    def _keep(self, body: Body) -> Body:
        body.setdefault("apiVersion", self.watched.api_version)
        return project(self.watched.kind, body)

    def relist(self) -> None:
        items, rv = [], ""
        for page in self.client.list(self.watched.path, **self.watched.query):
            items += [self._keep(b) for b in page.get("items") or ()]
            rv = (page.get("metadata") or {}).get("resourceVersion") or rv
        for change_type, body in diff_relist(self.held, items):
            self.emit(self.watched.kind, change_type, body)
        self.held = {key_of(b): b for b in items}
        self.resource_version = rv
        self.relists += 1
        self.synced.set()

    def watch_once(self) -> None:
        for event in self.client.watch(self.watched.path, self.resource_version or "", WATCH_TIMEOUT,
                                       query=self.watched.query):
            if self.stop.is_set():
                return
            obj = event.get("object") or {}
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if event.get("type") != "BOOKMARK":
                change = apply_event(self.held, event["type"], self._keep(obj))
                if change is not None:
                    self.emit(self.watched.kind, *change)
            if rv:
                self.resource_version = rv

    def run(self) -> None:
        backoff = 0.0
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                self.watch_once()
                backoff = 0.0
                self.last_error = ""
            except ApiError as exc:
                if exc.gone:
                    log.info("%s: watch expired (%s): relisting", self.watched.kind, exc.message)
                    self.resource_version = None
                    continue
                if exc.not_found:  # the kind is not served (CRD not installed): empty until it is
                    self._missing(exc)
                    continue
                backoff = self._fail(exc, backoff)
            except Exception as exc:  # noqa: BLE001: connection refused, reset, timeouts: back off, resume
                backoff = self._fail(exc, backoff)

    def _missing(self, exc: ApiError) -> None:
        if self.held:
            for body in list(self.held.values()):
                self.emit(self.watched.kind, "DELETED", body)
            self.held = {}
        self.resource_version = None
        self.synced.set()
        if self.last_error != str(exc):
            log.warning("%s is not served by the API server (%s); retrying every %gs", self.watched.kind, exc,
                        MISSING_RETRY)
        self.last_error = str(exc)
        self.stop.wait(MISSING_RETRY)

    def _fail(self, exc: Exception, backoff: float) -> float:
        backoff = next_backoff(backoff)
        text = f"{type(exc).__name__}: {exc}"
        if self.last_error != text:
            log.warning("%s: %s; retrying in %.1fs", self.watched.kind, text, backoff)
        self.last_error = text
        self.stop.wait(jittered(backoff))
        return backoff
