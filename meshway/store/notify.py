"""Commit notifications for the embedded store, across processes: a named pipe (FIFO).

The store is one SQLite file that any process may write (the CLI, tests, the control plane's own
status writes). The control plane needs to know *when* a commit happened, not what it was (it reads
the changes table for that), so the signal is one byte:

- the control plane (the only reader) creates `<state>/store.db-notify`, a FIFO (0600, in the 0700
  state folder), and keeps it open for reading and, so that it never sees end-of-file when the last
  writer closes, for writing too; its event loop waits on the read end (`loop.add_reader`);
- every `Database.write()` that changed something sends one byte after its COMMIT returned
  (`notify_commit`): open with O_NONBLOCK (ENXIO when nobody reads, ENOENT when no control plane
  ever ran: both ignored), write, close. A full pipe (EAGAIN) means a wake-up is pending anyway.

Why a FIFO rather than the alternatives: inotify on the `-wal` file fires when the frames are
written, before the commit is visible to readers (a reader woken then can find nothing new and miss
the commit until its next poll), and is Linux-only; a Unix datagram socket's path is limited to 107
bytes (state folders can be longer) while a FIFO's path is not. Bytes are only a hint: the reader
drains them all and then reads the changes table, so coalesced or lost bytes lose nothing. Writers
that do not notify (an older meshway, `sqlite3` by hand) are still seen by the reader's slow safety
poll. One FIFO per reader (a second reader of one FIFO would steal the first one's wake-ups): the
control plane reads `store.db-notify`, each node agent of the one-host mesh `store.db-notify-<name>`
(`reader_path`), and a commit wakes every one of them (`notify_readers`).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NOTIFY_SUFFIX = "-notify"


def notify_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + NOTIFY_SUFFIX)


def reader_path(db_path: Path, reader: str) -> Path:
    """The FIFO of a reader besides the control plane (e.g. `node-1`)."""
    return db_path.with_name(f"{db_path.name}{NOTIFY_SUFFIX}-{reader}")


def notify_readers(path: Path) -> None:
    """Wake the control plane (`path`, `notify_path`) and every other reader's FIFO beside it."""
    notify_commit(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    prefix = path.name + "-"
    for name in names:
        if name.startswith(prefix):
            notify_commit(path.parent / name)


def notify_commit(path: Path) -> None:
    """Wake the reader of the FIFO at `path`, if there is one; never blocks, never raises."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # ENOENT: no reader ever ran; ENXIO: none reads now; ELOOP: not ours
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):  # never append to a regular file put in its place
            os.write(fd, b"\x01")
    except OSError:  # EAGAIN: the pipe is full of wake-ups not yet read
        pass
    finally:
        os.close(fd)


class CommitListener:
    """The reading end: `fileno()` becomes readable after a commit; `drain()` consumes the bytes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                path.unlink()  # a regular file or link in its place: not a notification channel
        except FileNotFoundError:
            pass
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:  # left by an earlier control plane: reuse it
            pass
        os.chmod(path, 0o600, follow_symlinks=False)
        self._read = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Our own writer: without one, the read end reports end-of-file (readable, forever) whenever
        # the last writer closed.
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def drain(self) -> int:
        """Read every pending byte; how many commits (at most) were signalled."""
        total = 0
        while True:
            try:
                chunk = os.read(self._read, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return total
                raise
            if not chunk:
                return total
            total += len(chunk)

    def close(self) -> None:
        for fd in (self._read, self._keep):
            try:
                os.close(fd)
            except OSError:
                pass
