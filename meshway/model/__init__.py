"""Frozen, typed Kubernetes and Istio resources; YAML -> model at the edge."""
from .parse import InputError, Manifest, load_yaml, parse_object
from .registry import BY_KIND, KINDS, KindInfo, UnknownKind, find_kind

__all__ = ["BY_KIND", "KINDS", "InputError", "KindInfo", "Manifest", "UnknownKind", "find_kind", "load_yaml", "parse_object"]
