"""What a change touches, as the keys the units of a waypoint's config read (`meshway.xds.dirty`)."""
from __future__ import annotations

import pytest

from meshway.xds.dirty import find_change_keys, find_object_keys, merge_keys

FQDN = "reviews.default.svc.cluster.local"


def obj(kind: str, spec: dict, namespace: str = "default", name: str = "x") -> dict:
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.mark.parametrize("kind, body, expected", [
    ("VirtualService", obj("VirtualService", {"hosts": ["reviews", "ratings.other"]}),
     {("VirtualService", FQDN), ("VirtualService", "ratings.other.svc.cluster.local")}),
    ("VirtualService", obj("VirtualService", {"hosts": ["api.example.com"]}), {("VirtualService", "api.example.com")}),
    ("VirtualService", obj("VirtualService", {"hosts": ["*.example.com"]}), None),  # a pattern: unknown
    ("DestinationRule", obj("DestinationRule", {"host": "reviews"}), {("DestinationRule", FQDN)}),
    ("DestinationRule", obj("DestinationRule", {"host": "*"}), None),
    ("HTTPRoute", obj("HTTPRoute", {"parentRefs": [{"kind": "Service", "name": "reviews"},
                                                   {"kind": "Service", "name": "web", "namespace": "front"}]}),
     {("HTTPRoute", "default", "reviews"), ("HTTPRoute", "front", "web")}),
    ("Pod", obj("Pod", {}, "apps"), {("Pod", "apps")}),
    ("Service", obj("Service", {}), None),
    ("AuthorizationPolicy", obj("AuthorizationPolicy", {}), None),
    ("VirtualService", None, set()),  # it did not exist
])
def test_object_keys(kind, body, expected):
    assert find_object_keys(kind, body) == (None if expected is None else frozenset(expected))


def test_a_change_touches_what_the_object_named_before_and_after():
    before = obj("VirtualService", {"hosts": ["reviews"]})
    after = obj("VirtualService", {"hosts": ["ratings"]})
    assert find_change_keys([("VirtualService", before, after)]) == {
        ("VirtualService", FQDN), ("VirtualService", "ratings.default.svc.cluster.local")}
    assert find_change_keys([("VirtualService", before, after), ("Service", None, obj("Service", {}))]) is None


def test_merge_keys():
    assert merge_keys(frozenset({1}), frozenset({2})) == {1, 2}
    assert merge_keys(None, frozenset({2})) is None
    assert merge_keys(frozenset({1}), None) is None
