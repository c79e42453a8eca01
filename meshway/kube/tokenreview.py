"""Kubernetes service-account tokens, both ways: the control plane checks a caller's token with a
TokenReview (istiod's KubeJWTAuthenticator), and a node agent gets a pod's token with a
TokenRequest bound to the pod (what the kubelet does for a projected `serviceAccountToken` volume)."""
from __future__ import annotations

from typing import Any

from ..ca.csr import build_token_request
from ..ca.istio_api import CA_AUDIENCE
from .client import KubeClient

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
Body = dict[str, Any]


def fetch_token_review(client: KubeClient, token: str, audience: str = CA_AUDIENCE) -> Body:
    """The API server's verdict on `token` for `audience` (its `status`: authenticated, user, audiences,
    error). Needs `create tokenreviews` (meshway's ClusterRole has it)."""
    review = client.create(TOKEN_REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                           "spec": {"token": token, "audiences": [audience]}})
    return review.get("status") or {}


def fetch_pod_token(client: KubeClient, pod: Body, audience: str = CA_AUDIENCE,
                    expiration_seconds: int | None = None) -> str:
    """A token of the pod's service account for `audience`, bound to the pod. As a node
    (`system:node:<name>`) the Node authorizer allows this only for pods bound to that node, and
    NodeRestriction only with the pod as the bound object; and only for an audience the pod declares
    in a projected `serviceAccountToken` volume (ServiceAccountNodeAudienceRestriction)."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    service_account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    path = f"/api/v1/namespaces/{meta.get('namespace') or 'default'}/serviceaccounts/{service_account}/token"
    answer = client.create(path, build_token_request(pod, audience, expiration_seconds))
    return (answer.get("status") or {})["token"]
