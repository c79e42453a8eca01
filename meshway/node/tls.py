"""The kubelet API's serving certificate when `--tls-cert-file` is not given, as the kubelet's
`serverTLSBootstrap` gets one: a CertificateSigningRequest to the `kubernetes.io/kubelet-serving`
signer (subject `system:node:<node>` in `system:nodes`, SANs the node name and its InternalIP;
kube-controller-manager signs it with the cluster CA once it is approved). The agent approves its
own request when its credential may (an admin kubeconfig); a `system:node` credential may not, and
then, as when no certificate arrives within the wait, it serves a self-signed certificate, which an
API server run with `--kubelet-certificate-authority` refuses (`kubectl logs` then fails with a TLS
error); the warning names the request to approve (`kubectl certificate approve NAME`) for the next
start. A certificate got once is kept in `<root-dir>/pki/` and reused while valid for the address.

`build_csr` is pure; `fetch_serving_cert` is the thin exchange."""
from __future__ import annotations

import base64
import ipaddress
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ..ca.certs import PrivateKey, build_key, cert_from_pem, cert_to_pem, key_to_pem
from ..kube.client import ApiError, KubeClient
from ..kube.harness import CertRequest, build_ca, build_signed_cert
from ..private import make_private_dir, write_private

log = logging.getLogger("meshway.node.tls")
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SIGNER = "kubernetes.io/kubelet-serving"
RENEW_BEFORE = timedelta(days=1)


def build_csr(node: str, ip: str, key: PrivateKey) -> dict:
    """The CertificateSigningRequest object the kubelet-serving signer accepts."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")])
    sans = x509.SubjectAlternativeName([x509.DNSName(node), x509.IPAddress(ipaddress.ip_address(ip))])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).add_extension(sans, critical=False) \
        .sign(key, hashes.SHA256())
    pem = csr.public_bytes(serialization.Encoding.PEM)
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": f"csr-{node}-", "labels": {"app.kubernetes.io/part-of": "meshway"}},
            "spec": {"request": base64.b64encode(pem).decode("ascii"), "signerName": SIGNER,
                     "usages": ["digital signature", "server auth"]}}


def detect_usable(cert_pem: str, ip: str, now: datetime) -> bool:
    """A kept certificate still serves: valid a day longer and naming `ip`."""
    try:
        cert = cert_from_pem(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now and \
        ipaddress.ip_address(ip) in san.get_values_for_type(x509.IPAddress)


def fetch_serving_cert(client: KubeClient, folder: Path, node: str, ip: str, wait: float = 30.0
                       ) -> tuple[Path, Path, bool]:
    """(certificate, key, signed by the cluster CA) for the kubelet API; self-signed as the fallback."""
    cert_path, key_path = folder / "kubelet-serving.crt", folder / "kubelet-serving.key"
    now = datetime.now(timezone.utc)
    if cert_path.exists() and key_path.exists() and detect_usable(cert_path.read_text(), ip, now):
        return cert_path, key_path, True
    key = build_key()
    try:
        created = client.create(CSR_PATH, build_csr(node, ip, key))
    except ApiError as exc:
        log.warning("cannot request a serving certificate (%s): serving a self-signed one", exc)
        return (*build_self_signed(folder, node, ip), False)
    name = created["metadata"]["name"]
    approval = {**created, "status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "NodeAgentSelfApproved",
        "message": f"the node agent of {node} approved its own serving certificate"}]}}
    try:
        client.replace(f"{CSR_PATH}/{name}/approval", approval)
    except ApiError as exc:
        log.warning("certificate request %s is not approved (%s: this credential may not approve it); serving a "
                    "self-signed certificate until one is: kubectl certificate approve %s, then restart the node "
                    "agent (or give it --tls-cert-file)", name, exc.reason or exc.status, name)
        return (*build_self_signed(folder, node, ip), False)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        issued = (client.get(f"{CSR_PATH}/{name}").get("status") or {}).get("certificate")
        if issued:
            make_private_dir(folder)
            write_private(key_path, key_to_pem(key))
            write_private(cert_path, base64.b64decode(issued).decode("ascii"))
            log.info("serving certificate %s signed by the cluster CA", name)
            return cert_path, key_path, True
        time.sleep(0.2)
    log.warning("certificate request %s approved but not signed within %.0fs (is kube-controller-manager running "
                "with --cluster-signing-cert-file?): serving a self-signed certificate", name, wait)
    return (*build_self_signed(folder, node, ip), False)


def build_self_signed(folder: Path, node: str, ip: str) -> tuple[Path, Path]:
    """(certificate, key) files for `node` at `ip`, made once and kept in `folder` (the chain
    carries its own throwaway CA: no one trusts it)."""
    cert_path, key_path = folder / "kubelet.crt", folder / "kubelet.key"
    if cert_path.exists() and key_path.exists() and detect_usable(cert_path.read_text(), ip,
                                                                  datetime.now(timezone.utc)):
        return cert_path, key_path
    now = datetime.now(timezone.utc)
    ca, ca_key = build_ca(now)
    cert, key = build_signed_cert(CertRequest("kubelet", f"{node}@self-signed", dns_names=(node,), ip_addresses=(ip,),
                                              server=True), ca, ca_key, now)
    make_private_dir(folder)
    write_private(key_path, key_to_pem(key))
    write_private(cert_path, cert_to_pem(cert) + cert_to_pem(ca))
    return cert_path, key_path
