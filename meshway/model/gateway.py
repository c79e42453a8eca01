"""Gateway API kinds (gateway.networking.k8s.io v1 / v1beta1): GatewayClass, Gateway, HTTPRoute."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator
from typing_extensions import Annotated

from .meta import LabelSelector, Port, Resource, Strict, check_dns1123_subdomain
from .durations import Duration

SectionName = Annotated[str, AfterValidator(check_dns1123_subdomain)]
_PROTOCOL = re.compile(
    r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]+$"
)
_CONTROLLER = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


class ParametersReference(Strict):
    group: str
    kind: str
    name: str
    namespace: str | None = None


class GatewayClassSpec(Strict):
    controllerName: str
    parametersRef: ParametersReference | None = None
    description: str | None = Field(default=None, max_length=64)

    @field_validator("controllerName")
    @classmethod
    def _controller(cls, value: str) -> str:
        if not _CONTROLLER.match(value):
            raise ValueError(f"must be a domain-prefixed path (e.g. 'istio.io/mesh-controller'), got {value!r}")
        return value


class GatewayClass(Resource):
    kind: Literal["GatewayClass"]
    spec: GatewayClassSpec


class RouteNamespaces(Strict):
    from_: Literal["All", "Selector", "Same"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _selector(self) -> "RouteNamespaces":
        if self.from_ == "Selector" and self.selector is None:
            raise ValueError("selector: Required value: selector must be specified when from is Selector")
        return self


class RouteGroupKind(Strict):
    group: str | None = None
    kind: str


class AllowedRoutes(Strict):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: list[RouteGroupKind] | None = None


class GatewayTLSConfig(Strict):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificateRefs: list[dict[str, Any]] | None = None
    options: dict[str, str] | None = None
    frontendValidation: dict[str, Any] | None = None


class Listener(Strict):
    name: SectionName
    hostname: str | None = None
    port: Port
    protocol: str
    tls: GatewayTLSConfig | None = None
    allowedRoutes: AllowedRoutes = Field(default_factory=AllowedRoutes)

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        if not _PROTOCOL.match(value):
            raise ValueError(f"invalid protocol {value!r}")
        return value


class GatewayAddress(Strict):
    type: str = "IPAddress"
    value: str


class GatewaySpec(Strict):
    gatewayClassName: Annotated[str, Field(min_length=1)]
    listeners: Annotated[list[Listener], Field(min_length=1, max_length=64)]
    addresses: list[GatewayAddress] | None = None
    infrastructure: dict[str, Any] | None = None
    backendTLS: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _unique_listener_names(self) -> "GatewaySpec":
        names = [listener.name for listener in self.listeners]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"listeners[{i}].name: Duplicate value: {name!r} (listener names must be unique)")
        return self


class Gateway(Resource):
    kind: Literal["Gateway"]
    spec: GatewaySpec


class ParentReference(Strict):
    group: str | None = None
    kind: str | None = None
    namespace: str | None = None
    name: Annotated[str, Field(min_length=1)]
    sectionName: str | None = None
    port: Port | None = None


class PathMatch(Strict):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"


class HeaderMatch(Strict):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: Annotated[str, Field(min_length=1)]
    value: str


class RouteMatch(Strict):
    path: PathMatch | None = None
    headers: list[HeaderMatch] | None = None
    queryParams: list[HeaderMatch] | None = None
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] | None = None


class HeaderValue(Strict):
    name: str
    value: str


class HeaderModifier(Strict):
    set: list[HeaderValue] | None = None
    add: list[HeaderValue] | None = None
    remove: list[str] | None = None


class BackendRef(Strict):
    group: str | None = None
    kind: str | None = None
    name: Annotated[str, Field(min_length=1)]
    namespace: str | None = None
    port: Port | None = None
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 1
    filters: list[dict[str, Any]] | None = None


class RouteFilter(Strict):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect",
                  "URLRewrite", "ExtensionRef", "CORS", "ExternalAuth"]
    requestHeaderModifier: HeaderModifier | None = None
    responseHeaderModifier: HeaderModifier | None = None
    requestMirror: dict[str, Any] | None = None
    requestRedirect: dict[str, Any] | None = None
    urlRewrite: dict[str, Any] | None = None
    extensionRef: dict[str, Any] | None = None
    cors: dict[str, Any] | None = None
    externalAuth: dict[str, Any] | None = None


class RouteTimeouts(Strict):
    request: Duration | None = None
    backendRequest: Duration | None = None


class RouteRetry(Strict):
    codes: list[Annotated[int, Field(ge=400, le=599)]] | None = None
    attempts: Annotated[int, Field(ge=0)] | None = None
    backoff: Duration | None = None


class HTTPRouteRule(Strict):
    name: str | None = None
    matches: list[RouteMatch] | None = None
    filters: list[RouteFilter] | None = None
    backendRefs: list[BackendRef] | None = None
    timeouts: RouteTimeouts | None = None
    retry: RouteRetry | None = None
    sessionPersistence: dict[str, Any] | None = None


class HTTPRouteSpec(Strict):
    parentRefs: list[ParentReference] = Field(default_factory=list)
    hostnames: list[str] | None = None
    rules: list[HTTPRouteRule] = Field(default_factory=lambda: [HTTPRouteRule()])


class HTTPRoute(Resource):
    kind: Literal["HTTPRoute"]
    spec: HTTPRouteSpec
