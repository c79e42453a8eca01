"""Kubernetes object metadata and the naming rules Kubernetes enforces on it.

Validators raise ValueError with Kubernetes' own wording, so an error reads the way `kubectl`
would print it.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class Strict(BaseModel):
    """Base for every spec object: unknown fields are errors, as kubectl's strict validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class Loose(BaseModel):
    """Base for the parts of large Kubernetes specs meshway reads only in part (pod specs)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, strict=True)


def check_dns1123_label(value: str) -> str:
    if len(value) > 63:
        raise ValueError(f"must be no more than 63 characters, got {value!r}")
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            f"invalid value {value!r}: a lowercase RFC 1123 label must consist of lower case alphanumeric "
            "characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')"
        )
    return value


def check_dns1123_subdomain(value: str) -> str:
    if len(value) > 253:
        raise ValueError(f"must be no more than 253 characters, got {len(value)}")
    if not DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"invalid value {value!r}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
        )
    return value


def check_dns1035_label(value: str) -> str:
    if len(value) > 63:
        raise ValueError(f"must be no more than 63 characters, got {value!r}")
    if not DNS1035_LABEL.match(value):
        raise ValueError(
            f"invalid value {value!r}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')"
        )
    return value


def check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        raise ValueError(f"invalid label key {key!r}: prefix part must be non-empty")
    if prefix:
        try:
            check_dns1123_subdomain(prefix)
        except ValueError as exc:
            raise ValueError(f"invalid label key {key!r}: prefix part {exc}") from None
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        raise ValueError(
            f"invalid label key {key!r}: name part must consist of alphanumeric characters, '-', '_' or '.', "
            "must start and end with an alphanumeric character and be at most 63 characters"
        )
    return key


def check_label_value(value: str) -> str:
    if len(value) > 63 or not LABEL_VALUE.match(value):
        raise ValueError(
            f"invalid label value {value!r}: a valid label must be an empty string or consist of alphanumeric "
            "characters, '-', '_' or '.', and must start and end with an alphanumeric character "
            "(at most 63 characters)"
        )
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(value)
    return labels


def _int_or_string(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer or a string, got {type(value).__name__}")
    return value


Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
DNSLabel = Annotated[str, AfterValidator(check_dns1123_label)]
DNSSubdomain = Annotated[str, AfterValidator(check_dns1123_subdomain)]
Port = Annotated[int, Field(ge=1, le=65535)]
IntOrString = Annotated[int | str, BeforeValidator(_int_or_string)]


class OwnerReference(Strict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    blockOwnerDeletion: bool | None = None


class ObjectMeta(Strict):
    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Server-set fields: accepted on input (a `get -o yaml` round-trips), owned by the store.
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None
    ownerReferences: list[OwnerReference] = Field(default_factory=list)
    generateName: str | None = None
    finalizers: list[str] = Field(default_factory=list)
    managedFields: list[dict[str, Any]] | None = None
    deletionTimestamp: str | None = None


class LabelSelectorRequirement(Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(Strict):
    matchLabels: Labels = Field(default_factory=dict)
    matchExpressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class Condition(Strict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


class Resource(Strict):
    """Common shape of a top-level object. Subclasses pin `kind` and add `spec`."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or ""

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels
