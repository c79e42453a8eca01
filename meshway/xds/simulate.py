"""`explain --request`: what happens to one HTTP request from a pod, step by step, without sending it
(issue 13 item 7). Pure: a MeshView, the request and the caller in; a plain JSON-shaped document out.

Every step reads what the proxies are given, through the translation's own functions:
1. caller: its identity and whether it is captured (`detect_ambient`);
2. name resolution: the pod's /etc/hosts entries (`build_host_entries`), then the VIP or pod IP;
3. node proxy: the caller's node proxy config (`build_ztunnel_config`): the outbound chain for
   source IP -> destination IP -> port, to a waypoint or direct, and why (`decide_service`'s record);
   the destination pods' node proxies: their inbound chain's L4 RBAC, with the identity they see;
4. waypoint: its config (`build_waypoint_config`) followed as Envoy does (`simulate_waypoint`);
5. authorization at the waypoint, in the filter order of its chain;
6. outcome: the pods it may reach with their shares, or the status the mesh answers itself.
"""
from __future__ import annotations

import ipaddress
from typing import Any

from .. import labels as L
from ..mesh.enrollment import detect_ambient
from ..mesh.request import Request
from ..mesh.selection import decide_service, decide_workload
from ..mesh.traversal import POLICY as TRAVERSAL_POLICY
from ..mesh.view import MeshView, PodInfo, ServiceInfo, WaypointInfo
from . import protos as P
from .build_routes import build_match
from .build_snapshot import build_waypoint_config, find_destination_rule, find_routes_for
from .build_traversal import REFUSED_CLUSTER
from .build_ztunnel import NodeProxy, build_ztunnel_config, identity_of
from .envoy_match import Connection, HttpRequest, normalize_path
from .proxy import Proxy, build_node_id
from .scope import cluster_name, find_service_pods, resolve_target_port
from .simulate_waypoint import decide_rbac, evaluate_rbac, find_chain, find_decider, simulate_at_waypoint

Body = dict[str, Any]
PEER_PRINCIPAL = "io.istio.peer_principal"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def find_caller(view: MeshView, source: PodInfo) -> Body:
    ns_mode = view.namespace_labels(source.namespace).get(L.DATAPLANE_MODE)
    pod_mode = source.labels.get(L.DATAPLANE_MODE)
    captured = detect_ambient(view, source)
    if pod_mode is not None:
        why = f"pod label {L.DATAPLANE_MODE}={pod_mode}"
    elif ns_mode is not None:
        why = f"namespace {source.namespace} label {L.DATAPLANE_MODE}={ns_mode}"
    else:
        why = f"no {L.DATAPLANE_MODE} label on the pod or namespace {source.namespace}"
    return {"pod": source.name, "namespace": source.namespace, "ip": source.ip, "node": source.node,
            "service_account": source.service_account, "identity": identity_of(source), "captured": captured,
            "reason": why + ("" if captured else ": its traffic leaves without the mesh (no node proxy, "
                                                 "no waypoint, no identity)")}


def resolve_name(view: MeshView, request: Request, namespace: str = "default") -> Body:
    """The address the /etc/hosts of a caller in `namespace` gives the host (first entry wins), then
    what it is."""
    from ..runtime.cluster import build_host_entries  # the same entries the caller's /etc/hosts gets
    host = request.host
    if _is_ip(host):
        address, how = host, "an IP address"
    else:
        matches = [(ip, names) for ip, names in build_host_entries(view, namespace) if host in names]
        if not matches:
            return {"host": host, "address": None, "error": f"could not resolve host {host!r}: no Service or "
                                                            "ServiceEntry of that name in /etc/hosts"}
        address, how = matches[0][0], f"/etc/hosts entry {matches[0][0]} ({' '.join(matches[0][1])})"
        if len({ip for ip, _ in matches}) > 1:
            how += f"; {len(matches)} entries have this name and the first wins"
    out: Body = {"host": host, "address": address, "port": request.port, "how": how}
    svc = view.services_by_ip.get(address)
    pod = view.pods_by_ip.get(address)
    if svc is not None:
        out["destination"] = {"kind": svc.kind, "namespace": svc.namespace, "name": svc.name,
                              "hostname": svc.hostname}
        if svc.ports and request.port not in {p.port for p in svc.ports}:
            out["error"] = (f"{svc.kind.lower()} {svc.namespace}/{svc.name} has no port {request.port} (ports: "
                            f"{', '.join(str(p.port) for p in svc.ports)}): the connection is refused")
    elif pod is not None:
        out["destination"] = {"kind": "Pod", "namespace": pod.namespace, "name": pod.name, "hostname": None}
    else:
        out["destination"] = None
        out["note"] = f"{address} is not a service VIP or pod IP of the mesh: traffic passes through unchanged"
    return out


class _NodeConfigs:
    """Node proxy configs, built once per node."""

    def __init__(self, view: MeshView):
        self.view = view
        self.built: dict[str, dict] = {}

    def of(self, node: str) -> dict:
        if node not in self.built:
            self.built[node] = build_ztunnel_config(self.view, NodeProxy(f"ztunnel~{node}", node))[0]
        return self.built[node]


def _tcp_cluster(chain: Body) -> str | None:
    for f in chain.get("filters") or []:
        if f["name"] == "envoy.filters.network.tcp_proxy":
            return f["typed_config"]["cluster"]
    return None


def _direct_pods(view: MeshView, cluster: Body) -> list[PodInfo]:
    pods = []
    for group in (cluster.get("load_assignment") or {}).get("endpoints") or []:
        for lb in group.get("lb_endpoints") or []:
            addr = lb["endpoint"]["address"]
            ip = (addr["envoy_internal_address"]["endpoint_id"].rsplit(":", 1)[0] if "envoy_internal_address" in addr
                  else addr["socket_address"]["address"])
            if ip in view.pods_by_ip:
                pods.append(view.pods_by_ip[ip])
    return pods


def find_outbound(view: MeshView, configs: _NodeConfigs, source: PodInfo, address: str, port: int) -> Body:
    """The caller's node proxy chain for address:port: to a waypoint, direct to pods, or passthrough."""
    resources = configs.of(source.node or "")
    listener = resources[P.LISTENER]["ztunnel_outbound"]
    chain = find_chain(listener, {"SourceIPInput": source.ip, "DestinationIPInput": address,
                                  "DestinationPortInput": port})
    if chain is None:
        return {"chain": None, "path": "passthrough"}
    cluster = _tcp_cluster(chain)
    out: Body = {"chain": chain["name"], "cluster": cluster}
    if cluster == REFUSED_CLUSTER:  # guaranteed traversal: the chain's RBAC denies every connection
        out["path"] = "refused"
        out["reason"] = next((f["typed_config"]["access_log"][0]["typed_config"]["log_format"]["json_format"]["reason"]
                              for f in chain["filters"] if f["name"] == "envoy.filters.network.tcp_proxy"), "refused")
    elif cluster and cluster.startswith("waypoint|"):
        out["path"], out["waypoint"] = "waypoint", cluster.split("|", 2)[2]
    elif cluster == "passthrough":
        out["path"] = "passthrough"
    elif cluster and cluster.startswith("hbone|"):
        out["path"], out["pods"] = "direct", [view.pods_by_ip[address]] if address in view.pods_by_ip else []
    else:
        out["path"] = "direct"
        out["pods"] = _direct_pods(view, resources[P.CLUSTER].get(cluster or "", {}))
    return out


def find_http_rbacs(hcm: Body, resources: dict) -> list[Body]:
    """The RBAC configs in force on an HBONE chain, each filter's own or its route's override
    (`typed_per_filter_config`: an RBACPerRoute without `rbac` turns the filter off)."""
    route_config = resources[P.ROUTE].get((hcm.get("rds") or {}).get("route_config_name", "")) or \
        hcm.get("route_config") or {}
    routes = [r for vh in route_config.get("virtual_hosts") or [] for r in vh.get("routes") or []]
    per_filter = (routes[0].get("typed_per_filter_config") or {}) if routes else {}
    out = []
    for f in hcm.get("http_filters") or []:
        if not f["typed_config"]["@type"].endswith(".rbac.v3.RBAC"):
            continue
        if f["name"] in per_filter:
            if "rbac" in per_filter[f["name"]]:
                out.append(per_filter[f["name"]]["rbac"])
        elif f["typed_config"].get("rules") or f["typed_config"].get("shadow_rules"):
            out.append(f["typed_config"])
    return out


def check_inbound(view: MeshView, configs: _NodeConfigs, pod: PodInfo, port: int, peer: str | None) -> Body:
    """The L4 policy of a destination pod's node proxy for a connection from `peer` (None: plaintext
    from outside the mesh) to pod:port, from its inbound chain's RBAC filters."""
    if not detect_ambient(view, pod):
        return {"pod": pod.name, "verdict": "allow", "note": "pod not in the mesh: no node proxy policy"}
    resources = configs.of(pod.node or "")
    listener = resources[P.LISTENER].get("ztunnel_inbound" if peer else "ztunnel_inbound_plaintext") or {}
    name = f"{'inbound' if peer else 'plaintext'}|{pod.namespace}/{pod.name}"
    chain = next((c for c in listener.get("filter_chains") or [] if c.get("name") == name), None)
    if chain is None:
        return {"pod": pod.name, "verdict": "unknown", "note": f"no chain {name} on node {pod.node}"}
    if peer:
        hcm = chain["filters"][0]["typed_config"]
        rbacs = find_http_rbacs(hcm, resources)
        request: HttpRequest | None = HttpRequest("CONNECT", "", f"{pod.ip}:{port}")
    else:
        rbacs = [f["typed_config"] for f in chain["filters"] if f["name"] == "envoy.filters.network.rbac"]
        request = None
    conn = Connection(peer_principal=peer, destination_ip=pod.ip, destination_port=port)
    policies, verdict, decided = [], "allow", None
    for config in rbacs:
        results = evaluate_rbac(config, request, conn)
        d = decide_rbac(config, results)
        policies += [{**r, "istio_action": d["action"]} for r in results]
        if d["verdict"] == "deny" and verdict != "deny":
            verdict, decided = "deny", find_decider(d, results)
        elif d["verdict"] == "unknown" and verdict == "allow":
            verdict = "unknown"
    return {"pod": pod.name, "namespace": pod.namespace, "port": port, "peer": peer or "(plaintext, no identity)",
            "verdict": verdict, "decided_by": decided, "policies": policies}


def explain_route(view: MeshView, svc: ServiceInfo, wp: WaypointInfo, port: int, route: Body,
                  resources: dict) -> Body:
    """Which VirtualService (or HTTPRoute) rule and match a matched Envoy route came from, and the
    DestinationRule subsets behind its clusters: the translation's own lookups (`find_routes_for`,
    `build_match`, `find_destination_rule`)."""
    out: Body = {}
    config = route.get("config")
    if not config:
        out["kind"], out["note"] = "default", "no VirtualService or HTTPRoute for this service: Istio's default route"
    else:
        ns, name = config.split("/namespaces/", 1)[1].split("/virtual-service/")
        generated = name.endswith("~istio-autogenerated-k8s-gateway")
        out["kind"] = "HTTPRoute" if generated else "VirtualService"
        out["namespace"], out["name"] = ns, name.split("~", 1)[0] if generated else name
        vs = next((v for v in find_routes_for(view, svc, wp, port) if (v.namespace, v.name) == (ns, name)), None)
        if vs is not None:
            routes = _routes_of(resources, svc, port)
            k = sum(1 for r in routes[:route["index"]] if _config_of(r) == config)
            pairs = [(i, j, m) for i, http in enumerate(vs.spec.http or [])
                     for j, m in enumerate(http.match or [None]) if m is None or m.port in (None, port)]
            if k < len(pairs) and build_match(pairs[k][2]) == route["match"]:
                i, j, m = pairs[k]
                out["rule"], out["match_index"] = i, j
                out["istio_match"] = m.model_dump(exclude_none=True, by_alias=True) if m else None
                rule_name = vs.spec.http[i].name
                if generated and rule_name and rule_name.startswith(f"{ns}.{out['name']}."):
                    out["rule"] = int(rule_name.rsplit(".", 1)[1])  # the HTTPRoute's own rule index
                elif rule_name:
                    out["rule_name"] = rule_name
    dr = find_destination_rule(view, svc, wp)
    subsets = {s.name: dict(s.labels or {}) for s in (dr.spec.subsets or [])} if dr else {}
    for d in route.get("destinations") or []:
        if d.get("subset"):
            d["subset_labels"] = subsets.get(d["subset"])
            d["destination_rule"] = f"{dr.namespace}/{dr.name}" if dr else None
    return out


def _config_of(route: Body) -> str | None:
    """The VirtualService a route was built from (its `istio` filter metadata)."""
    return (((route.get("metadata") or {}).get("filter_metadata") or {}).get("istio") or {}).get("config")


def _routes_of(resources: dict, svc: ServiceInfo, port: int) -> list[Body]:
    config = resources[P.ROUTE].get(cluster_name(port, "http", svc.hostname)) or {}
    return [r for vh in config.get("virtual_hosts") or [] for r in vh.get("routes") or []]


def _waypoint_proxy(view: MeshView, key: str) -> tuple[Proxy, str, list[PodInfo]]:
    ns, name = key.split("/", 1)
    wp = view.waypoints[(ns, name)]
    replicas = sorted((view.pods[k] for k in view.pods_by_label.get((ns, L.GATEWAY_NAME, name), ())),
                      key=lambda p: p.name)
    sa = replicas[0].service_account if replicas else wp.service_name
    ip = replicas[0].ip if replicas and replicas[0].ip else "0.0.0.0"
    pod = replicas[0].name if replicas else f"{wp.service_name}-0"
    proxy = Proxy(build_node_id("waypoint", ip, pod, ns), ip, ns, sa, name)
    return proxy, f"spiffe://{proxy.trust_domain}/ns/{ns}/sa/{sa}", replicas


def _port_of(view: MeshView, resolution: Body, request: Request) -> tuple[ServiceInfo | None, int]:
    d = resolution.get("destination") or {}
    svc = view.services.get((d.get("kind"), d.get("namespace"), d.get("name"))) if d.get("kind") != "Pod" else None
    return svc, request.port


def _target_port(svc: ServiceInfo | None, port: int, pod: PodInfo) -> int:
    if svc is None:
        return port
    spec = next((p for p in svc.ports if p.port == port), None)
    return (resolve_target_port(spec, pod) if spec else None) or port


OUTCOME_KEYS = ("result", "status", "body", "by", "decided_by", "reason", "destinations", "uncertain")


def _stable(outcome: Body) -> Body:
    """Every outcome has the same keys, in the same order (absent ones null or empty)."""
    return {k: outcome.get(k, [] if k in ("destinations", "uncertain") else None) for k in OUTCOME_KEYS}


def simulate(view: MeshView, request: Request, source: PodInfo, now: float) -> Body:
    doc = _simulate(view, request, source, now)
    doc.setdefault("node_proxy", None)
    doc.setdefault("waypoint", None)
    doc["outcome"] = _stable(doc.pop("outcome"))
    return doc


def _simulate(view: MeshView, request: Request, source: PodInfo, now: float) -> Body:
    """The steps of one request from `source` (see the module docstring); `now` for token expiry."""
    doc: Body = {"request": request.to_json(), "caller": find_caller(view, source)}
    resolution = resolve_name(view, request, source.namespace)
    doc["resolution"] = resolution
    if resolution.get("error"):
        doc["outcome"] = {"result": "error", "status": None, "reason": resolution["error"]}
        return doc
    address = resolution["address"]
    svc, port = _port_of(view, resolution, request)
    dest = resolution.get("destination")
    configs = _NodeConfigs(view)
    captured = doc["caller"]["captured"]
    node: Body = {}
    doc["node_proxy"] = node
    if dest is not None:
        decision = decide_service(view, svc) if svc is not None else decide_workload(view, view.pods_by_ip[address])
        node["decision"] = decision.to_json()
    if not captured:
        pods = find_service_pods(view, svc) if svc is not None else \
            ([view.pods_by_ip[address]] if address in view.pods_by_ip else [])
        node.update({"path": "outside the mesh", "reason": "the caller is not captured: kube-proxy sends the "
                     "connection to one of the service's pods; no waypoint is on its path (Istio's bypass)"})
        return _direct(doc, view, configs, svc, port, pods, None)
    outbound = find_outbound(view, configs, source, address, port)
    node.update(outbound)
    node.pop("pods", None)
    if outbound["path"] == "refused":
        doc["outcome"] = {"result": "refused", "status": None, "by": "the caller's node proxy",
                          "reason": f"{outbound['reason']}: the connection is closed, with no HTTP answer"}
        return doc
    if outbound["path"] == "passthrough":
        node["reason"] = "not a mesh destination: the node proxy passes the connection through"
        doc["outcome"] = {"result": "passthrough", "status": None, "reason": "the request leaves the mesh "
                          f"to {address}:{port}; nothing in the mesh decides its answer"}
        return doc
    if outbound["path"] == "direct":
        node["reason"] = node.get("decision", {}).get("explanation", "direct")
        return _direct(doc, view, configs, svc, port, outbound["pods"], doc["caller"]["identity"])
    node["reason"] = node["decision"]["explanation"]
    return _via_waypoint(doc, view, configs, outbound["waypoint"], address, port, request, svc, now)


def _direct(doc: Body, view: MeshView, configs: _NodeConfigs, svc: ServiceInfo | None, port: int,
            pods: list[PodInfo], peer: str | None) -> Body:
    checks = [check_inbound(view, configs, p, _target_port(svc, port, p), peer) for p in pods]
    doc["node_proxy"]["inbound"] = checks
    doc["waypoint"] = None
    share = round(100.0 / len(pods), 4) if pods else 0.0
    reached = [{"pod": p.name, "namespace": p.namespace, "ip": p.ip, "weight": share, "l4": c["verdict"]}
               for p, c in zip(pods, checks)]
    if not pods:
        doc["outcome"] = {"result": "error", "status": None, "reason": "no ready pod behind the destination: "
                                                                       "the connection is refused"}
    elif all(c["verdict"] == "deny" for c in checks):
        traversal = f"-policy[{TRAVERSAL_POLICY}]-" in (checks[0]["decided_by"] or {}).get("rbac_policy", "")
        doc["outcome"] = {"result": "denied", "status": None, "by": "guaranteed waypoint traversal at the "
                          "destination's node proxy (only its waypoints may connect)" if traversal else
                          "L4 AuthorizationPolicy at the destination's node proxy", "decided_by": checks[0]["decided_by"],
                          "reason": "the destination's node proxy refuses the tunnel: the client's connection "
                                    "fails, with no HTTP answer",
                          "destinations": reached}
    else:
        doc["outcome"] = {"result": "allowed", "status": None, "destinations": reached,
                          "reason": "straight to the pod, without a waypoint: no L7 routing or L7 policy; "
                                    "the application answers"}
    return doc


def _via_waypoint(doc: Body, view: MeshView, configs: _NodeConfigs, key: str, address: str, port: int,
                  request: Request, svc: ServiceInfo | None, now: float) -> Body:
    proxy, wp_identity, replicas = _waypoint_proxy(view, key)
    ready = [p for p in replicas if p.ready]
    resources = build_waypoint_config(view, proxy).resources
    http = HttpRequest(request.method, normalize_path(request.path), request.authority, request.header_map())
    conn = Connection(filter_state={PEER_PRINCIPAL: doc["caller"]["identity"]}, destination_ip=address,
                      destination_port=port)
    at = simulate_at_waypoint(resources, address, port, http, conn, now)
    if at.get("route") and svc is not None:
        at["route"]["source"] = explain_route(view, svc, view.waypoints[tuple(key.split("/", 1))], port, at["route"],
                                              resources)
    doc["waypoint"] = {"name": key, "identity": wp_identity, "replicas": [p.name for p in ready],
                       "path_normalized": http.path if http.path != request.path else None, **at}
    answer = at["answer"]
    if not ready:
        doc["outcome"] = {"result": "error", "status": None, "reason": f"waypoint {key} has no ready replica: the "
                          "connection fails (it is never bypassed)"}
        return doc
    if "status" in answer:
        doc["outcome"] = {"result": "denied" if answer["status"] in (401, 403) else "answered",
                          "status": answer["status"], "by": answer["by"], "body": answer.get("body"),
                          **({"decided_by": answer["decided_by"]} if "decided_by" in answer else {}),
                          "uncertain": at["uncertain"]}
        return doc
    if answer.get("tcp"):
        doc["outcome"] = {"result": "allowed", "status": None, "reason": answer["by"], "uncertain": at["uncertain"]}
        return doc
    destinations, inbound = [], []
    for d in (d for d in at["route"]["destinations"] if d["weight"] > 0):
        eps = d["endpoints"]
        for ep in eps:
            pod = view.pods.get((ep["namespace"], ep["pod"])) or view.pods_by_ip.get(address)
            if pod is None:
                continue
            tport = int(ep["address"].rsplit(":", 1)[1]) if ":" in ep["address"] else port
            check = check_inbound(view, configs, pod, tport, wp_identity)
            inbound.append(check)
            destinations.append({"pod": pod.name, "namespace": pod.namespace, "ip": pod.ip, "port": tport,
                                 "cluster": d["cluster"], "subset": d["subset"],
                                 "weight": round(d["weight"] / len(eps), 4), "l4": check["verdict"]})
    doc["node_proxy"]["inbound"] = inbound
    allowed = [d for d in destinations if d["l4"] != "deny"]
    if not allowed:
        doc["outcome"] = {"result": "denied", "status": 503, "by": "L4 AuthorizationPolicy at the destination's "
                          "node proxy (it refuses the waypoint's identity; the waypoint answers 503)",
                          "destinations": destinations, "uncertain": at["uncertain"]}
    else:
        doc["outcome"] = {"result": "allowed", "status": None, "destinations": destinations,
                          "reason": "the waypoint forwards the request; the application answers",
                          "uncertain": at["uncertain"]}
    return doc
