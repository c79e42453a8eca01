"""extensions.istio.io: WasmPlugin (v1alpha1), with the field names, enums and validation of
istio/api `extensions/v1alpha1/wasm.proto` and istiod's (`parseWasmPluginURL`)."""
from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from typing_extensions import Annotated

from .istio import PolicyTargetReference, PortSelector, WorkloadSelector
from .meta import Resource, Strict

SCHEMES = ("file", "http", "https", "oci")
SHA256 = re.compile(r"^$|^[a-f0-9]{64}$")


def parse_plugin_url(url: str) -> tuple[str, str]:
    """(scheme, url) as istiod reads it: file, http, https and oci as given; anything else is an
    OCI image reference (`ghcr.io/org/plugin:1.0` -> oci://ghcr.io/org/plugin:1.0)."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in SCHEMES:
        return scheme, url
    return "oci", f"oci://{url}"


class TrafficSelector(Strict):
    mode: Literal["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"] = "UNDEFINED"
    ports: list[PortSelector] | None = None


class EnvVar(Strict):
    name: Annotated[str, Field(min_length=1)]
    valueFrom: Literal["INLINE", "HOST"] = "INLINE"
    value: str | None = None

    @model_validator(mode="after")
    def _value(self) -> "EnvVar":
        if self.valueFrom == "HOST" and self.value:
            raise ValueError("value may only be set when valueFrom is INLINE")
        return self


class VmConfig(Strict):
    env: Annotated[list[EnvVar], Field(max_length=256)] | None = None


class WasmPluginSpec(Strict):
    selector: WorkloadSelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: Annotated[list[PolicyTargetReference], Field(max_length=16)] | None = None
    url: Annotated[str, Field(min_length=1)]
    sha256: str | None = None
    imagePullPolicy: Literal["UNSPECIFIED_POLICY", "IfNotPresent", "Always"] | None = None
    imagePullSecret: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    pluginConfig: dict[str, Any] | None = None
    pluginName: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    phase: Literal["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"] = "UNSPECIFIED_PHASE"
    priority: int | None = None
    failStrategy: Literal["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"] = "FAIL_CLOSE"
    vmConfig: VmConfig | None = None
    match: list[TrafficSelector] | None = None
    type: Literal["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"] = "UNSPECIFIED_PLUGIN_TYPE"

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not SHA256.match(value):
            raise ValueError("sha256 must be 64 lowercase hexadecimal characters")
        return value

    @field_validator("priority")
    @classmethod
    def _int32(cls, value: int | None) -> int | None:
        if value is not None and not -2**31 <= value < 2**31:
            raise ValueError("priority must be a 32-bit integer")
        return value

    @model_validator(mode="after")
    def _valid(self) -> "WasmPluginSpec":
        if sum(x is not None for x in (self.selector, self.targetRef, self.targetRefs)) > 1:
            raise ValueError("only one of targetRefs or selector can be set")
        for env in (self.vmConfig.env if self.vmConfig and self.vmConfig.env else []):
            if env.name.startswith("ISTIO_META_"):
                raise ValueError(f"vmConfig.env {env.name}: names starting with ISTIO_META_ are reserved")
        return self

    @property
    def scheme(self) -> str:
        return parse_plugin_url(self.url)[0]


class WasmPlugin(Resource):
    kind: Literal["WasmPlugin"]
    spec: WasmPluginSpec
