"""The kinds meshway serves: API group, versions, plural and short names, scope and model class."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .meta import Resource


@dataclass(frozen=True)
class KindInfo:
    """A kind's names and scope; its pydantic model class is imported on first use (`model`), so that
    resolving a kind (`meshway get pods`) loads no model."""

    kind: str
    group: str
    versions: tuple[str, ...]
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    module: str  # the module under meshway.model that defines the class named `kind`

    @property
    def model(self) -> type[Resource]:
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.kind)

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
    KindInfo("Namespace", "", ("v1",), "namespaces", ("ns",), False, "core"),
    KindInfo("ServiceAccount", "", ("v1",), "serviceaccounts", ("sa",), True, "core"),
    KindInfo("ConfigMap", "", ("v1",), "configmaps", ("cm",), True, "core"),
    KindInfo("Service", "", ("v1",), "services", ("svc",), True, "core"),
    KindInfo("Pod", "", ("v1",), "pods", ("po",), True, "core"),
    KindInfo("Deployment", "apps", ("v1",), "deployments", ("deploy",), True, "core"),
    KindInfo("GatewayClass", GW, ("v1", "v1beta1"), "gatewayclasses", ("gc",), False, "gateway"),
    KindInfo("Gateway", GW, ("v1", "v1beta1"), "gateways", ("gtw",), True, "gateway"),
    KindInfo("HTTPRoute", GW, ("v1", "v1beta1"), "httproutes", (), True, "gateway"),
    KindInfo("ServiceEntry", NET, ("v1", "v1beta1", "v1alpha3"), "serviceentries", ("se",), True, "istio"),
    KindInfo("VirtualService", NET, ("v1", "v1beta1", "v1alpha3"), "virtualservices", ("vs",), True, "istio"),
    KindInfo("DestinationRule", NET, ("v1", "v1beta1", "v1alpha3"), "destinationrules", ("dr",), True, "istio"),
    KindInfo("EnvoyFilter", NET, ("v1alpha3",), "envoyfilters", (), True, "istio"),
    KindInfo("AuthorizationPolicy", SEC, ("v1", "v1beta1"), "authorizationpolicies", ("ap",), True, "istio"),
    KindInfo("RequestAuthentication", SEC, ("v1", "v1beta1"), "requestauthentications", ("ra",), True, "istio"),
    KindInfo("PeerAuthentication", SEC, ("v1", "v1beta1"), "peerauthentications", ("pa",), True, "istio"),
    KindInfo("WasmPlugin", "extensions.istio.io", ("v1alpha1",), "wasmplugins", (), True, "extensions"),
    KindInfo("Telemetry", "telemetry.istio.io", ("v1", "v1alpha1"), "telemetries", ("telemetry",), True, "istio"),
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
