"""YAML and Kubernetes dicts -> validated model objects, with errors that name the file, the
document, the field path and what was expected."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

import pydantic
import yaml

from . import limits
from .errors import InputError
from .meta import Resource, check_dns1035_label, check_dns1123_label, check_dns1123_subdomain
from .registry import KindInfo, UnknownKind, find_kind_for


@dataclass(frozen=True)
class Manifest:
    """One validated document: its body as given (plus the namespace filled in) and its model."""

    source: str
    document: int
    info: KindInfo
    body: dict[str, Any]
    obj: Resource

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.info.kind, self.obj.namespace, self.obj.name)


_SUBPATH = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_][\w]*(?:\[\d+\])?)*): (.*)$", re.S)


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or "(" in part or part in ("int", "str")):
            continue  # pydantic's union/function branch markers are not field names
        else:
            out += ("." if out else "") + part
    return out


def _first_error(exc: pydantic.ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    path, msg = _path(err["loc"]), err["msg"]
    msg = msg.removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "Required value"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field (not in the schema for this kind)"
    elif err["type"] == "literal_error":
        msg = f"Unsupported value: {err.get('input')!r}: {msg}"
    elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
        msg = f"{msg}, got {err['input']!r}"
    sub = _SUBPATH.match(msg)
    if sub and err["type"] == "value_error":
        path, msg = (f"{path}.{sub.group(1)}" if path else sub.group(1)), sub.group(2)
    return path, msg


def parse_object(body: Any, source: str = "<input>", document: int = 1, namespace: str | None = None) -> Manifest:
    """Validate one Kubernetes document; `namespace` fills in a missing metadata.namespace."""
    if not isinstance(body, dict):
        raise InputError(source, f"expected a mapping (a Kubernetes object), got {type(body).__name__}", document)
    api_version, kind = body.get("apiVersion"), body.get("kind")
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    what = f"{kind} {meta.get('name', '')}".strip() if isinstance(kind, str) else ""
    if not isinstance(api_version, str) or not api_version:
        raise InputError(source, "Required value: apiVersion must be set", document, what, "apiVersion")
    if not isinstance(kind, str) or not kind:
        raise InputError(source, "Required value: kind must be set", document, what, "kind")
    try:
        info = find_kind_for(api_version, kind)
    except UnknownKind as exc:
        raise InputError(source, str(exc), document, what, "kind") from None
    body = dict(body)
    meta = dict(body.get("metadata") or {}) if isinstance(body.get("metadata"), dict) else body.get("metadata")
    if isinstance(meta, dict):
        if info.namespaced:
            given = meta.get("namespace")
            if namespace and given and given != namespace:
                raise InputError(source, f"the namespace from the provided object {given!r} does not match the namespace "
                                 f"{namespace!r}. You must pass '--namespace={given}' to perform this operation.",
                                 document, what, "metadata.namespace")
            meta["namespace"] = given or namespace or "default"
        else:
            meta.pop("namespace", None)
        body["metadata"] = meta
        what = f"{kind} {meta['namespace'] + '/' if info.namespaced else ''}{meta.get('name', '')}"
    check_bounds(body, source, document, what)
    try:
        obj = info.model.model_validate(body)
    except pydantic.ValidationError as exc:
        path, msg = _first_error(exc)
        raise InputError(source, msg, document, what, path) from None
    name_check = {"Namespace": check_dns1123_label, "Service": check_dns1035_label}.get(kind, check_dns1123_subdomain)
    for field, value, check in (("metadata.name", obj.metadata.name, name_check),
                                ("metadata.namespace", obj.namespace if info.namespaced else None, check_dns1123_label)):
        try:
            if value is not None:
                check(value)
        except ValueError as exc:
            raise InputError(source, str(exc), document, what, field) from None
    return Manifest(source, document, info, body, obj)


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when present
    """SafeLoader that refuses duplicate mapping keys, as kubectl's YAML decoder does."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'mapping key "{key}" already defined', key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)
def check_bounds(body: dict[str, Any], source: str, document: int, what: str) -> None:
    """The API server's bounds on one object: nesting depth, 3 MiB serialized, 256 KiB annotations."""
    if limits.find_depth_over(body):
        raise InputError(source, f"nesting too deep: {limits.TOO_DEEP}", document, what)
    size = len(json.dumps(body, separators=(",", ":"), default=str).encode())
    if size > limits.MAX_REQUEST_BYTES:
        raise InputError(source, f"{limits.TOO_LARGE} (the object is {size} bytes)", document, what)
    meta = body.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(annotations, dict) and limits.annotations_size(annotations) > limits.MAX_ANNOTATIONS_BYTES:
        raise InputError(source, limits.ANNOTATIONS_TOO_LONG, document, what, "metadata.annotations")


def decode_text(data: bytes | str, source: str) -> str:
    """Bytes of a manifest -> text: UTF-8 (or UTF-16 with a byte-order mark, as YAML allows)."""
    if isinstance(data, str):
        return data
    encoding = "utf-8"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise InputError(source, f"not a YAML or JSON text: invalid {exc.encoding.upper()} byte "
                                 f"0x{data[exc.start]:02x} at offset {exc.start} (binary input?)") from None


def _yaml_error(exc: yaml.YAMLError, source: str, document: int | None = None) -> InputError:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, control bytes)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return InputError(source, f"invalid YAML: unacceptable character #x{char:04x} at offset {exc.position} "
                                  f"({exc.reason}; binary input?)")
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return InputError(source, f"invalid YAML{where}: {problem}", document)


def load_yaml(text: str | bytes, source: str = "<input>", namespace: str | None = None) -> list[Manifest]:
    """Every document of a multi-document YAML stream, validated; the first bad one raises.
    Alias expansion and nesting are bounded before anything is built (`limits`)."""
    text = decode_text(text, source)
    try:
        limits.check_yaml_events(yaml.parse(text, Loader=_StrictLoader))
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except limits.LimitError as exc:
        where = f" at line {exc.mark.line + 1}, column {exc.mark.column + 1}" if exc.mark else ""
        raise InputError(source, f"{exc.message}{where}", exc.document) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    out: list[Manifest] = []
    index = 0
    for doc in docs:
        index += 1
        if doc is None:
            continue
        items = doc.get("items") if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") else None
        if items is not None:
            for item in items:
                out.append(parse_object(item, source, index, namespace))
        else:
            out.append(parse_object(doc, source, index, namespace))
    return out
