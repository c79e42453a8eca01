"""Istio metric labels carried in the stat names meshway generates (pure).

Stock Envoy has no `istio.stats` filter, so the labels of Istio's standard metrics travel in stat
names and the bootstrap gives Envoy one tag extractor per label (Istio's `LABEL=.=VALUE` convention):

    cluster.inbound-vip|9080|http/v1|reviews_default_svc_cluster_local.reporter=.=waypoint;.destination_service=.=reviews.default.svc.cluster.local;.upstream_rq_200
    -> envoy_cluster_upstream_rq{envoy_response_code="200", reporter="waypoint",
       destination_service="reviews.default.svc.cluster.local", envoy_cluster_name="inbound-vip|9080|http/v1|reviews_default_svc_cluster_local"}

A stat name starts with a dot-free token (Envoy's default cluster, tcp and connection_limit
extractors end their tag at the first dot), then `.LABEL=.=VALUE;` per label. `meshway.observe.metrics`
renames the tagged series to Istio's metric names.
"""
from __future__ import annotations

from collections.abc import Mapping

from .. import labels as L
from ..mesh.view import PodInfo

TAGS = (
    "reporter", "request_protocol", "connection_security_policy",
    "source_principal", "source_workload_namespace",
    "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_canonical_service", "destination_canonical_revision",
)


def build_stat_name(token: str, tags: Mapping[str, str] | None = None) -> str:
    """`token` made dot-free, then each non-empty tag (values must not contain `;`)."""
    pairs = "".join(f".{k}=.={v};" for k, v in (tags or {}).items() if v)
    return token.replace(".", "_") + pairs


def build_stats_tags() -> list[dict[str, str]]:
    """`stats_config.stats_tags` of the bootstrap: one extractor per label, Envoy's defaults kept. A
    match starts at the dot before the label (so `x_service` never matches inside `y_x_service`) and
    removes the pair with the dot after it, leaving `cluster.<token>.upstream_rq_200` to Envoy's own."""
    return [{"tag_name": t, "regex": rf"\.({t}=\.=(.*?);\.)"} for t in TAGS]


def build_principal(identity: str) -> str:
    """A SPIFFE identity as a tag value: Envoy rewrites `:` in some stat prefixes, so no scheme."""
    return identity.removeprefix("spiffe://")


def find_workload_name(pod: PodInfo) -> str:
    """The Deployment of a `<deployment>-<template hash>-<suffix>` pod, else the pod's own name."""
    template_hash = pod.labels.get(L.POD_TEMPLATE_HASH)
    if template_hash and f"-{template_hash}-" in pod.name:
        return pod.name.rsplit(f"-{template_hash}-", 1)[0]
    return pod.name


def build_workload_tags(pod: PodInfo, identity: str) -> dict[str, str]:
    """Destination labels of a pod, as Istio derives them (canonical name and revision fallbacks)."""
    labels, workload = pod.labels, find_workload_name(pod)
    return {
        "destination_workload": workload, "destination_workload_namespace": pod.namespace,
        "destination_principal": build_principal(identity), "destination_app": labels.get("app", ""),
        "destination_version": labels.get("version", ""),
        "destination_canonical_service": labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name") or labels.get("app") or workload,
        "destination_canonical_revision": labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version") or labels.get("version") or "latest",
    }
