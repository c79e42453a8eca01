"""istiod's monitoring port (15014) as `istioctl version` reads it (pure): the bodies of `/version`
and `/debug/syncz`, and which of them a request path names.

`istioctl version` (`pkg/kube/client.go`, `GetIstioVersions` and `AllDiscoveryDo`) lists the Ready
pods labelled `app=istiod` in istio-system, port-forwards to each one's monitoring port (its
`prometheus.io/port` annotation, else 15014) and asks, with a doubled slash (`http://ADDR//version`):

- **`/version`**: istiod writes `version.Info.String()`, plain text `VERSION-REVISION-STATUS`
  (`pilot/pkg/bootstrap/monitoring.go`); istioctl splits it on `-` from the right
  (`setServerInfoWithIstiodVersionInfo`) and prints `control plane version: VERSION`. meshway's is
  `meshway-0.1.0-unknown-Clean`: the version the control plane gives in its xDS identity
  (`build_control_plane_id`), so `istioctl version` and `istioctl x version` print the same.
- **`debug/syncz`**: istiod's `[]SyncStatus` as compact JSON in field order (`pilot/pkg/xds/debug.go`,
  `Syncz`; `?pretty`: four-space indent, `?namespace=NS`: that namespace's proxies), one per connected
  proxy; istioctl reads `proxy`, `istio_version` and `proxy_type` and prints `data plane version:
  V (N proxies)`. The `*_sent` / `*_acked` fields are nonces: the last sent one, and the same one
  once ACKed (meshway's cache keeps no older ACKed nonce, so a STALE or NACKED type has none acked).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from .debug import CLUSTER_ID, SyncSource, find_node_namespace
from .proxy import parse_node_id

VERSION_PATH = "/version"
SYNCZ_PATH = "/debug/syncz"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
# istiod's SyncStatus nonce fields, by the xDS type they follow (`NonceSent(v3.ClusterType)`, ...)
NONCE_FIELDS = (("cluster", "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
                ("listener", "type.googleapis.com/envoy.config.listener.v3.Listener"),
                ("route", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"),
                ("endpoint", "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"),
                ("extensionconfig", "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"))
Body = dict[str, Any]


def find_route(target: str) -> tuple[str, dict[str, list[str]]]:
    """The path of a request target with its slashes collapsed (istioctl asks for `//version`; Go's
    ServeMux redirects it to `/version`), and its query."""
    raw, _, query = target.partition("?")
    path = "/" + "/".join(p for p in raw.split("/") if p)
    return path, parse_qs(query.partition("#")[0], keep_blank_values=True)


def build_version_text(info: Mapping[str, str]) -> str:
    """istiod's `version.Info.String()` for a `build_version_info()`: VERSION-REVISION-STATUS."""
    return f"meshway-{info['version']}-{info['revision']}-{info['status']}"


def build_go_time(seconds: float | None) -> str:
    """Go's `time.Time` in JSON (RFC 3339 with trailing zeros of the nanoseconds dropped), UTC."""
    if seconds is None:
        return GO_ZERO_TIME
    nanos = round(seconds * 1e9)
    stamp = datetime.fromtimestamp(nanos // 10**9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos % 10**9:09d}".rstrip("0")
    return f"{stamp}{'.' + fraction if fraction else ''}Z"


def _nonces(entry: Mapping[str, Any]) -> tuple[str, str]:
    sent = str(entry.get("nonce") or "") if entry.get("sent") else ""
    return sent, sent if sent and entry.get("state") == "SYNCED" else ""


def build_sync_status(node_id: str, types: Mapping[str, Mapping[str, Any]],
                      sent_at: Mapping[tuple[str, str], float], version: str) -> Body:
    """One proxy's istiod `SyncStatus`, fields in istiod's order, empty strings left out (omitempty)."""
    parts = parse_node_id(node_id)
    out: Body = {"cluster_id": CLUSTER_ID, "proxy": node_id, "proxy_type": parts.kind if parts else "",
                 "istio_version": f"meshway-{version}"}
    for name, type_url in NONCE_FIELDS:
        sent, acked = _nonces(types.get(type_url, {}))
        out[f"{name}_sent"], out[f"{name}_acked"] = sent, acked
    out = {k: v for k, v in out.items() if v}
    resources = {}
    for type_url in sorted(types):
        entry = types[type_url]
        sent, acked = _nonces(entry)
        resource = {"sent": sent, "acked": acked, "sentTime": build_go_time(sent_at.get((node_id, type_url))),
                    "lastError": str(entry.get("error") or "") if entry.get("state") == "NACKED" else ""}
        resources[type_url] = {k: v for k, v in resource.items() if v}
    if resources:
        out["resources"] = resources
    return out


def build_syncz_statuses(source: SyncSource, version: str, namespace: str = "") -> list[Body]:
    """istiod's `/debug/syncz`: every connected proxy meshway built the node id of, sorted by node id
    (istiod's `SortedClients`), only `namespace`'s when given."""
    return [build_sync_status(node_id, source.status.get(node_id, {}), source.sent_at, version)
            for node_id in sorted(source.connected)
            if (ns := find_node_namespace(node_id)) is not None and (not namespace or ns == namespace)]


def write_go_json(value: Any, pretty: bool = False) -> bytes:
    """encoding/json's Marshal (MarshalIndent with four spaces when `pretty`) of a value whose dicts
    are in field order: compact separators, `<`, `>`, `&`, U+2028 and U+2029 escaped."""
    text = json.dumps(value, ensure_ascii=False, indent=4 if pretty else None,
                      separators=(",", ": ") if pretty else (",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()
