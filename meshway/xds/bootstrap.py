"""The Envoy bootstrap of a meshway proxy: who it is, where its admin listens, and ADS for
everything else: over a Unix socket (the proxies the control plane starts), or over TCP + mTLS to
istiod's port 15012 (`build_mtls_bootstrap`: a proxy running as a pod anywhere). Pure: returns a
dict to be written as JSON or YAML.

The node metadata may carry the proxy's xDS credential (`meshway.ca.tokens`), so the file is
written owner-only; the admin socket, which can dump the bootstrap, is created 0600 by Envoy. Over
TCP the credential is the workload certificate in files the pod has, not a token: Envoy reads them
through a file-based SDS secret (`build_xds_client_sds`, a second file beside the bootstrap) that
watches their folder, so a certificate renewed there (Kubernetes swaps a Secret volume's `..data`
link atomically) is the one the next connection presents, without a restart. Files named directly
in the cluster would be read once, at start."""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import labels as L
from .istiod import XDS_SNI, istiod_spiffe_id
from .stat_tags import FAMILIES, build_stats_tags

XDS_CLUSTER = "xds-grpc"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
INTERNAL_LISTENER = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SECRET = "envoy.extensions.transport_sockets.tls.v3.Secret"
XDS_CLIENT_SECRET = "xds-client-cert"  # the file-based SDS secret of the proxy's own certificate
ADMIN_SOCKET_MODE = 0o600
# The stats meshway reads, and no others: Envoy creates only these, so it never names, tags or stores
# the hundreds of other stats each cluster and listener would have.
# - Istio's series (`meshway.observe.metrics`): the labelled cluster stats (`stat_tags`), by name;
#   their `upstream_rq_total` is also how tests and benchmarks count the requests a waypoint sent to
#   a service;
# - server state, cluster/listener managers (listener_in_place_updated) and the control-plane
#   connection (connected_state, the xds-grpc cluster), as Istio keeps them;
# - RBAC allowed/denied and their dry-run (shadow) counts, ext_authz and rate-limit counters.
ISTIO_SERIES = (r"(?:upstream_rq_(?:\d{3}|total|time)|upstream_r[qs]_body_size"
                r"|upstream_cx_(?:total|destroy|rx_bytes_total|tx_bytes_total))")
_LABELS = r"(?:[^.;]*=\.=[^;]*;\.)*"  # `LABEL=.=VALUE;.` pairs (`stat_tags`); then the stat's own name
STATS_INCLUSIONS = (
    {"safe_regex": {"regex": rf"(?:{'|'.join(FAMILIES)})\.[^.]*\."
                             rf"{_LABELS}reporter=\.=[^;]*;\.{_LABELS}{ISTIO_SERIES}"}},
    *({"prefix": p} for p in ("server.", "cluster_manager.", "listener_manager.", "control_plane.",
                              f"cluster.{XDS_CLUSTER}.")),
    *({"suffix": s} for s in ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied")),
    *({"contains": c} for c in ("ext_authz.", "rate_limit", "ratelimit.")),
)


@dataclass(frozen=True)
class XdsCertFiles:
    """Where a pod's Envoy finds its workload certificate, key and the mesh root (PEM files); the
    default is Istio's file-mounted layout (`/etc/certs`, `pkg/security` DefaultCertChainFilePath)."""

    cert_chain: str = "/etc/certs/cert-chain.pem"
    private_key: str = "/etc/certs/key.pem"
    root_cert: str = "/etc/certs/root-cert.pem"

    @classmethod
    def under(cls, folder: str | os.PathLike[str]) -> XdsCertFiles:
        return cls(*(os.path.join(folder, name) for name in ("cert-chain.pem", "key.pem", "root-cert.pem")))

    @property
    def folder(self) -> str:
        """Watched for a renewed certificate and key (moved in together, e.g. a Secret volume's `..data`)."""
        return os.path.dirname(self.cert_chain) or "."


def build_bootstrap(node_id: str, cluster: str, ads_socket: str | os.PathLike[str],
                    admin_socket: str | os.PathLike[str], delta: bool = True,
                    metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return _build_bootstrap(node_id, cluster, build_xds_cluster(ads_socket), admin_socket, delta, metadata)


def build_mtls_bootstrap(node_id: str, cluster: str, xds_address: str, certs: XdsCertFiles,
                         sds_file: str | os.PathLike[str], admin_socket: str | os.PathLike[str], delta: bool = True,
                         metadata: Mapping[str, Any] | None = None,
                         trust_domain: str = L.CLUSTER_DOMAIN) -> dict[str, Any]:
    """`build_bootstrap` for a proxy that reaches the control plane at `xds_address` (HOST:PORT, e.g.
    `istiod.istio-system.svc:15012`) over TCP + mTLS, proving its node id with the certificate in
    `certs` (`meshway.xds.peer` says which identity each node id needs), read through `sds_file`,
    which must hold `build_xds_client_sds(certs)`."""
    return _build_bootstrap(node_id, cluster, build_xds_tls_cluster(xds_address, certs, sds_file, trust_domain),
                            admin_socket, delta, metadata)


def _build_bootstrap(node_id: str, cluster: str, xds_cluster: dict[str, Any], admin_socket: str | os.PathLike[str],
                     delta: bool, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": dict(metadata or {})},
        "admin": {"address": {"pipe": {"path": str(admin_socket), "mode": ADMIN_SOCKET_MODE}}},
        # Istio's metric labels, read from the stat names meshway generates (`stat_tags`); histograms
        # merged every second, so the admin's Prometheus output is at most a second behind.
        "stats_config": build_stats_config(str(dict(metadata or {}).get("NODE_TYPE", "")) or None),
        "stats_flush_interval": "1s",
        "static_resources": {"clusters": [xds_cluster]},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": f"type.googleapis.com/{INTERNAL_LISTENER}", "buffer_size_kb": 64},
        }],
    }


def build_stats_config(node_type: str | None = None) -> dict[str, Any]:
    """Anchored tag extractors for this kind of proxy (`NODE_TYPE` in the node metadata: waypoint,
    ztunnel) and the inclusion list of the stats meshway reads."""
    return {"stats_tags": build_stats_tags(node_type),
            "stats_matcher": {"inclusion_list": {"patterns": [dict(p) for p in STATS_INCLUSIONS]}}}


def build_xds_cluster(ads_socket: str | os.PathLike[str]) -> dict[str, Any]:
    """The static cluster that reaches the control plane: HTTP/2 (gRPC) to a Unix socket."""
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(ads_socket)}}}}]}],
        },
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    }


def build_xds_client_sds(certs: XdsCertFiles) -> dict[str, Any]:
    """The file-based SDS resource (JSON) the bootstrap's `sds_file` holds: the proxy's certificate and
    key by file name, reloaded together when something is moved into their folder."""
    return {"resources": [{
        "@type": f"type.googleapis.com/{SECRET}",
        "name": XDS_CLIENT_SECRET,
        "tls_certificate": {"certificate_chain": {"filename": certs.cert_chain},
                            "private_key": {"filename": certs.private_key},
                            "watched_directory": {"path": certs.folder}},
    }]}


def build_xds_tls_cluster(xds_address: str, certs: XdsCertFiles, sds_file: str | os.PathLike[str],
                          trust_domain: str = L.CLUSTER_DOMAIN) -> dict[str, Any]:
    """The control plane over TCP + mTLS: the pod's certificate as client certificate (file-based SDS:
    `build_xds_client_sds`); the server must chain to the mesh root and be istiod (its SPIFFE ID, or
    its DNS name `istiod.istio-system.svc`, which is also the SNI). An IP address is dialled as is
    (STATIC), a name resolved (STRICT_DNS), `unix:PATH` is a Unix socket that leads there (a node
    agent's relay: `meshway.node.relay`)."""
    if xds_address.startswith("unix:"):
        cluster = build_xds_tls_cluster("127.0.0.1:15012", certs, sds_file, trust_domain)
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] = {
            "address": {"pipe": {"path": xds_address[len("unix:"):]}}}
        del cluster["upstream_connection_options"]
        return cluster
    host, _, port = xds_address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{xds_address!r} is not HOST:PORT (e.g. {XDS_SNI}:15012)")
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    endpoint = {"address": {"socket_address": {"address": host, "port_value": int(port)}}}
    return {
        "name": XDS_CLUSTER,
        "type": kind,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]},
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},  # as Istio's xds-grpc
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": f"type.googleapis.com/{UPSTREAM_TLS}",
            "sni": XDS_SNI,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [{
                    "name": XDS_CLIENT_SECRET,
                    "sds_config": {"path_config_source": {"path": str(sds_file)}, "resource_api_version": "V3"},
                }],
                "validation_context": {
                    "trusted_ca": {"filename": certs.root_cert},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": istiod_spiffe_id(trust_domain)}},
                        {"san_type": "DNS", "matcher": {"exact": XDS_SNI}},
                    ],
                },
            },
        }},
    }
