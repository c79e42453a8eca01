"""The Deployment controller as pure functions: which pods a Deployment wants, and its status.

Pods are named as Kubernetes names them (`<deployment>-<template hash>-<5 chars>`) and carry the
`pod-template-hash` label; a template change replaces the pods (the runtime turns that into a
rolling replacement of processes).
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Callable

from .. import labels as L

Body = dict[str, Any]
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def encode_safe(data: bytes, length: int) -> str:
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in data[:length])


def build_template_hash(template: Body) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return encode_safe(digest, 10)


def detect_pod_ready(pod: Body) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def build_pod(deployment: Body, template_hash: str, suffix: str) -> Body:
    meta, template = deployment["metadata"], deployment["spec"]["template"]
    tmeta = template.get("metadata") or {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{template_hash}-{suffix}",
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), L.POD_TEMPLATE_HASH: template_hash},
            **({"annotations": dict(tmeta["annotations"])} if tmeta.get("annotations") else {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": copy.deepcopy(template["spec"]),
    }


def plan_pods(deployment: Body, pods: list[Body], random_suffix: Callable[[], str]) -> tuple[list[Body], list[Body]]:
    """(pods to create, pods to delete) so that `replicas` pods of the current template exist."""
    want = deployment["spec"].get("replicas", 1)
    current_hash = build_template_hash(deployment["spec"]["template"])
    current = [p for p in pods if p["metadata"].get("labels", {}).get(L.POD_TEMPLATE_HASH) == current_hash]
    stale = [p for p in pods if p not in current]
    current.sort(key=lambda p: (not detect_pod_ready(p), p["metadata"]["name"]))
    delete = stale + current[want:]
    create = [build_pod(deployment, current_hash, random_suffix()) for _ in range(max(0, want - len(current)))]
    return create, delete


def build_deployment_status(deployment: Body, pods: list[Body]) -> Body:
    current_hash = build_template_hash(deployment["spec"]["template"])
    ready = sum(detect_pod_ready(p) for p in pods)
    updated = sum(p["metadata"].get("labels", {}).get(L.POD_TEMPLATE_HASH) == current_hash for p in pods)
    want = deployment["spec"].get("replicas", 1)
    status: Body = {"observedGeneration": deployment["metadata"].get("generation", 1), "replicas": len(pods),
                    "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
                    "unavailableReplicas": max(0, want - ready)}
    return {k: v for k, v in status.items() if v or k in ("observedGeneration", "replicas")}
