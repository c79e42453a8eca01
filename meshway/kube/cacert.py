"""The mesh CA on Kubernetes, kept as istiod keeps it: the root's certificate and key in the Secret
`istio-ca-secret` (istio-system, type `istio.io/ca-root`, keys `ca-cert.pem` and `ca-key.pem`), so
every control plane replica signs with the same root and a restarted one on another host keeps it;
and the root certificate published to every namespace as the ConfigMap `istio-ca-root-cert`
(key `root-cert.pem`, label `istio.io/config=true`), which is where proxies (and the node agents,
for the pods they start) read the root they check the control plane against.

`sync_ca_secret` runs before the control plane's `CertificateAuthority` loads its folder: the
Secret's root wins over a local one; without a Secret, the local root (made if missing) is
published, and when two replicas race the one whose create lost adopts the winner's. Pure
`build_*` functions make the objects; `plan_root_configmaps` says which namespaces need one."""
from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

from .. import labels as L
from ..ca.authority import ROOT_CERT_FILE, ROOT_KEY_FILE, CertificateAuthority
from ..private import make_private_dir, write_private
from .client import ApiError, KubeClient, kind_path

log = logging.getLogger("meshway.kube.cacert")
Body = dict[str, Any]
CA_SECRET = "istio-ca-secret"
CA_SECRET_TYPE = "istio.io/ca-root"
ROOT_CONFIGMAP = "istio-ca-root-cert"
ROOT_KEY = "root-cert.pem"
SECRETS = f"/api/v1/namespaces/{L.ROOT_NAMESPACE}/secrets"


def build_ca_secret(cert_pem: str, key_pem: str) -> Body:
    """istiod's self-signed CA Secret (`security/pkg/pki/ca`: ca-cert, ca-key, and empty chain/root)."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode("ascii")).decode("ascii")
    return {"apiVersion": "v1", "kind": "Secret", "type": CA_SECRET_TYPE,
            "metadata": {"name": CA_SECRET, "namespace": L.ROOT_NAMESPACE},
            "data": {"ca-cert.pem": b64(cert_pem), "ca-key.pem": b64(key_pem), "cert-chain.pem": "", "root-cert.pem": ""}}


def read_ca_secret(secret: Body) -> tuple[str, str]:
    """(certificate PEM, key PEM) of the CA Secret; ValueError when it lacks them."""
    data = secret.get("data") or {}
    try:
        return tuple(base64.b64decode(data[k]).decode("ascii") for k in ("ca-cert.pem", "ca-key.pem"))  # type: ignore[return-value]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"secret {L.ROOT_NAMESPACE}/{CA_SECRET} has no usable ca-cert.pem/ca-key.pem: {exc}") from None


def build_root_configmap(namespace: str, root_pem: str) -> Body:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace, "labels": {"istio.io/config": "true"}},
            "data": {ROOT_KEY: root_pem}}


def plan_root_configmaps(namespaces: Iterable[Body], root_pem: str,
                         applied: Mapping[str, str]) -> list[Body]:
    """The ConfigMaps to apply: one per namespace that is not terminating, unless the same root was
    applied there already (`applied`: namespace -> root PEM)."""
    out = []
    for ns in namespaces:
        meta = ns.get("metadata") or {}
        name = meta.get("name")
        if name and not meta.get("deletionTimestamp") and applied.get(name) != root_pem:
            out.append(build_root_configmap(name, root_pem))
    return out


def _write_local(ca_dir: Path, cert_pem: str, key_pem: str) -> None:
    make_private_dir(ca_dir)
    write_private(ca_dir / ROOT_KEY_FILE, key_pem)
    write_private(ca_dir / ROOT_CERT_FILE, cert_pem)


def sync_ca_secret(client: KubeClient, state_dir: Path) -> str:
    """Make `<state_dir>/ca` hold the cluster's CA (see the module's notes); what happened, in words."""
    ca_dir = Path(state_dir) / "ca"
    path = f"{SECRETS}/{CA_SECRET}"
    try:
        cert_pem, key_pem = read_ca_secret(client.get(path))
        _write_local(ca_dir, cert_pem, key_pem)
        return f"using the CA root of secret {L.ROOT_NAMESPACE}/{CA_SECRET}"
    except ApiError as exc:
        if not exc.not_found:
            raise
    ca = CertificateAuthority(state_dir)  # the local root, made if missing
    key_pem = (ca.dir / ROOT_KEY_FILE).read_text()
    try:
        client.create(SECRETS, build_ca_secret(ca.root_pem(), key_pem))
        return f"published this CA root as secret {L.ROOT_NAMESPACE}/{CA_SECRET}"
    except ApiError as exc:
        if not exc.conflict:
            raise
    cert_pem, key_pem = read_ca_secret(client.get(path))  # another replica published first: theirs
    _write_local(ca_dir, cert_pem, key_pem)
    return f"using the CA root another replica published as secret {L.ROOT_NAMESPACE}/{CA_SECRET}"


def fetch_root_configmap(client: KubeClient, namespace: str) -> str:
    """The mesh root published in `namespace` (ApiError 404 while the control plane has not yet)."""
    body = client.get(kind_path("ConfigMap", namespace, ROOT_CONFIGMAP))
    root = (body.get("data") or {}).get(ROOT_KEY)
    if not root:
        raise ValueError(f"configmap {namespace}/{ROOT_CONFIGMAP} has no {ROOT_KEY}")
    return root

