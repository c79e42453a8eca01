"""Request simulation (issue 13 item 7): table tests of the pure evaluator (Envoy matching over the
generated config, AuthorizationPolicy order, weighted destinations) and of the whole simulation on the
demo (bookinfo + reviews 90/10), without Envoy. tests/test_simulate_e2e.py compares with a real one."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import apply, make_waypoint_ready
from xds_support import BOOKINFO, ROOT, TRAFFIC, build_store

from meshway.mesh.request import RequestError, parse_request
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.model import find_kind, load_yaml
from meshway.model.istio import AuthorizationPolicy
from meshway.xds.build_authz import WAYPOINT, build_rbac_filters, find_waypoint_policies
from meshway.xds.envoy_match import Connection, HttpRequest, match_header, match_route, normalize_path
from meshway.cli.explain_request import write_simulation
from meshway.xds.simulate import simulate
from meshway.xds.simulate_waypoint import decide_rbac, evaluate_rbac

CLIENT = ROOT / "meshway" / "demo" / "bookinfo-client.yaml"
AMBIENT = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"""


def req(method: str = "GET", path: str = "/", headers: dict | None = None, authority: str = "reviews:9080"):
    return HttpRequest(method, path, authority, {k.lower(): v for k, v in (headers or {}).items()})


# -- Envoy route matching ----------------------------------------------------------------------------
@pytest.mark.parametrize("match, request_, expected", [
    ({"prefix": "/"}, req(path="/anything?x=1"), True),
    ({"prefix": "/reviews"}, req(path="/reviews/1"), True),
    ({"prefix": "/reviews"}, req(path="/Reviews/1"), False),
    ({"prefix": "/reviews", "case_sensitive": False}, req(path="/Reviews/1"), True),
    ({"path": "/reviews/1"}, req(path="/reviews/1?a=b"), True),
    ({"path": "/reviews/1"}, req(path="/reviews/10"), False),
    ({"safe_regex": {"regex": "/reviews/[0-9]+"}}, req(path="/reviews/42"), True),
    ({"safe_regex": {"regex": "/reviews/[0-9]+"}}, req(path="/reviews/42/x"), False),  # a full match
    ({"prefix": "/", "headers": [{"name": "x-user", "string_match": {"exact": "jason"}}]},
     req(headers={"x-user": "jason"}), True),
    ({"prefix": "/", "headers": [{"name": "x-user", "string_match": {"exact": "jason"}}]}, req(), False),
    ({"prefix": "/", "headers": [{"name": "x-user", "string_match": {"prefix": "ja"}}]},
     req(headers={"x-user": "jack"}), True),
    ({"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "DELETE"}}]}, req("DELETE"), True),
    ({"prefix": "/", "headers": [{"name": "x-user", "string_match": {"exact": "jason"}, "invert_match": True}]},
     req(headers={"x-user": "bob"}), True),
    # Envoy: a value matcher never matches an absent header, inverted or not
    ({"prefix": "/", "headers": [{"name": "x-user", "string_match": {"exact": "jason"}, "invert_match": True}]},
     req(), False),
    ({"prefix": "/", "headers": [{"name": "x-user", "present_match": True}]}, req(), False),
    ({"prefix": "/", "headers": [{"name": "x-user", "present_match": True, "invert_match": True}]}, req(), True),
    ({"prefix": "/", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]}, req(path="/?v=2"), True),
    ({"prefix": "/", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]}, req(path="/?v=3"), False),
    ({"prefix": "/", "query_parameters": [{"name": "v", "string_match": {"exact": "a b"}}]},
     req(path="/?v=a%20b"), True),
    ({"prefix": "/", "query_parameters": [{"name": "v", "present_match": True}]}, req(path="/"), False),
])
def test_route_match_table(match, request_, expected) -> None:
    assert match_route(match, request_) is expected


def test_path_normalization() -> None:
    assert normalize_path("/a/../reviews/./1") == "/reviews/1"
    assert normalize_path("/reviews/1?x=../y") == "/reviews/1?x=../y"
    assert normalize_path("/%72eviews/") == "/reviews/"


def test_header_matcher_ignore_case() -> None:
    h = {"name": ":authority", "string_match": {"exact": "REVIEWS:9080", "ignore_case": True}}
    assert match_header(h, req()) is True


# -- AuthorizationPolicy: the RBAC filters the translation builds, evaluated ---------------------------
def policies(text: str) -> list:
    models = [AuthorizationPolicy.model_validate(m.body, strict=False) for m in load_yaml(text, "p.yaml")]
    return find_waypoint_policies(models, "default", "waypoint")


def verdicts(text: str, request: HttpRequest, principal: str = "spiffe://cluster.local/ns/default/sa/curl"):
    conn = Connection(filter_state={"io.istio.peer_principal": principal}, destination_port=9080)
    out = []
    for f in build_rbac_filters(policies(text), WAYPOINT):
        config = f["typed_config"]
        out.append(decide_rbac(config, evaluate_rbac(config, request, conn)))
    return out


def final(text: str, request: HttpRequest, principal: str = "spiffe://cluster.local/ns/default/sa/curl") -> str:
    for v in verdicts(text, request, principal):
        if v["verdict"] == "deny":
            return f"deny by {v['action']} " + (v["matched"][0]["policy"] if v["matched"] else "(no ALLOW rule)")
        if v["verdict"] == "unknown":
            return "unknown"
    return "allow"


GW = "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"
DENY_JASON = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-jason, namespace: default}}
spec:
  {GW}
  action: DENY
  rules: [{{when: [{{key: "request.headers[x-user]", values: [jason]}}]}}]
"""
ALLOW_GET = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-get, namespace: default}}
spec:
  {GW}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/curl]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/reviews/*"]}}}}]
"""
ALLOW_NOTHING = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-nothing, namespace: default}}
spec:
  {GW}
  action: ALLOW
"""
AUDIT_ALL = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit-all, namespace: default}}
spec:
  {GW}
  action: AUDIT
  rules: [{{}}]
"""
ALLOW_NS = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-ns, namespace: default}}
spec:
  {GW}
  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: [default]}}}}]
    to: [{{operation: {{hosts: ["reviews*"], ports: ["9080"]}}}}]
"""
ALLOW_IP = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-ip, namespace: default}}
spec:
  {GW}
  action: ALLOW
  rules: [{{from: [{{source: {{ipBlocks: [10.0.0.0/8]}}}}]}}]
"""


@pytest.mark.parametrize("text, request_, principal, expected", [
    ("", req(), None, "allow"),
    (DENY_JASON, req(headers={"x-user": "jason"}), None, "deny by DENY default/deny-jason"),
    (DENY_JASON, req(headers={"x-user": "bob"}), None, "allow"),
    (ALLOW_GET, req(path="/reviews/1"), None, "allow"),
    (ALLOW_GET, req("DELETE", "/reviews/1"), None, "deny by ALLOW (no ALLOW rule)"),
    (ALLOW_GET, req(path="/ratings/1"), None, "deny by ALLOW (no ALLOW rule)"),
    (ALLOW_GET, req(path="/reviews/1"), "spiffe://cluster.local/ns/default/sa/other", "deny by ALLOW (no ALLOW rule)"),
    # DENY before ALLOW: an allowed request that a DENY matches is denied by the DENY
    (DENY_JASON + "---" + ALLOW_GET, req(path="/reviews/1", headers={"x-user": "jason"}), None,
     "deny by DENY default/deny-jason"),
    (DENY_JASON + "---" + ALLOW_GET, req(path="/reviews/1", headers={"x-user": "bob"}), None, "allow"),
    # an ALLOW policy without rules allows nothing
    (ALLOW_NOTHING, req(), None, "deny by ALLOW (no ALLOW rule)"),
    # AUDIT never decides
    (AUDIT_ALL, req(), None, "allow"),
    (AUDIT_ALL + "---" + ALLOW_NOTHING, req(), None, "deny by ALLOW (no ALLOW rule)"),
    (ALLOW_NS, req(), None, "allow"),
    (ALLOW_NS, req(authority="ratings:9080"), None, "deny by ALLOW (no ALLOW rule)"),
    (ALLOW_NS, req(), "spiffe://cluster.local/ns/other/sa/curl", "deny by ALLOW (no ALLOW rule)"),
    # the caller's address as the waypoint sees it is not known: the answer depends on it
    (ALLOW_IP, req(), None, "unknown"),
])
def test_authorization_policy_table(text, request_, principal, expected) -> None:
    assert final(text, request_, principal or "spiffe://cluster.local/ns/default/sa/curl") == expected


def test_audit_filter_comes_first_and_reports_its_match() -> None:
    vs = verdicts(AUDIT_ALL + "---" + DENY_JASON, req(headers={"x-user": "jason"}))
    assert [(v["action"], v["verdict"]) for v in vs] == [("AUDIT", "continue"), ("DENY", "deny")]
    assert vs[0]["matched"][0]["policy"] == "default/audit-all"


# -- requests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, method, host, port, path, headers", [
    ("GET http://reviews:9080/reviews/1 -H x-user: jason", "GET", "reviews", 9080, "/reviews/1",
     (("x-user", "jason"),)),
    ("http://reviews:9080/", "GET", "reviews", 9080, "/", ()),
    ("reviews.default.svc.cluster.local/x?a=1", "GET", "reviews.default.svc.cluster.local", 80, "/x?a=1", ()),
    ("DELETE http://reviews:9080/r -H 'x-a: b c' -H X-B:d", "DELETE", "reviews", 9080, "/r",
     (("x-a", "b c"), ("x-b", "d"))),
    ("http://reviews:9080/r -X post", "POST", "reviews", 9080, "/r", ()),
])
def test_parse_request(text, method, host, port, path, headers) -> None:
    r = parse_request(text)
    assert (r.method, r.host, r.port, r.path, r.headers) == (method, host, port, path, headers)


@pytest.mark.parametrize("text", ["", "GET", "https://reviews/", "GET http://reviews:99999/",
                                  "GET http://reviews/ -H novalue", "GET http://a/ http://b/"])
def test_unparsable_requests(text) -> None:
    with pytest.raises(RequestError):
        parse_request(text)


# -- the whole simulation on the demo -----------------------------------------------------------------
@pytest.fixture
def demo(tmp_path: Path):
    store = build_store(tmp_path / "state", [BOOKINFO, CLIENT, TRAFFIC])
    apply(store, AMBIENT)
    make_waypoint_ready(store, "default", "waypoint")
    return store


def run(store, text: str, source_prefix: str = "curl") -> dict:
    view = MeshView.build(store.snapshot(XDS_KINDS)[1])
    source = next(p for p in view.pods.values() if p.name.startswith(source_prefix))
    doc = simulate(view, parse_request(text), source, time.time())
    assert "6. Outcome" in write_simulation(doc)  # the text writer renders every scenario
    json.dumps(doc)  # and the document is JSON as it is
    return doc


def test_demo_weighted_destinations(demo) -> None:
    doc = run(demo, "GET http://reviews:9080/reviews/1 -H x-user: jason")
    assert doc["caller"]["identity"] == "spiffe://cluster.local/ns/default/sa/curl" and doc["caller"]["captured"]
    assert doc["resolution"]["destination"]["name"] == "reviews"
    assert doc["node_proxy"]["path"] == "waypoint" and doc["node_proxy"]["decision"]["reason"] == "WaypointAccepted"
    route = doc["waypoint"]["route"]
    assert route["source"] == {"kind": "VirtualService", "namespace": "default", "name": "reviews", "rule": 0,
                               "match_index": 0, "istio_match": None}
    assert [(d["subset"], d["weight"], d["subset_labels"]) for d in route["destinations"]] == [
        ("v1", 90.0, {"version": "v1"}), ("v2", 10.0, {"version": "v2"})]
    o = doc["outcome"]
    assert o["result"] == "allowed"
    assert [(d["pod"].split("-")[1], d["weight"]) for d in o["destinations"]] == [("v1", 90.0), ("v2", 10.0)]


def test_demo_header_route_fault_and_deny(demo) -> None:
    apply(demo, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /ratings-fault}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /reviews/0}
  - timeout: 2s
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
""")
    doc = run(demo, "GET http://reviews:9080/reviews/1 -H end-user: jason")
    assert doc["waypoint"]["route"]["source"]["rule"] == 0
    assert [d["subset"] for d in doc["outcome"]["destinations"]] == ["v2"]
    doc = run(demo, "GET http://reviews:9080/reviews/1")
    route = doc["waypoint"]["route"]
    assert route["source"]["rule"] == 3 and route["timeout"] == "2s" and route["retries"]["attempts"] == 3
    assert run(demo, "GET http://reviews:9080/ratings-fault")["outcome"]["status"] == 500
    assert run(demo, "GET http://reviews:9080/moved")["outcome"]["status"] == 301
    doc = run(demo, "DELETE http://reviews:9080/reviews/1 -H end-user: jason")
    assert doc["outcome"]["status"] == 403 and doc["outcome"]["decided_by"]["policy"] == "default/no-delete"
    deny = next(f for f in doc["waypoint"]["filters"] if f["filter"] == "envoy.filters.http.rbac")
    assert deny["action"] == "DENY" and deny["verdict"] == "deny"


def test_demo_no_route_is_404(demo) -> None:
    apply(demo, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v1}}]
""")
    doc = run(demo, "GET http://reviews:9080/other")
    assert doc["waypoint"]["route"] is None and doc["outcome"]["status"] == 404


def test_demo_l4_policy_and_not_captured_caller(demo) -> None:
    apply(demo, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-l4, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/waypoint]}}]}]
""")
    doc = run(demo, "GET http://reviews:9080/reviews/1")
    assert {c["verdict"] for c in doc["node_proxy"]["inbound"]} == {"allow"}
    # opted out of the waypoint: the caller's own identity meets the L4 policy, which refuses it
    apply(demo, """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default, labels: {app: reviews, service: reviews, istio.io/use-waypoint: none}}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
""")
    doc = run(demo, "GET http://reviews:9080/reviews/1")
    assert doc["node_proxy"]["path"] == "direct" and doc["node_proxy"]["decision"]["reason"] == "OptedOut"
    assert doc["outcome"]["result"] == "denied" and doc["outcome"]["decided_by"]["rbac_policy"]
    # a caller outside the mesh: no node proxy at the source, plaintext at the destination
    apply(demo, """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: default, labels: {istio.io/dataplane-mode: none}}
spec: {containers: [{name: c, image: curlimages/curl}]}
""")
    doc = run(demo, "GET http://reviews:9080/reviews/1", "outsider")
    assert doc["caller"]["captured"] is False and doc["waypoint"] is None
    assert doc["outcome"]["result"] == "denied"


def test_demo_unknown_host_and_port(demo) -> None:
    assert run(demo, "GET http://nothere:9080/")["outcome"]["result"] == "error"
    doc = run(demo, "GET http://reviews:1234/")
    assert "has no port 1234" in doc["outcome"]["reason"]


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_demo_jwt_claims(demo) -> None:
    apply(demo, """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules: [{issuer: testing@secure.istio.io, jwks: '{"keys": []}'}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-group, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules: [{when: [{key: "request.auth.claims[groups]", values: [group1]}]}]
""")
    now = int(time.time())
    claims = {'iss': 'testing@secure.istio.io', 'sub': 'u', 'groups': ['group1'], 'exp': now + 60}
    token = f"{b64({'alg': 'RS256'})}.{b64(claims)}.sig"
    doc = run(demo, f"GET http://reviews:9080/reviews/1 -H authorization: Bearer {token}")
    assert doc["outcome"]["result"] == "allowed", doc["outcome"]
    assert run(demo, "GET http://reviews:9080/reviews/1")["outcome"]["status"] == 403
    expired = f"{b64({'alg': 'RS256'})}.{b64({'iss': 'testing@secure.istio.io', 'exp': now - 60})}.sig"
    doc = run(demo, f"GET http://reviews:9080/reviews/1 -H authorization: Bearer {expired}")
    assert (doc["outcome"]["status"], doc["outcome"]["body"]) == (401, "Jwt is expired")
    foreign = f"{b64({'alg': 'RS256'})}.{b64({'iss': 'someone-else'})}.sig"
    doc = run(demo, f"GET http://reviews:9080/reviews/1 -H authorization: Bearer {foreign}")
    assert (doc["outcome"]["status"], doc["outcome"]["body"]) == (401, "Jwt issuer is not configured")


def test_cli_one_line_errors_and_json(demo, tmp_path: Path) -> None:
    from meshway.cli.main import cli
    state = str(tmp_path / "state")
    runner = CliRunner()
    r = runner.invoke(cli, ["--state-dir", state, "explain", "--request", "GET", "--from", "deploy/curl"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "no URL" in r.output
    r = runner.invoke(cli, ["--state-dir", state, "explain", "--request", "GET http://reviews:9080/", "--from",
                            "deploy/nope"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "nope" in r.output
    r = runner.invoke(cli, ["--state-dir", state, "explain", "--request", "GET http://reviews:9080/reviews/1",
                            "--from", "deploy/curl", "-o", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert list(doc) == ["request", "caller", "resolution", "node_proxy", "waypoint", "outcome", "control_plane"]
    r = runner.invoke(cli, ["--state-dir", state, "explain", "--request", "GET http://reviews:9080/reviews/1",
                            "--from", "deploy/curl"])
    assert r.exit_code == 0 and "6. Outcome" in r.output and "90%" in r.output


def test_httproute_rule_and_precedence(tmp_path: Path) -> None:
    """An HTTPRoute's rules are ordered by Gateway API precedence; the simulation names the rule as written."""
    store = build_store(tmp_path / "state", [BOOKINFO, CLIENT])
    apply(store, AMBIENT + """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /reviews/1}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-from, value: rule1}]}}]
    backendRefs: [{name: reviews, port: 9080}]
""")
    make_waypoint_ready(store, "default", "waypoint")
    doc = run(store, "GET http://reviews:9080/reviews/1")
    route = doc["waypoint"]["route"]
    assert (route["source"]["kind"], route["source"]["name"], route["source"]["rule"]) == ("HTTPRoute", "reviews", 1)
    assert route["headers"] == {"request_set": {"x-from": "rule1"}}
    assert run(store, "GET http://reviews:9080/other")["waypoint"]["route"]["source"]["rule"] == 0


def test_token_without_request_authentication_is_not_validated(demo) -> None:
    apply(demo, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-principal, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
""")
    token = f"{b64({'alg': 'RS256'})}.{b64({'iss': 'x', 'sub': 'y'})}.sig"
    doc = run(demo, f"GET http://reviews:9080/reviews/1 -H authorization: Bearer {token}")
    assert doc["outcome"]["status"] == 403
    assert "no RequestAuthentication applies" in doc["waypoint"]["notes"][0]


def test_service_entry_host_resolves(demo) -> None:
    apply(demo, """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  addresses: [240.240.1.1]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
""")
    doc = run(demo, "GET http://api.example.com/")
    assert doc["resolution"]["address"] == "240.240.1.1"
    assert doc["resolution"]["destination"]["kind"] == "ServiceEntry"
    # its waypoint cluster has no endpoints (a ServiceEntry has no pods): Envoy answers 503 itself
    assert doc["node_proxy"]["path"] == "waypoint"
    assert (doc["outcome"]["status"], doc["outcome"]["by"]) == (503, "no endpoints")


def test_pod_addressed_through_a_workload_waypoint(demo) -> None:
    apply(demo, """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pod-waypoint, namespace: default, labels: {istio.io/waypoint-for: workload}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
""")
    make_waypoint_ready(demo, "default", "pod-waypoint")
    view = MeshView.build(demo.snapshot(XDS_KINDS)[1])
    target = next(p for p in view.pods.values() if p.name.startswith("reviews-v2"))
    demo.label(find_kind("pod"), "default", [target.name], None, {"istio.io/use-waypoint": "pod-waypoint"}, [], False)
    doc = run(demo, f"GET http://{target.ip}:9080/reviews/1")
    assert doc["resolution"]["destination"]["kind"] == "Pod"
    assert doc["node_proxy"]["path"] == "waypoint" and doc["node_proxy"]["waypoint"] == "default/pod-waypoint"
    assert doc["waypoint"]["chain"] == "direct-http"
    assert [(d["pod"], d["weight"]) for d in doc["outcome"]["destinations"]] == [(target.name, 100.0)]


def test_custom_and_dry_run_policies(demo) -> None:
    """CUSTOM: the simulation says whether the authorizer is asked, and that its answer decides;
    a dry-run DENY is evaluated and reported, never enforced."""
    apply(demo, """
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: default, labels: {istio.io/use-waypoint: none}}
spec: {selector: {app: ext-authz}, ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp: {service: ext-authz.default.svc.cluster.local, port: "8000"}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules: [{to: [{operation: {paths: [/headers]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-ip, namespace: default, annotations: {istio.io/dry-run: "true"}}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: [/ip]}}]}]
""")
    doc = run(demo, "GET http://reviews:9080/headers")
    custom = next(f for f in doc["waypoint"]["filters"] if f["filter"] == "envoy.filters.http.rbac")
    assert custom["kind"] == "CUSTOM" and custom["matched"][0]["policy"] == "default/ext-authz"
    ext = next(f for f in doc["waypoint"]["filters"] if f["filter"] == "envoy.filters.http.ext_authz")
    assert ext["verdict"] == "external" and ext["provider"] == "sample-ext-authz-http"
    assert any("external authorizer" in u for u in doc["outcome"]["uncertain"])
    doc = run(demo, "GET http://reviews:9080/ip")
    assert not doc["outcome"]["uncertain"] and doc["outcome"]["result"] == "allowed"
    dry = next(f for f in doc["waypoint"]["filters"] if f.get("kind") == "dry-run")
    assert dry["action"] == "DENY" and dry["matched"][0]["policy"] == "default/deny-ip"


def test_a_wasm_plugin_is_named_by_its_ecds_filter_and_not_simulated(demo) -> None:
    """The chain's filter is only a name over ECDS (its module runs in Envoy alone): shown, not
    simulated, and what it may do is listed as unknown, whatever its failStrategy."""
    apply(demo, """
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: greeting, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  url: file:///plugins/add_header.wasm
""")
    doc = run(demo, "GET http://reviews:9080/reviews/1")
    name = "extensions.istio.io/wasmplugin/default.greeting"
    assert {"filter": name, "verdict": "not simulated"} in doc["waypoint"]["filters"]
    assert f"filter {name} (not simulated)" in doc["waypoint"]["uncertain"]
    assert doc["outcome"]["result"] == "allowed"
