"""Envoy API types: the one place that imports the generated protobuf modules, so that `@type`
URLs in builder dicts resolve, and the one function that turns builder dicts into messages."""
from __future__ import annotations

import base64
import importlib
import json
from pathlib import Path
from typing import Any

from google.protobuf import descriptor, descriptor_pool, json_format, message, message_factory  # noqa: F401
from google.protobuf import wrappers_pb2  # noqa: F401
from google.protobuf.any_pb2 import Any as AnyProto

# Imported for their side effect: registering the types that `@type` URLs name.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2  # noqa: F401
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401
from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_authn_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2  # noqa: F401
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2  # noqa: F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2  # noqa: F401
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as net_ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2  # noqa: F401
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2 as net_sfs_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.extensions.request_id.uuid.v3 import uuid_pb2  # noqa: F401
from xds.type.matcher.v3 import ip_pb2  # noqa: F401

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"  # ECDS
# Push order: ECDS names are learned from listeners (like RDS), so ECDS follows LDS: a new name is
# asked for once its listener arrived, and a removed one goes only after the listener stopped naming it.
TYPE_ORDER = (CLUSTER, ENDPOINT, LISTENER, EXTENSION_CONFIG, ROUTE, SECRET)

MESSAGES: dict[str, type[message.Message]] = {
    LISTENER: listener_pb2.Listener,
    CLUSTER: cluster_pb2.Cluster,
    ROUTE: route_pb2.RouteConfiguration,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
    EXTENSION_CONFIG: extension_pb2.TypedExtensionConfig,
}


def typed(type_name: str, **fields: Any) -> dict[str, Any]:
    """A `typed_config` dict: `typed("envoy.extensions.filters.http.router.v3.Router")`."""
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def to_message(type_url: str, data: dict[str, Any]) -> message.Message:
    """Parse a builder dict into its Envoy message; unknown fields are errors (a builder bug).

    The proto3 JSON mapping of the shapes builders write (proto field names, nested messages,
    lists, maps, enums by name, `@type` Any, Duration strings, wrappers, Struct) is set directly
    (`_fill`: several times faster than `json_format.ParseDict`, which walks every field generically);
    anything else, and any error, goes through ParseDict itself (the same message, or its error)."""
    msg = MESSAGES[type_url]()
    try:
        _fill(msg, data)
    except (_Unsupported, TypeError, ValueError, KeyError, AttributeError):
        return json_format.ParseDict(data, MESSAGES[type_url]())
    return msg


class _Unsupported(Exception):
    """A shape `_fill` leaves to ParseDict."""


_FD = descriptor.FieldDescriptor
_INTS = frozenset({_FD.CPPTYPE_INT32, _FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_UINT64})
_WRAPPERS = frozenset(f"google.protobuf.{n}Value" for n in
                      ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String"))
_ANY_CLASSES: dict[str, type[message.Message]] = {}


_MAP, _MESSAGES, _MESSAGE, _SCALARS, _SCALAR = range(5)
_PLANS: dict[str, dict[str, tuple[Any, int, str | None]]] = {}  # message type -> field name -> how to set it


def _plan(descriptor_: Any) -> dict[str, tuple[Any, int, str | None]]:
    """Per field of a message type: (field, how it is set, its oneof's name), once per type."""
    plan = _PLANS.get(descriptor_.full_name)
    if plan is None:
        plan = {}
        for field in descriptor_.fields:
            if field.cpp_type == _FD.CPPTYPE_MESSAGE:
                how = _MAP if field.message_type.GetOptions().map_entry else _MESSAGES if field.is_repeated \
                    else _MESSAGE
            else:
                how = _SCALARS if field.is_repeated else _SCALAR
            plan[field.name] = (field, how, field.containing_oneof.name if field.containing_oneof else None)
        _PLANS[descriptor_.full_name] = plan
    return plan


def _fill(msg: message.Message, data: Any) -> None:
    """`data` (proto3 JSON, proto field names) into `msg`, as ParseDict would; _Unsupported when it
    is a shape this does not handle."""
    if not isinstance(data, dict):
        raise _Unsupported
    plan = _plan(msg.DESCRIPTOR)
    oneofs: set[str] = set()
    for name, value in data.items():
        entry = plan.get(name)
        if entry is None or value is None:
            raise _Unsupported  # a json_name, an extension, an unknown field, a null: ParseDict decides
        field, how, oneof = entry
        if oneof is not None:
            if oneof in oneofs:
                raise _Unsupported
            oneofs.add(oneof)
        if how == _SCALAR:
            setattr(msg, name, _scalar(field, value))
        elif how == _MESSAGE:
            sub = getattr(msg, name)
            sub.SetInParent()
            _fill_message(sub, value)
        elif how == _MESSAGES:
            if not isinstance(value, list):
                raise _Unsupported
            items = getattr(msg, name)
            for item in value:
                _fill_message(items.add(), item)
        elif how == _MAP:
            _fill_map(getattr(msg, name), field, value)
        else:
            if not isinstance(value, list):
                raise _Unsupported
            getattr(msg, name).extend(_scalar(field, item) for item in value)


def _fill_message(msg: message.Message, value: Any) -> None:
    full_name = msg.DESCRIPTOR.full_name
    if not full_name.startswith("google.protobuf."):
        _fill(msg, value)
    elif full_name == "google.protobuf.Any":
        _fill_any(msg, value)
    elif full_name == "google.protobuf.Duration":
        if not isinstance(value, str):
            raise _Unsupported
        msg.FromJsonString(value)
    elif full_name in _WRAPPERS:
        msg.value = _scalar(msg.DESCRIPTOR.fields_by_name["value"], value)
    elif full_name == "google.protobuf.Struct":
        if not isinstance(value, dict):
            raise _Unsupported
        msg.update(value)
    elif full_name == "google.protobuf.Empty":
        _fill(msg, value)
    else:
        raise _Unsupported  # Timestamp, FieldMask, Value, ListValue


def _fill_any(msg: message.Message, value: Any) -> None:
    if not isinstance(value, dict):
        raise _Unsupported
    if not value:
        return
    type_url = value["@type"]
    cls = _ANY_CLASSES.get(type_url)
    if cls is None:
        cls = _ANY_CLASSES[type_url] = message_factory.GetMessageClass(
            descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1]))
    inner = cls()
    if inner.DESCRIPTOR.full_name in _WRAPPERS:  # {"@type": ".../google.protobuf.StringValue", "value": ...}
        if set(value) != {"@type", "value"}:
            raise _Unsupported
        inner.value = _scalar(inner.DESCRIPTOR.fields_by_name["value"], value["value"])
    elif inner.DESCRIPTOR.full_name.startswith("google.protobuf."):
        raise _Unsupported  # another well-known type inside Any
    else:
        _fill(inner, {k: v for k, v in value.items() if k != "@type"})
    msg.value = inner.SerializeToString()
    msg.type_url = type_url


def _fill_map(target: Any, field: descriptor.FieldDescriptor, value: Any) -> None:
    if not isinstance(value, dict):
        raise _Unsupported
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if key_field.cpp_type != _FD.CPPTYPE_STRING or item is None:
            raise _Unsupported
        if value_field.cpp_type == _FD.CPPTYPE_MESSAGE:
            _fill_message(target[key], item)
        else:
            target[key] = _scalar(value_field, item)


def _scalar(field: descriptor.FieldDescriptor, value: Any) -> Any:
    """A JSON scalar as the field's value; _Unsupported for what ParseDict converts specially."""
    cpp = field.cpp_type
    if cpp == _FD.CPPTYPE_STRING and field.type == _FD.TYPE_STRING and isinstance(value, str):
        return value
    if cpp in _INTS and isinstance(value, int) and not isinstance(value, bool):
        return value
    if cpp in _INTS and isinstance(value, str) and " " not in value:  # 64-bit integers are strings in JSON
        return int(value)
    if field.type == _FD.TYPE_BYTES and isinstance(value, bytes):  # raw bytes (a Wasm module), not base64
        return value
    if cpp == _FD.CPPTYPE_BOOL and isinstance(value, bool):
        return value
    if cpp in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return value
    if cpp == _FD.CPPTYPE_ENUM:
        if isinstance(value, str) and value in field.enum_type.values_by_name:
            return field.enum_type.values_by_name[value].number
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise _Unsupported  # bytes (base64), integers as strings, NaN, enum names unknown here, ...


class MessageCache:
    """Protobufs built once per resource: a resource whose builder dict equals the dict converted
    for the same (type, name) last time reuses that message (ParseDict is the costly part of a
    build; comparing two dicts is cheap). One per proxy; it keeps the last build only. Builders
    produce new dicts on every build, so a dict is never changed after it was converted."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, tuple[dict[str, Any], message.Message]]] = {}  # type -> name -> last
        self.converted = 0  # resources parsed by the last `messages` call (the rest were reused)

    def messages(self, resources: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, message.Message]]:
        out: dict[str, dict[str, message.Message]] = {}
        kept: dict[str, dict[str, tuple[dict[str, Any], message.Message]]] = {}
        converted = 0
        for type_url, items in resources.items():
            by_name = out[type_url] = {}
            last = self._last.get(type_url, {})
            now = kept[type_url] = {}
            for name, data in items.items():
                prev = last.get(name)
                if prev is not None and prev[0] is data:
                    now[name] = prev
                    by_name[name] = prev[1]
                elif prev is not None and prev[0] == data:  # an equal dict: kept, as the next build returns it
                    now[name] = (data, prev[1])
                    by_name[name] = prev[1]
                else:
                    msg = by_name[name] = to_message(type_url, data)
                    now[name] = (data, msg)
                    converted += 1
        self._last, self.converted = kept, converted
        return out


def json_default(value: Any) -> str:
    """`json.dumps(..., default=json_default)` of builder dicts: raw `bytes` (a Wasm module's
    `inline_bytes`) as base64, as the proto3 JSON mapping writes bytes."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def to_dict(msg: message.Message) -> dict[str, Any]:
    """A plain (JSON-compatible, no OrderedDict) dict with proto field names."""
    return json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))


def pack(msg: message.Message) -> AnyProto:
    out = AnyProto()
    out.Pack(msg)
    return out


def find_message_class(type_name: str) -> type[message.Message] | None:
    """The message class for a full type name or type URL (`envoy.extensions.filters.http.local_ratelimit.v3.
    LocalRateLimit`), importing the generated modules of its proto package on first use; None if unknown."""
    name = type_name.rsplit("/", 1)[-1]
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        pass
    package = name.rsplit(".", 1)[0]
    try:
        init = importlib.import_module(package).__file__
    except ImportError:
        return None
    for module in sorted(Path(init).parent.glob("*_pb2.py")) if init else ():
        try:
            importlib.import_module(f"{package}.{module.stem}")
        except ImportError:
            continue
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        return None


REPLACED_ON_MERGE = frozenset({"google.protobuf.Duration"})  # as Istio's merge: `60s` onto `1.5s` is `60s`


def merge_message(dst: message.Message, src: message.Message, replace_lists: bool = False) -> None:
    """Proto merge of `src` into `dst` (Istio's EnvoyFilter MERGE): set scalars overwrite, messages
    merge field by field, lists append (or are replaced), map entries and Durations are replaced."""
    for field, value in src.ListFields():
        target = getattr(dst, field.name) if field.message_type or field.is_repeated else None
        if field.message_type and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if field.message_type.fields_by_name["value"].message_type:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if replace_lists:
                del target[:]
            target.extend(value)
        elif field.message_type and field.message_type.full_name in REPLACED_ON_MERGE:
            target.CopyFrom(value)
        elif field.message_type:
            target.SetInParent()
            merge_message(target, value, replace_lists)
        else:
            setattr(dst, field.name, value)
