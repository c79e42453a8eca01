"""Frozen, typed Kubernetes and Istio resources; YAML -> model at the edge.

The kind registry and InputError load no model; `load_yaml`, `parse_object` and `Manifest` (pydantic
and every model class) are imported on first use, so that `meshway get` and `--help` start fast."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .registry import BY_KIND, KINDS, KindInfo, UnknownKind, find_kind

if TYPE_CHECKING:
    from .parse import Manifest, load_yaml, parse_object

_LAZY = {"Manifest": "parse", "load_yaml": "parse", "parse_object": "parse"}

__all__ = ["BY_KIND", "KINDS", "InputError", "KindInfo", "Manifest", "UnknownKind", "find_kind", "load_yaml", "parse_object"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
