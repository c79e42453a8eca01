"""The kubelet API's serving certificate when none is given: self-signed, as the kubelet makes one
(`<root-dir>/pki/kubelet.crt`). An API server run with `--kubelet-certificate-authority` does not
trust it; give the node one from the cluster CA (`--tls-cert-file`, e.g. from
`Harness.issue_node_credentials`)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ..ca.certs import cert_to_pem, key_to_pem
from ..kube.harness import CertRequest, build_ca, build_signed_cert
from ..private import make_private_dir, write_private


def build_self_signed(folder: Path, node: str, ip: str) -> tuple[Path, Path]:
    """(certificate, key) files for `node` at `ip`, made once and kept in `folder`."""
    cert_path, key_path = folder / "kubelet.crt", folder / "kubelet.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    now = datetime.now(timezone.utc)
    ca, ca_key = build_ca(now)
    cert, key = build_signed_cert(CertRequest("kubelet", f"{node}@self-signed", dns_names=(node,), ip_addresses=(ip,),
                                              server=True), ca, ca_key, now)
    make_private_dir(folder)
    write_private(key_path, key_to_pem(key))
    write_private(cert_path, cert_to_pem(cert) + cert_to_pem(ca))
    return cert_path, key_path
