"""Envoy's matching semantics over the config dicts the translation builds (pure): string and header
matchers, route matches, query parameters, RBAC permissions and principals, path normalization.

The request simulation (`simulate`) reads a proxy's generated config with these instead of a second
copy of Istio's rules; tests/test_simulate_e2e.py checks them against a real Envoy.

RBAC matching is three-valued: True, False, or None when the request does not carry what a matcher
reads (the caller's address as a waypoint sees it, for example). `any_of`/`all_of`/`negate` combine
them as Kleene logic, so an unknown that cannot change the answer does not hide it.
"""
from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

Body = dict[str, Any]
Tri = bool | None


def any_of(values: Iterable[Tri]) -> Tri:
    seen_unknown = False
    for v in values:
        if v is True:
            return True
        seen_unknown = seen_unknown or v is None
    return None if seen_unknown else False


def all_of(values: Iterable[Tri]) -> Tri:
    seen_unknown = False
    for v in values:
        if v is False:
            return False
        seen_unknown = seen_unknown or v is None
    return None if seen_unknown else True


def negate(value: Tri) -> Tri:
    return None if value is None else not value


@dataclass(frozen=True)
class HttpRequest:
    """What Envoy's matchers read of one request (header names lower-case; a header given twice is
    joined with "," as Envoy joins it for matching)."""

    method: str
    path: str  # with the query string, as `:path`
    authority: str
    headers: Mapping[str, str] = field(default_factory=dict)
    scheme: str = "http"

    def header(self, name: str) -> str | None:
        name = name.lower()
        pseudo = {":method": self.method, ":path": self.path, ":authority": self.authority, "host": self.authority,
                  ":scheme": self.scheme}
        return pseudo[name] if name in pseudo else self.headers.get(name)

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0].split("#", 1)[0]

    @property
    def query(self) -> str:
        return self.path.split("?", 1)[1].split("#", 1)[0] if "?" in self.path else ""


def normalize_path(path: str) -> str:
    """The HCM's `normalize_path` (RFC 3986 dot segments; percent-encoded unreserved characters
    decoded), keeping the query string."""
    raw, sep, query = path.partition("?")
    decoded = re.sub(r"%(2[dDeE]|5[fF]|7[eE]|[46][1-9a-fA-F]|[57][0-9aA]|3[0-9])",
                     lambda m: chr(int(m.group(1), 16)), raw)
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    norm = posixpath.normpath(decoded)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if decoded.endswith("/") and norm != "/":
        norm += "/"
    return norm + (sep + query if sep else "")


def match_string(m: Body, value: str) -> bool:
    """envoy.type.matcher.v3.StringMatcher."""
    ignore = bool(m.get("ignore_case"))
    text = value.lower() if ignore else value

    def arg(key: str) -> str:
        return m[key].lower() if ignore else m[key]
    if "exact" in m:
        return text == arg("exact")
    if "prefix" in m:
        return text.startswith(arg("prefix"))
    if "suffix" in m:
        return text.endswith(arg("suffix"))
    if "contains" in m:
        return arg("contains") in text
    if "safe_regex" in m:
        return re.fullmatch(m["safe_regex"]["regex"], value) is not None
    raise ValueError(f"unsupported string matcher {sorted(m)}")


def match_header(h: Body, request: HttpRequest) -> bool:
    """config.route.v3.HeaderMatcher, as Envoy's HeaderUtility: a header that is absent matches
    only `present_match: false` (or, inverted, `present_match: true`); a value matcher never matches
    an absent header, inverted or not (unless `treat_missing_header_as_empty`)."""
    value = request.header(h["name"])
    invert = bool(h.get("invert_match"))
    if "present_match" in h:
        return ((value is not None) == bool(h["present_match"])) != invert
    if value is None:
        if not h.get("treat_missing_header_as_empty"):
            return False
        value = ""
    if "string_match" in h:
        matched = match_string(h["string_match"], value)
    elif "exact_match" in h:
        matched = value == h["exact_match"]
    elif "prefix_match" in h:
        matched = value.startswith(h["prefix_match"])
    elif "suffix_match" in h:
        matched = value.endswith(h["suffix_match"])
    elif "safe_regex_match" in h:
        matched = re.fullmatch(h["safe_regex_match"]["regex"], value) is not None
    else:  # no specifier: presence
        matched = True
    return matched != invert


def parse_query(query: str) -> dict[str, str]:
    """First value of each parameter, percent-decoded (Envoy's QueryParamsMulti.getFirstValue)."""
    out: dict[str, str] = {}
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        out.setdefault(unquote(key), unquote(value))
    return out


def match_route(match: Body, request: HttpRequest) -> bool:
    """config.route.v3.RouteMatch: path specifier, headers (all), query parameters (all)."""
    path = request.path_only
    sensitive = match.get("case_sensitive", True)
    cmp_path = path if sensitive else path.lower()

    def arg(key: str) -> str:
        return match[key] if sensitive else match[key].lower()
    if "prefix" in match:
        ok = cmp_path.startswith(arg("prefix"))
    elif "path" in match:
        ok = cmp_path == arg("path")
    elif "safe_regex" in match:
        ok = re.fullmatch(match["safe_regex"]["regex"], path) is not None
    elif "path_separated_prefix" in match:
        prefix = arg("path_separated_prefix")
        ok = cmp_path == prefix or cmp_path.startswith(prefix + "/")
    elif "connect_matcher" in match:
        ok = request.method == "CONNECT"
    else:
        raise ValueError(f"unsupported route match {sorted(match)}")
    if not ok:
        return False
    if not all(match_header(h, request) for h in match.get("headers") or []):
        return False
    params = parse_query(request.query)
    for q in match.get("query_parameters") or []:
        value = params.get(q["name"])
        if value is None:
            return False
        if q.get("present_match"):
            continue
        if "string_match" in q and not match_string(q["string_match"], value):
            return False
    return True


def match_domain(domains: Iterable[str], authority: str) -> bool:
    host = authority.lower()
    for d in domains:
        d = d.lower()
        if d == "*" or d == host or d == host.rsplit(":", 1)[0] or \
                (d.startswith("*") and host.endswith(d[1:])) or (d.endswith("*") and host.startswith(d[:-1])):
            return True
    return False


def find_route(route_config: Body, request: HttpRequest) -> tuple[Body, int] | None:
    """The first route of the first virtual host whose domains match, and its index; None: 404."""
    for vh in route_config.get("virtual_hosts") or []:
        if match_domain(vh.get("domains") or ["*"], request.authority):
            for i, route in enumerate(vh.get("routes") or []):
                if match_route(route["match"], request):
                    return route, i
            return None
    return None


def percent_of(fraction: Body | None) -> float:
    """envoy.type.v3.FractionalPercent as a percentage."""
    if not fraction:
        return 100.0
    denominator = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}[fraction.get("denominator", "HUNDRED")]
    return 100.0 * fraction.get("numerator", 0) / denominator


# -- RBAC --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Connection:
    """What RBAC reads beyond the request: the peer identity (a waypoint's `io.istio.peer_principal`
    filter state, or a node proxy's TLS peer), addresses, ports; None where not known."""

    peer_principal: str | None = None  # None: no TLS peer (plaintext)
    filter_state: Mapping[str, str] = field(default_factory=dict)
    source_ip: str | None = None
    remote_ip: str | None = None
    destination_ip: str | None = None
    destination_port: int | None = None
    sni: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)  # filter name -> its dynamic metadata


def _in_cidr(ip: str | None, cidr: Body) -> Tri:
    if ip is None:
        return None
    network = ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr.get('prefix_len', 32)}", strict=False)
    return ipaddress.ip_address(ip) in network


def match_value(m: Body, value: Any) -> bool:
    """type.matcher.v3.ValueMatcher against a JSON value (None: absent)."""
    if "string_match" in m:
        return isinstance(value, str) and match_string(m["string_match"], value)
    if "list_match" in m:
        return isinstance(value, list) and any(match_value(m["list_match"]["one_of"], v) for v in value)
    if "or_match" in m:
        return any(match_value(v, value) for v in m["or_match"]["value_matchers"])
    if "present_match" in m:
        return (value is not None) == bool(m["present_match"])
    if "bool_match" in m:
        return value is m["bool_match"]
    if "null_match" in m:
        return value is None
    raise ValueError(f"unsupported value matcher {sorted(m)}")


def match_metadata(m: Body, conn: Connection) -> bool:
    value: Any = conn.metadata.get(m["filter"])
    for step in m.get("path") or []:
        value = value.get(step["key"]) if isinstance(value, dict) else None
    matched = match_value(m["value"], value) if value is not None or "present_match" in m["value"] \
        or "null_match" in m["value"] else False
    return matched != bool(m.get("invert"))


def _uri_template(template: str, path: str) -> bool:
    pattern = "".join("[^/]+" if part == "*" else ".*" if part == "**" else re.escape(part)
                      for part in re.split(r"(\*\*|\*)", template))
    return re.fullmatch(pattern, path) is not None


def match_permission(p: Body, request: HttpRequest | None, conn: Connection) -> Tri:
    """config.rbac.v3.Permission (request None: a network filter, no HTTP)."""
    if p.get("any"):
        return True
    if "and_rules" in p:
        return all_of(match_permission(r, request, conn) for r in p["and_rules"]["rules"])
    if "or_rules" in p:
        return any_of(match_permission(r, request, conn) for r in p["or_rules"]["rules"])
    if "not_rule" in p:
        return negate(match_permission(p["not_rule"], request, conn))
    if "header" in p:
        return match_header(p["header"], request) if request else False
    if "url_path" in p:
        return match_string(p["url_path"]["path"], request.path_only) if request else False
    if "uri_template" in p:
        template = p["uri_template"]["typed_config"]["path_template"]
        return _uri_template(template, request.path_only) if request else False
    if "destination_port" in p:
        return None if conn.destination_port is None else conn.destination_port == p["destination_port"]
    if "destination_ip" in p:
        return _in_cidr(conn.destination_ip, p["destination_ip"])
    if "requested_server_name" in p:
        return match_string(p["requested_server_name"], conn.sni)
    if "metadata" in p:
        return match_metadata(p["metadata"], conn)
    raise ValueError(f"unsupported RBAC permission {sorted(p)}")


def match_principal(p: Body, request: HttpRequest | None, conn: Connection) -> Tri:
    """config.rbac.v3.Principal."""
    if p.get("any"):
        return True
    if "and_ids" in p:
        return all_of(match_principal(i, request, conn) for i in p["and_ids"]["ids"])
    if "or_ids" in p:
        return any_of(match_principal(i, request, conn) for i in p["or_ids"]["ids"])
    if "not_id" in p:
        return negate(match_principal(p["not_id"], request, conn))
    if "authenticated" in p:
        if conn.peer_principal is None:
            return False
        m = p["authenticated"].get("principal_name")
        return True if m is None else match_string(m, conn.peer_principal)
    if "filter_state" in p:
        value = conn.filter_state.get(p["filter_state"]["key"])
        return False if value is None else match_string(p["filter_state"]["string_match"], value)
    if "direct_remote_ip" in p:
        return _in_cidr(conn.source_ip, p["direct_remote_ip"])
    if "remote_ip" in p:
        return _in_cidr(conn.remote_ip, p["remote_ip"])
    if "header" in p:
        return match_header(p["header"], request) if request else False
    if "url_path" in p:
        return match_string(p["url_path"]["path"], request.path_only) if request else False
    if "metadata" in p:
        return match_metadata(p["metadata"], conn)
    raise ValueError(f"unsupported RBAC principal {sorted(p)}")


def match_policy(policy: Body, request: HttpRequest | None, conn: Connection) -> Tri:
    """An RBAC Policy matches when one of its permissions and one of its principals do."""
    return all_of([any_of(match_permission(p, request, conn) for p in policy.get("permissions") or []),
                   any_of(match_principal(p, request, conn) for p in policy.get("principals") or [])])
