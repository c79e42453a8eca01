"""Per-proxy snapshot cache (go-control-plane's `cache` half of the cache/server split).

A `Snapshot` is the complete, immutable set of xDS resources one proxy should have, keyed by type
URL and resource name. Versions are opaque content hashes of the deterministic serialization, so
the same config always gets the same version, also across control-plane restarts.

`SnapshotCache` holds the current snapshot of every proxy, checks it for dangling references
before publishing it, wakes the ADS streams of that proxy, and records what each proxy was sent and
whether it accepted it (`pushes`, `status`). Nonces and subscriptions are the stream's business
(`meshway.xds.stream`), not the cache's.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .protos import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET
from .protos import TYPE_ORDER as PUSH_ORDER
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
TYPE_PREFIX = "type.googleapis.com/"
SHORT_NAMES = {CLUSTER: "Cluster", ENDPOINT: "ClusterLoadAssignment", LISTENER: "Listener",
               ROUTE: "RouteConfiguration", SECRET: "Secret", EXTENSION_CONFIG: "TypedExtensionConfig"}

_ABSENT = "-"  # what a requested-but-missing name contributes to a version hash (a hash is hex)


def type_url_of(msg: Message) -> str:
    return TYPE_PREFIX + msg.DESCRIPTOR.full_name


def resource_name(msg: Message) -> str:
    """The xDS name of a resource: `cluster_name` for a ClusterLoadAssignment, else `name`."""
    if msg.DESCRIPTOR.full_name == "envoy.config.endpoint.v3.ClusterLoadAssignment":
        return msg.cluster_name
    return msg.name


def _hash(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:16]


class Snapshot(Mapping[str, Mapping[str, Message]]):
    """type URL -> {resource name -> message}. Frozen: the mappings are read-only views, and the
    messages must not be mutated after they are handed over (versions are memoized)."""

    def __init__(self, resources: Mapping[str, Mapping[str, Message]] | None = None,
                 previous: "Snapshot | None" = None) -> None:
        """`previous`: the proxy's snapshot before this one; the serialization, resource versions and
        references of every message object it shares with this one are reused (a change
        re-serializes and re-checks only what changed). Nothing of `previous` is kept but those
        per-message results."""
        self._resources = MappingProxyType({
            type_url: MappingProxyType(dict(by_name)) for type_url, by_name in (resources or {}).items() if by_name})
        # Per type URL, per name: the message packed as `Any`, its content hash, the resources it names.
        self._packed: dict[str, dict[str, AnyProto]] = {t: {} for t in self._resources}
        self._hashes: dict[str, dict[str, str]] = {t: {} for t in self._resources}
        self._refs: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {t: {} for t in self._resources}
        self._versions: dict[tuple[str, tuple[str, ...] | None], str] = {}
        self.consistent = False  # set by `check_consistency`
        # What differs from `previous` when it was found consistent: `check_consistency` then checks
        # only these (None: everything).
        self._changes: tuple[set[tuple[str, str]], set[tuple[str, str]]] | None = None
        if previous is not None:
            self._reuse(previous)

    def _reuse(self, previous: "Snapshot") -> None:
        changed: set[tuple[str, str]] = set()
        removed = {(t, n) for t, old in previous._resources.items() if t not in self._resources for n in old}
        for type_url, by_name in self._resources.items():
            old = previous._resources.get(type_url, {})
            new_or_changed = [name for name, msg in by_name.items() if old.get(name) is not msg]
            gone = [name for name in old if name not in by_name] \
                if len(by_name) - len(new_or_changed) != len(old) else []
            changed.update((type_url, n) for n in new_or_changed)
            removed.update((type_url, n) for n in gone)
            if len(new_or_changed) == len(by_name):
                continue  # nothing to reuse
            for mine, theirs in ((self._packed, previous._packed), (self._hashes, previous._hashes),
                                 (self._refs, previous._refs)):
                kept = dict(theirs.get(type_url, {}))
                for name in (*new_or_changed, *gone):
                    kept.pop(name, None)
                mine[type_url] = kept
            if not new_or_changed and not gone:  # a type whose messages are all the same objects
                self._versions.update({k: v for k, v in previous._versions.items() if k[0] == type_url})
        if previous.consistent:
            self._changes = (changed, removed)

    def _items(self) -> Iterator[tuple[tuple[str, str], Message]]:
        for type_url, by_name in self._resources.items():
            for name, msg in by_name.items():
                yield (type_url, name), msg

    def references(self, type_url: str, name: str) -> tuple[tuple[str, str], ...]:
        """(type URL, name) of every resource this one names (memoized per message)."""
        refs = self._refs[type_url]
        if name not in refs:
            resource = self._resources[type_url][name]
            endpoints = find_endpoints_name(resource) if type_url == CLUSTER else None
            eds = ((ENDPOINT, endpoints),) if endpoints is not None else ()
            named = (ref for msg in _walk(resource) for ref in _named_refs(msg))
            refs[name] = tuple(dict.fromkeys((*eds, *named)))
        return refs[name]

    @classmethod
    def of(cls, messages: Iterable[Message]) -> Snapshot:
        """A snapshot from loose messages; type URL and name come from each message."""
        resources: dict[str, dict[str, Message]] = {}
        for msg in messages:
            by_name = resources.setdefault(type_url_of(msg), {})
            name = resource_name(msg)
            if name in by_name:
                raise ValueError(f"duplicate {SHORT_NAMES.get(type_url_of(msg), type_url_of(msg))} {name!r}")
            by_name[name] = msg
        return cls(resources)

    # Mapping protocol
    def __getitem__(self, type_url: str) -> Mapping[str, Message]:
        return self._resources[type_url]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resources)

    def __len__(self) -> int:
        return len(self._resources)

    def __repr__(self) -> str:
        counts = ", ".join(f"{SHORT_NAMES.get(t, t)}={len(r)}" for t, r in self._resources.items())
        return f"Snapshot({counts})"

    def resources(self, type_url: str) -> Mapping[str, Message]:
        """The resources of one type; empty when the snapshot has none."""
        return self._resources.get(type_url, MappingProxyType({}))

    def packed(self, type_url: str, name: str) -> AnyProto:
        """The resource as `Any`, serialized deterministically once per message."""
        packed = self._packed[type_url]
        if name not in packed:
            out = AnyProto()
            out.Pack(self._resources[type_url][name], deterministic=True)
            packed[name] = out
        return packed[name]

    def resource_version(self, type_url: str, name: str) -> str:
        """Content hash of one resource (Delta xDS `Resource.version`), once per message."""
        hashes = self._hashes[type_url]
        if name not in hashes:
            hashes[name] = _hash([self.packed(type_url, name).value])
        return hashes[name]

    def version(self, type_url: str, names: Iterable[str] | None = None) -> str:
        """Content hash of a type's resources, or of only `names` (absent names count too, so a
        name that appears later changes the version)."""
        selected = None if names is None else tuple(sorted(set(names)))
        key = (type_url, selected)
        if key not in self._versions:
            # a hash of each name and its resource's content hash (memoized per message): a change
            # to one resource of a thousand re-hashes a line per resource, not every resource
            have = self.resources(type_url)
            wanted = sorted(have) if selected is None else selected
            lines = "\n".join(f"{name}\t{self.resource_version(type_url, name) if name in have else _ABSENT}"
                              for name in wanted)
            self._versions[key] = _hash([lines.encode()])
        return self._versions[key]


# -- consistency ---------------------------------------------------------------------------------
class InconsistentSnapshot(ValueError):
    """A snapshot names resources it does not contain; Envoy would warm forever or reject it."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = tuple(missing)
        super().__init__("inconsistent snapshot, missing: " + "; ".join(missing))


def check_consistency(snapshot: Snapshot) -> None:
    """Every EDS cluster has its ClusterLoadAssignment, every RDS name its RouteConfiguration,
    every SDS secret name its Secret (when served over ADS), every ECDS filter its
    TypedExtensionConfig, and every cluster named by a route or
    tcp_proxy exists. Raises `InconsistentSnapshot` listing everything that is missing.

    A snapshot made from a consistent `previous` in which nothing was removed is checked for the
    references of its new and changed resources only (the others named only what is still there)."""
    absent = {(ref_type, ref_name, type_url, name)
              for type_url, name, ref_type, ref_name in _references(snapshot, find_changed_referrers(snapshot))
              if ref_name not in snapshot.resources(ref_type)}
    if absent:
        raise InconsistentSnapshot([f"{SHORT_NAMES[ref_type]} {ref_name!r} (referenced by {SHORT_NAMES[type_url]} "
                                    f"{name!r})" for ref_type, ref_name, type_url, name in sorted(absent)])
    snapshot.consistent = True


def find_changed_referrers(snapshot: Snapshot) -> set[tuple[str, str]] | None:
    """The resources whose references need checking: the new and changed ones when the snapshot
    was made from a consistent one and removed nothing; None: all."""
    if snapshot._changes is None:
        return None
    changed, removed = snapshot._changes
    return None if removed else changed


def find_endpoints_name(cluster: Message) -> str | None:
    """The ClusterLoadAssignment an EDS cluster served over ADS waits for; None for other clusters."""
    if cluster.WhichOneof("cluster_discovery_type") == "type" and cluster.type == cluster.EDS:
        eds = cluster.eds_cluster_config
        if not eds.HasField("eds_config") or _served_by_ads(eds.eds_config):
            return eds.service_name or cluster.name
    return None


def _references(snapshot: Snapshot, only: set[tuple[str, str]] | None = None) -> Iterator[tuple[str, str, str, str]]:
    """(referrer type, referrer name, referenced type, referenced name) of every reference (of the
    resources `only` names, if given)."""
    for type_url in (CLUSTER, LISTENER, ROUTE):
        names = snapshot.resources(type_url) if only is None else [n for t, n in only if t == type_url]
        for name in names:
            for ref_type, ref_name in snapshot.references(type_url, name):
                yield type_url, name, ref_type, ref_name


def _served_by_ads(source: Message) -> bool:
    return source.WhichOneof("config_source_specifier") in ("ads", "self")


_HTTP_FILTER = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"  # ECDS: by its name
_CLUSTER_FIELDS = {  # message full name -> the string field that names a cluster
    "envoy.config.route.v3.RouteAction": "cluster",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": "name",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy": "cluster",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": "cluster",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": "name",
}


def _named_refs(msg: Message) -> Iterator[tuple[str, str]]:
    full_name = msg.DESCRIPTOR.full_name
    if full_name in _CLUSTER_FIELDS:
        name = getattr(msg, _CLUSTER_FIELDS[full_name])
        if name:
            yield CLUSTER, name
    elif full_name == "envoy.extensions.filters.network.http_connection_manager.v3.Rds":
        if _served_by_ads(msg.config_source):
            yield ROUTE, msg.route_config_name
    elif full_name == _HTTP_FILTER:
        if msg.HasField("config_discovery") and _served_by_ads(msg.config_discovery.config_source):
            yield EXTENSION_CONFIG, msg.name
    elif full_name == "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig":
        if msg.HasField("sds_config") and _served_by_ads(msg.sds_config):
            yield SECRET, msg.name


_REFERRING = frozenset({*_CLUSTER_FIELDS, "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
                        _HTTP_FILTER,
                        "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig"})
_ANY = "google.protobuf.Any"
_MAY_REFER: dict[str, bool] = {}  # message full name -> whether one can contain a reference (fixed per type)


def detect_may_refer(descriptor: Any) -> bool:
    """Whether a message of this type can hold a reference (`_named_refs`) in itself, in a nested
    message or in an `Any` (whose content may be anything): the walk skips every other subtree
    (endpoints, metadata, most filters)."""
    name = descriptor.full_name
    if name not in _MAY_REFER:
        reachable, stack = {}, [descriptor]
        while stack:  # every message type reachable from this one that is not known yet
            d = stack.pop()
            if d.full_name in reachable or d.full_name in _MAY_REFER:
                continue
            reachable[d.full_name] = d
            stack.extend(f.message_type for f in d.fields if f.message_type is not None)
        refer = {n: n in _REFERRING or n == _ANY for n in reachable}
        changed = True
        while changed:  # a fixpoint: recursive types (matchers) are settled together
            changed = False
            for n, d in reachable.items():
                if not refer[n] and any(f.message_type is not None and (
                        refer.get(f.message_type.full_name) or _MAY_REFER.get(f.message_type.full_name))
                        for f in d.fields):
                    refer[n] = changed = True
        _MAY_REFER.update(refer)
    return _MAY_REFER[name]


def _walk(msg: Message) -> Iterator[Message]:
    """Every message inside `msg` that can hold a reference, including the contents of `Any`
    fields whose type is known."""
    yield msg
    if msg.DESCRIPTOR.full_name == _ANY:
        inner = _unpack(msg)
        if inner is not None:
            yield from _walk(inner)
        return
    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE and detect_may_refer(value_field.message_type):
                for item in value.values():
                    yield from _walk(item)
        elif not detect_may_refer(field.message_type):
            continue
        elif field.is_repeated:
            for item in value:
                yield from _walk(item)
        else:
            yield from _walk(value)


_ANY_TYPES: dict[str, Any] = {}  # type URL -> the message class, None if unknown


def _unpack(packed: AnyProto) -> Message | None:
    """The content of an `Any`, if its type is known and can hold a reference."""
    if packed.type_url not in _ANY_TYPES:
        try:
            found = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
        except KeyError:
            found = None
        _ANY_TYPES[packed.type_url] = message_factory.GetMessageClass(found) if found is not None else None
    cls = _ANY_TYPES[packed.type_url]
    if cls is None or not detect_may_refer(cls.DESCRIPTOR):
        return None
    inner = cls()
    return inner if packed.Unpack(inner) else None


# -- the cache -----------------------------------------------------------------------------------
SYNCED, NACKED, STALE = "SYNCED", "NACKED", "STALE"


class SnapshotCache:
    """node id -> current Snapshot, with change notification and per-proxy push/ACK records.

    `set_snapshot` may be called from any thread; streams wait with `await changed(...)`.
    `status[node][type_url]` = {"version": last ACKed version, "sent": last sent version,
    "nonce": last sent nonce, "state": SYNCED | NACKED | STALE, "error": last NACK message}.
    """

    def __init__(self, check: Callable[[Snapshot], None] = check_consistency) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._generations: Counter[str] = Counter()
        self._watchers: dict[str, set[Callable[[int], None]]] = {}
        self.pushes: Counter[str] = Counter()
        self.status: dict[str, dict[str, dict[str, Any]]] = {}

    # snapshots
    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> None:
        self._check(snapshot)
        with self._lock:
            self._snapshots[node_id] = snapshot
            self._generations[node_id] += 1
            generation = self._generations[node_id]
            watchers = list(self._watchers.get(node_id, ()))
        for wake in watchers:
            wake(generation)

    def get(self, node_id: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(node_id)

    def generation(self, node_id: str) -> int:
        """How many snapshots were set for `node_id` (0: none yet)."""
        with self._lock:
            return self._generations[node_id]

    def watch(self, node_id: str, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(generation)` (in the setter's thread) on every `set_snapshot` of
        `node_id`; returns the function that stops watching."""
        with self._lock:
            self._watchers.setdefault(node_id, set()).add(callback)

        def unwatch() -> None:
            with self._lock:
                self._watchers.get(node_id, set()).discard(callback)
        return unwatch

    async def changed(self, node_id: str, since: int) -> int:
        """Wait until the generation of `node_id` is past `since`; return the new generation."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def resolve(generation: int) -> None:
            if not future.done():
                future.set_result(generation)

        def wake(generation: int) -> None:
            try:
                loop.call_soon_threadsafe(resolve, generation)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        unwatch = self.watch(node_id, wake)
        try:
            current = self.generation(node_id)
            if current > since:
                return current
            return await future
        finally:
            unwatch()

    # what the streams report
    def _type_status(self, node_id: str, type_url: str) -> dict[str, Any]:
        return self.status.setdefault(node_id, {}).setdefault(
            type_url, {"version": "", "sent": "", "nonce": "", "state": STALE, "error": None})

    def record_sent(self, node_id: str, type_url: str, version: str, nonce: str) -> None:
        with self._lock:
            self.pushes[node_id] += 1
            status = self._type_status(node_id, type_url)
            status.update(sent=version, nonce=nonce, state=STALE)

    def record_ack(self, node_id: str, type_url: str, version: str, nonce: str) -> None:
        with self._lock:
            status = self._type_status(node_id, type_url)
            status["version"] = version
            if nonce == status["nonce"]:
                status.update(state=SYNCED, error=None)

    def record_nack(self, node_id: str, type_url: str, accepted_version: str, nonce: str, message: str) -> None:
        with self._lock:
            status = self._type_status(node_id, type_url)
            status.update(version=accepted_version, state=NACKED, error=message)
