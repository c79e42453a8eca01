"""Errors the store returns, worded as the Kubernetes API server words them."""
from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """A refused request; `str()` is the one line a user sees."""

    reason = "BadRequest"

    def __str__(self) -> str:
        return f"Error from server ({self.reason}): {self.args[0]}"


class NotFound(StoreError):
    reason = "NotFound"


class Invalid(StoreError):
    reason = "Invalid"


class RequestEntityTooLarge(StoreError):
    reason = "RequestEntityTooLarge"


class Forbidden(StoreError):
    reason = "Forbidden"


class LabelConflict(StoreError):
    """kubectl refuses to change an existing label value without --overwrite (a client-side error)."""

    def __str__(self) -> str:
        return f"error: {self.args[0]}"


class StateDirError(ValueError):
    """The state folder cannot be created or opened: one line naming the path and the cause."""

    def __init__(self, state_dir: object, exc: BaseException):
        filename = getattr(exc, "filename", None) or state_dir
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            filename = _first_file(Path(str(filename)))
            cause = f"{filename} is a file, not a folder"
        elif isinstance(exc, PermissionError):
            cause = f"permission denied on {filename}"
        elif isinstance(exc, OSError):
            cause = f"{exc.strerror or exc}: {filename}"
        else:
            cause = str(exc)
        super().__init__(f"cannot use the state folder {state_dir}: {cause} (choose another with --state-dir or "
                         "MESHWAY_STATE_DIR)")


def _first_file(path: Path) -> Path:
    """The part of `path` that exists and is not a folder (what stops a mkdir -p)."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
    return path
