"""AuthorizationPolicy on the `meshway up` cluster (root, Linux; run in CI): Istio's own ambient
examples applied unchanged, L7 rules on the waypoint with the caller's SPIFFE identity from the
HBONE handshake, DENY before ALLOW, and a rule a node proxy cannot enforce failing closed with
the policy's status saying why. Requests go from inside client pods; nothing is assumed."""
from __future__ import annotations

from cluster_support import Mesh, cluster_fixture
from meshway.model import find_kind, load_yaml

mesh = cluster_fixture()

# istio.io/latest/docs/ambient/getting-started/enforce-auth-policies, with the L4 policy updated as
# the page says once a waypoint is in use ("productpage-ztunnel" allows the waypoint's identity).
PRODUCTPAGE_ZTUNNEL = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-ztunnel
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-gateway-istio
        - cluster.local/ns/default/sa/waypoint
"""
PRODUCTPAGE_VIEWER = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/curl
    to:
    - operation:
        methods: ["GET"]
"""


def policies(mesh: Mesh, *docs: str):
    """Apply policies for the duration of a `with` block, then delete them."""
    class _Applied:
        def __enter__(self):
            for doc in docs:
                mesh.store.apply(load_yaml(doc, "policy.yaml"))

        def __exit__(self, *exc):
            names = [(find_kind("ap"), "default", load_yaml(d, "policy.yaml")[0].obj.name) for d in docs]
            mesh.store.delete(names)
    return _Applied()


def status(mesh: Mesh, name: str, type_: str) -> dict:
    body = mesh.store.get(find_kind("ap"), "default", name)
    return next(c for c in body["status"]["conditions"] if c["type"] == type_)


def code(mesh: Mesh, host: str, path: str, **kw) -> int:
    return mesh.requests(host, 1, path=path, **kw)[0][0]


def test_istio_getting_started_policies_behave_as_documented(mesh: Mesh) -> None:
    with policies(mesh, PRODUCTPAGE_ZTUNNEL, PRODUCTPAGE_VIEWER):
        mesh.wait_until(lambda: code(mesh, "productpage", "/productpage", method="DELETE") == 403, 5,
                        "DELETE refused by productpage-viewer")
        # The page's three checks: GET from curl works, DELETE from curl and GET from reviews-v1 do not.
        assert code(mesh, "productpage", "/productpage") == 200
        assert code(mesh, "productpage", "/productpage", client="reviews-v1") == 403
        assert status(mesh, "productpage-viewer", "WaypointAccepted")["status"] == "True"
        assert status(mesh, "productpage-ztunnel", "ZtunnelAccepted")["reason"] == "Accepted"
    mesh.wait_until(lambda: code(mesh, "productpage", "/productpage", client="reviews-v1") == 200, 5,
                    "access restored after the policies are deleted")


def test_deny_on_a_header_and_deny_before_allow(mesh: Mesh) -> None:
    allow_curl = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-curl, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/curl]}}]}]
"""
    deny_header = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-header, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/curl]}}]
    when: [{key: "request.headers[x-user]", values: [blocked]}]
"""
    with policies(mesh, allow_curl, deny_header):
        mesh.wait_until(lambda: code(mesh, "reviews", "/reviews/0", headers={"x-user": "blocked"}) == 403, 5,
                        "DENY on a header")
        assert code(mesh, "reviews", "/reviews/0", headers={"x-user": "alice"}) == 200
        assert code(mesh, "reviews", "/reviews/0") == 200
        # ALLOW lists one identity: another one is refused.
        assert code(mesh, "reviews", "/reviews/0", client="productpage") == 403
        # The same identity is both allowed and denied: DENY wins.
        results = mesh.requests("reviews", 20, headers={"x-user": "blocked"})
        assert {r[0] for r in results} == {403}


def test_unenforceable_rule_on_a_node_proxy_fails_closed_and_says_why(mesh: Mesh) -> None:
    doc = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-get-only, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/curl]}}]
    to: [{operation: {methods: [GET]}}]
"""
    mesh.label("svc", "ratings", {"istio.io/use-waypoint": "none"})  # straight to the node proxy
    try:
        with policies(mesh, doc):
            cond = status(mesh, "ratings-get-only", "ZtunnelAccepted")
            assert cond["reason"] == "UnsupportedValue"
            assert "found: methods" in cond["message"] and "more restrictive" in cond["message"]
            # The HTTP rule is dropped from the ALLOW: nothing matches, so even GET from curl is refused.
            mesh.wait_until(lambda: code(mesh, "ratings", "/ratings/0") == 0, 5, "ALLOW without its HTTP rule")
        mesh.wait_until(lambda: code(mesh, "ratings", "/ratings/0") == 200, 5, "ratings reachable again")
    finally:
        mesh.label("svc", "ratings", {}, remove=("istio.io/use-waypoint",))
