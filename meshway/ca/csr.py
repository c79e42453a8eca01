"""Who gets which certificate from the CA API (istiod's `security/pkg/server/ca/server.go`), as a
plain decision record (pure: the TokenReview's answer, the CSR and the requested lifetime in, the
decision out), and the caller's side: a key, its CSR and when to renew.

The caller proves who it is with a Kubernetes service-account token (`authorization: Bearer <jwt>`)
whose audience is `istio-ca`; the API server checks it (TokenReview: signature, expiry, audience, and
for a bound token that its pod still exists). The decision then requires:

- the review says `authenticated`, names `istio-ca` among its audiences, and its user is a service
  account (`system:serviceaccount:<ns>:<sa>`), else UNAUTHENTICATED;
- the CSR is a well-formed, self-signed PKCS#10 request for an EC (P-256/P-384) or RSA (>= 2048
  bits) key, else INVALID_ARGUMENT;
- its SANs are exactly one URI, the SPIFFE ID of that service account
  (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`): the caller may be certified for nothing else (ca.proto:
  "the service implementation is REQUIRED to verify the authenticated caller is authorized to all
  SANs in the CSR"), else PERMISSION_DENIED. istiod ignores the CSR's SANs and signs the caller's
  identity; refusing a mismatch says the same thing louder;
- the lifetime: `validity_duration` seconds; 0 means the CA's default (istiod's SECRET_TTL /
  WORKLOAD_CERT_TTL), negative is INVALID_ARGUMENT, more than the maximum (istiod's
  MAX_WORKLOAD_CERT_TTL, 90 days) is INVALID_ARGUMENT with istiod's message.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .certs import PrivateKey, PublicKey, cert_from_pem, spiffe_id
from .istio_api import CA_AUDIENCE

MAX_WORKLOAD_TTL = timedelta(days=90)  # istiod's MAX_WORKLOAD_CERT_TTL default
SERVICE_ACCOUNT_USER = "system:serviceaccount:"
Body = dict[str, Any]


@dataclass(frozen=True)
class CertificateDecision:
    allowed: bool
    code: str  # a grpc.StatusCode name: OK, UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT
    reason: str  # "" when allowed; else one line for the caller and the log
    identity: str | None = None  # the SPIFFE ID to sign (the token's service account)
    lifetime: timedelta | None = None
    public_key: PublicKey | None = None
    node: str | None = None  # a node proxy's: the node its token is bound to (its certificate names it)


NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"  # a pod-bound token's node, in a TokenReview
NODE_PROXY = ("istio-system", "ztunnel")  # the node proxies' service account


def find_token_node(review: Body | None) -> str | None:
    """The node a pod-bound token's pod runs on (Kubernetes adds it to the TokenReview's user extra)."""
    values = (((review or {}).get("user") or {}).get("extra") or {}).get(NODE_NAME_EXTRA) or []
    return str(values[0]) if values else None


def find_token_identity(review: Body | None, trust_domain: str, audience: str = CA_AUDIENCE) -> tuple[str | None, str]:
    """(the SPIFFE ID of the service account a TokenReview's `status` authenticated, or None and why)."""
    status = review or {}
    if not status.get("authenticated"):
        why = status.get("error") or "the token is not valid"
        return None, f"authentication failed: {str(why)[:300]}"
    audiences = status.get("audiences")
    if audiences is not None and audience not in audiences:
        return None, f"authentication failed: the token is not for audience {audience!r} (it is for {audiences!r})"
    user = str((status.get("user") or {}).get("username") or "")
    if not user.startswith(SERVICE_ACCOUNT_USER) or user.count(":") != 3:
        return None, f"authentication failed: {user[:100]!r} is not a service account"
    namespace, service_account = user[len(SERVICE_ACCOUNT_USER):].split(":")
    try:
        return spiffe_id(namespace, service_account, trust_domain), ""
    except ValueError as exc:
        return None, f"authentication failed: {exc}"


def parse_csr(pem: str) -> tuple[x509.CertificateSigningRequest | None, str]:
    """(the request, "") or (None, why it cannot be used)."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii", "replace"))
    except ValueError as exc:
        return None, f"the CSR cannot be parsed: {exc}"
    try:
        if not csr.is_signature_valid:
            return None, "the CSR's signature is not valid"
        key = csr.public_key()
    except (ValueError, TypeError) as exc:  # e.g. an unsupported key type
        return None, f"the CSR's key cannot be read: {exc}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            return None, f"the CSR's EC key is on {key.curve.name}; P-256 or P-384 is required"
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return None, f"the CSR's RSA key has {key.key_size} bits; at least 2048 are required"
    else:
        return None, f"the CSR's key is a {type(key).__name__}; EC or RSA is required"
    return csr, ""


def find_csr_uris(csr: x509.CertificateSigningRequest) -> tuple[list[str], int]:
    """(URI SANs, number of other SANs) the CSR asks for."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], 0
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris, len(list(san)) - len(uris)


def format_go_duration(d: timedelta) -> str:
    """As Go prints a time.Duration (istiod's messages): 2160h0m0s."""
    total = int(d.total_seconds())
    return f"{total // 3600}h{total % 3600 // 60}m{total % 60}s"


def decide_lifetime(validity_seconds: int, default: timedelta,
                    maximum: timedelta = MAX_WORKLOAD_TTL) -> tuple[timedelta | None, str]:
    if validity_seconds < 0:
        return None, f"requested TTL {validity_seconds}s is negative"
    if validity_seconds == 0:
        return min(default, maximum), ""
    asked = timedelta(seconds=validity_seconds)
    if asked > maximum:
        return None, (f"requested TTL {format_go_duration(asked)} is greater than the max allowed TTL "
                      f"{format_go_duration(maximum)}")
    return asked, ""


def decide_certificate_request(review: Body | None, csr_pem: str, validity_seconds: int, default_ttl: timedelta,
                               trust_domain: str, maximum: timedelta = MAX_WORKLOAD_TTL) -> CertificateDecision:
    """`review`: the TokenReview's `status` for the caller's token (None: no token was presented)."""
    if review is None:
        return CertificateDecision(False, "UNAUTHENTICATED", "authentication failed: no bearer token "
                                   "(`authorization: Bearer <service-account token for audience istio-ca>`)")
    identity, why = find_token_identity(review, trust_domain)
    if identity is None:
        return CertificateDecision(False, "UNAUTHENTICATED", why)
    csr, why = parse_csr(csr_pem)
    if csr is None:
        return CertificateDecision(False, "INVALID_ARGUMENT", why, identity)
    uris, others = find_csr_uris(csr)
    if uris != [identity] or others:
        asked = ", ".join(uris) or "no URI SAN"
        extra = f" and {others} other SAN(s)" if others else ""
        return CertificateDecision(False, "PERMISSION_DENIED",
                                   f"the CSR asks for {asked[:300]}{extra}; the token's service account may only "
                                   f"be certified as {identity}", identity)
    lifetime, why = decide_lifetime(validity_seconds, default_ttl, maximum)
    if lifetime is None:
        return CertificateDecision(False, "INVALID_ARGUMENT", why, identity)
    node = None
    if identity == spiffe_id(*NODE_PROXY, trust_domain):  # bound to its node, as istiod binds a ztunnel
        node = find_token_node(review)
        if node is None:
            return CertificateDecision(False, "PERMISSION_DENIED", "a node proxy's certificate is bound to its node: "
                                       "present a token bound to the node proxy's pod (it names the node)", identity)
    return CertificateDecision(True, "OK", "", identity, lifetime, csr.public_key(), node)  # type: ignore[arg-type]


# -- the caller's side (the node agent, as istio-agent) -------------------------------------------
def build_csr(key: PrivateKey, identity: str) -> str:
    """A PKCS#10 request for `identity` (one URI SAN, empty subject, as istio-agent's)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def find_renewal_time(chain: Sequence[str]) -> datetime:
    """When a certificate chain's leaf is due for renewal: at half its life (Istio's default
    SECRET_GRACE_PERIOD_RATIO 0.5)."""
    leaf = cert_from_pem(chain[0])
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    return start + (end - start) / 2


def find_token_projection(pod: Body, audience: str = CA_AUDIENCE) -> int | None:
    """The `expirationSeconds` of the pod's projected `serviceAccountToken` for `audience` (istiod's
    waypoint template: `istio-token`, 43200), or None when the pod declares none. A node may request
    a token only for an audience its pod declares (Kubernetes' ServiceAccountNodeAudienceRestriction)."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in ((volume.get("projected") or {}).get("sources") or []):
            token = source.get("serviceAccountToken") or {}
            if token and (token.get("audience") or "") == audience:
                return int(token.get("expirationSeconds") or 3600)
    return None


def build_token_request(pod: Body, audience: str = CA_AUDIENCE, expiration_seconds: int | None = None) -> Body:
    """The TokenRequest the kubelet sends for a pod's projected token (`serviceaccounts/<sa>/token`),
    bound to the pod: the token dies with it. Its lifetime is the projection's (else an hour)."""
    expiration_seconds = expiration_seconds or find_token_projection(pod, audience) or 3600
    meta = pod["metadata"]
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": expiration_seconds,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                        "uid": meta.get("uid", "")}}}


def find_metadata_token(metadata: Mapping[str, str] | Sequence[tuple[str, str]]) -> str | None:
    """The bearer token of a gRPC call's `authorization` metadata, or None."""
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    for key, value in items:
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
