"""The two SDS secrets a waypoint's TLS contexts name (istio-facts §1.3; `pkg/model/authentication.go`).

`default` holds the workload's certificate and key; `ROOTCA` holds the mesh root and accepts only
peers whose URI SAN is in the trust domain. Pure: PEM text in, Envoy protobufs out.
"""
from __future__ import annotations

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import (CertificateValidationContext, SubjectAltNameMatcher,
                                                                  TlsCertificate)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.type.matcher.v3.string_pb2 import StringMatcher

from .certs import DEFAULT_TRUST_DOMAIN, WorkloadCert

SDS_DEFAULT = "default"
SDS_ROOT = "ROOTCA"


def build_secrets(workload: WorkloadCert, root_pem: str,
                  trust_domain: str = DEFAULT_TRUST_DOMAIN) -> dict[str, Secret]:
    return {SDS_DEFAULT: build_certificate_secret(workload), SDS_ROOT: build_root_secret(root_pem, trust_domain)}


def build_certificate_secret(workload: WorkloadCert) -> Secret:
    return Secret(name=SDS_DEFAULT, tls_certificate=TlsCertificate(
        certificate_chain=DataSource(inline_bytes=workload.cert_pem.encode("ascii")),
        private_key=DataSource(inline_bytes=workload.key_pem.encode("ascii"))))


def build_root_secret(root_pem: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Secret:
    same_trust_domain = SubjectAltNameMatcher(san_type=SubjectAltNameMatcher.URI,
                                              matcher=StringMatcher(prefix=f"spiffe://{trust_domain}/"))
    return Secret(name=SDS_ROOT, validation_context=CertificateValidationContext(
        trusted_ca=DataSource(inline_bytes=root_pem.encode("ascii")),
        match_typed_subject_alt_names=[same_trust_domain]))
