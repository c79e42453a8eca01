"""Pure object bookkeeping the API server does on write: apply's three-way merge, server-set
metadata, defaults, and which changes bump `generation`."""
from __future__ import annotations

import copy
import json
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SERVER_META = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "deletionTimestamp")


def user_view(body: dict[str, Any]) -> dict[str, Any]:
    """What a user asked for: the document without status and server-owned metadata."""
    out = copy.deepcopy(body)
    out.pop("status", None)
    meta = out.get("metadata", {})
    for key in SERVER_META:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    annotations.pop(LAST_APPLIED, None)
    if not annotations:
        meta.pop("annotations", None)
    return out


def three_way_merge(live: Any, last: Any, desired: Any) -> Any:
    """kubectl apply's merge: set what `desired` says, delete what the last apply set and `desired`
    dropped, keep what someone else set (labels from `label`, server defaults). Lists are replaced."""
    if isinstance(desired, dict) and isinstance(live, dict):
        last = last if isinstance(last, dict) else {}
        out = {k: v for k, v in live.items() if not (k in last and k not in desired)}
        for key, value in desired.items():
            out[key] = three_way_merge(live.get(key), last.get(key), value) if key in live else copy.deepcopy(value)
        return out
    return copy.deepcopy(desired)


def last_applied(body: dict[str, Any]) -> dict[str, Any]:
    text = (body.get("metadata", {}).get("annotations") or {}).get(LAST_APPLIED)
    return json.loads(text) if text else {}


def record_last_applied(body: dict[str, Any], desired: dict[str, Any]) -> None:
    body["metadata"].setdefault("annotations", {})[LAST_APPLIED] = json.dumps(desired, sort_keys=True,
                                                                             separators=(",", ":"))


def spec_of(body: dict[str, Any]) -> dict[str, Any]:
    """Everything but metadata and status: a change here bumps `generation`."""
    return {k: v for k, v in body.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def set_defaults(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The defaults the Kubernetes API server fills in, for the kinds where users see them."""
    spec = body.setdefault("spec", {}) if kind in ("Service", "Deployment", "Pod") else body.get("spec")
    meta = body["metadata"]
    if kind == "Namespace":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        body.setdefault("spec", {"finalizers": ["kubernetes"]})
        body["status"] = {"phase": "Active"}
    elif kind == "Service":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])
        if spec.get("clusterIP") not in (None, "", "None"):
            spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        body.setdefault("status", {"loadBalancer": {}})
    elif kind == "Deployment":
        spec.setdefault("replicas", 1)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
    elif kind == "Pod":
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec.setdefault("restartPolicy", "Always")
    return body


def labels_of(body: dict[str, Any]) -> dict[str, str]:
    return body.get("metadata", {}).get("labels") or {}


def key_of(kind: str, body: dict[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return (kind, meta.get("namespace", ""), meta["name"])
