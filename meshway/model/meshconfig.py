"""Istio's MeshConfig, as read from the `mesh` key of ConfigMap `istio` in the root namespace.

meshway types the parts it acts on: `extensionProviders` (tracing collectors, external
authorizers, access log sinks) and `defaultProviders`; other MeshConfig fields are kept as given.
"""
from __future__ import annotations

from typing import Any

import pydantic
import yaml
from pydantic import BeforeValidator, Field, model_validator
from typing_extensions import Annotated

from .meta import Loose, Port, Strict

MESH_CONFIGMAP = "istio"
MESH_KEY = "mesh"


def _proto_uint(value: Any) -> Any:
    """MeshConfig is protobuf JSON, where a uint32 may be written as a string (`port: "9000"`)."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


class Service(Strict):
    """Where a provider listens: a Service or ServiceEntry host (`[ns/]host`) and a port."""

    service: Annotated[str, Field(min_length=1)]
    port: Annotated[Port, BeforeValidator(_proto_uint)]


class ZipkinProvider(Service):
    maxTagLength: int | None = None
    enable64bitTraceId: bool | None = None
    path: str | None = None
    traceContextOption: str | None = None  # USE_B3 (default) | USE_B3_WITH_W3C_PROPAGATION
    timeout: str | None = None
    headers: list[dict[str, Any]] | None = None


class OpenTelemetryHttp(Strict):
    path: str | None = None
    timeout: str | None = None
    headers: list[dict[str, Any]] | None = None


class OpenTelemetryProvider(Service):
    maxTagLength: int | None = None
    http: OpenTelemetryHttp | None = None
    grpc: dict[str, Any] | None = None
    resourceDetectors: dict[str, Any] | None = None
    dynatraceSampler: dict[str, Any] | None = None


class BodyInCheck(Strict):
    maxRequestBytes: int | None = None
    allowPartialMessage: bool | None = None
    packAsBytes: bool | None = None


class ExtAuthzHttpProvider(Service):
    timeout: str | None = None
    pathPrefix: str | None = None
    failOpen: bool | None = None
    clearRouteCache: bool | None = None
    statusOnError: str | None = None
    includeHeadersInCheck: list[str] | None = None  # deprecated spelling of includeRequestHeadersInCheck
    includeRequestHeadersInCheck: list[str] | None = None
    includeAdditionalHeadersInCheck: dict[str, str] | None = None
    includeRequestBodyInCheck: BodyInCheck | None = None
    headersToUpstreamOnAllow: list[str] | None = None
    headersToDownstreamOnDeny: list[str] | None = None
    headersToDownstreamOnAllow: list[str] | None = None


class ExtAuthzGrpcProvider(Service):
    timeout: str | None = None
    failOpen: bool | None = None
    clearRouteCache: bool | None = None
    statusOnError: str | None = None
    includeRequestBodyInCheck: BodyInCheck | None = None


class FileAccessLogProvider(Strict):
    path: str | None = None
    logFormat: dict[str, Any] | None = None


PROVIDER_TYPES = ("zipkin", "opentelemetry", "envoyExtAuthzHttp", "envoyExtAuthzGrpc", "envoyFileAccessLog")


class ExtensionProvider(Loose):
    """One named provider; exactly one provider type is set. Types meshway does not implement
    (datadog, skywalking, stackdriver, envoyOtelAls, ...) are accepted and reported where used."""

    name: Annotated[str, Field(min_length=1)]
    zipkin: ZipkinProvider | None = None
    opentelemetry: OpenTelemetryProvider | None = None
    envoyExtAuthzHttp: ExtAuthzHttpProvider | None = None
    envoyExtAuthzGrpc: ExtAuthzGrpcProvider | None = None
    envoyFileAccessLog: FileAccessLogProvider | None = None

    @model_validator(mode="after")
    def _one_type(self) -> "ExtensionProvider":
        kinds = [k for k in PROVIDER_TYPES if getattr(self, k) is not None] + list(self.model_extra or {})
        if len(kinds) != 1:
            raise ValueError(f"extension provider {self.name!r} must set exactly one provider type, got "
                             f"{kinds or 'none'}")
        return self

    @property
    def type(self) -> str:
        return next(k for k in PROVIDER_TYPES if getattr(self, k) is not None) if not self.model_extra \
            else next(iter(self.model_extra))


class DefaultProviders(Strict):
    tracing: list[str] | None = None
    metrics: list[str] | None = None
    accessLogging: list[str] | None = None


class MeshConfig(Loose):
    extensionProviders: list[ExtensionProvider] | None = None
    defaultProviders: DefaultProviders | None = None
    enableTracing: bool | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> "MeshConfig":
        names = [p.name for p in self.extensionProviders or []]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"extensionProviders: duplicate provider names {dup}")
        return self

    def provider(self, name: str) -> ExtensionProvider | None:
        return next((p for p in self.extensionProviders or [] if p.name == name), None)


def parse_mesh_config(text: str) -> MeshConfig:
    """The `mesh` key's YAML as MeshConfig; errors name the field path inside it."""
    try:
        body = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"data.mesh: invalid YAML: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f"data.mesh: expected a mapping, got {type(body).__name__}")
    try:
        return MeshConfig.model_validate(body)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"data.mesh: {where + ': ' if where else ''}{err['msg']}") from None
