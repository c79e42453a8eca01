"""The mesh certificate authority: SPIFFE workload certificates and the SDS secrets that carry them."""
from .authority import CAStateError, CertificateAuthority, write_atomic
from .certs import (DEFAULT_TRUST_DOMAIN, ROOT_LIFETIME, WORKLOAD_LIFETIME, WorkloadCert, build_root,
                    build_workload_cert, cert_from_pem, cert_to_pem, detect_needs_renewal, find_uri_sans,
                    key_from_pem, key_to_pem, spiffe_id)
from .sds import SDS_DEFAULT, SDS_ROOT, build_certificate_secret, build_root_secret, build_secrets

__all__ = ["CAStateError", "CertificateAuthority", "DEFAULT_TRUST_DOMAIN", "ROOT_LIFETIME", "SDS_DEFAULT", "SDS_ROOT",
           "WORKLOAD_LIFETIME", "WorkloadCert", "build_certificate_secret", "build_root", "build_root_secret",
           "build_secrets", "build_workload_cert", "cert_from_pem", "cert_to_pem", "detect_needs_renewal",
           "find_uri_sans", "key_from_pem", "key_to_pem", "spiffe_id", "write_atomic"]
