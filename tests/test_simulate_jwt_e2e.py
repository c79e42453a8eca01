"""Request simulation of RequestAuthentication and `request.auth.*` policies against a real waypoint
Envoy, on loopback (the harness and tokens of test_jwt_e2e: RS256 through jwksUri, ES256 inline,
signed here). For each token the simulation's status agrees with Envoy's (and its body for the
refusals of jwt_authn). Signatures are outside the simulation (it says so): a forged token is not
among the cases."""
from __future__ import annotations

import time

import pytest

from test_jwt_e2e import ES_ISSUER, POLICY, RS_ISSUER, Keys, bearer, call, keys, mesh, wait_for  # noqa: F401
from test_simulate_e2e import _require_envoy
from test_waypoint_e2e import Mesh

from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.model import load_yaml
from meshway.xds.build_snapshot import build_waypoint_config
from meshway.xds.envoy_match import Connection, HttpRequest
from meshway.xds.simulate import _waypoint_proxy
from meshway.xds.simulate_waypoint import simulate_at_waypoint


@pytest.fixture(autouse=True)
def envoy_present() -> None:
    _require_envoy()


def test_jwt_simulation_agrees_with_a_real_waypoint(mesh: Mesh, keys: Keys) -> None:
    alice = keys.token("RS256", {"iss": RS_ISSUER, "sub": "alice", "aud": "reviews"})
    wait_for(mesh, bearer(alice), 200)  # the RequestAuthentication is in force, the key set fetched
    mesh.store.apply(load_yaml(POLICY, "ap.yaml"))
    wait_for(mesh, {}, 403)
    hour_ago = int(time.time()) - 3600

    def es(claims: dict) -> dict:
        return {"x-jwt-assertion": keys.token("ES256", {"iss": ES_ISSUER, "sub": "bob", **claims})}

    cases = {
        "no token": {},
        "alice": bearer(alice),
        "carol": bearer(keys.token("RS256", {"iss": RS_ISSUER, "sub": "carol", "aud": "reviews"})),
        "wrong audience": bearer(keys.token("RS256", {"iss": RS_ISSUER, "sub": "alice", "aud": "ratings"})),
        "foreign issuer": bearer(keys.token("RS256", {"iss": "https://evil.example", "sub": "alice"})),
        "expired": es({"iat": hour_ago - 600, "exp": hour_ago}),
        "admins list": es({"groups": ["users", "admins"], "org": {"team": "reviews"}}),
        "admins string": es({"groups": "admins", "org": {"team": "reviews"}}),
        "users": es({"groups": ["users"], "org": {"team": "reviews"}}),
        "other team": es({"groups": ["admins"], "org": {"team": "ratings"}}),
        "no groups": es({"org": {"team": "reviews"}}),
    }
    view = MeshView.build(mesh.store.snapshot(XDS_KINDS)[1])
    proxy, _, _ = _waypoint_proxy(view, "default/waypoint")
    resources = build_waypoint_config(view, proxy).resources
    vip = mesh.vip()
    conn = Connection(filter_state={"io.istio.peer_principal": "spiffe://cluster.local/ns/default/sa/sleep"},
                      destination_ip=vip, destination_port=9080)
    disagreements, statuses = [], set()
    for name, headers in cases.items():
        request = HttpRequest("GET", "/", "reviews", {k.lower(): v for k, v in headers.items()})
        at = simulate_at_waypoint(resources, vip, 9080, request, conn, time.time())
        assert not at["uncertain"], (name, at["uncertain"])
        want = at["answer"].get("status", 200)
        r = call(mesh, headers)
        statuses.add(r.status)
        same = r.status == want and (want in (200, 403) or r.body.decode() == at["answer"]["body"])
        if not same:
            disagreements.append(f"{name}: simulated {want} {at['answer'].get('body')!r}, Envoy {r.status} {r.body!r}")
    assert not disagreements, "\n".join(disagreements)
    assert statuses == {200, 401, 403}, statuses
