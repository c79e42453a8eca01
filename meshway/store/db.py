"""The embedded store's file: one SQLite database in WAL mode.

Every write happens in one `BEGIN IMMEDIATE` transaction (writers queue on the lock, so concurrent
CLI calls serialize and lose nothing) and is committed with `synchronous=FULL` (an acknowledged
write survives `kill -9` and power loss). Each object write appends a row to `changes`; its row id
is the store-wide resourceVersion, which is what a watch follows. After a commit that changed
something, the writer wakes the control plane through `meshway.store.notify` (a FIFO beside the file).
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..model.limits import MAX_REQUEST_BYTES, TOO_LARGE
from .errors import RequestEntityTooLarge, StateDirError
from .notify import notify_path, notify_readers

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
  kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
  uid TEXT NOT NULL, owner_uid TEXT, rv INTEGER NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_owner ON objects(owner_uid);
CREATE TABLE IF NOT EXISTS changes (
  rv INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
  kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# How many change records a watch can fall behind before it must re-list (etcd's compaction).
KEEP_CHANGES = 100_000

Key = tuple[str, str, str]


class Expired(Exception):
    """The watch asked for changes older than what is kept: re-list and watch from the new version."""


@dataclass(frozen=True)
class Change:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    kind: str
    namespace: str
    name: str
    body: dict[str, Any]


def _owner_uid(body: dict[str, Any]) -> str | None:
    refs = body.get("metadata", {}).get("ownerReferences") or []
    return refs[0]["uid"] if refs else None


class Txn:
    """One write transaction: reads see this transaction's own writes."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.changed: list[Change] = []
        self._rv: int | None = None

    def _next_rv(self) -> int:
        if self._rv is None:
            row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
            self._rv = int(row[0]) if row else 0
        self._rv += 1
        return self._rv

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?",
                                (kind, namespace, name)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace is None:
            rows = self.conn.execute("SELECT body FROM objects WHERE kind=? ORDER BY namespace, name", (kind,))
        else:
            rows = self.conn.execute("SELECT body FROM objects WHERE kind=? AND namespace=? ORDER BY name",
                                     (kind, namespace))
        return [json.loads(r[0]) for r in rows]

    def owned_by(self, uid: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT body FROM objects WHERE owner_uid=? ORDER BY kind, namespace, name", (uid,))
        return [json.loads(r[0]) for r in rows]

    def owners(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT DISTINCT owner_uid FROM objects WHERE owner_uid IS NOT NULL")}

    def uids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT uid FROM objects")}

    def put(self, kind: str, body: dict[str, Any], created: bool) -> dict[str, Any]:
        """Write an object; stamps and returns it with its new resourceVersion."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        # etcd's bound, as the API server applies it (len(text) first: encoding is only paid near it)
        if len(text) > MAX_REQUEST_BYTES and len(text.encode()) > MAX_REQUEST_BYTES:
            raise RequestEntityTooLarge(f'{kind} "{name}": {TOO_LARGE}')
        self.conn.execute("INSERT INTO changes(rv, type, kind, namespace, name, body) VALUES (?,?,?,?,?,?)",
                          (rv, "ADDED" if created else "MODIFIED", kind, namespace, name, text))
        self.conn.execute("INSERT OR REPLACE INTO objects(kind, namespace, name, uid, owner_uid, rv, body) "
                          "VALUES (?,?,?,?,?,?,?)", (kind, namespace, name, meta["uid"], _owner_uid(body), rv, text))
        self.changed.append(Change(rv, "ADDED" if created else "MODIFIED", kind, namespace, name, body))
        return body

    def delete(self, kind: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        rv = self._next_rv()
        self.conn.execute("INSERT INTO changes(rv, type, kind, namespace, name, body) VALUES (?,'DELETED',?,?,?,?)",
                          (rv, kind, namespace, name, text))
        self.conn.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
        self.changed.append(Change(rv, "DELETED", kind, namespace, name, body))

    def get_meta(self, key: str, default: str = "") -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))


class Database:
    """The SQLite file. Open one per process (or thread); it is safe across processes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.notify = notify_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.parent.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(self.path.parent))
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA busy_timeout=60000")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
        except OSError as exc:
            raise StateDirError(self.path.parent, exc) from None
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc) and "readonly" not in str(exc):
                raise
            raise StateDirError(self.path.parent, exc) from None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """An all-or-nothing write: commit on success, roll back on any exception."""
        for attempt in range(200):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:  # busy beyond busy_timeout under heavy contention
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)
        txn = Txn(self.conn)
        try:
            yield txn
            self._compact(txn)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        if txn.changed:
            notify_readers(self.notify)

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """A consistent snapshot for reads (a deferred transaction in WAL mode)."""
        self.conn.execute("BEGIN")
        try:
            yield Txn(self.conn)
        finally:
            self.conn.execute("COMMIT")

    def _compact(self, txn: Txn) -> None:
        if not txn.changed:
            return
        last = txn.changed[-1].rv
        if last % 1000 == 0:
            self.conn.execute("DELETE FROM changes WHERE rv <= ?", (last - KEEP_CHANGES,))

    def current_rv(self) -> int:
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
        return int(row[0]) if row else 0

    def changes_since(self, rv: int, limit: int = 10_000) -> list[Change]:
        """Changes after resourceVersion `rv`, oldest first; Expired if they were compacted away."""
        oldest = self.conn.execute("SELECT MIN(rv) FROM changes").fetchone()[0]
        if oldest is not None and rv + 1 < oldest:
            raise Expired(f"too old resource version: {rv} ({oldest - 1})")
        rows = self.conn.execute("SELECT rv, type, kind, namespace, name, body FROM changes WHERE rv > ? "
                                 "ORDER BY rv LIMIT ?", (rv, limit)).fetchall()
        return [Change(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]
