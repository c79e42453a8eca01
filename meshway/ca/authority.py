"""The mesh CA: a root kept on disk and workload certificates issued from it, cached in memory.

Files (under `<state_dir>/ca/`, a 0700 folder): `root-key.pem` and `root-cert.pem` (0600). Each is written
atomically (temp file, fsync, rename, fsync of the directory), the key first, so the certificate is
the commit marker: a key without a certificate is a crashed first start and is replaced; a
certificate without its key is an error, never silently replaced (every issued identity hangs on
it). Creation runs under an exclusive `flock`, so two processes starting at once agree on one root.
"""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

from datetime import timedelta

from cryptography import x509

from ..private import make_private_dir
from .certs import (DEFAULT_TRUST_DOMAIN, WORKLOAD_LIFETIME, PrivateKey, PublicKey, WorkloadCert, build_root,
                    build_workload, sign_workload_key, cert_from_pem, cert_to_pem, detect_key_matches, detect_needs_renewal,
                    key_from_pem, key_to_pem, spiffe_id)

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
LOCK_FILE = ".lock"

Clock = Callable[[], datetime]


class CAStateError(RuntimeError):
    """The CA directory holds files that cannot be used as they are."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class CertificateAuthority:
    def __init__(self, state_dir: Path, clock: Clock = utc_now, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 workload_lifetime: timedelta = WORKLOAD_LIFETIME):
        if workload_lifetime <= timedelta(0):
            raise ValueError(f"the workload certificate lifetime must be positive, not {workload_lifetime}")
        self.dir = Path(state_dir) / "ca"
        self.trust_domain = trust_domain
        self.workload_lifetime = workload_lifetime  # istiod's SECRET_TTL
        self._clock = clock
        self._lock = threading.Lock()
        self._issued: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[WorkloadCert, x509.Certificate]] = {}
        self._root_cert, self._root_key = self._load_or_create_root()
        self._root_pem = cert_to_pem(self._root_cert)

    def root_pem(self) -> str:
        return self._root_pem

    def issue(self, namespace: str, service_account: str, node: str | None = None) -> WorkloadCert:
        """The identity's current certificate; a fresh one once half of the cached one's life is gone.
        `node`: a node proxy's, bound to its node (`sign_workload_key`)."""
        return self.issue_serving(namespace, service_account, node=node)

    def issue_serving(self, namespace: str, service_account: str, dns_names: Sequence[str] = (),
                      ip_addresses: Sequence[str] = (), node: str | None = None) -> WorkloadCert:
        """`issue` for a server that is also reached by name or address (the control plane's xDS port):
        the same SPIFFE identity plus DNS and IP SANs; cached and renewed at half life like `issue`."""
        identity = spiffe_id(namespace, service_account, self.trust_domain)
        key = (identity, tuple(dns_names), tuple(ip_addresses), node)
        now = self._clock()
        with self._lock:
            cached = self._issued.get(key)
            if cached and not detect_needs_renewal(cached[1], now):
                return cached[0]
            issued = build_workload(self._root_cert, self._root_key, identity, now, self.workload_lifetime,
                                    dns_names=dns_names, ip_addresses=ip_addresses, node=node)
            self._issued[key] = issued
            return issued[0]

    def sign(self, public_key: PublicKey, spiffe_id: str, lifetime: timedelta, node: str | None = None) -> list[str]:
        """A leaf for someone else's key (Istio's CA API: the caller keeps its private key), as the
        chain istiod answers: [leaf, root] in PEM. Who may have which identity is decided before
        (`meshway.ca.csr.decide_certificate_request`)."""
        leaf = sign_workload_key(self._root_cert, self._root_key, public_key, spiffe_id, self._clock(), lifetime,
                                 node=node)
        return [cert_to_pem(leaf), self._root_pem]

    # -- disk ------------------------------------------------------------------------------------
    def _load_or_create_root(self) -> tuple[x509.Certificate, PrivateKey]:
        make_private_dir(self.dir)
        cert_path, key_path = self.dir / ROOT_CERT_FILE, self.dir / ROOT_KEY_FILE
        with _exclusive(self.dir / LOCK_FILE):
            if cert_path.exists():
                for path in (cert_path, key_path):  # written 0644 by earlier versions
                    if path.exists():
                        os.chmod(path, 0o600)
                return _load_root(cert_path, key_path)
            cert, key = build_root(self._clock(), self.trust_domain)
            write_atomic(key_path, key_to_pem(key), 0o600)
            write_atomic(cert_path, cert_to_pem(cert), 0o600)
            return cert, key


def _load_root(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, PrivateKey]:
    if not key_path.exists():
        raise CAStateError(f"{cert_path} exists but its key {key_path} is missing")
    try:
        cert, key = cert_from_pem(cert_path.read_bytes()), key_from_pem(key_path.read_bytes())
    except ValueError as e:
        raise CAStateError(f"cannot read the root CA in {cert_path.parent}: {e}") from e
    if not detect_key_matches(cert, key):
        raise CAStateError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` so that a crash leaves either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed it, or the file pre-existed
            f.write(text.encode("ascii"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
