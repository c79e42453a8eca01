"""Guaranteed traversal's packet filter for pods outside the mesh, and the closing of connections
a change of guards refuses (pure: the iptables-restore input and the `ss -K` commands). The rules
are applied for real in tests/test_traversal_e2e.py."""
from __future__ import annotations

import pytest

from meshway.runtime.capture import build_guard_rules, plan_guard_kills


def test_guard_rules_admit_the_waypoints_and_lo_and_reset_the_rest() -> None:
    assert build_guard_rules(((9080, ("10.244.1.3", "10.244.2.4")), (80, ()))) == (
        "*filter\n"
        ":MESHWAY-GUARD - [0:0]\n"
        "-A MESHWAY-GUARD -i lo -j RETURN\n"
        "-A MESHWAY-GUARD -s 10.244.1.3/32 -p tcp --dport 9080 -j RETURN\n"
        "-A MESHWAY-GUARD -s 10.244.2.4/32 -p tcp --dport 9080 -j RETURN\n"
        "-A MESHWAY-GUARD -p tcp --dport 9080 -m conntrack --ctdir ORIGINAL -j REJECT --reject-with tcp-reset\n"
        "-A MESHWAY-GUARD -p tcp --dport 80 -m conntrack --ctdir ORIGINAL -j REJECT --reject-with tcp-reset\n"
        "COMMIT\n")


def test_no_guards_empty_the_chain() -> None:
    assert build_guard_rules(()) == "*filter\n:MESHWAY-GUARD - [0:0]\nCOMMIT\n"


KILL = ["ss", "-K", "-tn", "state", "established"]
KILLS = [
    ("newly guarded: all but the admitted", (), ((9080, ("10.0.0.1", "10.0.0.2")),),
     [KILL + ["( sport = :9080 ) and not ( dst 10.0.0.1 or dst 10.0.0.2 )"]]),
    ("guarded, nobody admitted", (), ((9080, ()),), [KILL + ["( sport = :9080 )"]]),
    ("unchanged", ((9080, ("10.0.0.1",)),), ((9080, ("10.0.0.1",)),), []),
    ("an admitted address added: nothing newly refused", ((9080, ("10.0.0.1",)),),
     ((9080, ("10.0.0.1", "10.0.0.2")),), []),
    ("an admitted address removed", ((9080, ("10.0.0.1", "10.0.0.2")),), ((9080, ("10.0.0.2",)),),
     [KILL + ["( sport = :9080 ) and not ( dst 10.0.0.2 )"]]),
    ("guard lifted: nothing to close", ((9080, ("10.0.0.1",)),), (), []),
    ("a second port guarded", ((9080, ()),), ((9080, ()), (80, ("10.0.0.1",))),
     [KILL + ["( sport = :80 ) and not ( dst 10.0.0.1 )"]]),
]


@pytest.mark.parametrize("case,before,after,expected", KILLS, ids=[k[0] for k in KILLS])
def test_plan_guard_kills(case, before, after, expected) -> None:
    assert plan_guard_kills(before, after) == expected


def test_a_mesh_pods_guards_close_every_connection_on_the_port() -> None:
    """A mesh pod's connections all come from its node proxy: by waypoint name, every one is closed."""
    assert plan_guard_kills((), ((8080, ("foo/waypoint",)),), by_address=False) == [KILL + ["( sport = :8080 )"]]
    assert plan_guard_kills(((8080, ("foo/a", "foo/b")),), ((8080, ("foo/b",)),), by_address=False) == \
        [KILL + ["( sport = :8080 )"]]
    assert plan_guard_kills(((8080, ("foo/b",)),), ((8080, ("foo/b",)),), by_address=False) == []


# -- the node agents' part: GuardKeeper, with the rules and closes recorded instead of run --------
from conftest import make_waypoint_ready, set_labels, waypoint_pods  # noqa: E402
from test_traversal import MESH, T, mark_pods_ready  # noqa: E402
from xds_support import view_of  # noqa: E402

from conftest import apply  # noqa: E402
from meshway.mesh.traversal import find_waypoint_addresses  # noqa: E402
from meshway.runtime.guards import CLOSE_DELAY, GuardKeeper  # noqa: E402


class Recorder:
    def __init__(self):
        self.applied, self.closed = [], []

    def keeper(self) -> GuardKeeper:
        return GuardKeeper(lambda ns, name: f"netns-{name}", lambda netns, before, after:
                           self.applied.append((netns, before, after)), lambda netns, cmds:
                           self.closed.append((netns, cmds)))


@pytest.fixture(name="mesh")
def mesh_fixture(store):
    apply(store, MESH)
    mark_pods_ready(store)
    make_waypoint_ready(store, "foo", "waypoint")
    return store


def sync(keeper: GuardKeeper, store, now: float) -> None:
    view = view_of(store)
    keeper.sync(view, [("foo", "a-1"), ("foo", "b-1")], find_waypoint_addresses(view), now)


def test_a_pod_outside_the_mesh_gets_its_filter_and_loses_it(mesh) -> None:
    rec = Recorder()
    keeper = rec.keeper()
    sync(keeper, mesh, 0.0)  # first sight: both pods' chains written empty (a previous agent's may be there)
    assert rec.applied == [("netns-a-1", (), ()), ("netns-b-1", (), ())]
    rec.applied.clear()
    set_labels(mesh, "pod", "foo", "a-1", {"istio.io/dataplane-mode": "none"})
    set_labels(mesh, "svc", "foo", "a", {T: "required"})
    sync(keeper, mesh, 1.0)
    ips = tuple(sorted(p["status"]["podIP"] for p in waypoint_pods(mesh, "foo", "waypoint")))
    assert rec.applied == [("netns-a-1", (), ((8080, ips),))]
    sync(keeper, mesh, 2.0)
    assert len(rec.applied) == 1  # unchanged: nothing written again
    set_labels(mesh, "svc", "foo", "a", {}, ["meshway.io/waypoint-traversal"])
    sync(keeper, mesh, 3.0)
    assert rec.applied[-1] == ("netns-a-1", ((8080, ips),), ())
    assert keeper.pending == [] and rec.closed == []  # its own filter closed what it refuses at once


def test_a_mesh_pods_connections_are_closed_after_the_delay(mesh) -> None:
    rec = Recorder()
    keeper = rec.keeper()
    sync(keeper, mesh, 0.0)
    set_labels(mesh, "svc", "foo", "a", {T: "required"})
    sync(keeper, mesh, 10.0)
    assert [c[1] for c in keeper.pending] == [("foo", "a-1")]
    keeper.run_due(10.0 + CLOSE_DELAY - 0.1)
    assert rec.closed == []
    keeper.run_due(10.0 + CLOSE_DELAY)
    assert rec.closed == [("netns-a-1", [["ss", "-K", "-tn", "state", "established", "( sport = :8080 )"]])]
    sync(keeper, mesh, 20.0)  # unchanged guards: nothing more
    assert keeper.pending == []


def test_a_restarted_agent_closes_nothing_it_did_not_see_change(mesh) -> None:
    set_labels(mesh, "svc", "foo", "a", {T: "required"})
    rec = Recorder()
    keeper = rec.keeper()
    sync(keeper, mesh, 0.0)
    assert keeper.pending == []


def test_on_kubernetes_the_waypoints_addresses_come_from_their_services_endpointslices(mesh) -> None:
    from meshway.node.nodeproxy import find_waypoint_slice_addresses

    view = view_of(mesh)
    service = view.waypoints[("foo", "waypoint")].service_name

    def slice_of(ns: str, svc: str, *endpoints: tuple[str, bool]) -> dict:
        return {"metadata": {"namespace": ns, "name": f"{svc}-x", "labels": {"kubernetes.io/service-name": svc}},
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints]}

    slices = [slice_of("foo", service, ("10.244.1.9", True), ("10.244.2.9", False)),  # not ready yet: admitted
              slice_of("foo", "a", ("10.244.1.2", True)),  # not a waypoint's Service
              slice_of("bar", service, ("10.244.3.9", True))]  # same name, another namespace
    assert find_waypoint_slice_addresses(view, slices) == {"foo/waypoint": ("10.244.1.9", "10.244.2.9")}
