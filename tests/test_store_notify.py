"""Commit notifications (`meshway.store.notify`): a write from another process wakes the reader at
once, a write that changed nothing does not, and a missing reader costs the writer nothing."""
from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

from meshway.model import find_kind, load_yaml
from meshway.store import Store
from meshway.store.notify import CommitListener, notify_commit, notify_path, reader_path

CM = 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {k: "%s"}\n'


def readable(listener: CommitListener, timeout: float) -> bool:
    return bool(select.select([listener], [], [], timeout)[0])


def test_a_commit_in_another_process_wakes_the_listener(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    listener = CommitListener(notify_path(store.db.path))
    try:
        mode = os.stat(listener.path).st_mode
        assert stat.S_ISFIFO(mode) and mode & 0o777 == 0o600
        assert not readable(listener, 0.05)
        code = ("import sys; from meshway.store import Store; from meshway.model import load_yaml; "
                f"Store(sys.argv[1]).apply(load_yaml({CM % 1!r}, 'c.yaml'))")
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "state")])
        assert readable(listener, 30)
        woke = time.monotonic()
        assert proc.wait(30) == 0
        assert listener.drain() >= 1 and not readable(listener, 0.01)
        assert woke - started < 30
        assert store.get(find_kind("cm"), "default", "c")["data"] == {"k": "1"}
        # an apply that changes nothing commits no change: no wake-up
        store.apply(load_yaml(CM % 1, "c.yaml"))
        assert not readable(listener, 0.05)
        store.apply(load_yaml(CM % 2, "c.yaml"))
        assert readable(listener, 1)
    finally:
        listener.close()


def test_writers_without_a_reader_and_a_file_in_the_fifos_place(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    path = notify_path(store.db.path)
    store.apply(load_yaml(CM % 1, "c.yaml"))  # no FIFO at all
    listener = CommitListener(path)
    listener.close()
    store.apply(load_yaml(CM % 2, "c.yaml"))  # a FIFO nobody reads: ENXIO, ignored, never blocks
    path.unlink()
    path.write_text("")
    notify_commit(path)  # a regular file in its place is left alone
    assert path.read_text() == ""
    listener = CommitListener(path)  # and replaced by the next reader
    try:
        assert stat.S_ISFIFO(os.stat(path).st_mode)
        for _ in range(70_000):  # more wake-ups than a pipe holds: never blocks, never raises
            notify_commit(path)
        assert listener.drain() > 0
    finally:
        listener.close()


def test_write_statuses_is_one_transaction_and_skips_what_is_gone(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.apply(load_yaml(CM % 1 + "---\n" + (CM % 1).replace("name: c", "name: d"), "c.yaml"))
    rv = store.db.current_rv()
    missing = store.write_statuses([("ConfigMap", "default", "c", {"x": 1}), ("ConfigMap", "default", "gone", {}),
                                    ("ConfigMap", "default", "d", {"x": 2})])
    assert missing == [("ConfigMap", "default", "gone")]
    assert [c.name for c in store.db.changes_since(rv)] == ["c", "d"]
    assert store.get(find_kind("cm"), "default", "d")["status"] == {"x": 2}
    assert store.write_statuses([]) == []


def test_every_reader_is_woken_by_one_commit(tmp_path: Path) -> None:
    """The control plane and each node agent read FIFOs of their own: one commit wakes them all."""
    store = Store(tmp_path / "state")
    listeners = [CommitListener(notify_path(store.db.path)),
                 CommitListener(reader_path(store.db.path, "node-1")),
                 CommitListener(reader_path(store.db.path, "node-2"))]
    try:
        assert [listener.path.name for listener in listeners] == [
            "store.db-notify", "store.db-notify-node-1", "store.db-notify-node-2"]
        store.apply(load_yaml(CM % 1, "c.yaml"))
        assert all(readable(listener, 1) for listener in listeners)
        assert all(listener.drain() >= 1 for listener in listeners)
        store.apply(load_yaml(CM % 1, "c.yaml"))  # nothing changed: nobody woken
        assert not any(readable(listener, 0.05) for listener in listeners)
    finally:
        for listener in listeners:
            listener.close()
