"""Protobufs built once per resource and snapshots that reuse what did not change: the results are
exactly those of a from-scratch conversion, and unchanged resources are neither re-parsed,
re-serialized nor re-walked for references."""
from __future__ import annotations

import copy

import pytest

from meshway.xds import protos as P
from meshway.xds.cache import InconsistentSnapshot, Snapshot, check_consistency
from meshway.xds.protos import MessageCache
from test_xds_golden import CASES

GOLDEN_CASES = sorted(set(CASES) - {"empty"})  # every golden configuration with resources to compare


def cluster(name: str, timeout: str = "5s") -> dict:
    return {"name": name, "type": "EDS", "connect_timeout": timeout, "eds_cluster_config": {"eds_config": {"ads": {}}}}


def endpoints(name: str) -> dict:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": "10.0.0.1", "port_value": 80}}}}]}]}


def resources(n: int, changed: int | None = None) -> dict:
    names = [f"c{i}" for i in range(n)]
    return {P.CLUSTER: {c: cluster(c, "7s" if i == changed else "5s") for i, c in enumerate(names)},
            P.ENDPOINT: {c: endpoints(c) for c in names}}


def test_message_cache_parses_only_what_changed():
    cache = MessageCache()
    first = cache.messages(resources(5))
    assert cache.converted == 10
    second = cache.messages(copy.deepcopy(resources(5, changed=2)))  # equal dicts, new objects
    assert cache.converted == 1
    assert all(second[P.ENDPOINT][n] is first[P.ENDPOINT][n] for n in first[P.ENDPOINT])
    assert second[P.CLUSTER]["c2"] is not first[P.CLUSTER]["c2"]
    assert second[P.CLUSTER]["c2"].connect_timeout.seconds == 7
    assert all(second[P.CLUSTER][n] is first[P.CLUSTER][n] for n in ("c0", "c1", "c3", "c4"))
    fresh = {t: {n: P.to_message(t, d) for n, d in items.items()} for t, items in resources(5, changed=2).items()}
    assert second == fresh


def test_message_cache_forgets_removed_resources():
    cache = MessageCache()
    cache.messages(resources(3))
    assert set(cache.messages(resources(2))[P.CLUSTER]) == {"c0", "c1"}
    cache.messages(resources(3))
    assert cache.converted == 2  # c2 came back: parsed again, not served from a stale entry


def test_snapshot_reuses_serialization_and_references_of_shared_messages():
    cache = MessageCache()
    old = Snapshot(cache.messages(resources(4)))
    check_consistency(old)
    for t in (P.CLUSTER, P.ENDPOINT):
        old.version(t)
    old.resource_version(P.CLUSTER, "c0")
    new_messages = cache.messages(resources(4, changed=1))
    new = Snapshot(new_messages, previous=old)
    assert new.packed(P.CLUSTER, "c0") is old.packed(P.CLUSTER, "c0")
    assert new.packed(P.CLUSTER, "c1") is not old.packed(P.CLUSTER, "c1")
    assert new.references(P.CLUSTER, "c0") is old.references(P.CLUSTER, "c0")
    assert new.resource_version(P.CLUSTER, "c0") is old.resource_version(P.CLUSTER, "c0")
    scratch = Snapshot({t: {n: P.to_message(t, P.to_dict(m)) for n, m in items.items()}
                        for t, items in new_messages.items()})
    for t in (P.CLUSTER, P.ENDPOINT):
        assert new.version(t) == scratch.version(t)
        assert [new.resource_version(t, n) for n in sorted(new.resources(t))] == \
            [scratch.resource_version(t, n) for n in sorted(scratch.resources(t))]
    assert new.version(P.CLUSTER) != old.version(P.CLUSTER)
    assert new.version(P.ENDPOINT) == old.version(P.ENDPOINT)


def test_consistency_of_a_snapshot_made_from_a_consistent_one_checks_what_changed_and_what_was_removed():
    cache = MessageCache()
    old = Snapshot(cache.messages(resources(3)))
    check_consistency(old)
    assert old.consistent
    ok = Snapshot(cache.messages(resources(3, changed=1)), previous=old)
    check_consistency(ok)
    assert ok.consistent
    # a changed cluster whose endpoints are missing
    broken = cache.messages(resources(3, changed=2))
    del broken[P.ENDPOINT]["c2"]
    with pytest.raises(InconsistentSnapshot, match="'c2'"):
        check_consistency(Snapshot(broken, previous=ok))
    # an unchanged cluster whose endpoints were removed
    removed = cache.messages(resources(3))
    del removed[P.ENDPOINT]["c0"]
    snapshot = Snapshot(removed, previous=ok)
    assert snapshot.references(P.CLUSTER, "c0") is ok.references(P.CLUSTER, "c0")
    with pytest.raises(InconsistentSnapshot, match="'c0'"):
        check_consistency(snapshot)
    # from a snapshot that was never checked: everything is checked
    unchecked = Snapshot(removed)
    with pytest.raises(InconsistentSnapshot, match="'c0'"):
        check_consistency(Snapshot(removed, previous=unchecked))


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_builder_dicts_convert_to_the_messages_parse_dict_gives(case, tmp_path, monkeypatch):
    """`to_message` sets the builders' dicts directly; the result is exactly ParseDict's, byte for
    byte, for every resource of the golden configurations (and those go through the direct path)."""
    from google.protobuf import json_format
    from xds_support import build_store, translate

    files, ns = CASES[case]
    config = translate(build_store(tmp_path / "s", files), ns)
    fallbacks = []
    real = json_format.ParseDict
    monkeypatch.setattr(json_format, "ParseDict", lambda *a, **k: fallbacks.append(a[0]) or real(*a, **k))
    total = 0
    for type_url, items in config.resources.items():
        for name, data in items.items():
            fast = P.to_message(type_url, copy.deepcopy(data))
            slow = real(copy.deepcopy(data), P.MESSAGES[type_url]())
            assert fast == slow, f"{type_url} {name}"
            assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)
            total += 1
    assert total > 5 and not fallbacks


@pytest.mark.parametrize("data", [
    {"name": "c", "connect_timeout": 5},  # a Duration as a number: ParseDict's error
    {"name": "c", "no_such_field": 1},
    {"name": "c", "lb_policy": "NO_SUCH_POLICY"},
    {"name": 5},
])
def test_what_the_direct_path_cannot_set_is_parse_dicts_to_refuse(data):
    from google.protobuf import json_format

    with pytest.raises(json_format.ParseError):
        P.to_message(P.CLUSTER, data)


def test_shapes_left_to_parse_dict_give_its_message():
    from google.protobuf import json_format

    data = {"name": "c", "type": "EDS", "eds_cluster_config": {"service_name": None},  # null: cleared
            "connectTimeout": "2s",  # a json_name
            "per_connection_buffer_limit_bytes": 5.0}  # an integer as a float
    assert P.to_message(P.CLUSTER, data) == json_format.ParseDict(data, P.MESSAGES[P.CLUSTER]())


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_the_reference_walk_skips_only_what_cannot_refer(case, tmp_path):
    """The consistency check walks only the subtrees whose types can hold a reference; it finds
    exactly what a walk of every message finds, for every resource of the golden configurations."""
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.descriptor import FieldDescriptor
    from xds_support import build_store, translate

    from meshway.xds.cache import _named_refs

    def walk_all(msg):
        yield msg
        if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
            inner = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(msg.TypeName()))()
            msg.Unpack(inner)
            yield from walk_all(inner)
            return
        for field, value in msg.ListFields():
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            if field.message_type.GetOptions().map_entry:
                if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value.values():
                        yield from walk_all(item)
            else:
                for item in (value if field.is_repeated else [value]):
                    yield from walk_all(item)

    files, ns = CASES[case]
    messages = MessageCache().messages(translate(build_store(tmp_path / "s", files), ns).resources)
    snapshot, found = Snapshot(messages), 0
    for type_url in (P.CLUSTER, P.LISTENER, P.ROUTE):
        for name, msg in messages.get(type_url, {}).items():
            everything = set(ref for m in walk_all(msg) for ref in _named_refs(m))
            walked = {ref for ref in snapshot.references(type_url, name) if ref[0] != P.ENDPOINT}  # EDS: not walked
            assert walked == everything, f"{type_url} {name}"
            found += len(everything)
    assert found > 5
