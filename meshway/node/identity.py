"""A waypoint pod's workload certificate, as the kubelet and istio-agent get it together:

1. a token of the pod's service account for audience `istio-ca`, bound to the pod (the TokenRequest
   API, as the kubelet does for a projected `serviceAccountToken` volume: `meshway.kube.tokenreview`);
2. a fresh EC P-256 key and a CSR for the service account's SPIFFE ID (`meshway.ca.csr.build_csr`);
3. `CreateCertificate` on the control plane's TCP port (istiod's 15012) over server TLS, the server
   checked against the mesh root and istiod's name, the token as `authorization: Bearer`;
4. the chain, key and root written into the pod's folder laid out as Kubernetes lays out a Secret
   volume (`NAME -> ..data/NAME`, `..data -> ..<generation>`; the swap of `..data` is atomic), which
   the pod's Envoy reads through its file-based SDS secret and reloads when it changes.

Renewed at half life (`meshway.ca.csr.find_renewal_time`). The folder is root's, readable by the
container's group only (0750/0640): the proxy reads it and cannot change it."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc

from ..ca.certs import build_key, key_to_pem, spiffe_id
from ..ca.csr import build_csr, find_renewal_time
from ..ca.istio_api import CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse
from ..xds.bootstrap import XdsCertFiles, build_xds_client_sds
from ..xds.istiod import XDS_SNI

CA_TIMEOUT = 10.0  # seconds for one CreateCertificate
GENERATIONS_KEPT = 2


@dataclass(frozen=True)
class PodCertificate:
    files: XdsCertFiles
    sds_file: Path
    renew_at: datetime


def fetch_certificate(address: str, root_pem: str, token: str, csr_pem: str, validity_seconds: int = 0,
                      timeout: float = CA_TIMEOUT) -> list[str]:
    """`CreateCertificate` at `address` (HOST:PORT); the chain [leaf, ..., root]. grpc.RpcError as the
    server answered it (UNAUTHENTICATED, PERMISSION_DENIED, ...) or UNAVAILABLE."""
    credentials = grpc.ssl_channel_credentials(root_pem.encode("ascii"))
    with grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", XDS_SNI)]) as channel:
        call = channel.unary_unary(CREATE_CERTIFICATE, request_serializer=IstioCertificateRequest.SerializeToString,
                                   response_deserializer=IstioCertificateResponse.FromString)
        answer = call(IstioCertificateRequest(csr=csr_pem, validity_duration=validity_seconds), timeout=timeout,
                      metadata=(("authorization", f"Bearer {token}"),))
    return list(answer.cert_chain)


def write_secret_volume(folder: Path, files: dict[str, str], gid: int) -> None:
    """`files` into `folder` as a Secret volume: a new generation folder, then `..data` swapped to it
    atomically; older generations removed. Root's, readable by group `gid`."""
    _make_dir(folder, gid)
    generation = folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    _make_dir(generation, gid)
    for name, text in files.items():
        fd = os.open(generation / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "w") as f:
            os.fchown(f.fileno(), 0, gid)
            os.fchmod(f.fileno(), 0o640)
            f.write(text)
        link = folder / name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f"..data/{name}")
    tmp = folder / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(generation.name)
    os.replace(tmp, folder / "..data")
    older = sorted((p for p in folder.glob("..20*") if p != generation), key=lambda p: p.stat().st_mtime)
    for old in older[:max(0, len(older) - (GENERATIONS_KEPT - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def write_readable(path: Path, text: str, gid: int) -> None:
    """A file the container's group may read (root's, 0640), replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w") as f:
        os.fchown(f.fileno(), 0, gid)
        os.fchmod(f.fileno(), 0o640)
        f.write(text)
    os.replace(tmp, path)


def _make_dir(path: Path, gid: int) -> None:
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise OSError(f"{path} must be a folder") from None
    os.chown(path, 0, gid, follow_symlinks=False)
    os.chmod(path, 0o750)


def issue_pod_certificate(folder: Path, gid: int, token: str, namespace: str, service_account: str,
                          trust_domain: str, address: str, root_pem: str) -> PodCertificate:
    """Steps 2-4 of the module's notes: key, CSR, CreateCertificate, the Secret-volume layout and the
    file-based SDS resource beside it."""
    _make_dir(folder, gid)
    key = build_key()
    chain = fetch_certificate(address, root_pem, token, build_csr(key, spiffe_id(namespace, service_account,
                                                                                  trust_domain)))
    certs = folder / "certs"
    write_secret_volume(certs, {"cert-chain.pem": "".join(chain[:-1]) if len(chain) > 1 else chain[0],
                                "key.pem": key_to_pem(key), "root-cert.pem": chain[-1]}, gid)
    files = XdsCertFiles.under(certs)
    sds = folder / "xds-sds.json"
    write_readable(sds, json.dumps(build_xds_client_sds(files)), gid)
    return PodCertificate(files, sds, find_renewal_time(chain))
