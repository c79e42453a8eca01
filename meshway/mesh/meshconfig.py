"""The MeshConfig in force (pure): ConfigMap `istio` in the root namespace, key `mesh`, or the
defaults (no extension providers) when there is none."""
from __future__ import annotations

from ..labels import ROOT_NAMESPACE
from ..model.meshconfig import MESH_CONFIGMAP, MESH_KEY, MeshConfig, parse_mesh_config
from .view import MeshView


def find_mesh_config(view: MeshView) -> MeshConfig:
    for body in view.config.get("ConfigMap", ()):
        meta = body["metadata"]
        if (meta["name"], meta.get("namespace")) == (MESH_CONFIGMAP, ROOT_NAMESPACE):
            text = (body.get("data") or {}).get(MESH_KEY)
            return parse_mesh_config(text) if text else MeshConfig()
    return MeshConfig()
