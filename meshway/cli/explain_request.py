"""`meshway explain --request '...' --from deploy/NAME|pod/NAME`: gather (store -> MeshView, the caller
pod) and render the simulation's steps (`meshway.xds.simulate`) as text or JSON."""
from __future__ import annotations

import json
import time
from typing import Any

from ..mesh.request import Request, RequestError, parse_request
from ..mesh.view import XDS_KINDS, MeshView
from ..model import find_kind

Body = dict[str, Any]


class SourceNotFound(LookupError):
    pass


def find_source(c, view: MeshView, source: str, namespace: str):
    """`deploy/NAME` (its first ready pod, else its first pod), `pod/NAME` or `NAME`."""
    kind, sep, name = source.rpartition("/")
    kind = kind.lower()
    if kind in ("deploy", "deployment", "deployments"):
        pods = [p for p in c.store.list(find_kind("pod"), namespace) if any(
            r.get("name") == name for r in p["metadata"].get("ownerReferences") or [])]
        if not pods:
            raise SourceNotFound(f'deployments.apps "{name}" not found in namespace {namespace} (or it has no pods)')
        infos = [view.pods[(namespace, p["metadata"]["name"])] for p in pods]
        return sorted(infos, key=lambda p: (not p.ready, p.name))[0]
    if kind in ("", "pod", "pods", "po"):
        pod = view.pods.get((namespace, name))
        if pod is None:
            raise SourceNotFound(f'pods "{name}" not found in namespace {namespace}')
        return pod
    raise SourceNotFound(f"invalid --from {source!r}: expected deploy/NAME or pod/NAME")


def run(c, request_text: str, source: str, namespace: str) -> Body:
    """The simulation's document, plus `control_plane`: whether readiness in it is live or last recorded."""
    from ..xds.simulate import simulate
    from .liveness import detect_running
    request = parse_request(request_text)
    _, snapshot = c.store.snapshot(XDS_KINDS)
    view = MeshView.build(snapshot)
    pod = find_source(c, view, source, namespace)
    if not pod.ip:
        raise SourceNotFound(f"pod {pod.namespace}/{pod.name} has no IP yet (not scheduled)")
    doc = simulate(view, request, pod, time.time())
    doc["control_plane"] = "running" if detect_running(c.store) else "not running"
    return doc


# -- text --------------------------------------------------------------------------------------------
def _request_line(r: Body) -> str:
    port = "" if r["port"] == 80 else f":{r['port']}"
    hdrs = "".join(f" -H '{k}: {v}'" for k, v in r["headers"])
    return f"{r['method']} http://{r['host']}{port}{r['path']}{hdrs}"


def _policy(p: Body) -> str:
    if "policy" in p:
        return f"{p['policy']} rule[{p['rule']}]"
    if p.get("allow_policies"):
        return f"{p['rbac_policy']} (ALLOW policies: {', '.join(p['allow_policies'])})"
    return p["rbac_policy"]


def _match(m: Body | None) -> str:
    if not m:
        return "any request"
    return json.dumps(m, separators=(", ", ": "), sort_keys=True)


def write_caller(doc: Body) -> list[str]:
    c = doc["caller"]
    lines = ["1. Caller",
             f"   pod {c['namespace']}/{c['pod']} ({c['ip']}, {c['node']}), service account {c['service_account']}",
             f"   identity: {c['identity']}",
             f"   captured: {'yes' if c['captured'] else 'no'} ({c['reason']})"]
    return lines


def write_resolution(doc: Body) -> list[str]:
    r = doc["resolution"]
    lines = ["2. Name resolution"]
    if r.get("address") is None:
        return lines + [f"   {r['error']}"]
    d = r.get("destination")
    what = f"{d['kind'].lower()} {d['namespace']}/{d['name']}" if d else "nothing in the mesh"
    lines.append(f"   {r['host']} -> {r['address']} ({r['how']})")
    lines.append(f"   = {what}, port {r['port']}" + (f" ({d['hostname']})" if d and d.get("hostname") else ""))
    for key in ("note", "error"):
        if r.get(key):
            lines.append(f"   {r[key]}")
    return lines


def write_node_proxy(doc: Body) -> list[str]:
    n = doc.get("node_proxy")
    if n is None:
        return []
    lines = [f"3. Node proxy ({doc['caller']['node']})" if doc["caller"]["captured"] else "3. Node proxy: none"]
    if n.get("chain"):
        lines.append(f"   outbound chain {n['chain']} -> {n.get('cluster')}")
    path = n.get("path")
    lines.append(f"   path: {'waypoint ' + n['waypoint'] if path == 'waypoint' else path}")
    decision = n.get("decision")
    if not doc["caller"]["captured"]:
        lines.append(f"   why: {n['reason']}")
        if decision and decision.get("waypoint"):
            lines.append(f"   (the destination's waypoint binding, {decision['reason']} to {decision['waypoint']}, "
                         "applies to captured callers only)")
    elif path == "refused":
        lines.append(f"   why: {n['reason']}")
        if decision:
            lines += [f"     {i}. {rule}" for i, rule in enumerate(decision["rules"], 1)]
    elif decision:
        lines.append(f"   why: {decision['reason']}: {decision['explanation']}")
        lines += [f"     {i}. {rule}" for i, rule in enumerate(decision["rules"], 1)]
    elif n.get("reason"):
        lines.append(f"   why: {n['reason']}")
    inbound = n.get("inbound") or []
    if inbound:
        lines.append(f"   L4 policy at the destination's node proxy (peer {inbound[0]['peer']}):"
                     if "peer" in inbound[0] else "   L4 policy at the destination's node proxy:")
        for check in inbound:
            pols = check.get("policies") or []
            detail = "; ".join(f"{p['istio_action']} {_policy(p)}: {p['match']}" for p in pols) or \
                check.get("note") or "no AuthorizationPolicy applies"
            lines.append(f"     {check['pod']}:{check.get('port', '')} {check['verdict']} ({detail})")
    return lines


def write_route(w: Body) -> list[str]:
    route = w.get("route")
    if route is None:
        return ["   route: none matched (Envoy answers 404)"]
    src = route.get("source") or {}
    if src.get("kind") in ("VirtualService", "HTTPRoute"):
        where = f"{src['kind']} {src['namespace']}/{src['name']}"
        if "rule" in src:
            where += f" rule {src['rule']}" if src["kind"] == "HTTPRoute" else f" spec.http[{src['rule']}]"
            if src["kind"] == "VirtualService":
                where += f".match[{src['match_index']}]" if src.get("istio_match") else \
                    " (no match list: every request)"
        lines = [f"   route: {where}"]
        if src.get("istio_match"):
            lines.append(f"     matched: {_match(src['istio_match'])}")
    elif src.get("kind") == "default":
        lines = [f"   route: default ({src['note']})"]
    else:
        lines = [f"   route: #{route['index']} {route.get('name') or ''}".rstrip()]
    lines.append(f"     envoy match: {_match(route['match'])}")
    if "direct_response" in route:
        lines.append(f"     direct response {route['direct_response']['status']}")
    if "redirect" in route:
        r = route["redirect"]
        lines.append(f"     redirect {r['status']} " + " ".join(f"{k}={v}" for k, v in r.items() if k != "status"))
    for d in route.get("destinations") or []:
        subset = ""
        if d.get("subset"):
            labels = ",".join(f"{k}={v}" for k, v in (d.get("subset_labels") or {}).items())
            subset = f" subset {d['subset']} (DestinationRule {d.get('destination_rule')}: {labels})"
        eps = ", ".join(f"{e['pod']} {e['address']}" for e in d["endpoints"]) or "no endpoints"
        lines.append(f"     -> {d['weight']:g}%{subset}: {eps}")
    if "timeout" in route:
        timeout = "none" if route["timeout"] in ("0s", "0") else route["timeout"]
        retries = route.get("retries")
        retry = "none" if not retries else f"{retries['attempts']} on {retries['retry_on']}" + (
            f" (codes {retries['retriable_status_codes']})" if retries.get("retriable_status_codes") else "") + (
            f", per try {retries['per_try_timeout']}" if retries.get("per_try_timeout") else "")
        lines.append(f"     timeout: {timeout}; retries: {retry}")
    for key, label in (("headers", "headers"), ("rewrite", "rewrite"), ("mirrors", "mirror")):
        if route.get(key):
            lines.append(f"     {label}: {json.dumps(route[key], sort_keys=True)}")
    return lines


def _verdict(f: Body) -> str:
    """An RBAC filter's verdict in words."""
    matched = bool(f["matched"])
    if f["kind"] in ("dry-run", "CUSTOM"):
        return ("a rule matched" if matched else "no rule matched") + (
            ": the external authorizer is asked" if f["kind"] == "CUSTOM" and matched else ": nothing enforced")
    if f["verdict"] == "unknown":
        return "depends on what the simulation cannot know (see the rules marked unknown)"
    return {("AUDIT", True): "a rule matched: logged, never enforced", ("AUDIT", False): "no rule matched",
            ("DENY", True): "a rule matched: deny", ("DENY", False): "no rule matched: continue",
            ("ALLOW", True): "a rule matched: allowed", ("ALLOW", False): "no rule matched: deny"}[
        (f["action"], matched)]


def write_waypoint(doc: Body) -> list[str]:
    w = doc.get("waypoint")
    if not w:
        return ["4. Waypoint: none on this path", "5. Authorization at a waypoint: none (no L7 policy applies)"]
    lines = [f"4. Waypoint {w['name']} (identity {w['identity']}; chain {w['chain']})"]
    if w.get("path_normalized"):
        lines.append(f"   path normalized to {w['path_normalized']}")
    lines += write_route(w)
    fault = next((f for f in w["filters"] if f["filter"] == "envoy.filters.http.fault"), None)
    if fault:
        parts = []
        if "delay" in fault:
            parts.append(f"delay {fault['delay']['fixed_delay']} for {fault['delay']['percent']:g}%")
        if "abort" in fault:
            parts.append(f"abort {fault['abort']['status']} for {fault['abort']['percent']:g}%")
        lines.append(f"     fault: {', '.join(parts)}" + (" <- decides" if fault.get("decided") else
                                                           " (not reached: already answered)"
                                                           if fault.get("reached") is False else ""))
    lines.append("5. Authorization at the waypoint (filters in the chain's order)")
    authz = [f for f in w["filters"] if f["filter"] != "envoy.filters.http.fault"]
    if not authz:
        lines.append("   no AuthorizationPolicy or RequestAuthentication applies: allowed")
    lines += [f"   note: {note}" for note in w.get("notes") or []]
    for f in authz:
        suffix = " <- decides" if f.get("decided") else " (not reached: already answered)" \
            if f.get("reached") is False else ""
        if f["filter"] == "envoy.filters.http.rbac":
            label = f"{f['action']}" + (" (dry-run, not enforced)" if f["kind"] == "dry-run" else
                                        " (rules that send the request to the authorizer)" if f["kind"] == "CUSTOM"
                                        else "")
            lines.append(f"   {label}: {_verdict(f)}{suffix}")
            for p in f["policies"]:
                lines.append(f"     {_policy(p)}: {p['match']}")
        elif f["filter"] == "envoy.filters.http.jwt_authn":
            text = f"   RequestAuthentication (jwt_authn): {f['verdict']}"
            if f.get("status"):
                text += f" {f['status']} {f['body']}"
            lines.append(text + suffix)
            if f.get("claims"):
                lines.append(f"     claims: {json.dumps(f['claims'], sort_keys=True)}")
            if f.get("note"):
                lines.append(f"     {f['note']}")
        elif f["filter"] == "envoy.filters.http.ext_authz":
            lines.append(f"   CUSTOM (ext_authz): {f.get('note') or 'asks provider ' + str(f.get('provider'))}")
        else:
            lines.append(f"   {f['filter']}: {f['verdict']}{suffix}")
    return lines


def write_outcome(doc: Body) -> list[str]:
    o = doc["outcome"]
    lines = ["6. Outcome"]
    if o.get("status") is not None:
        by = o.get("by", "")
        if o.get("decided_by"):
            by += (" " if "policy" in o["decided_by"] else ": ") + _policy(o["decided_by"])
        body = f" {o['body']!r}" if o.get("body") else ""
        lines.append(f"   {o['status']}{body}: answered by the mesh ({by.strip()})")
    elif o["result"] == "allowed":
        lines.append(f"   {o['reason']}:" if o.get("destinations") else f"   allowed: {o['reason']}")
    else:
        lines.append(f"   {o['result']}: {o.get('reason') or o.get('by')}")
        if o.get("decided_by"):
            lines.append(f"   decided by: {_policy(o['decided_by'])}")
    for d in o.get("destinations") or []:
        subset = f" (subset {d['subset']})" if d.get("subset") else ""
        l4 = "" if d["l4"] == "allow" else f" [L4: {d['l4']}]"
        lines.append(f"     {d['weight']:g}%  {d['namespace']}/{d['pod']} {d['ip']}{subset}{l4}")
    for u in o.get("uncertain") or []:
        lines.append(f"   depends on: {u}")
    return lines


def write_simulation(doc: Body) -> str:
    lines = [f"Request: {_request_line(doc['request'])}  (Host: {doc['request']['authority']})", ""]
    for part in (write_caller, write_resolution, write_node_proxy, write_waypoint, write_outcome):
        if part is write_node_proxy and doc["resolution"].get("error"):
            continue
        if part is write_waypoint and doc["resolution"].get("error"):
            continue
        lines += part(doc)
    if doc.get("control_plane") == "not running":
        from .liveness import NOT_RUNNING
        lines.append(f"Note: {NOT_RUNNING}: readiness above is the last recorded state, not live.")
    return "\n".join(lines) + "\n"


__all__ = ["Request", "RequestError", "SourceNotFound", "run", "write_simulation"]
