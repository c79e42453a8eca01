"""Istio's debug xDS type `istio.io/debug/syncz`, as istiod answers it on its xDS port
(`pilot/pkg/xds/statusgen.go`): what `istioctl proxy-status` asks for, and what
`meshway --kubeconfig FILE proxy-status` reads. Pure: the caller's decision, the response, and
the response read back into `meshway proxy-status`'s rows; the gRPC shell is
`meshway.xds.debug_service`, the client `meshway.kube.xdsdebug`.

- **Who may ask** (istiod's debug endpoint auth, on by default): a caller with a verified identity:
  the mesh client certificate the TLS front verified, else a Kubernetes service-account token for
  audience `istio-ca` (a TokenReview, as for the CA API; istioctl sends one of `istio-system/default`).
  A caller of the system namespace (istio-system) sees every proxy; any other caller only the proxies
  of its own namespace (istiod's `callerNamespaceFilter`). No identity: `UNAUTHENTICATED`,
  `authentication required`, istiod's words.
- **The answer**: one `envoy.service.status.v3.ClientConfig` per connected proxy (istiod lists its
  connected proxies only): the node id, metadata `CLUSTER_ID`, `NAMESPACE`, `ISTIO_VERSION`, and per
  xDS type the proxy was sent (sorted by type URL) `SYNCED` (the last sent nonce ACKed), `STALE`
  (sent, not yet ACKed) or `ERROR` with Envoy's NACK message, and the time it was last sent; the
  response's `control_plane.identifier` is istiod's JSON (`Component`, `ID`, `Info.version`), which
  istioctl prints in its ISTIOD column.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.admin.v3.config_dump_shared_pb2 import UpdateFailureState
from envoy.config.core.v3.base_pb2 import ControlPlane, Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from envoy.service.status.v3 import csds_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from .. import labels as L
from ..ca.csr import find_token_identity
from .proxy import parse_node_id

DEBUG_TYPE = "istio.io/debug"
SYNCZ = f"{DEBUG_TYPE}/syncz"
CLUSTER_ID = "Kubernetes"  # istiod's default cluster id, what meshway's own table prints
STATES = {"SYNCED": csds_pb2.SYNCED, "STALE": csds_pb2.STALE, "NACKED": csds_pb2.ERROR}
STATE_NAMES = {csds_pb2.SYNCED: "SYNCED", csds_pb2.STALE: "STALE", csds_pb2.ERROR: "NACKED",
               csds_pb2.NOT_SENT: "NOT SENT"}
Body = dict[str, Any]


def detect_debug_type(type_url: str) -> bool:
    return type_url == DEBUG_TYPE or type_url.startswith(DEBUG_TYPE + "/")


@dataclass(frozen=True)
class DebugCaller:
    allowed: bool
    namespace: str = ""  # whose proxies it sees: "" every proxy (the system namespace), else its own
    identity: str = ""
    code: str = ""  # grpc status code name when refused
    reason: str = ""


def decide_debug_caller(spiffe_ids: Iterable[str], review: Body | None, trust_domain: str,
                        system_namespace: str = L.ROOT_NAMESPACE) -> DebugCaller:
    """`spiffe_ids`: of the client certificate the TLS front verified (empty: none presented);
    `review`: the TokenReview status of the caller's bearer token (None: no token)."""
    identity = next((i for i in spiffe_ids if i.startswith(f"spiffe://{trust_domain}/ns/")), "")
    why = ""
    if not identity and review is not None:
        identity, why = find_token_identity(review, trust_domain)
        identity = identity or ""
    if not identity:
        return DebugCaller(False, code="UNAUTHENTICATED",
                           reason="authentication required" + (f" ({why})" if why else ""))
    namespace = identity.split("/ns/", 1)[1].split("/", 1)[0]
    return DebugCaller(True, "" if namespace == system_namespace else namespace, identity)


@dataclass(frozen=True)
class SyncSource:
    """What the xDS server knows, copied: `status[node][type_url]` (the cache's: state, sent, nonce,
    error), the connected node ids, and when each (node, type URL) was last sent (epoch seconds)."""

    status: Mapping[str, Mapping[str, Mapping[str, Any]]]
    connected: frozenset[str]
    sent_at: Mapping[tuple[str, str], float]


def build_control_plane_id(instance: str, version: str) -> ControlPlane:
    """istiod's `IstioControlPlaneInstance` as JSON (istioctl reads `ID` and `Info.version`)."""
    return ControlPlane(identifier=json.dumps({"Component": "istiod", "ID": instance,
                                               "Info": {"version": f"meshway-{version}", "revision": "",
                                                        "golang_version": "", "status": "", "tag": ""}}))


def find_node_namespace(node_id: str) -> str | None:
    parts = parse_node_id(node_id)
    return parts.namespace if parts is not None else None


def build_client_config(node_id: str, types: Mapping[str, Mapping[str, Any]], sent_at: Mapping[tuple[str, str], float],
                        version: str) -> csds_pb2.ClientConfig:
    metadata = Struct()
    metadata.update({"CLUSTER_ID": CLUSTER_ID, "NAMESPACE": find_node_namespace(node_id) or "",
                     "ISTIO_VERSION": f"meshway-{version}"})
    configs = []
    for type_url in sorted(types):
        entry = types[type_url]
        if not entry.get("sent"):
            continue
        config = csds_pb2.ClientConfig.GenericXdsConfig(type_url=type_url,
                                                        config_status=STATES.get(entry.get("state"), csds_pb2.STALE))
        at = sent_at.get((node_id, type_url))
        if at is not None:
            config.last_updated.CopyFrom(_timestamp(at))
        if entry.get("state") == "NACKED":
            config.error_state.CopyFrom(UpdateFailureState(details=str(entry.get("error") or "")))
            if at is not None:
                config.error_state.last_update_attempt.CopyFrom(_timestamp(at))
        configs.append(config)
    return csds_pb2.ClientConfig(node=Node(id=node_id, metadata=metadata), generic_xds_configs=configs)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def build_syncz(source: SyncSource, caller: DebugCaller, control_plane: ControlPlane, version: str,
                nonce: str) -> DiscoveryResponse:
    """The syncz answer for `caller`: every connected proxy meshway built the node id of (istiod
    skips connections without proxy metadata, e.g. istioctl's own), filtered by the caller's namespace."""
    resources = []
    for node_id in sorted(source.connected):
        namespace = find_node_namespace(node_id)
        if namespace is None or (caller.namespace and namespace != caller.namespace):
            continue
        packed = AnyProto()
        packed.Pack(build_client_config(node_id, source.status.get(node_id, {}), source.sent_at, version))
        resources.append(packed)
    return DiscoveryResponse(version_info=nonce, type_url=SYNCZ, nonce=nonce, resources=resources,
                             control_plane=control_plane)


def detect_answer_due(request_nonce: str, answered: bool) -> bool:
    """Whether a request on a debug stream gets an answer: the first one always (istioctl's carries a
    nonce of its own, which istiod takes for a reconnect), later ones only when they ask again
    (no nonce); ACKs and NACKs of an answer get none."""
    return not answered or not request_nonce


def read_syncz(response: DiscoveryResponse) -> dict[str, Body]:
    """A syncz answer as `meshway proxy-status` rows (the shape of the control plane's proxy-status.json):
    node id -> pod, namespace, type, version, connected (all listed proxies are), xds by short type."""
    out: dict[str, Body] = {}
    for packed in response.resources:
        config = csds_pb2.ClientConfig()
        if not packed.Unpack(config):
            continue
        node_id = config.node.id
        parts = parse_node_id(node_id)
        meta = dict(config.node.metadata.fields)
        version = meta["ISTIO_VERSION"].string_value if "ISTIO_VERSION" in meta else ""
        xds = {}
        for c in config.generic_xds_configs:
            entry: Body = {"state": STATE_NAMES.get(c.config_status, "STALE"), "sent": True}
            if c.HasField("error_state"):
                entry["error"] = c.error_state.details
            xds[c.type_url.rsplit(".", 1)[-1]] = entry
        out[node_id] = {"pod": parts.pod if parts else node_id, "namespace": parts.namespace if parts else "",
                        "type": parts.kind if parts else "", "connected": True, "problems": [],
                        "version": version.removeprefix("meshway-"), "xds": xds}
    return out
