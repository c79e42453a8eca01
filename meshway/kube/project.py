"""Slim projections of watched objects (pure): what the control plane reads of each kind, and
nothing else. A watched Pod from the API carries managedFields, the whole container spec, volumes
and status details (~4 KB of JSON, ~27 KB as Python dicts); the mesh reads its identity, labels,
ownership, node, service account, named ports and readiness. Every other kind keeps its body minus
`managedFields` and kubectl's last-applied annotation (user config is small and read in full)."""
from __future__ import annotations

from typing import Any

Body = dict[str, Any]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
         "labels", "annotations", "ownerReferences")


def project_meta(meta: Body) -> Body:
    out = {k: meta[k] for k in _META if k in meta}
    annotations = out.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        out["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return out


def project_pod(body: Body) -> Body:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    containers = [{"name": c.get("name"), **({"ports": c["ports"]} if c.get("ports") else {})}
                  for c in spec.get("containers") or ()]
    kept_status = {k: status[k] for k in ("phase", "podIP", "podIPs", "hostIP") if k in status}
    conditions = [{"type": c.get("type"), "status": c.get("status")} for c in status.get("conditions") or ()]
    if conditions:
        kept_status["conditions"] = conditions
    return {"apiVersion": "v1", "kind": "Pod", "metadata": project_meta(body.get("metadata") or {}),
            "spec": {k: spec[k] for k in ("nodeName", "serviceAccountName", "hostNetwork") if k in spec}
            | {"containers": containers},
            "status": kept_status}


def project(kind: str, body: Body) -> Body:
    """The kept form of an object of `kind` as the API returned it (a list item has no kind)."""
    if kind == "Pod":
        return project_pod(body)
    out = {k: v for k, v in body.items() if k != "metadata"}
    out["metadata"] = project_meta(body.get("metadata") or {})
    out.setdefault("kind", kind)
    return out
