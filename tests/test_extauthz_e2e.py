"""External authorization at the waypoint, end to end (root, Linux; run in CI): Istio's ext-authz
and httpbin samples, the MeshConfig providers and the CUSTOM policy of istio.io's "External
Authorization" task in its ambient form (targetRefs instead of a selector); a policy naming a
missing provider fails closed and says so; a dry-run DENY is counted but never enforced."""
from __future__ import annotations

import json
import subprocess
import sys

from cluster_support import Mesh, cluster_fixture
from meshway.runtime.envoy_admin import fetch_admin
from meshway.model import find_kind, load_yaml

mesh = cluster_fixture()

SAMPLES = """
# samples/extauthz/ext-authz.yaml
apiVersion: v1
kind: Service
metadata:
  name: ext-authz
  labels:
    app: ext-authz
spec:
  ports:
  - name: http
    port: 8000
    targetPort: 8000
  - name: grpc
    port: 9000
    targetPort: 9000
  selector:
    app: ext-authz
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ext-authz
spec:
  replicas: 1
  selector:
    matchLabels:
      app: ext-authz
  template:
    metadata:
      labels:
        app: ext-authz
        sidecar.istio.io/inject: "false" # do not inject the sidecar
    spec:
      containers:
      - image: gcr.io/istio-testing/ext-authz:latest
        imagePullPolicy: Always
        name: ext-authz
        ports:
        - containerPort: 8000
        - containerPort: 9000
---
# samples/httpbin/httpbin.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels:
    app: httpbin
spec:
  ports:
  - name: http
    port: 8000
    targetPort: 80
  selector:
    app: httpbin
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
  labels:
    app: httpbin
    version: v1
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
      version: v1
  template:
    metadata:
      labels:
        app: httpbin
        version: v1
    spec:
      serviceAccountName: httpbin
      containers:
      - image: docker.io/kennethreitz/httpbin
        imagePullPolicy: IfNotPresent
        name: httpbin
        ports:
        - containerPort: 80
"""

# The task's mesh config, with the authorizer in namespace default (the task uses foo).
MESH_CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    # Add the following content to define the external authorizers.
    extensionProviders:
    - name: "sample-ext-authz-grpc"
      envoyExtAuthzGrpc:
        service: "ext-authz.default.svc.cluster.local"
        port: "9000"
    - name: "sample-ext-authz-http"
      envoyExtAuthzHttp:
        service: "ext-authz.default.svc.cluster.local"
        port: "8000"
        includeRequestHeadersInCheck: ["x-ext-authz"]
"""

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: httpbin
  action: CUSTOM
  provider:
    # The provider name must match the extension provider defined in the mesh config.
    # You can also replace this with sample-ext-authz-http to test the other external authorizer definition.
    name: {provider}
  rules:
  # The rules specify when to trigger the external authorizer.
  - to:
    - operation:
        paths: ["/headers"]
"""

DRY_RUN_DENY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-ip
  annotations:
    istio.io/dry-run: "{dry_run}"
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/ip"]
"""

GET = """
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
c.request("GET", sys.argv[3], headers=json.loads(sys.argv[4]))
r = c.getresponse()
print(json.dumps([r.status, r.getheader("x-ext-authz-check-result"), r.read().decode("utf-8", "replace")]))
"""
DENIED_BODY = "denied by ext_authz for not found header `x-ext-authz: allow` in the request"


def get(mesh: Mesh, path: str, ext_authz: str | None = None) -> list:
    """[status, x-ext-authz-check-result, body] of one GET to httpbin:8000 from the curl pod."""
    headers = {"x-ext-authz": ext_authz} if ext_authz else {}
    cmd = ["ip", "netns", "exec", mesh.netns(mesh.pod("curl")), sys.executable, "-c", GET, "httpbin", "8000", path,
           json.dumps(headers)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else [0, None, out.stderr[-300:]]


def condition(mesh: Mesh, name: str) -> tuple:
    body = mesh.store.get(find_kind("ap"), "default", name)
    cond = next(c for c in body["status"]["conditions"] if c["type"] == "WaypointAccepted")
    return cond["status"], cond["reason"], cond["message"]


def apply(mesh: Mesh, text: str) -> None:
    mesh.store.apply(load_yaml(text, "test.yaml"))


def test_samples_deploy(mesh: Mesh) -> None:
    apply(mesh, SAMPLES)
    mesh.wait_ready()
    mesh.wait_until(lambda: get(mesh, "/headers")[0] == 200, 30, "httpbin reachable through the waypoint")
    apply(mesh, MESH_CONFIG)


def test_custom_http_provider_allows_and_denies(mesh: Mesh) -> None:
    apply(mesh, POLICY.replace("{provider}", "sample-ext-authz-http"))
    assert condition(mesh, "ext-authz") == ("True", "Accepted", "bound to default/waypoint")
    mesh.wait_until(lambda: get(mesh, "/headers", "deny")[0] == 403, 10, "the authorizer is asked")
    assert get(mesh, "/headers", "deny") == [403, "denied", DENIED_BODY]
    assert get(mesh, "/headers")[0] == 403  # no header: denied too
    assert get(mesh, "/headers", "allow")[0] == 200
    assert get(mesh, "/ip", "deny")[0] == 200  # not matched by the rules: the authorizer is not asked
    assert "x-ext-authz-check-result" not in upstream_headers(get(mesh, "/headers", "allow"))


def upstream_headers(result: list) -> dict:
    """The request headers httpbin (the echo stand-in) saw, from its JSON answer."""
    return json.loads(result[2])["headers"] if result[0] == 200 else {}


def test_custom_grpc_provider(mesh: Mesh) -> None:
    apply(mesh, POLICY.replace("{provider}", "sample-ext-authz-grpc"))
    # An OK gRPC check adds its headers to the request (the HTTP provider sends none upstream here).
    mesh.wait_until(lambda: upstream_headers(get(mesh, "/headers", "allow")).get("x-ext-authz-check-result")
                    == "allowed", 10, "the gRPC authorizer allows")
    assert get(mesh, "/headers", "deny") == [403, "denied", DENIED_BODY]
    assert "x-ext-authz-check-result" not in upstream_headers(get(mesh, "/ip"))  # not checked
    stats = fetch_admin(mesh.waypoint_admin(), "/stats?filter=ext_authz").decode()
    assert "ext_authz.denied" in stats and "ext_authz.ok" in stats, stats


def authorizer_log(mesh: Mesh) -> str:
    from click.testing import CliRunner
    from meshway.cli.main import cli
    result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), "logs", "deploy/ext-authz"])
    assert result.exit_code == 0, result.output
    return result.output


def test_grpc_check_carries_the_callers_principal(mesh: Mesh) -> None:
    # Without x-ext-authz the sample decides by the caller's principal (allowed: service account `a`).
    assert get(mesh, "/headers") == [403, "denied", DENIED_BODY]
    mesh.wait_until(lambda: "principal: spiffe://cluster.local/ns/default/sa/curl" in authorizer_log(mesh), 10,
                    "the authorizer's log line with the caller's principal")
    line = [x for x in authorizer_log(mesh).splitlines() if x.startswith("[gRPCv3]")][-1]
    assert 'key: "x-forwarded-client-cert"' in line
    assert 'value: "By=spiffe://cluster.local/ns/default/sa/waypoint;URI=spiffe://cluster.local/ns/default/sa/curl"' \
        in line
    # A client cannot claim another identity: the waypoint overwrites the header.
    forged = {"x-forwarded-client-cert": "By=x;URI=spiffe://cluster.local/ns/default/sa/a"}
    assert get_with(mesh, "/headers", forged)[0] == 403
    assert "x-forwarded-client-cert" not in upstream_headers(get(mesh, "/headers", "allow"))  # removed after the check


def get_with(mesh: Mesh, path: str, headers: dict) -> list:
    cmd = ["ip", "netns", "exec", mesh.netns(mesh.pod("curl")), sys.executable, "-c", GET, "httpbin", "8000", path,
           json.dumps(headers)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else [0, None, out.stderr[-300:]]


def test_missing_provider_fails_closed_and_says_so(mesh: Mesh) -> None:
    apply(mesh, POLICY.replace("{provider}", "not-defined"))
    status, reason, message = condition(mesh, "ext-authz")
    assert (status, reason) == ("False", "Invalid")
    assert 'extension provider "not-defined"' in message and "fail closed" in message
    assert "available providers are [sample-ext-authz-grpc sample-ext-authz-http]" in message
    mesh.wait_until(lambda: get(mesh, "/headers", "allow")[0] == 403, 10, "fail closed")
    assert get(mesh, "/headers", "allow")[2] == "RBAC: access denied"
    assert get(mesh, "/ip")[0] == 200  # only the policy's rules are denied
    # Defining the provider makes the policy usable: status and traffic follow.
    apply(mesh, MESH_CONFIG.replace("sample-ext-authz-grpc", "not-defined"))
    assert condition(mesh, "ext-authz")[:2] == ("True", "Accepted")
    mesh.wait_until(lambda: get(mesh, "/headers", "allow")[0] == 200, 10, "the provider is used once defined")
    apply(mesh, MESH_CONFIG)
    mesh.store.delete([(find_kind("ap"), "default", "ext-authz")])


def test_dry_run_deny_is_counted_not_enforced(mesh: Mesh) -> None:
    def shadow_denied() -> int:
        stats = fetch_admin(mesh.waypoint_admin(), "/stats?filter=istio_dry_run_deny_").decode()
        return sum(int(line.rpartition(": ")[2]) for line in stats.splitlines() if line.split(":")[0].endswith(
            "rbac.istio_dry_run_deny_.shadow_denied"))

    apply(mesh, DRY_RUN_DENY.replace("{dry_run}", "true"))
    mesh.wait_until(lambda: shadow_denied() > 0 or get(mesh, "/ip")[0] != 200, 10, "the dry-run policy in place")
    before = shadow_denied()
    results = [get(mesh, "/ip")[0] for _ in range(5)]
    assert results == [200] * 5
    assert shadow_denied() - before == 5
    apply(mesh, DRY_RUN_DENY.replace("{dry_run}", "false"))  # the same policy, enforced
    mesh.wait_until(lambda: get(mesh, "/ip")[0] == 403, 10, "the DENY enforced without dry-run")
    mesh.store.delete([(find_kind("ap"), "default", "deny-ip")])
