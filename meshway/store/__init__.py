"""The source of truth: an embedded SQLite store with the Kubernetes API's write semantics."""
from .cluster import Result, Store, default_state_dir
from .db import Change, Expired
from .errors import Forbidden, Invalid, LabelConflict, NotFound, StateDirError, StoreError

__all__ = ["Change", "Expired", "Forbidden", "Invalid", "LabelConflict", "NotFound", "Result", "Store",
           "StateDirError", "StoreError", "default_state_dir"]
