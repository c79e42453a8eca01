"""`meshway ztunnel-config`: what one node proxy holds, in the shape of ztunnel's config dump, and the
writers `istioctl ztunnel-config` renders it with (`istioctl/pkg/writer/ztunnel/configdump/*.go`).

A node proxy is an Envoy (`meshway.xds.build_ztunnel`), so its "dump" is read from the Envoy itself:
- services: the VIP -> port -> chain branches of `ztunnel_outbound`'s matcher (chain names
  `ID|svc|NS/NAME|PORT[|waypoint]`), the waypoint a chain sends to (cluster `waypoint|ID|NS/NAME`),
  the endpoints of the direct cluster `svc|ID|HOST|PORT` (HBONE: internal endpoint `IP:PORT`; plain
  TCP: a socket address);
- workloads: the mesh pods the matcher knows (`ID|pod|IP|waypoint` names the workload waypoint), the
  service endpoints and the local pods (`ztunnel_inbound` chains `inbound|NS/NAME`); names, service
  accounts, nodes and readiness come from the pods of the store, looked up by IP;
- certificates: the admin API's `/certs` (what Envoy loaded), one entry per identity; an identity
  the proxy has an SDS secret name for but no certificate yet is `Initializing`;
- policies: the AuthorizationPolicies the control plane applies to the node's local pods (the rule
  of `build_authz.find_workload_policies`), with their rules in ztunnel's nested form, and the
  policies istiod converts their PeerAuthentications into (`istio-system/istio_converted_static_strict`,
  `NS/converted_peer_authentication_NAME`; `meshway.mesh.peer_authentication`).

Pure: every function takes parsed JSON and returns plain data or text.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from ..mesh.peer_authentication import PERMISSIVE, STRICT, MtlsDecision, decide_peer_authentication
from ..model.istio import PeerAuthentication
from . import printers as P

Body = dict[str, Any]

OUTBOUND, INBOUND = "ztunnel_outbound", "ztunnel_inbound"
CLUSTER_ID = "Kubernetes"
ROOT_NAMESPACE = "istio-system"


# -- reading the Envoy config dump ---------------------------------------------------------------
def _section(dump: Body, name: str) -> Body:
    for config in dump.get("configs") or []:
        if config.get("@type", "").rsplit(".", 1)[-1] == name:
            return config
    return {}


def _listeners(dump: Body) -> dict[str, Body]:
    lds = _section(dump, "ListenersConfigDump")
    out = {}
    for d in lds.get("dynamic_listeners") or []:
        listener = (d.get("active_state") or {}).get("listener")
        if listener:
            out[listener.get("name", "")] = listener
    return out


def _clusters(dump: Body) -> dict[str, Body]:
    cds = _section(dump, "ClustersConfigDump")
    items = (cds.get("dynamic_active_clusters") or []) + (cds.get("static_clusters") or [])
    return {d["cluster"]["name"]: d["cluster"] for d in items if (d.get("cluster") or {}).get("name")}


def _ip_branches(matcher: Body) -> list[tuple[list[str], Body]]:
    """[(IPs, on_match)] of an IPMatcher tree."""
    custom = ((matcher.get("matcher_tree") or {}).get("custom_match") or {}).get("typed_config") or {}
    return [([r.get("address_prefix", "") for r in rm.get("ranges") or []], rm.get("on_match") or {})
            for rm in custom.get("range_matchers") or []]


def _action(on_match: Body) -> str:
    return ((on_match or {}).get("action") or {}).get("name", "")


def _chain_cluster(chain: Body) -> str:
    for f in chain.get("filters") or []:
        cluster = (f.get("typed_config") or {}).get("cluster")
        if cluster:
            return cluster
    return ""


def _lb_endpoints(cluster: Body) -> list[tuple[str, int, bool]]:
    """(IP, port, HBONE?) of a STATIC cluster's endpoints."""
    out = []
    for group in ((cluster.get("load_assignment") or {}).get("endpoints")) or []:
        for lb in group.get("lb_endpoints") or []:
            address = (lb.get("endpoint") or {}).get("address") or {}
            if "envoy_internal_address" in address:
                ip, _, port = address["envoy_internal_address"].get("endpoint_id", "").rpartition(":")
                out.append((ip, int(port or 0), True))
            elif "socket_address" in address:
                sa = address["socket_address"]
                out.append((sa.get("address", ""), int(sa.get("port_value", 0)), False))
    return out


@dataclass
class _Seen:
    """What the proxy's config says about addresses, before names are attached."""
    services: dict[tuple[str, str], Body]
    mesh_ips: dict[str, str]      # pod IP -> its workload waypoint ("ns/name") or ""
    tcp_ips: set[str]             # endpoint IPs reached in plain TCP (not in the mesh)
    local: dict[str, tuple[str, str]]  # local pod IP -> (ns, name)


def _waypoint_of(cluster: str) -> str:
    """`waypoint|ID|NS/NAME` -> NS/NAME."""
    parts = cluster.split("|")
    return parts[2] if len(parts) == 3 and parts[0] == "waypoint" else ""


def _waypoint_destination(key: str) -> Body | None:
    if not key:
        return None
    ns, _, name = key.partition("/")
    return {"destination": f"{ns}/{name}.{ns}.svc.cluster.local"}


def read_node_proxy(dump: Body) -> _Seen:
    """Services, mesh pods and local pods as the node proxy's listeners and clusters hold them."""
    listeners, clusters = _listeners(dump), _clusters(dump)
    outbound = listeners.get(OUTBOUND) or {}
    chains = {c.get("name", ""): c for c in outbound.get("filter_chains") or []}
    seen = _Seen({}, {}, set(), {})
    for _, identity in _ip_branches(outbound.get("filter_chain_matcher") or {}):
        for ips, on_match in _ip_branches(identity.get("matcher") or {}):
            if "matcher" not in on_match:  # a mesh pod's IP
                parts = _action(on_match).split("|")
                waypoint = ""
                if len(parts) == 4 and parts[1] == "pod" and parts[3] == "waypoint":
                    waypoint = _waypoint_of(_chain_cluster(chains.get(_action(on_match)) or {}))
                for ip in ips:
                    seen.mesh_ips[ip] = seen.mesh_ips.get(ip) or waypoint
                continue
            ports = ((on_match["matcher"].get("matcher_tree") or {}).get("exact_match_map") or {}).get("map") or {}
            for port, action in ports.items():
                _add_service_port(seen, ips, int(port), _action(action), chains, clusters)
    for chain in (listeners.get(INBOUND) or {}).get("filter_chains") or []:
        ns, _, name = chain.get("name", "").partition("|")[2].partition("/")
        for r in (chain.get("filter_chain_match") or {}).get("prefix_ranges") or []:
            seen.local[r.get("address_prefix", "")] = (ns, name)
    return seen


def _add_service_port(seen: _Seen, vips: list[str], port: int, chain_name: str, chains: dict[str, Body],
                      clusters: dict[str, Body]) -> None:
    parts = chain_name.split("|")  # ID|svc|NS/NAME|PORT[|waypoint]
    if len(parts) < 4 or parts[1] != "svc":
        return
    ns, _, name = parts[2].partition("/")
    svc = seen.services.setdefault((ns, name), {"name": name, "namespace": ns, "hostname": "", "vips": [],
                                                "ports": {}, "endpoints": {}, "subjectAltNames": [],
                                                "ipFamilies": "IPv4"})
    for vip in vips:
        if f"/{vip}" not in svc["vips"]:
            svc["vips"].append(f"/{vip}")
    target = _chain_cluster(chains.get(chain_name) or {})
    if len(parts) == 5 and parts[4] == "waypoint":
        svc["waypoint"] = _waypoint_destination(_waypoint_of(target))
        direct = _find_direct(clusters, parts[0], ns, name, port)
    else:
        direct = target
    host = direct.split("|")[2] if direct.count("|") == 3 else ""
    svc["hostname"] = svc["hostname"] or host
    svc["ports"][str(port)] = port
    for ip, target_port, hbone in _lb_endpoints(clusters.get(direct) or {}):
        svc["ports"][str(port)] = target_port
        endpoint = svc["endpoints"].setdefault(ip, {"address": f"/{ip}", "port": {}})
        endpoint["port"][str(port)] = target_port
        if not hbone:
            seen.tcp_ips.add(ip)


def _find_direct(clusters: dict[str, Body], source: str, ns: str, name: str, port: int) -> str:
    """The direct cluster of a waypoint-bound service (kept beside the waypoint's): `svc|ID|HOST|PORT`."""
    for host in (f"{name}.{ns}.svc.cluster.local",):
        if f"svc|{source}|{host}|{port}" in clusters:
            return f"svc|{source}|{host}|{port}"
    return ""


# -- the store's pods and policies ---------------------------------------------------------------
def _pod_ready(pod: Body) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _workload_name(pod: Body) -> tuple[str, str]:
    """(workloadName, workloadType): the Deployment for a pod of one, else the pod (ztunnel's rule)."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Deployment":
            return ref.get("name", ""), "deployment"
    return meta.get("name", ""), "pod"


def build_workload(ip: str, pod: Body | None, protocol: str, waypoint: str, trust_domain: str,
                   policies: list[str]) -> Body:
    """One workload in ztunnel's JSON shape (`ZtunnelWorkload`)."""
    meta = (pod or {}).get("metadata") or {}
    labels = meta.get("labels") or {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    workload_name, workload_type = _workload_name(pod) if pod else ("", "")
    out: Body = {
        "uid": f"{CLUSTER_ID}//Pod/{ns}/{name}" if pod else f"{CLUSTER_ID}//{ip}",
        "workloadIps": [ip],
        "protocol": protocol,
        "name": name,
        "namespace": ns,
        "serviceAccount": ((pod or {}).get("spec") or {}).get("serviceAccountName", "default") if pod else "",
        "workloadName": workload_name,
        "workloadType": workload_type,
        "canonicalName": labels.get("service.istio.io/canonical-name") or labels.get("app") or workload_name,
        "canonicalRevision": labels.get("service.istio.io/canonical-revision") or labels.get("version") or "latest",
        "clusterId": CLUSTER_ID,
        "trustDomain": trust_domain,
        "node": ((pod or {}).get("spec") or {}).get("nodeName", ""),
        "status": "Healthy" if pod and _pod_ready(pod) else "Unhealthy",
        "hostname": "",
        "capacity": 1,
    }
    if waypoint:
        out["waypoint"] = _waypoint_destination(waypoint)
    if policies:
        out["authorizationPolicies"] = policies
    return out


def find_local_policies(policies: list[Body], pods: list[Body]) -> dict[tuple[str, str], list[Body]]:
    """{(ns, pod): [AuthorizationPolicy]} the node proxy enforces for its local pods: no targetRefs,
    in the pod's namespace or the root namespace, selector labels all matching; enforced ALLOW and
    DENY only (a node proxy runs no dry-run, AUDIT or CUSTOM policy)."""
    out: dict[tuple[str, str], list[Body]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        applied = []
        for p in policies:
            pm, spec = p.get("metadata") or {}, p.get("spec") or {}
            if spec.get("targetRef") or spec.get("targetRefs"):
                continue
            if pm.get("namespace") not in (meta.get("namespace"), ROOT_NAMESPACE):
                continue
            if (pm.get("annotations") or {}).get("istio.io/dry-run") == "true":
                continue
            if (spec.get("action") or "ALLOW") not in ("ALLOW", "DENY"):
                continue
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                applied.append(p)
        out[(meta.get("namespace", ""), meta.get("name", ""))] = applied
    return out


def _string_matches(values: list[str]) -> list[Body]:
    out = []
    for v in values:
        if v == "*":
            out.append({"Presence": {}})
        elif v.startswith("*"):
            out.append({"Suffix": v[1:]})
        elif v.endswith("*"):
            out.append({"Prefix": v[:-1]})
        else:
            out.append({"Exact": v})
    return out


def build_policy_rules(spec: Body) -> list[list[list[Body]]]:
    """ztunnel's `rules`: OR of rules, each an AND of clauses, each an OR of matches."""
    rules = []
    for rule in spec.get("rules") or []:
        clauses: list[list[Body]] = []
        sources = []
        for f in rule.get("from") or []:
            s = f.get("source") or {}
            match: Body = {}
            for key, field in (("principals", "principals"), ("notPrincipals", "notPrincipals"),
                               ("namespaces", "namespaces"), ("notNamespaces", "notNamespaces")):
                if s.get(key):
                    match[field] = _string_matches(s[key])
            for key, field in (("ipBlocks", "sourceIps"), ("notIpBlocks", "notSourceIps")):
                if s.get(key):
                    match[field] = list(s[key])
            if match:
                sources.append(match)
        if sources:
            clauses.append(sources)
        operations = []
        for t in rule.get("to") or []:
            op = t.get("operation") or {}
            match = {}
            if op.get("ports"):
                match["destinationPorts"] = [int(p) for p in op["ports"]]
            if op.get("notPorts"):
                match["notDestinationPorts"] = [int(p) for p in op["notPorts"]]
            if match:
                operations.append(match)
        if operations:
            clauses.append(operations)
        rules.append(clauses)
    return rules


def build_policy(p: Body) -> Body:
    """One AuthorizationPolicy in ztunnel's JSON shape (`ZtunnelPolicy`)."""
    meta, spec = p.get("metadata") or {}, p.get("spec") or {}
    if meta.get("namespace") == ROOT_NAMESPACE and not spec.get("selector"):
        scope = "Global"
    elif spec.get("selector"):
        scope = "WorkloadSelector"
    else:
        scope = "Namespace"
    action = (spec.get("action") or "ALLOW").capitalize()
    return {"name": meta.get("name", ""), "namespace": meta.get("namespace", ""), "scope": scope,
            "action": action, "rules": build_policy_rules(spec)}


_UNAUTHENTICATED = {"notPrincipals": [{"Presence": {}}]}


def build_peer_authn_policy(decision: MtlsDecision) -> Body | None:
    """The DENY istiod sends ztunnel for a workload's effective PeerAuthentication
    (`convertPeerAuthentication`, the static strict policy): unauthenticated connections on every
    port, on all but the PERMISSIVE ones, or on the STRICT ones only."""
    if decision.policy is None:
        return None
    namespace, name = decision.policy.split("/", 1)
    if decision.mode == STRICT:
        rules = [[[_UNAUTHENTICATED], *[[{"notDestinationPorts": [port]}] for port, mode in decision.ports
                                         if mode == PERMISSIVE]]]
    else:
        rules = [[[{**_UNAUTHENTICATED, "destinationPorts": [port]}]] for port, mode in decision.ports
                 if mode == STRICT]
    return {"name": name, "namespace": namespace, "scope": "WorkloadSelector", "action": "Deny", "rules": rules}


def find_peer_authn_policies(peer_authns: list[Body], pods: list[Body]) -> dict[tuple[str, str], Body]:
    """{(ns, pod): the converted PeerAuthentication policy} of the pods that have one."""
    models = [PeerAuthentication.model_validate(b, strict=False) for b in peer_authns]
    out = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        policy = build_peer_authn_policy(decide_peer_authentication(models, meta.get("namespace", ""),
                                                                    meta.get("labels") or {}))
        if policy:
            out[(meta.get("namespace", ""), meta.get("name", ""))] = policy
    return out


# -- certificates (GET /certs) -------------------------------------------------------------------
def _cert(c: Body) -> Body:
    serial = c.get("serial_number", "")
    try:
        decimal = str(int(serial, 16))
    except ValueError:
        decimal = ""
    return {"pem": "", "serialNumber": decimal, "validFrom": c.get("valid_from", ""),
            "expirationTime": c.get("expiration_time", "")}


def _uri_sans(c: Body) -> list[str]:
    return [s["uri"] for s in c.get("subject_alt_names") or [] if s.get("uri")]


def build_certificates(certs: Body, wanted: Iterable[str]) -> list[Body]:
    """One `CertsDump` per identity: what Envoy loaded (GET /certs; serials as decimal strings, as
    ztunnel prints them), then every identity in `wanted` it has no certificate for, `Initializing`."""
    found: dict[str, Body] = {}
    for entry in certs.get("certificates") or []:
        chain = entry.get("cert_chain") or []
        identities = _uri_sans(chain[0]) if chain else []
        if not identities:
            continue
        item = found.setdefault(identities[0], {"identity": identities[0], "state": "Available",
                                                "certChain": [], "rootCerts": []})
        for key, source in (("certChain", chain), ("rootCerts", entry.get("ca_cert") or [])):
            for c in source:
                cert = _cert(c)
                if cert["serialNumber"] not in {x["serialNumber"] for x in item[key]}:
                    item[key].append(cert)
    out = [found[i] for i in sorted(found)]
    out += [{"identity": i, "state": "Initializing", "certChain": [], "rootCerts": []}
            for i in sorted(set(wanted) - set(found))]
    return out


def find_secret_identities(dump: Body) -> list[str]:
    """The SPIFFE identities the node proxy has SDS secrets for (its local pods' service accounts)."""
    sds = _section(dump, "SecretsConfigDump")
    names = [s.get("name", "") for key in ("dynamic_active_secrets", "dynamic_warming_secrets")
             for s in sds.get(key) or []]
    return sorted({n for n in names if n.startswith("spiffe://")})


# -- the dump ------------------------------------------------------------------------------------
def build_ztunnel_dump(config_dump: Body, certs: Body, pods: list[Body], policies: list[Body],
                       trust_domain: str = "cluster.local", peer_authns: list[Body] = ()) -> Body:
    """{workloads, services, policies, certificates} of one node proxy, in ztunnel's JSON field
    names (lists, which istioctl reads as it reads ztunnel's maps)."""
    if not isinstance(config_dump, dict) or "configs" not in config_dump:
        raise ValueError("not an Envoy config dump (expected the JSON of GET /config_dump)")
    seen = read_node_proxy(config_dump)
    by_ip = {(p.get("status") or {}).get("podIP"): p for p in pods if (p.get("status") or {}).get("podIP")}
    local_pods = [by_ip[ip] for ip in seen.local if ip in by_ip]
    applied = find_local_policies(policies, local_pods)
    converted = find_peer_authn_policies(list(peer_authns), local_pods)
    ips = set(seen.mesh_ips) | set(seen.local) | seen.tcp_ips
    for svc in seen.services.values():
        ips |= set(svc["endpoints"])
    workloads = []
    for ip in sorted(ips):
        pod = by_ip.get(ip)
        hbone = ip in seen.mesh_ips or ip in seen.local
        key = ((pod or {}).get("metadata") or {}).get("namespace", ""), ((pod or {}).get("metadata") or {}).get("name", "")
        names = [f"{(p['metadata'] or {}).get('namespace')}/{p['metadata'].get('name')}"
                 for p in applied.get(key, [])]
        if key in converted:
            names.append(f"{converted[key]['namespace']}/{converted[key]['name']}")
        workloads.append(build_workload(ip, pod, "HBONE" if hbone else "TCP", seen.mesh_ips.get(ip, ""),
                                        trust_domain, names))
    uid_of = {w["workloadIps"][0]: w["uid"] for w in workloads}
    services = []
    for (ns, name), svc in sorted(seen.services.items()):
        endpoints = {}
        for ip, ep in sorted(svc["endpoints"].items()):
            uid = uid_of.get(ip, f"{CLUSTER_ID}//{ip}")
            endpoints[f"{uid}:/{ip}"] = {"workloadUid": uid, "service": f"{ns}/{svc['hostname']}",
                                         "address": ep["address"], "port": ep["port"]}
        services.append({**svc, "endpoints": endpoints})
    pols = {(p["metadata"].get("namespace"), p["metadata"].get("name")): build_policy(p)
            for ps in applied.values() for p in ps}
    pols.update({(p["namespace"], p["name"]): p for p in converted.values()})
    return {"workloads": workloads, "services": services,
            "policies": [pols[k] for k in sorted(pols)],
            "certificates": build_certificates(certs, find_secret_identities(config_dump))}


def parse_ztunnel_dump(data: Body) -> Body:
    """A stored dump (`ztunnel-config all -o json`, or ztunnel's own, whose maps become lists)."""
    if not isinstance(data, dict) or not ({"workloads", "services", "policies", "certificates"} & set(data)):
        raise ValueError("not a ztunnel config dump (expected `meshway ztunnel-config all -o json` output)")
    out = {}
    for key in ("workloads", "services", "policies", "certificates"):
        value = data.get(key) or []
        out[key] = list(value.values()) if isinstance(value, dict) else list(value)
    return out


# -- filters -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkloadFilter:
    namespace: str = ""
    address: str = ""
    node: str = ""

    def verify(self, w: Body) -> bool:
        if self.namespace and w.get("namespace", "").lower() != self.namespace.lower():
            return False
        if self.address and not any(ip.lower() == self.address.lower() for ip in w.get("workloadIps") or []):
            return False
        return not self.node or w.get("node", "").lower() == self.node.lower()


def select_workloads(dump: Body, flt: WorkloadFilter = WorkloadFilter()) -> list[Body]:
    return [w for w in dump["workloads"] if flt.verify(w)]


def select_by_namespace(items: list[Body], namespace: str = "") -> list[Body]:
    found = [i for i in items if not namespace or i.get("namespace", "").lower() == namespace.lower()]
    return sorted(found, key=lambda i: (i.get("namespace", ""), i.get("name", ""), i.get("hostname", "")))


# -- writers -------------------------------------------------------------------------------------
def _waypoint_name(waypoint: Body | None, services: list[Body]) -> str:
    """The name of the service a workload's or service's waypoint is (istioctl's waypointName)."""
    if not waypoint:
        return "None"
    destination = waypoint.get("destination", "")
    for svc in services:
        if f"{svc.get('namespace')}/{svc.get('hostname')}" == destination or destination in svc.get("vips") or []:
            return svc.get("name", "")
    return "NA"


def write_workloads(dump: Body, flt: WorkloadFilter = WorkloadFilter()) -> str:
    """`NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL`, tabwriter padding 1."""
    rows = [["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]]
    workloads = sorted(select_workloads(dump, flt),
                       key=lambda w: (f"{w.get('namespace', '')}.{w.get('name', '')}", w.get("node", "")))
    for w in workloads:
        address = ",".join(w.get("workloadIps") or []) or w.get("hostname", "")
        rows.append([w.get("namespace", ""), w.get("name", ""), address, w.get("node", ""),
                     _waypoint_name(w.get("waypoint"), dump["services"]), w.get("protocol", "")])
    return P.tabwrite(rows, 1)


def write_services(dump: Body, namespace: str = "") -> str:
    """`NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS` (healthy/all), padding 1."""
    status = {w.get("uid"): w.get("status") for w in dump["workloads"]}
    rows = [["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"]]
    for svc in select_by_namespace(dump["services"], namespace):
        vips = ",".join(v.partition("/")[2] for v in svc.get("vips") or [])
        endpoints = (svc.get("endpoints") or {}).values()
        healthy = sum(1 for e in endpoints if status.get(e.get("workloadUid")) == "Healthy")
        rows.append([svc.get("namespace", ""), svc.get("name", ""), vips,
                     _waypoint_name(svc.get("waypoint"), dump["services"]), f"{healthy}/{len(endpoints)}"])
    return P.tabwrite(rows, 1)


def write_policies(dump: Body, namespace: str = "") -> str:
    """`NAMESPACE POLICY NAME ACTION SCOPE`, padding 1."""
    rows = [["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"]]
    for p in select_by_namespace(dump["policies"], namespace):
        rows.append([p.get("namespace", ""), p.get("name", ""), p.get("action", ""), p.get("scope", "")])
    return P.tabwrite(rows, 1)


def _valid(cert: Body, now: datetime) -> bool:
    try:
        before = datetime.fromisoformat(cert["validFrom"].replace("Z", "+00:00"))
        after = datetime.fromisoformat(cert["expirationTime"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return False
    return before < now < after


def _hex(serial: str) -> str:
    try:
        return format(int(serial), "x")
    except ValueError:
        return serial


def write_certificates(dump: Body, now: datetime) -> str:
    """`CERTIFICATE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE`, padding 5:
    Leaf, Intermediate..., then each Root; NA for an identity without a certificate."""
    rows = [["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]]
    for item in dump["certificates"]:
        state = "Unavailable" if "Unavailable" in item.get("state", "") else item.get("state", "")
        chain, roots = item.get("certChain") or [], item.get("rootCerts") or []
        if not chain:
            rows.append([item.get("identity", ""), "NA", state, "false", "NA", "NA", "NA"])
            continue
        typed = [("Leaf" if i == 0 else ("Root" if i == len(chain) - 1 and not roots else "Intermediate"), c)
                 for i, c in enumerate(chain)] + [("Root", c) for c in roots]
        for kind, c in typed:
            rows.append([item.get("identity", ""), kind, state, str(_valid(c, now)).lower(), _hex(c["serialNumber"]),
                         c.get("expirationTime") or "NA", c.get("validFrom") or "NA"])
    return P.tabwrite(rows, 5)


def write_all(dump: Body, now: datetime) -> str:
    """Every summary, each after an empty line, as `istioctl ztunnel-config all` prints them."""
    return "".join("\n" + text for text in (write_workloads(dump), write_services(dump), write_policies(dump),
                                            write_certificates(dump, now)))


def write_data(data: Any, output: str) -> str:
    """`-o json` (indent 4) or `-o yaml`."""
    return P.to_yaml(data) if output == "yaml" else P.to_json(data)
