"""istiod's names, as proxies dial and check them (istio-facts; `pilot/pkg/bootstrap` and
`security/pkg/pki`): the identity and DNS names of the control plane's xDS port. Pure constants."""
from __future__ import annotations

from .. import labels as L

ISTIOD_NAMESPACE = L.ROOT_NAMESPACE  # istio-system
ISTIOD_SERVICE_ACCOUNT = "istiod"
XDS_SNI = f"istiod.{ISTIOD_NAMESPACE}.svc"  # the name proxies put in their SNI and check on the certificate
ISTIOD_DNS_NAMES = (XDS_SNI, f"{XDS_SNI}.{L.CLUSTER_DOMAIN}", "istiod")
XDS_TLS_PORT = 15012  # istiod's xDS + CA port (mTLS); 15010 is its plaintext one


def istiod_spiffe_id(trust_domain: str = L.CLUSTER_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{ISTIOD_NAMESPACE}/sa/{ISTIOD_SERVICE_ACCOUNT}"
