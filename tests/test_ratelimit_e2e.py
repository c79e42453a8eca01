"""Rate limiting on the waypoint, end to end on the network-namespace cluster (root, Linux; run in
CI): Istio's local rate-limit EnvoyFilters from tasks/policy-enforcement/rate-limit, unchanged but
for `targetRefs` (waypoints ignore `workloadSelector`) and a short `fill_interval` so that the
window passes quickly. Requests go from the curl pod through its node proxy and the waypoint."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from cluster_support import REVIEWS, Mesh, cluster_fixture, via_waypoint
from meshway.runtime.envoy_admin import fetch_admin
from meshway.model import find_kind, load_yaml

mesh = cluster_fixture()
FILL = 3  # seconds: Istio's recipe says 60s

# Istio's first recipe: a token bucket for every route of the service, 429 with x-local-rate-limit.
RECIPE = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 4
                tokens_per_fill: 4
                fill_interval: FILLs
              filter_enabled:
                runtime_key: local_rate_limit_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: local_rate_limit_enforced
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: 'true'
""".replace("FILL", str(FILL))

# Istio's per-route recipe (filter without a bucket, the bucket per route via HTTP_ROUTE MERGE),
# with a descriptor: requests whose :path is /reviews/1 get their own, smaller bucket.
PER_ROUTE = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-route
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
    - applyTo: HTTP_ROUTE
      match:
        context: SIDECAR_INBOUND
        routeConfiguration:
          vhost:
            name: "inbound|http|9080"
            route:
              action: ANY
      patch:
        operation: MERGE
        value:
          route:
            rate_limits:
            - actions:
              - request_headers:
                  header_name: ":path"
                  descriptor_key: path
          typed_per_filter_config:
            envoy.filters.http.local_ratelimit:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              value:
                stat_prefix: http_local_rate_limiter
                token_bucket:
                  max_tokens: 100
                  tokens_per_fill: 100
                  fill_interval: FILLs
                descriptors:
                - entries:
                  - key: path
                    value: /reviews/1
                  token_bucket:
                    max_tokens: 2
                    tokens_per_fill: 2
                    fill_interval: FILLs
                filter_enabled:
                  runtime_key: local_rate_limit_enabled
                  default_value:
                    numerator: 100
                    denominator: HUNDRED
                filter_enforced:
                  runtime_key: local_rate_limit_enforced
                  default_value:
                    numerator: 100
                    denominator: HUNDRED
""".replace("FILL", str(FILL))

HEADERS = """
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], 9080, timeout=5)
c.request("GET", sys.argv[2])
r = c.getresponse()
print(json.dumps([r.status, dict(r.getheaders()), r.read().decode()]))
"""


def condition(m: Mesh, name: str) -> dict:
    body = m.store.get(find_kind("envoyfilter"), "default", name)
    return ((body.get("status") or {}).get("conditions") or [{}])[0]


def reviews_filters(m: Mesh) -> list[str]:
    """The HTTP filters of the reviews chain in the waypoint Envoy's live config."""
    dump = json.loads(fetch_admin(m.waypoint_admin(), "/config_dump?resource=dynamic_listeners"))
    main = next(c for c in dump["configs"] if c["name"] == "main_internal")["active_state"]["listener"]
    chain = next(c for c in main["filter_chains"] if c["name"] == REVIEWS)
    return [f["name"] for f in chain["filters"][-1]["typed_config"]["http_filters"]]


def apply_and_wait(m: Mesh, manifest: str, name: str) -> None:
    m.store.apply(load_yaml(manifest, f"{name}.yaml"))
    m.wait_until(lambda: condition(m, name).get("reason") == "Applied", 10, f"{name} Applied on its status")
    m.wait_until(lambda: "envoy.filters.http.local_ratelimit" in reviews_filters(m), 10,
                 "the rate limiter in the waypoint's reviews chain")


def remove_and_wait(m: Mesh, name: str) -> None:
    m.store.delete([(find_kind("envoyfilter"), "default", name)])
    m.wait_until(lambda: "envoy.filters.http.local_ratelimit" not in reviews_filters(m), 10,
                 "the rate limiter gone from the waypoint")


def test_istio_local_rate_limit_returns_429_after_the_budget_and_recovers(mesh: Mesh) -> None:
    apply_and_wait(mesh, RECIPE, "filter-local-ratelimit-svc")
    try:
        assert condition(mesh, "filter-local-ratelimit-svc") == {
            "type": "Reconciled", "status": "True", "reason": "Applied",
            "message": "applied on waypoint default/waypoint"}
        burst = mesh.requests("reviews", 10)
        codes = [r[0] for r in burst]
        assert all(via_waypoint(r) for r in burst)  # the 429s are the waypoint's own replies
        assert codes[:4] == [200] * 4, codes
        assert set(codes) == {200, 429} and codes.count(200) <= 8, codes  # at most one refill mid-burst
        pod = mesh.pod("curl")
        out = subprocess.run(["ip", "netns", "exec", mesh.netns(pod), sys.executable, "-c", HEADERS, "reviews",
                              "/reviews/0"], capture_output=True, text=True, timeout=30)
        status, headers, body = json.loads(out.stdout)
        assert status == 429 and headers.get("x-local-rate-limit") == "true" and body == "local_rate_limited"
        time.sleep(FILL + 0.5)  # the window passes: a full bucket again
        assert [r[0] for r in mesh.requests("reviews", 4)] == [200] * 4
        assert all(r[0] == 200 for r in mesh.requests("ratings", 10, "/ratings/0"))  # another service: no limit
    finally:
        remove_and_wait(mesh, "filter-local-ratelimit-svc")
    assert all(r[0] == 200 for r in mesh.requests("reviews", 10))


def test_per_route_descriptor_limits_only_its_path(mesh: Mesh) -> None:
    apply_and_wait(mesh, PER_ROUTE, "filter-local-ratelimit-route")
    try:
        limited = [r[0] for r in mesh.requests("reviews", 5, "/reviews/1")]
        assert limited[:2] == [200, 200] and 429 in limited, limited
        assert all(r[0] == 200 for r in mesh.requests("reviews", 10, "/reviews/2"))  # the route's bucket: 100
        time.sleep(FILL + 0.5)
        assert [r[0] for r in mesh.requests("reviews", 2, "/reviews/1")] == [200, 200]
    finally:
        remove_and_wait(mesh, "filter-local-ratelimit-route")


def test_a_patch_envoy_rejects_is_reported_and_not_pushed(mesh: Mesh) -> None:
    bad = RECIPE.replace("filter-local-ratelimit-svc", "rejected").replace(f"fill_interval: {FILL}s",
                                                                          "fill_interval: 0.01s")
    mesh.store.apply(load_yaml(bad, "rejected.yaml"))
    try:
        mesh.wait_until(lambda: condition(mesh, "rejected").get("reason") == "PatchNotApplied", 10,
                        "the rejection on the EnvoyFilter's status")
        message = condition(mesh, "rejected")["message"]
        assert "Envoy rejects the patched config" in message and "fill timer must be >= 50ms" in message, message
        assert "envoy.filters.http.local_ratelimit" not in reviews_filters(mesh)
        assert all(r[0] == 200 for r in mesh.requests("reviews", 10))
    finally:
        mesh.store.delete([(find_kind("envoyfilter"), "default", "rejected")])
