"""The kinds meshway serves: API group, versions, plural and short names, scope and model class."""
from __future__ import annotations

from dataclasses import dataclass

from .core import ConfigMap, Deployment, Namespace, Pod, Service, ServiceAccount
from .gateway import Gateway, GatewayClass, HTTPRoute
from .istio import AuthorizationPolicy, DestinationRule, EnvoyFilter, ServiceEntry, Telemetry, VirtualService
from .meta import Resource


@dataclass(frozen=True)
class KindInfo:
    kind: str
    group: str
    versions: tuple[str, ...]
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    model: type[Resource]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """`service`, `deployment.apps`, `gateway.gateway.networking.k8s.io`: kubectl's name for the kind."""
        return self.singular if not self.group else f"{self.singular}.{self.group}"

    def api_versions(self) -> tuple[str, ...]:
        return tuple(v if not self.group else f"{self.group}/{v}" for v in self.versions)


GW = "gateway.networking.k8s.io"
NET = "networking.istio.io"
SEC = "security.istio.io"

KINDS: tuple[KindInfo, ...] = (
    KindInfo("Namespace", "", ("v1",), "namespaces", ("ns",), False, Namespace),
    KindInfo("ServiceAccount", "", ("v1",), "serviceaccounts", ("sa",), True, ServiceAccount),
    KindInfo("ConfigMap", "", ("v1",), "configmaps", ("cm",), True, ConfigMap),
    KindInfo("Service", "", ("v1",), "services", ("svc",), True, Service),
    KindInfo("Pod", "", ("v1",), "pods", ("po",), True, Pod),
    KindInfo("Deployment", "apps", ("v1",), "deployments", ("deploy",), True, Deployment),
    KindInfo("GatewayClass", GW, ("v1", "v1beta1"), "gatewayclasses", ("gc",), False, GatewayClass),
    KindInfo("Gateway", GW, ("v1", "v1beta1"), "gateways", ("gtw",), True, Gateway),
    KindInfo("HTTPRoute", GW, ("v1", "v1beta1"), "httproutes", (), True, HTTPRoute),
    KindInfo("ServiceEntry", NET, ("v1", "v1beta1", "v1alpha3"), "serviceentries", ("se",), True, ServiceEntry),
    KindInfo("VirtualService", NET, ("v1", "v1beta1", "v1alpha3"), "virtualservices", ("vs",), True, VirtualService),
    KindInfo("DestinationRule", NET, ("v1", "v1beta1", "v1alpha3"), "destinationrules", ("dr",), True, DestinationRule),
    KindInfo("EnvoyFilter", NET, ("v1alpha3",), "envoyfilters", (), True, EnvoyFilter),
    KindInfo("AuthorizationPolicy", SEC, ("v1", "v1beta1"), "authorizationpolicies", ("ap",), True, AuthorizationPolicy),
    KindInfo("Telemetry", "telemetry.istio.io", ("v1", "v1alpha1"), "telemetries", ("telemetry",), True, Telemetry),
)

BY_KIND: dict[str, KindInfo] = {k.kind: k for k in KINDS}


def _aliases(info: KindInfo) -> list[str]:
    names = [info.singular, info.plural, *info.short_names]
    if info.group:
        names += [f"{n}.{info.group}" for n in (info.singular, info.plural)]
    return names


_BY_NAME: dict[str, KindInfo] = {alias: info for info in KINDS for alias in _aliases(info)}


class UnknownKind(ValueError):
    pass


def find_kind(name: str) -> KindInfo:
    """Resolve what a user types (`svc`, `gateways`, `serviceentries.networking.istio.io`, `Pod`)."""
    info = _BY_NAME.get(name.lower())
    if info is None:
        raise UnknownKind(f'the server doesn\'t have a resource type "{name}"')
    return info


def find_kind_for(api_version: str, kind: str) -> KindInfo:
    info = BY_KIND.get(kind)
    if info is None:
        raise UnknownKind(f'no matches for kind "{kind}" in version "{api_version}" (meshway serves: '
                          f'{", ".join(k.kind for k in KINDS)})')
    if api_version not in info.api_versions():
        raise UnknownKind(f'no matches for kind "{kind}" in version "{api_version}" (expected one of: '
                          f'{", ".join(info.api_versions())})')
    return info
