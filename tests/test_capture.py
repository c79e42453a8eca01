"""Capture rules (pure): the node's REDIRECTs for mesh pods, and kube-proxy's service NAT that runs
in each pod outside the mesh, so a VIP-addressed connection meets the destination's capture."""
from __future__ import annotations

from meshway.runtime.capture import build_capture_rules, build_service_nat


def test_node_rules_capture_mesh_pods_only_and_do_no_service_nat():
    rules = build_capture_rules(["10.244.1.5", "10.244.1.4"]).splitlines()
    assert rules[:3] == ["*nat", ":MESHWAY-PRE - [0:0]", ":MESHWAY-OUT - [0:0]"]
    assert rules[3:5] == ["-A MESHWAY-PRE -s 10.244.1.4/32 -p tcp -j REDIRECT --to-ports 15001",
                          "-A MESHWAY-PRE -s 10.244.1.5/32 -p tcp -j REDIRECT --to-ports 15001"]
    assert "-A MESHWAY-PRE -d 10.244.1.4/32 -p tcp -j REDIRECT --to-ports 15006" in rules
    assert "-A MESHWAY-OUT -d 10.244.1.5/32 -p tcp --dport 15008 -j REDIRECT --to-ports 15008" in rules
    assert not [r for r in rules if "DNAT" in r]
    assert rules[-1] == "COMMIT"


def test_service_nat_picks_each_backend_with_equal_chance():
    rules = build_service_nat((("10.96.0.10", 9080, (("10.244.1.4", 9080), ("10.244.2.4", 9080),
                                                      ("10.244.2.5", 9081))),)).splitlines()
    assert rules == [
        "*nat", ":MESHWAY-SVC - [0:0]",
        "-A MESHWAY-SVC -d 10.96.0.10/32 -p tcp --dport 9080 -m statistic --mode random --probability 0.33333 "
        "-j DNAT --to-destination 10.244.1.4:9080",
        "-A MESHWAY-SVC -d 10.96.0.10/32 -p tcp --dport 9080 -m statistic --mode random --probability 0.50000 "
        "-j DNAT --to-destination 10.244.2.4:9080",
        "-A MESHWAY-SVC -d 10.96.0.10/32 -p tcp --dport 9080 -j DNAT --to-destination 10.244.2.5:9081",
        "COMMIT"]


def test_service_nat_for_a_mesh_pod_empties_the_chain():
    assert build_service_nat(()) == "*nat\n:MESHWAY-SVC - [0:0]\nCOMMIT\n"
