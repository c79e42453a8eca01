"""Writers: turn gathered data into kubectl/istioctl-shaped text. Pure; tested on stored data."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

Body = dict[str, Any]


def tabwrite(rows: Sequence[Sequence[str]], padding: int = 3, minwidth: int = 0, rstrip: bool = True) -> str:
    """Go's text/tabwriter with space padding: every column but the last is padded to at least minwidth
    (rstrip=False keeps the padding before an empty last cell, as Go does)."""
    if not rows:
        return ""
    widths = [0] * max(len(r) for r in rows)
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    widths = [max(w, minwidth - padding) for w in widths]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + padding) for i, cell in enumerate(row[:-1])] + [row[-1]] if row else []
        lines.append("".join(cells).rstrip() if rstrip else "".join(cells))
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


def format_labels(labels: dict[str, str] | None) -> str:
    """k8s.io/apimachinery's labels.FormatLabels: sorted key=value pairs, or <none>."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<none>"


def write_table(kind: str, items: list[Body], all_namespaces: bool = False, wide: bool = False,
                label_columns: Sequence[str] = (), now: datetime | None = None, prefix: str = "",
                show_labels: bool = False) -> str:
    cols = COLUMNS.get(kind, []) + [("AGE", lambda b: age(b, now))]
    if wide:
        cols += WIDE.get(kind, [])
    header = (["NAMESPACE"] if all_namespaces else []) + ["NAME"] + [c[0] for c in cols]
    header += [label_column(k) for k in label_columns] + (["LABELS"] if show_labels else [])
    rows = [header]
    for body in items:
        meta = body["metadata"]
        name = f"{prefix}/{meta['name']}" if prefix else meta["name"]
        row = ([meta.get("namespace", "")] if all_namespaces else []) + [name]
        row += [fn(body) for _, fn in cols]
        row += [(meta.get("labels") or {}).get(k, "") for k in label_columns]
        row += [format_labels(meta.get("labels"))] if show_labels else []
        rows.append(row)
    return tabwrite(rows)


def to_yaml(data: Any) -> str:
    import yaml  # here, not at the top: a table needs no YAML (start-up of `meshway get`)

    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=4, sort_keys=False) + "\n"


def as_list(items: list[Body]) -> Body:
    """The List kubectl prints for several objects. kubectl builds it through Go's JSON, which turns a
    whole float (1000000.0) into an integer; so do we."""
    return {"apiVersion": "v1", "items": [_whole_floats(b) for b in items], "kind": "List",
            "metadata": {"resourceVersion": ""}}


def _whole_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _whole_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


Columns = list[tuple[str, str]]  # (header, JSONPath template)


def parse_custom_columns(spec: str) -> Columns:
    """kubectl's -o custom-columns=HEADER:PATH,...; each PATH relaxed (`.a.b`, `a.b`, `{.a.b}`)."""
    from .jsonpath import JSONPathError, relaxed

    if not spec:
        raise JSONPathError("custom-columns format specified but no custom columns given")
    columns = []
    for part in spec.split(","):
        header, sep, path = part.partition(":")
        if not sep:
            raise JSONPathError(f"unexpected custom-columns spec: {part}, expected <header>:<json-path-expr>")
        columns.append((header, relaxed(path)))
    return columns


def parse_custom_columns_file(text: str) -> Columns:
    """kubectl's -o custom-columns-file: one line of headers, one line of paths, split on whitespace."""
    from .jsonpath import JSONPathError, relaxed

    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if text.endswith("\n"):
        lines.pop()  # bufio.Scanner: a final newline ends the last line, it starts none
    fmt = "Expected format is one line of space separated headers, one line of space separated column specs."
    if not lines:
        raise JSONPathError(f"invalid template, missing header line. {fmt}")
    if len(lines) < 2:
        raise JSONPathError(f"invalid template, missing spec line. {fmt}")
    headers, specs = lines[0].split(), lines[1].split()
    if len(headers) != len(specs):
        raise JSONPathError(f"number of headers ({len(headers)}) and field specifications ({len(specs)}) don't match")
    return [(h, relaxed(p)) for h, p in zip(headers, specs)]


def write_custom_columns(columns: Columns, data: Body) -> str:
    """kubectl's custom-columns printer on one object or a List: a row per object, each cell every value
    of its path in Go's %v joined by commas, <none> when the path finds nothing."""
    from .goprint import go_sprint
    from .jsonpath import JSONPathError, parse, values_per_action

    for _, template in columns:
        try:
            parse(template)
        except JSONPathError as exc:
            raise JSONPathError(str(exc)) from None
    objs = data["items"] if isinstance(data.get("items"), list) else [data]  # meta.IsListType
    rows = [[h for h, _ in columns]]
    for obj in objs:
        row = []
        for _, template in columns:
            per_action = values_per_action(template, obj)
            cells = ["<none>"] if not per_action or not per_action[0] else []
            cells += [go_sprint(v) for values in per_action for v in values]
            row.append(",".join(cells))
        rows.append(row)
    return tabwrite(rows, minwidth=6, rstrip=False)
