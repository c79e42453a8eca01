"""MeshConfig extension providers resolved against the mesh (pure).

- `find_provider_service`: the Service or ServiceEntry a provider's `service` names, as Istio's
  `extensionproviders.LookupCluster` finds it (`[namespace/]hostname`), and the cluster istiod names
  for it, `outbound|PORT||HOST`.
- `find_ext_authz_provider`: a CUSTOM AuthorizationPolicy's provider (`envoyExtAuthzHttp` or
  `envoyExtAuthzGrpc`), checked as istiod checks it (`authz/builder/extauthz.go`); the error says
  why a provider is unusable, in istiod's words. istiod then fails closed: see `build_extauthz`.
"""
from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from ..model.durations import parse_duration
from ..model.meshconfig import ExtAuthzGrpcProvider, ExtAuthzHttpProvider
from .meshconfig import find_mesh_config
from .view import MeshView, ServiceInfo

# Envoy's `type.v3.StatusCode` enum: the HTTP statuses minus the ones it does not name.
STATUS_CODES = frozenset(s.value for s in HTTPStatus) - {101, 102, 103, 418, 425, 451}
HEADER_FIELDS = ("includeRequestHeadersInCheck", "includeHeadersInCheck", "headersToDownstreamOnDeny",
                 "headersToDownstreamOnAllow", "headersToUpstreamOnAllow")


@dataclass(frozen=True)
class ProviderService:
    service: ServiceInfo
    host: str
    port: int

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.host}"


@dataclass(frozen=True)
class ExtAuthzProvider:
    name: str
    config: ExtAuthzHttpProvider | ExtAuthzGrpcProvider
    target: ProviderService

    @property
    def grpc(self) -> bool:
        return isinstance(self.config, ExtAuthzGrpcProvider)


def detect_service_hosts(svc: ServiceInfo) -> tuple[str, ...]:
    """The hostnames a service is known by (a ServiceEntry's wildcard hosts are not usable)."""
    if svc.kind == "ServiceEntry":
        return tuple(h for h in svc.hosts if "*" not in h)
    return (svc.hostname,)


def find_provider_service(view: MeshView, service: str, port: int) -> tuple[ProviderService | None, str]:
    """(`namespace/hostname` or `hostname`, port) -> the service, or None and istiod's error."""
    if not service:
        return None, "service must not be empty"
    parts = service.split("/")
    if len(parts) == 2:
        found = [s for s in view.services.values() if s.namespace == parts[0] and parts[1] in detect_service_hosts(s)]
        if found:
            return ProviderService(found[0], parts[1], port), ""
    else:
        found = sorted((s for s in view.services.values() if service in detect_service_hosts(s)),
                       key=lambda s: (s.namespace, s.kind))
        namespaces = sorted({s.namespace for s in found})
        if len(namespaces) == 1:
            return ProviderService(found[0], service, port), ""
        if len(namespaces) > 1:
            return None, (f"found {service} in multiple namespaces [{' '.join(namespaces)}], specify the namespace "
                          f"explicitly in the format of <Namespace>/<Hostname>")
    return None, f"could not find service {service}:{port} in Istio service registry"


def _check_config(config: ExtAuthzHttpProvider | ExtAuthzGrpcProvider) -> list[str]:
    errors = []
    if config.statusOnError:
        if not config.statusOnError.isdigit():
            errors.append(f"invalid statusOnError {config.statusOnError!r}")
        elif int(config.statusOnError) not in STATUS_CODES:
            errors.append(f"unsupported statusOnError {config.statusOnError}")
    if config.timeout:
        try:
            parse_duration(config.timeout)
        except ValueError as exc:
            errors.append(f"timeout: {exc}")
    if isinstance(config, ExtAuthzHttpProvider):
        if config.pathPrefix and not config.pathPrefix.startswith("/"):
            errors.append(f"pathPrefix must begin with `/`, found: \"{config.pathPrefix}\"")
        for field in HEADER_FIELDS:
            if "*" in (getattr(config, field) or []):
                errors.append('a single wildcard ("*") is not supported, change it to either prefix or suffix '
                              f"match: {field[0].upper() + field[1:]}")
    return errors


def find_ext_authz_provider(view: MeshView, name: str) -> tuple[ExtAuthzProvider | None, str]:
    """The CUSTOM provider `name` from the MeshConfig in force, or None and why it cannot be used."""
    mesh = find_mesh_config(view)
    usable = [p.name for p in mesh.extensionProviders or [] if p.envoyExtAuthzHttp or p.envoyExtAuthzGrpc]
    provider = mesh.provider(name)
    if provider is None or name not in usable:
        return None, f"available providers are [{' '.join(usable)}] but found \"{name}\""
    config = provider.envoyExtAuthzHttp or provider.envoyExtAuthzGrpc
    target, error = find_provider_service(view, config.service, config.port)
    errors = _check_config(config) + ([error] if error else [])
    if errors:
        return None, f"found errors in provider {name}: {'; '.join(errors)}"
    return ExtAuthzProvider(name, config, target), ""
