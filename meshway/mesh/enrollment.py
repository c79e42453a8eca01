"""Which pods are in the ambient mesh (captured by their node proxy): istio-cni's enablement rule.

A pod is captured when it is labelled `istio.io/dataplane-mode=ambient`, or its namespace is and
the pod is not labelled `none`; waypoint pods (`dataplane-mode: none`) and host-network pods never are.
"""
from __future__ import annotations

from typing import Mapping

from .. import labels as L
from .view import MeshView, PodInfo


def decide_ambient(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    mode = pod_labels.get(L.DATAPLANE_MODE)
    if mode == "ambient":
        return True
    if mode == L.NONE:
        return False
    return namespace_labels.get(L.DATAPLANE_MODE) == "ambient"


def detect_ambient(view: MeshView, pod: PodInfo) -> bool:
    return decide_ambient(pod.labels, view.namespace_labels(pod.namespace))
