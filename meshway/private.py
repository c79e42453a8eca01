"""Owner-only folders, files and sockets, whatever the umask.

The state folder holds the CA key, the proxies' bootstraps (with their xDS credentials), logs that
may carry secrets and the Unix sockets of the control plane and of every Envoy admin. All of it is
created here: folders 0700, files 0600, modes set explicitly after creation (a umask only ever
narrows a mode, and `umask 000` must not widen ours). A folder that already exists is narrowed if
it is ours and refused if it is a symbolic link or belongs to another user: the socket folder may
live under /tmp, where anyone could have planted it first.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600


class PrivatePathError(PermissionError):
    """A path meshway must own is a link, not a folder, or belongs to someone else."""


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a folder only its owner can use (0700); missing parents are created 0700 too."""
    path = Path(path)
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # created meanwhile by another process: checked below
            pass
        else:
            os.chmod(folder, DIR_MODE)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PrivatePathError(f"{path} must be a folder, not a link or a file")
    if info.st_uid != os.geteuid():
        raise PrivatePathError(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})")
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def make_private(path: str | os.PathLike[str]) -> None:
    """Narrow an existing file or socket to 0600 (sockets: right after bind, inside a 0700 folder)."""
    os.chmod(path, FILE_MODE)


def write_private(path: str | os.PathLike[str], text: str | bytes) -> None:
    """Replace `path` atomically with a 0600 file holding `text`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_private_log(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for appending, created 0600 (and narrowed to 0600 if it already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")
