r"""Istio metric labels carried in the stat names meshway generates (pure).

Stock Envoy has no `istio.stats` filter, so the labels of Istio's standard metrics travel in stat
names and the bootstrap gives Envoy one tag extractor per label (Istio's `LABEL=.=VALUE` convention):

    cluster.inbound-vip|9080|http/v1|reviews_default_svc_cluster_local.reporter=.=waypoint;.destination_service=.=reviews.default.svc.cluster.local;.upstream_rq_200
    -> envoy_cluster_upstream_rq{envoy_response_code="200", reporter="waypoint",
       destination_service="reviews.default.svc.cluster.local", envoy_cluster_name="inbound-vip|9080|http/v1|reviews_default_svc_cluster_local"}

A stat name starts with a dot-free token (Envoy's default cluster extractor ends its tag at the
first dot), then `.LABEL=.=VALUE;` per label. `meshway.observe.metrics`
renames the tagged series to Istio's metric names.

Envoy runs every custom extractor (std::regex, tried at every position of the name) on every stat
it creates, unless the regex starts `^<token>\.`: such an extractor is indexed by that first token
and runs only on stat names that start with it (Envoy's `TagExtractorImplBase::extractRegexPrefix`,
`TagProducerImpl::forEachExtractorMatching`). So each extractor here is anchored to the stat family
that carries labels (`cluster.`, by the clusters' alt_stat_name), and a
proxy gets only the extractors for the labels its kind of proxy generates (a miss costs a scan of
the whole name, a hit at the start very little). The bootstrap's inclusion list (`build_stats_matcher`)
keeps Envoy from creating the stats nobody reads, so they are never tag-extracted at all. (Custom
extractors are always std::regex: only Envoy's built-in ones use RE2 or tokens; those stay on,
`use_all_default_tags`, as `envoy_cluster_name` and `envoy_response_code` come from them.)
"""
from __future__ import annotations

from collections.abc import Mapping

from .. import labels as L
from ..mesh.view import PodInfo

TAGS = (
    "reporter", "request_protocol", "connection_security_policy",
    "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_canonical_service", "destination_canonical_revision",
)


WORKLOAD_TAGS = ("destination_workload", "destination_workload_namespace", "destination_principal",
                 "destination_app", "destination_version", "destination_canonical_service",
                 "destination_canonical_revision")
SERVICE_TAGS = ("destination_service", "destination_service_name", "destination_service_namespace")
# The labels each kind of proxy puts in each stat family, by the builders that generate them:
# build_clusters.build_service_stat_name (waypoint service clusters) and build_ztunnel._inbound_cluster
# (a node proxy's plaintext inbound clusters). A node type not listed gets every label in every family.
# (A node proxy's `reporter="source"` series come from its connection log, not from stats:
# `build_peer_source.build_connection_log`.)
FAMILY_TAGS: dict[str, dict[str, tuple[str, ...]]] = {
    "waypoint": {"cluster": ("reporter", "request_protocol", *SERVICE_TAGS, "destination_version")},
    "ztunnel": {"cluster": ("reporter", "request_protocol", "connection_security_policy", *WORKLOAD_TAGS)},
}
FAMILIES = ("cluster",)


def build_stat_name(token: str, tags: Mapping[str, str] | None = None) -> str:
    """`token` made dot-free, then each non-empty tag (values must not contain `;`)."""
    pairs = "".join(f".{k}=.={v};" for k, v in (tags or {}).items() if v)
    return token.replace(".", "_") + pairs


def build_tag_regex(family: str, tag: str) -> str:
    """`^family.<token>.` then any labels, then this one: the first group (`tag=.=VALUE;.`) is removed
    from the tag-extracted name, the second is the value. Anchored, so that Envoy indexes it by the
    family's first token; `x_service` never matches inside `y_x_service` (labels are whole tokens)."""
    return rf"^{family}\.[^.]*\.(?:[^.;]*=\.=[^;]*;\.)*?({tag}=\.=([^;]*);\.)"


def build_stats_tags(node_type: str | None = None) -> list[dict[str, str]]:
    """`stats_config.stats_tags` of the bootstrap: one anchored extractor per stat family and label
    that this kind of proxy generates, Envoy's default extractors kept."""
    families = FAMILY_TAGS.get(node_type or "", {f: TAGS for f in FAMILIES})
    return [{"tag_name": t, "regex": build_tag_regex(f, t)} for f, tags in families.items() for t in tags]


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


def parse_stat_name(stat_name: str) -> dict[str, str]:
    """`build_stat_name` read back: the labels a stat name carries (the token is left out)."""
    _, _, rest = stat_name.partition(".")
    return dict(pair.split("=.=", 1) for pair in rest.split(";.") if "=.=" in pair for pair in [pair.rstrip(";")])
