"""Errors the store returns, worded as the Kubernetes API server words them."""
from __future__ import annotations


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
