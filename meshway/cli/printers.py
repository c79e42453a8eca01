"""Writers: turn gathered data into kubectl/istioctl-shaped text. Pure; tested on stored data."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

Body = dict[str, Any]


def tabwrite(rows: Sequence[Sequence[str]], padding: int = 3) -> str:
    """Go's text/tabwriter with minwidth 0 and space padding: every column but the last is padded."""
    if not rows:
        return ""
    widths = [0] * max(len(r) for r in rows)
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + padding) for i, cell in enumerate(row[:-1])] + [row[-1]] if row else []
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration (k8s.io/apimachinery/pkg/util/duration)."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    return f"{h // (24 * 365)}y{(h // 24) % 365}d"


def age(body: Body, now: datetime | None = None) -> str:
    ts = body.get("metadata", {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    created = datetime.fromisoformat(ts).replace(tzinfo=timezone.utc)  # C code: no _strptime import at start-up
    return human_duration(((now or datetime.now(timezone.utc)) - created).total_seconds())


def _cond(body: Body, type_: str, default: str = "Unknown") -> str:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c.get("status", default)
    return default


def _go_list(values: Sequence[str] | None) -> str:
    return json.dumps(list(values or []), separators=(",", ":")) if values else "<none>"


def _svc_ports(body: Body) -> str:
    ports = body["spec"].get("ports") or []
    return ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _selector(sel: Body | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (sel or {}).items()) or "<none>"


def _pod_ready(body: Body) -> str:
    total = len(body["spec"].get("containers") or [])
    ready = total if _cond(body, "Ready") == "True" else 0
    return f"{ready}/{total}"


def _deploy_ready(body: Body) -> str:
    st = body.get("status") or {}
    return f"{st.get('readyReplicas', 0)}/{body['spec'].get('replicas', 1)}"


def _gateway_address(body: Body) -> str:
    addrs = (body.get("status") or {}).get("addresses") or []
    return addrs[0]["value"] if addrs else ""


Column = tuple[str, Callable[[Body], str]]
COLUMNS: dict[str, list[Column]] = {
    "Namespace": [("STATUS", lambda b: (b.get("status") or {}).get("phase", "Active"))],
    "ServiceAccount": [("SECRETS", lambda b: str(len(b.get("secrets") or [])))],
    "Service": [("TYPE", lambda b: b["spec"].get("type", "ClusterIP")),
                ("CLUSTER-IP", lambda b: b["spec"].get("clusterIP") or "None"),
                ("EXTERNAL-IP", lambda b: "<none>"), ("PORT(S)", _svc_ports)],
    "Pod": [("READY", _pod_ready), ("STATUS", lambda b: (b.get("status") or {}).get("phase", "Pending")),
            ("RESTARTS", lambda b: str(sum(c.get("restartCount", 0)
                                           for c in (b.get("status") or {}).get("containerStatuses") or [])))],
    "Deployment": [("READY", _deploy_ready),
                   ("UP-TO-DATE", lambda b: str((b.get("status") or {}).get("updatedReplicas", 0))),
                   ("AVAILABLE", lambda b: str((b.get("status") or {}).get("availableReplicas", 0)))],
    "Gateway": [("CLASS", lambda b: b["spec"]["gatewayClassName"]), ("ADDRESS", _gateway_address),
                ("PROGRAMMED", lambda b: _cond(b, "Programmed"))],
    "GatewayClass": [("CONTROLLER", lambda b: b["spec"]["controllerName"]),
                     ("ACCEPTED", lambda b: _cond(b, "Accepted"))],
    "HTTPRoute": [("HOSTNAMES", lambda b: _go_list(b["spec"].get("hostnames")) if b["spec"].get("hostnames") else "")],
    "ServiceEntry": [("HOSTS", lambda b: _go_list(b["spec"].get("hosts"))),
                     ("LOCATION", lambda b: b["spec"].get("location", "")),
                     ("RESOLUTION", lambda b: b["spec"].get("resolution", ""))],
    "VirtualService": [("GATEWAYS", lambda b: _go_list(b["spec"].get("gateways")) if b["spec"].get("gateways") else ""),
                       ("HOSTS", lambda b: _go_list(b["spec"].get("hosts")))],
    "DestinationRule": [("HOST", lambda b: b["spec"].get("host", ""))],
    "AuthorizationPolicy": [("ACTION", lambda b: (b.get("spec") or {}).get("action", "ALLOW"))],
    "PeerAuthentication": [("MODE", lambda b: ((b.get("spec") or {}).get("mtls") or {}).get("mode", ""))],
    "Telemetry": [],
}
WIDE: dict[str, list[Column]] = {
    "Service": [("SELECTOR", lambda b: _selector(b["spec"].get("selector")))],
    "Pod": [("IP", lambda b: (b.get("status") or {}).get("podIP") or "<none>"),
            ("NODE", lambda b: b["spec"].get("nodeName") or "<none>"),
            ("NOMINATED NODE", lambda b: "<none>"), ("READINESS GATES", lambda b: "<none>")],
    "Deployment": [("CONTAINERS", lambda b: ",".join(c["name"] for c in b["spec"]["template"]["spec"]["containers"])),
                   ("IMAGES", lambda b: ",".join(c.get("image", "") for c in b["spec"]["template"]["spec"]["containers"])),
                   ("SELECTOR", lambda b: _selector(b["spec"]["selector"].get("matchLabels")))],
    "GatewayClass": [("DESCRIPTION", lambda b: b["spec"].get("description", ""))],
}


def label_column(key: str) -> str:
    return key.rsplit("/", 1)[-1].upper()


def write_table(kind: str, items: list[Body], all_namespaces: bool = False, wide: bool = False,
                label_columns: Sequence[str] = (), now: datetime | None = None, prefix: str = "") -> str:
    cols = COLUMNS.get(kind, []) + [("AGE", lambda b: age(b, now))]
    if wide:
        cols += WIDE.get(kind, [])
    header = (["NAMESPACE"] if all_namespaces else []) + ["NAME"] + [c[0] for c in cols]
    header += [label_column(k) for k in label_columns]
    rows = [header]
    for body in items:
        meta = body["metadata"]
        name = f"{prefix}/{meta['name']}" if prefix else meta["name"]
        row = ([meta.get("namespace", "")] if all_namespaces else []) + [name]
        row += [fn(body) for _, fn in cols]
        row += [(meta.get("labels") or {}).get(k, "") for k in label_columns]
        rows.append(row)
    return tabwrite(rows)


def to_yaml(data: Any) -> str:
    import yaml  # here, not at the top: a table needs no YAML (start-up of `meshway get`)

    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=4, sort_keys=False) + "\n"


def as_list(items: list[Body]) -> Body:
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}
