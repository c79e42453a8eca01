"""Core Kubernetes kinds: Namespace, ServiceAccount, ConfigMap, Service, Pod, Deployment.

Pod and Deployment specs are large; meshway types the fields it reads and keeps the rest as
given (`Loose`), so real manifests apply unchanged while wrong types in typed fields are errors.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator
from typing_extensions import Annotated

from ..labels import ROOT_NAMESPACE
from .meshconfig import MESH_CONFIGMAP, MESH_KEY, parse_mesh_config
from .meta import (
    IANA_SVC_NAME,
    IntOrString,
    LabelSelector,
    Labels,
    Loose,
    ObjectMeta,
    Port,
    Resource,
    Strict,
    check_dns1123_label,
)

Protocol = Literal["TCP", "UDP", "SCTP"]


class Namespace(Resource):
    kind: Literal["Namespace"]
    spec: dict[str, Any] | None = None


class ServiceAccount(Resource):
    kind: Literal["ServiceAccount"]
    secrets: list[dict[str, Any]] | None = None
    imagePullSecrets: list[dict[str, Any]] | None = None
    automountServiceAccountToken: bool | None = None


class ConfigMap(Resource):
    """Data as strings. The root namespace's `istio` ConfigMap carries the MeshConfig under `mesh`;
    that one is validated as MeshConfig on apply, so a bad mesh config is refused, not half-used."""

    kind: Literal["ConfigMap"]
    data: dict[str, str] | None = None
    binaryData: dict[str, str] | None = None
    immutable: bool | None = None

    @model_validator(mode="after")
    def _mesh_config(self) -> "ConfigMap":
        if (self.metadata.name, self.metadata.namespace) == (MESH_CONFIGMAP, ROOT_NAMESPACE) and self.data \
                and MESH_KEY in self.data:
            parse_mesh_config(self.data[MESH_KEY])
        return self


class ServicePort(Strict):
    name: Annotated[str, AfterValidator(check_dns1123_label)] | None = None
    port: Port
    targetPort: IntOrString | None = None
    protocol: Protocol = "TCP"
    appProtocol: str | None = None
    nodePort: Port | None = None

    @field_validator("targetPort")
    @classmethod
    def _target_port(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"must be between 1 and 65535, inclusive, got {value}")
        if isinstance(value, str) and (len(value) > 15 or not IANA_SVC_NAME.match(value)):
            raise ValueError(f"invalid port name {value!r}: must be an IANA_SVC_NAME (at most 15 lower case "
                             "alphanumeric characters or '-')")
        return value


def _check_ip(value: str) -> str:
    if value in ("", "None"):
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"must be a valid IP address or 'None', got {value!r}") from None
    return value


ClusterIP = Annotated[str, AfterValidator(_check_ip)]


class ServiceSpec(Strict):
    ports: list[ServicePort] = Field(default_factory=list)
    selector: dict[str, str] | None = None
    clusterIP: ClusterIP | None = None
    clusterIPs: list[ClusterIP] | None = None
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    externalName: str | None = None
    sessionAffinity: Literal["None", "ClientIP"] | None = None
    ipFamilies: list[Literal["IPv4", "IPv6"]] | None = None
    ipFamilyPolicy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = None
    internalTrafficPolicy: Literal["Cluster", "Local"] | None = None
    externalTrafficPolicy: Literal["Cluster", "Local"] | None = None
    publishNotReadyAddresses: bool | None = None
    trafficDistribution: str | None = None
    externalIPs: list[str] | None = None
    loadBalancerIP: str | None = None
    loadBalancerSourceRanges: list[str] | None = None
    sessionAffinityConfig: dict[str, Any] | None = None
    healthCheckNodePort: int | None = None
    allocateLoadBalancerNodePorts: bool | None = None
    loadBalancerClass: str | None = None

    @model_validator(mode="after")
    def _ports(self) -> "ServiceSpec":
        if self.type != "ExternalName" and not self.ports:
            raise ValueError("ports: Required value")
        if len(self.ports) > 1:
            for i, port in enumerate(self.ports):
                if not port.name:
                    raise ValueError(f"ports[{i}].name: Required value: a name is required when a service has more than one port")
        seen: dict[tuple[int, str], int] = {}
        names: set[str] = set()
        for i, port in enumerate(self.ports):
            key = (port.port, port.protocol)
            if key in seen:
                raise ValueError(f"ports[{i}]: Duplicate value: port {port.port}/{port.protocol} is already defined")
            seen[key] = i
            if port.name:
                if port.name in names:
                    raise ValueError(f"ports[{i}].name: Duplicate value: {port.name!r}")
                names.add(port.name)
        return self


class Service(Resource):
    kind: Literal["Service"]
    spec: ServiceSpec



class ContainerPort(Strict):
    containerPort: Port
    name: str | None = None
    protocol: Protocol = "TCP"
    hostPort: Port | None = None
    hostIP: str | None = None


class EnvVar(Strict):
    name: str = Field(min_length=1)
    value: str | None = None
    valueFrom: dict[str, Any] | None = None


class Container(Loose):
    name: Annotated[str, AfterValidator(check_dns1123_label)]
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    ports: list[ContainerPort] | None = None
    readinessProbe: dict[str, Any] | None = None
    livenessProbe: dict[str, Any] | None = None
    startupProbe: dict[str, Any] | None = None
    workingDir: str | None = None


class PodSpec(Loose):
    containers: list[Container] = Field(min_length=1)
    initContainers: list[Container] | None = None
    serviceAccountName: str | None = None
    serviceAccount: str | None = None
    nodeName: str | None = None
    hostNetwork: bool | None = None


class Pod(Resource):
    kind: Literal["Pod"]
    spec: PodSpec


class PodTemplateMeta(Strict):
    labels: Labels = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    creationTimestamp: str | None = None


class PodTemplate(Strict):
    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta)
    spec: PodSpec


class DeploymentSpec(Loose):
    replicas: Annotated[int, Field(ge=0)] = 1
    selector: LabelSelector
    template: PodTemplate
    strategy: dict[str, Any] | None = None
    minReadySeconds: int | None = None
    revisionHistoryLimit: int | None = None
    progressDeadlineSeconds: int | None = None
    paused: bool | None = None

    @model_validator(mode="after")
    def _selector_matches_template(self) -> "DeploymentSpec":
        from .selectors import selector_matches

        if not self.selector.matchLabels and not self.selector.matchExpressions:
            raise ValueError("selector: Invalid value: empty selector is invalid for deployment")
        if not selector_matches(self.selector, self.template.metadata.labels):
            raise ValueError("template.metadata.labels: Invalid value: `selector` does not match template `labels`")
        return self


class Deployment(Resource):
    kind: Literal["Deployment"]
    spec: DeploymentSpec
