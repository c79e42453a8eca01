"""Writers for `meshway proxy-config`: an Envoy config dump (GET /config_dump?include_eds) or cluster
status (GET /clusters?format=json), as plain dicts, rendered the way istioctl renders them
(`istioctl/pkg/writer/envoy/configdump/*.go`, `.../envoy/clusters/clusters.go`, `.../compare/sds`).

Pure: no I/O; every function takes the parsed JSON and returns text or plain data.
"""
from __future__ import annotations

import base64
import functools
import importlib
import json
import pkgutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from cryptography import x509

from . import printers as P

Body = dict[str, Any]

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
BLACKHOLE = "BlackHoleCluster"
IP_MATCHER = "type.googleapis.com/xds.type.matcher.v3.IPMatcher"

LISTENER_TYPE = "envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = "envoy.config.endpoint.v3.ClusterLoadAssignment"
CLUSTER_STATUS_TYPE = "envoy.admin.v3.ClusterStatus"
DYNAMIC_SECRET_TYPE = "envoy.admin.v3.SecretsConfigDump.DynamicSecret"


# -- the dump ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigDump:
    """The parts of a config dump the writers use, each resource as Envoy printed it."""
    bootstrap: Body = field(default_factory=dict)
    listeners: list[Body] = field(default_factory=list)
    clusters: list[Body] = field(default_factory=list)
    routes: list[Body] = field(default_factory=list)
    endpoints: list[Body] = field(default_factory=list)
    secrets: list[tuple[str, Body]] = field(default_factory=list)  # (WARMING|ACTIVE, DynamicSecret)


def _section(dump: Body, name: str) -> Body:
    for config in dump.get("configs") or []:
        if config.get("@type", "").rsplit("/", 1)[-1] == f"envoy.admin.v3.{name}":
            return config
    return {}


def parse_config_dump(dump: Body) -> ConfigDump:
    if not isinstance(dump, dict) or "configs" not in dump:
        raise ValueError("not an Envoy config dump (expected the JSON of GET /config_dump)")
    lds = _section(dump, "ListenersConfigDump")
    listeners = [d["active_state"]["listener"] for d in lds.get("dynamic_listeners") or []
                 if (d.get("active_state") or {}).get("listener")]
    listeners += [d["listener"] for d in lds.get("static_listeners") or [] if d.get("listener")]
    cds = _section(dump, "ClustersConfigDump")
    clusters = [d["cluster"] for d in cds.get("dynamic_active_clusters") or [] if d.get("cluster")]
    clusters += [d["cluster"] for d in cds.get("static_clusters") or [] if d.get("cluster")]
    rds = _section(dump, "RoutesConfigDump")
    routes = [d["route_config"] for d in rds.get("dynamic_route_configs") or [] if d.get("route_config")]
    routes += [d["route_config"] for d in rds.get("static_route_configs") or [] if d.get("route_config")]
    eds = _section(dump, "EndpointsConfigDump")
    endpoints = [d["endpoint_config"] for d in eds.get("dynamic_endpoint_configs") or [] if d.get("endpoint_config")]
    endpoints += [d["endpoint_config"] for d in eds.get("static_endpoint_configs") or [] if d.get("endpoint_config")]
    sds = _section(dump, "SecretsConfigDump")
    secrets = [("WARMING", s) for s in sds.get("dynamic_warming_secrets") or []]
    secrets += [("ACTIVE", s) for s in sds.get("dynamic_active_secrets") or []]
    return ConfigDump(_section(dump, "BootstrapConfigDump").get("bootstrap") or {}, listeners, clusters,
                      _with_inline_routes(routes, listeners), endpoints, secrets)


def _with_inline_routes(routes: list[Body], listeners: list[Body]) -> list[Body]:
    """Route configs (a waypoint's service chains take theirs over RDS) plus the inline `route_config`
    of every HCM (`connect_terminate`'s, `direct-http`'s, and every route of dumps from before RDS).
    Envoy lists inline configs under static_route_configs too; those that are already there (same
    content) are not repeated."""
    def key(rc: Body) -> str:
        return json.dumps({k: v for k, v in rc.items() if k != "@type"}, sort_keys=True)

    seen = {key(rc) for rc in routes}
    out = list(routes)
    for listener in listeners:
        for chain in _chains(listener):
            for f in chain.get("filters") or []:
                rc = _hcm_config(f).get("route_config") if _is_hcm(f) else None
                if rc and key(rc) not in seen:
                    seen.add(key(rc))
                    out.append(rc)
    return out


# -- shared helpers ------------------------------------------------------------------------------
def _typed(f: Body) -> Body:
    return f.get("typed_config") or {}


def _is_hcm(f: Body) -> bool:
    return f.get("name") == HCM or _typed(f).get("@type", "").endswith(".HttpConnectionManager")


def _is_tcp_proxy(f: Body) -> bool:
    return f.get("name") == TCP_PROXY or _typed(f).get("@type", "").endswith(".TcpProxy")


def _hcm_config(f: Body) -> Body:
    return _typed(f)


def _chains(listener: Body) -> list[Body]:
    chains = list(listener.get("filter_chains") or [])
    if listener.get("default_filter_chain"):
        chains.append(listener["default_filter_chain"])
    return chains


def _render_config(metadata: Body | None) -> str:
    """`istio.config` metadata -> `<name>.<namespace>` (istioctl's describeManagement/renderConfig)."""
    path = (((metadata or {}).get("filter_metadata") or {}).get("istio") or {}).get("config")
    if not path:
        return ""
    if path.startswith("/apis/networking.istio.io/"):
        pieces = path.split("/")
        return f"{pieces[7]}.{pieces[5]}" if len(pieces) == 8 else ""
    return "<unknown>"


def parse_cluster_name(name: str) -> tuple[str, int, str, str]:
    """Istio's `direction|port|subset|host` -> (direction, port, subset, host); a node proxy's
    `svc|SOURCE-IDENTITY-HASH|host|port` (to the service's pods, from one local identity) ->
    ("outbound", port, "", host); other names (`hbone|…`, `waypoint|…`, `encap`) -> ("", 0, "", name)."""
    parts = name.split("|")
    if len(parts) == 4 and parts[0] == "svc" and parts[3].isdigit():
        return "outbound", int(parts[3]), "", parts[2]
    if len(parts) != 4 or not parts[1].isdigit():
        return "", 0, "", name
    return parts[0], int(parts[1]), parts[2], parts[3]


def _cluster_sort_key(name: str) -> tuple[str, str, int, str, str]:
    direction, port, subset, host = parse_cluster_name(name)
    return host, subset, port, direction, name


# -- listeners -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListenerFilter:
    address: str = ""
    port: int = 0
    type: str = ""

    def verify(self, listener: Body) -> bool:
        if self.address and not any(a.lower() == self.address.lower()
                                    for a in [*_listener_additional(listener), _listener_address(listener)]):
            return False
        if self.port and _listener_port(listener) != self.port:
            return False
        return not self.type or listener_type(listener).lower() == self.type.lower()


def _listener_address(listener: Body) -> str:
    address = listener.get("address") or {}
    if "socket_address" in address:
        return address["socket_address"].get("address", "")
    if "pipe" in address:
        return address["pipe"].get("path", "")
    return ""


def _listener_additional(listener: Body) -> list[str]:
    return [((a.get("address") or {}).get("socket_address") or {}).get("address", "")
            for a in listener.get("additional_addresses") or []]


def _listener_port(listener: Body) -> int:
    return int(((listener.get("address") or {}).get("socket_address") or {}).get("port_value", 0))


def _is_blackhole(f: Body) -> bool:
    return BLACKHOLE in json.dumps(_typed(f))


def listener_type(listener: Body) -> str:
    """HTTP, TCP, HTTP+TCP or UNKNOWN, by the HCM and tcp_proxy filters of its chains."""
    filters = [f for chain in _chains(listener) for f in chain.get("filters") or []]
    n_http = sum(1 for f in filters if _is_hcm(f))
    n_tcp = sum(1 for f in filters if _is_tcp_proxy(f) and not _is_blackhole(f))
    if n_http:
        return "HTTP" if not n_tcp else "HTTP+TCP"
    return "TCP" if n_tcp else "UNKNOWN"


def _listener_sort_key(listener: Body) -> tuple[int, str, str]:
    return _listener_port(listener), _listener_address(listener), listener_type(listener)


PROTOCOL_DESCRIPTIONS = {
    "App: HTTP TLS": ["http/1.0", "http/1.1", "h2c", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
    "App: Istio HTTP Plain": ["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
    "App: TCP TLS": ["istio-peer-exchange", "istio"],
    "App: HTTP": ["http/1.0", "http/1.1", "h2c"],
}


def describe_chain_match(match: Body | None) -> str:
    """A `filter_chain_match` the way istioctl's getMatches prints it (`ALL` when empty)."""
    match = match or {}
    descrs = []
    if match.get("server_names"):
        descrs.append("SNI: " + ",".join(match["server_names"]))
    if match.get("transport_protocol"):
        descrs.append(f"Trans: {match['transport_protocol']}")
    if match.get("application_protocols"):
        alpn = list(match["application_protocols"])
        named = [d for d, protocols in PROTOCOL_DESCRIPTIONS.items() if protocols == alpn]
        descrs.append(named[0] if named else "App: " + ",".join(alpn))
    port = f":{match['destination_port']}" if match.get("destination_port") is not None else ""
    if match.get("prefix_ranges"):
        ranges = ",".join(f"{r.get('address_prefix', '')}/{r.get('prefix_len', 0)}" for r in match["prefix_ranges"])
        descrs.append(f"Addr: {ranges}{port}")
    elif port:
        descrs.append(f"Addr: *{port}")
    return "; ".join(descrs) or "ALL"


def _describe_route_match(match: Body) -> str:
    conds = []
    if match.get("prefix"):
        conds.append(f"{match['prefix']}*")
    if match.get("path_separated_prefix"):
        conds.append(f"PathPrefix:{match['path_separated_prefix']}")
    if match.get("path"):
        conds.append(match["path"])
    if match.get("safe_regex"):
        conds.append(f"regex {match['safe_regex'].get('regex', '')}")
    return " ".join(conds)  # headers are not shown


def _cluster_label(cluster: str) -> str:
    return cluster if "Cluster" in cluster else f"Cluster: {cluster}"


def _match_all_cluster(rc: Body) -> str:
    """`Cluster: x` for a route config with one `*` vhost holding one `/` route to one cluster."""
    vhosts = rc.get("virtual_hosts") or []
    if len(vhosts) != 1 or vhosts[0].get("domains") != ["*"] or len(vhosts[0].get("routes") or []) != 1:
        return ""
    route = vhosts[0]["routes"][0]
    if (route.get("match") or {}).get("prefix") != "/" or not (route.get("route") or {}).get("cluster"):
        return ""
    return _cluster_label(route["route"]["cluster"])


def describe_inline_route(rc: Body) -> str:
    if cluster := _match_all_cluster(rc):
        return cluster
    vhosts = []
    for vh in rc.get("virtual_hosts") or []:
        routes = ", ".join(_describe_route_match(r.get("match") or {}) for r in vh.get("routes") or [])
        domains = vh.get("domains") or []
        vhosts.append(routes if domains == ["*"] else f"{'/'.join(domains)} {routes}")
    return "Inline Route: " + "; ".join(vhosts)


def describe_destination(filters: list[Body]) -> str:
    """Where a filter chain sends traffic (istioctl's getFilterType)."""
    for f in filters:
        if _is_hcm(f):
            hcm = _hcm_config(f)
            if hcm.get("route_config") is not None:
                return describe_inline_route(hcm["route_config"])
            if (hcm.get("rds") or {}).get("route_config_name"):
                return f"Route: {hcm['rds']['route_config_name']}"
            return "HTTP"
        if _is_tcp_proxy(f) and not _is_blackhole(f):
            tcp = _typed(f)
            weighted = [c.get("name", "") for c in (tcp.get("weighted_clusters") or {}).get("clusters") or []]
            return _cluster_label(tcp.get("cluster") or ", ".join(weighted))
    return "Non-HTTP/Non-TCP"


def write_listeners(listeners: list[Body], flt: ListenerFilter = ListenerFilter(), verbose: bool = True,
                    with_names: bool = False) -> str:
    """`ADDRESSES PORT MATCH DESTINATION` (or `ADDRESSES PORT TYPE`), tabwriter padding 1."""
    header = ["ADDRESSES", "PORT"] + (["MATCH", "DESTINATION"] if verbose else ["TYPE"])
    rows = [(["NAME"] if with_names else []) + header]
    for listener in sorted((l for l in listeners if flt.verify(l)), key=_listener_sort_key):
        lead = [f"listener/{listener.get('name', '')}"] if with_names else []
        addresses = ",".join([_listener_address(listener), *_listener_additional(listener)])
        port = str(_listener_port(listener))
        if not verbose:
            rows.append(lead + [addresses, port, listener_type(listener)])
            continue
        chains = [(describe_chain_match(c.get("filter_chain_match")), describe_destination(c.get("filters") or []))
                  for c in _chains(listener)]
        for match, destination in sorted(chains, key=lambda c: c[1], reverse=True):
            rows.append(lead + [addresses, port, match, destination])
    return P.tabwrite(rows, 1)


# -- listeners, --waypoint -----------------------------------------------------------------------
def _on_match_action(on_match: Body | None) -> str | None:
    action = (on_match or {}).get("action")
    return action.get("name", "") if action is not None else None


def _tree_branches(tree: Body) -> tuple[str, list[tuple[str, Body]]]:
    """(`=` or `^`, [(key, on_match)]) of a matcher tree, keys as istioctl prints them."""
    if "exact_match_map" in tree:
        return "=", list(((tree["exact_match_map"] or {}).get("map") or {}).items())
    if "prefix_match_map" in tree:
        return "^", list(((tree["prefix_match_map"] or {}).get("map") or {}).items())
    custom = _typed(tree.get("custom_match") or {})
    if custom.get("@type") != IP_MATCHER:
        return "=", []
    branches = []
    for rm in custom.get("range_matchers") or []:
        for r in rm.get("ranges") or []:
            length = int(r.get("prefix_len", 0))
            cidr = r.get("address_prefix", "") + ("" if length in (32, 128) else f"/{length}")
            branches.append((cidr, rm.get("on_match") or {}))
    return "=", branches


def _walk_matcher(chain: str, matcher: Body, top: bool) -> list[str]:
    """The paths through a `filter_chain_matcher` that end at `chain`: `ip=10.96.0.4 -> port=9080`.
    An `on_no_match` that names the chain reads `ANY` (`UNMATCHED` at the top level)."""
    on_no_match = matcher.get("on_no_match") or {}
    if _on_match_action(on_no_match) == chain:
        return ["UNMATCHED" if top else "ANY"]
    out = []
    tree = matcher.get("matcher_tree") or {}
    name = (tree.get("input") or {}).get("name", "")
    equality, branches = _tree_branches(tree)
    for key, on_match in branches:
        if _on_match_action(on_match) == chain:
            out.append(f"{name}{equality}{key}")
        elif "matcher" in on_match:
            out += [f"{name}{equality}{key} -> {child}" for child in _walk_matcher(chain, on_match["matcher"], False)]
    if "matcher" in on_no_match:
        out += _walk_matcher(chain, on_no_match["matcher"], top)
    return out


def chain_matches(listener: Body, chain: Body) -> list[str]:
    matcher = listener.get("filter_chain_matcher")
    if not matcher:
        return [describe_chain_match(chain.get("filter_chain_match"))]
    return _walk_matcher(chain.get("name", ""), matcher, True) or ["NONE"]


def _waypoint_order(a: Body, b: Body) -> int:
    if "internal_listener" in a and "internal_listener" in b:
        return (a.get("name", "") > b.get("name", "")) - (a.get("name", "") < b.get("name", ""))
    ka, kb = _listener_sort_key(a), _listener_sort_key(b)
    return (ka > kb) - (ka < kb)


def write_waypoint_listeners(listeners: list[Body]) -> str:
    """`LISTENER CHAIN MATCH DESTINATION` (istioctl's PrintRemoteListenerSummary), padding 1."""
    rows = [["LISTENER", "CHAIN", "MATCH", "DESTINATION"]]
    for listener in sorted(listeners, key=functools.cmp_to_key(_waypoint_order)):
        chains = _chains(listener)
        lname = f"envoy://{listener.get('name', '')}"
        if "internal_listener" in listener and len(chains) == 1 and chains[0].get("name") == lname:
            lname = "internal"
        for chain in chains:
            destination = describe_destination(chain.get("filters") or [])
            for match in chain_matches(listener, chain):
                rows.append([lname, chain.get("name", ""), match, destination])
    return P.tabwrite(rows, 1)


# -- clusters ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterFilter:
    fqdn: str = ""       # substring of the FQDN part
    direction: str = ""  # substring of the direction part
    port: int = 0
    subset: str = ""     # substring of the subset part

    def verify(self, cluster: Body) -> bool:
        direction, port, subset, host = parse_cluster_name(cluster.get("name", ""))
        return ((not self.fqdn or self.fqdn in host) and (not self.direction or self.direction in direction)
                and (not self.port or port == self.port) and (not self.subset or self.subset in subset))


def select_clusters(clusters: list[Body], flt: ClusterFilter = ClusterFilter()) -> list[Body]:
    return sorted((c for c in clusters if flt.verify(c)), key=lambda c: _cluster_sort_key(c.get("name", "")))


def cluster_type(cluster: Body) -> str:
    return cluster.get("type", "STATIC")  # a custom cluster_type reads STATIC, as in Go's GetType


def write_clusters(clusters: list[Body], flt: ClusterFilter = ClusterFilter(), with_names: bool = False) -> str:
    """`SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE`, tabwriter padding 5."""
    rows = [(["NAME"] if with_names else []) + ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE",
                                                "DESTINATION RULE"]]
    for cluster in select_clusters(clusters, flt):
        name = cluster.get("name", "")
        lead = [f"cluster/{name}"] if with_names else []
        rule = _render_config(cluster.get("metadata")) or "-"
        direction, port, subset, host = parse_cluster_name(name)
        if direction:
            rows.append(lead + [host, str(port), subset or "-", direction, cluster_type(cluster), rule])
        else:
            rows.append(lead + [name, "-", "-", "-", cluster_type(cluster), rule])
    return P.tabwrite(rows, 5)


# -- routes --------------------------------------------------------------------------------------
def select_routes(routes: list[Body], name: str = "") -> list[Body]:
    """Route configs with that exact name (all when empty), sorted by name as istioctl lists them."""
    return sorted((r for r in routes if not name or r.get("name") == name), key=lambda r: r.get("name", ""))


def _unexpand_domains(domains: list[str]) -> list[str]:
    unique = set(domains)
    drop = {d for d in domains
            for suffix in (".svc.cluster.local", ".svc")
            if d.endswith(suffix) and d[: -len(suffix)] in unique}
    return [d for d in domains if d not in drop]


def describe_domains(domains: list[str]) -> str:
    if len(domains) <= 1:
        return domains[0] if domains else ""
    without_port = [d for d in domains if ":" not in d or (d.count(":") > 2 and d.endswith("]"))]
    without_port = _unexpand_domains(without_port)
    if len(without_port) > 2:
        return f"{', '.join(without_port[:2])} + {len(without_port) - 2} more..."
    return ", ".join(without_port)


def _is_passthrough(route: Body) -> bool:
    return (route.get("route") or {}).get("cluster") == "PassthroughCluster"


def write_routes(routes: list[Body], name: str = "", verbose: bool = True, with_names: bool = False) -> str:
    """`NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE` (or `NAME VIRTUAL HOSTS`), padding 5."""
    rows = [["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"] if verbose else ["NAME", "VIRTUAL HOSTS"]]
    for rc in select_routes(routes, name):
        rname = f"route/{rc.get('name', '')}" if with_names else rc.get("name", "")
        if not verbose:
            rows.append([rname, str(len(rc.get("virtual_hosts") or []))])
            continue
        for vh in rc.get("virtual_hosts") or []:
            domains = describe_domains(vh.get("domains") or [])
            for route in vh.get("routes") or []:
                if not _is_passthrough(route):
                    rows.append([rname, vh.get("name", ""), domains, _describe_route_match(route.get("match") or {}),
                                 _render_config(route.get("metadata"))])
            if not vh.get("routes"):
                rows.append([rname, vh.get("name", ""), domains, "/*", "404"])
    return P.tabwrite(rows, 5)


# -- endpoints -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointFilter:
    address: str = ""
    port: int = 0
    cluster: str = ""  # exact, case-insensitive
    status: str = ""   # EDS health status name, case-insensitive

    def verify(self, address: str, port: int, cluster: str, status: str) -> bool:
        return ((not self.address or address.lower() == self.address.lower())
                and (not self.port or port == self.port)
                and (not self.cluster or cluster.lower() == self.cluster.lower())
                and (not self.status or status.lower() == self.status.lower()))


def _host_address(address: Body) -> tuple[str, int]:
    """A /clusters host address -> (`ip` | `unix://path` | `envoy://listener/id`, port or 0)."""
    if "socket_address" in address:
        sa = address["socket_address"]
        return sa.get("address", ""), int(sa.get("port_value", 0))
    if "pipe" in address:
        return "unix://" + address["pipe"].get("path", ""), 0
    if "envoy_internal_address" in address:
        ia = address["envoy_internal_address"]
        return f"envoy://{ia.get('server_listener_name', '')}/{ia.get('endpoint_id', '')}", 0
    return "unknown", 0


def _host_rows(statuses: list[Body], flt: EndpointFilter) -> Iterable[tuple[Body, str, int, str, str, bool]]:
    for cs in statuses:
        for host in cs.get("host_statuses") or []:
            address, port = _host_address(host.get("address") or {})
            health = host.get("health_status") or {}
            status = health.get("eds_health_status", "UNKNOWN")
            if flt.verify(address, port, cs.get("name", ""), status):
                yield cs, address, port, cs.get("name", ""), status, bool(health.get("failed_outlier_check"))


def parse_cluster_statuses(data: Body) -> list[Body]:
    if not isinstance(data, dict) or "cluster_statuses" not in data:
        raise ValueError("not Envoy cluster status (expected the JSON of GET /clusters?format=json)")
    return list(data.get("cluster_statuses") or [])


def select_cluster_statuses(statuses: list[Body], flt: EndpointFilter = EndpointFilter()) -> list[Body]:
    """Every cluster with at least one host that passes the filter, whole."""
    out: list[Body] = []
    for cs, *_ in _host_rows(statuses, flt):
        if not any(cs is seen for seen in out):
            out.append(cs)
    return out


def write_endpoints(statuses: list[Body], flt: EndpointFilter = EndpointFilter()) -> str:
    """`ENDPOINT STATUS OUTLIER CHECK CLUSTER` from /clusters, sorted by address, port, cluster."""
    rows = [["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]]
    for _, address, port, cluster, status, failed in sorted(_host_rows(statuses, flt), key=lambda r: r[1:4]):
        rows.append([f"{address}:{port}" if port else address, status, "FAILED" if failed else "OK", cluster])
    return P.tabwrite(rows, 5)


def _lb_endpoint_address(lb: Body) -> tuple[str, int]:
    address = (lb.get("endpoint") or {}).get("address") or {}
    if "socket_address" in address:
        sa = address["socket_address"]
        return f"{sa.get('address', '')}:{int(sa.get('port_value', 0))}", int(sa.get("port_value", 0))
    if "pipe" in address:
        return address["pipe"].get("path", ""), 0
    if "envoy_internal_address" in address:
        return _host_address(address)
    return "unknown", 0


def _locality(locality: Body | None) -> str:
    if locality is None:
        return ""
    parts = [locality.get("region", ""), locality.get("zone", ""), locality.get("sub_zone", "")]
    out = parts[0]
    for part in parts[1:]:
        if not part:
            break
        out += "/" + part
    return out


def write_eds(assignments: list[Body], flt: EndpointFilter = EndpointFilter(), with_names: bool = False) -> str:
    """`NAME STATUS LOCALITY CLUSTER` from the config dump's EDS section (what `all` shows)."""
    rows = [["NAME", "STATUS", "LOCALITY", "CLUSTER"]]
    for cla in sorted(assignments, key=lambda c: _cluster_sort_key(c.get("cluster_name", ""))):
        cluster = cla.get("cluster_name", "")
        for group in cla.get("endpoints") or []:
            for lb in group.get("lb_endpoints") or []:
                address, port = _lb_endpoint_address(lb)
                status = lb.get("health_status", "UNKNOWN")
                if flt.verify(address, port, cluster, status):
                    rows.append([f"endpoint/{address}" if with_names else address, status,
                                 _locality(group.get("locality")), cluster])
    return P.tabwrite(rows, 5)


# -- secrets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecretItem:
    name: str
    type: str
    state: str
    valid: bool
    serial: str
    not_after: str
    not_before: str


def _inline(source: Body | None) -> bytes:
    source = source or {}
    if source.get("inline_bytes"):
        return base64.b64decode(source["inline_bytes"])
    return source.get("inline_string", "").encode()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_item(state: str, dynamic: Body, now: datetime) -> SecretItem:
    """The certificate facts istioctl shows for one dynamic secret (`compare/sds/util.go`)."""
    secret = dynamic.get("secret") or {}
    pem = (_inline((secret.get("tls_certificate") or {}).get("certificate_chain"))
           or _inline((secret.get("validation_context") or {}).get("trusted_ca")))
    if dynamic.get("version_info") == "uninitialized" and state == "ACTIVE":
        state = "UNINITIALIZED"
    name = dynamic.get("name", "")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return SecretItem(name, "", state, False, "", "", "")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    return SecretItem(name, "CA" if is_ca else "Cert Chain", state, before < now < after,
                      format(cert.serial_number, "x"), _rfc3339(after), _rfc3339(before))


def write_secrets(secrets: list[tuple[str, Body]], now: datetime, with_names: bool = False) -> str:
    """`RESOURCE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE`, padding 5."""
    if not secrets:
        return "No active or warming secrets found.\n"
    rows = [["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]]
    for state, dynamic in secrets:
        s = secret_item(state, dynamic, now)
        rows.append([f"secret/{s.name}" if with_names else s.name, s.type, s.state, str(s.valid).lower(),
                     s.serial, s.not_after, s.not_before])
    return P.tabwrite(rows, 5)


# -- bootstrap and `all` -------------------------------------------------------------------------
# Node metadata keys whose values are credentials: the xDS token (`meshway.ca.tokens.TOKEN_METADATA`,
# not imported: it loads the Envoy protobufs). Envoy itself already redacts private keys in SDS.
SECRET_METADATA = ("MESHWAY_XDS_TOKEN",)
REDACTED = "[redacted]"


def redact(data: Any) -> Any:
    """A copy of any admin JSON (a config dump, its bootstrap, a node) with the value of every
    SECRET_METADATA key replaced by `[redacted]`, wherever it appears."""
    if isinstance(data, dict):
        return {k: (REDACTED if k in SECRET_METADATA and v else redact(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def bootstrap_section(dump: Body) -> Body:
    """The config dump's BootstrapConfigDump (bootstrap + last_updated), redacted."""
    if not isinstance(dump, dict) or "configs" not in dump:
        raise ValueError("not an Envoy config dump (expected the JSON of GET /config_dump)")
    return redact(_section(dump, "BootstrapConfigDump"))


def write_bootstrap(bootstrap: Body) -> str:
    node = bootstrap.get("node") or {}
    metadata = node.get("metadata") or {}
    rows = []
    if metadata.get("ISTIO_VERSION"):
        rows.append(["Istio Version:", metadata["ISTIO_VERSION"]])
    if metadata.get("ISTIO_PROXY_SHA"):
        sha = metadata["ISTIO_PROXY_SHA"]
        rows.append(["Istio Proxy Version:", sha.split(":")[1] if ":" in sha else sha])
    build = node.get("user_agent_build_version") or {}
    if build:
        v, md = build.get("version") or {}, build.get("metadata") or {}
        text = f"{v.get('major_number', 0)}.{v.get('minor_number', 0)}.{v.get('patch', 0)}"
        text += f"-{md['build.label']}" if "build.label" in md else ""
        text += "".join(f"/{md[k]}" for k in ("revision.status", "build.type", "ssl.version") if k in md)
        rows.append(["Envoy Version:", text])
    return P.tabwrite(rows, 1)


def write_all(dump: ConfigDump, now: datetime, with_headers: bool = False) -> str:
    """Every summary with a NAME column, as `istioctl proxy-config all` prints them."""
    sections: list[tuple[str, Callable[[], str]]] = [
        ("BOOTSTRAP INFO", lambda: write_bootstrap(dump.bootstrap)),
        ("CLUSTER INFO", lambda: write_clusters(dump.clusters, with_names=True)),
        ("LISTENER INFO", lambda: write_listeners(dump.listeners, with_names=True)),
        ("ROUTE INFO", lambda: write_routes(dump.routes, with_names=True)),
        ("SECRET INFO", lambda: write_secrets(dump.secrets, now, with_names=True)),
        ("ENDPOINTS INFO", lambda: write_eds(dump.endpoints, with_names=True)),
    ]
    return "\n".join((f"------ {title} ------\n\n" if with_headers else "") + write() for title, write in sections)


# -- JSON/YAML: protos with protojson field names ------------------------------------------------
@functools.lru_cache(maxsize=None)
def _find_descriptor(full_name: str):
    from google.protobuf import descriptor_pool

    from ..xds import protos  # noqa: F401  (registers the types meshway generates)

    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        pass
    parts = full_name.split(".")
    for i in range(len(parts) - 1, 0, -1):  # import the generated modules of the proto package
        try:
            package = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if module.name.endswith("_pb2"):
                try:
                    importlib.import_module(f"{package.__name__}.{module.name}")
                except Exception:  # a module whose dependencies are not installed
                    pass
        break
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def _convert_value(message_type, value: Any) -> Any:
    if message_type is None or not isinstance(value, dict):
        return value
    if message_type.full_name == "google.protobuf.Any":
        inner = _find_descriptor(value.get("@type", "").rsplit("/", 1)[-1])
        if inner is None or inner.full_name.startswith("google.protobuf."):
            return value
        return _convert_message(inner, value)
    if message_type.full_name.startswith("google.protobuf."):
        return value  # Struct, Value, Duration...: their JSON form has no field names to rename
    return _convert_message(message_type, value)


def _convert_message(descriptor, data: Body) -> Body:
    out: Body = {}
    for key, value in data.items():
        fd = descriptor.fields_by_name.get(key)
        if fd is None:  # `@type`, or a field newer than the installed protos
            out[key] = value
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_type = fd.message_type.fields_by_name["value"].message_type
            out[fd.json_name] = {k: _convert_value(value_type, v) for k, v in value.items()}
        elif fd.is_repeated and isinstance(value, list):
            out[fd.json_name] = [_convert_value(fd.message_type, v) for v in value]
        else:
            out[fd.json_name] = _convert_value(fd.message_type, value)
    return out


def to_proto_json(resource: Body, type_name: str) -> Body:
    """Envoy's admin JSON (proto field names) -> protojson names (`virtualHosts`), which is what
    istioctl prints; map keys and Struct contents are left alone. The top-level `@type` is dropped."""
    data = {k: v for k, v in resource.items() if k != "@type"}
    descriptor = _find_descriptor(type_name)
    return _convert_message(descriptor, data) if descriptor is not None else data


def write_protos(resources: list[Body], type_name: str, output: str) -> str:
    """`-o json` (indent 4) or `-o yaml` of a list of resources."""
    data = [to_proto_json(r, type_name) for r in resources]
    return P.to_yaml(data) if output == "yaml" else P.to_json(data)
