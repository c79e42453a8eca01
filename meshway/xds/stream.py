"""Sans-I/O ADS stream state machines: a request or a new snapshot in, the responses to send out.

One object per gRPC stream. No grpc, no asyncio: the server only moves messages between the wire
and these objects (h11/h2 style), and the tests drive them as event -> action tables.

Protocol rules kept here (the "server" half of go-control-plane's cache/server split):

- per type URL: subscribed names (LDS/CDS are wildcard when the names are empty; `*` is an explicit
  wildcard for any type), the last version and nonce sent;
- SotW: a request whose `response_nonce` is not the last nonce sent for its type is stale and is
  ignored entirely (Envoy repeats its current subscription in its next ACK);
- an ACK (last nonce, no `error_detail`) or a NACK (`error_detail` set) is reported as an event;
  a NACK never makes us resend the version Envoy just rejected;
- a response is sent for a type when its subscribed names changed, or when the version of what
  those names resolve to changed; on a new snapshot, types go out in the order CDS, EDS, LDS, RDS,
  SDS (Envoy pauses EDS/RDS while it applies CDS/LDS, then asks for the new names);
- Delta: per resource versions; `removed_resources` for names that disappeared or that we never
  had, so Envoy does not wait for `initial_fetch_timeout`; the first request seeds what Envoy has
  from `initial_resource_versions`. Subscription changes are applied whatever the nonce, since in
  Delta a request carries a change, not the whole state; only the ACK/NACK part needs a known nonce;
- warming (both modes): a cluster that a CDS response adds or modifies warms in Envoy until it
  receives its ClusterLoadAssignment again, and Envoy does not ask for it (the names it is
  subscribed to did not change). So the endpoints of every EDS cluster a CDS response added or
  changed are sent again right after it, even when they did not change (Envoy's "eventual
  consistency considerations"; go-control-plane and Istio do the same);
- ECDS (`TypedExtensionConfig`, one subscription per filter name in Envoy), after LDS in push
  order (its names come from listeners): a SotW response carrying none of the subscribed names is
  never sent (with one subscription Envoy hands it the whole response and NACKs "Unexpected number
  of resources in ExtensionConfigDS response: 0"), and in Delta a name Envoy holds is not removed
  (a draining chain that still names it would fall back to its default config; Envoy unsubscribes
  when the chain is gone); a name never had is, so that Envoy applies the default at once.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import (DeltaDiscoveryRequest, DeltaDiscoveryResponse,
                                                      DiscoveryRequest, DiscoveryResponse, Resource)

from .cache import CLUSTER, ENDPOINT, EXTENSION_CONFIG, PUSH_ORDER, WILDCARD_TYPES, Snapshot, find_endpoints_name


# -- events: what happened on the stream, for the cache's status records ---------------------------
@dataclass(frozen=True)
class Sent:
    type_url: str
    version: str
    nonce: str
    resources: tuple[str, ...]
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Acked:
    type_url: str
    version: str
    nonce: str


@dataclass(frozen=True)
class Nacked:
    type_url: str
    version: str  # the version Envoy rejected
    nonce: str
    message: str
    accepted_version: str  # the version Envoy keeps using


Event = Sent | Acked | Nacked
EventSink = Callable[[Event], None]


def push_order(type_urls: Iterable[str]) -> list[str]:
    """CDS, EDS, LDS, RDS, SDS first, then any other type URL in name order."""
    present = set(type_urls)
    return [t for t in PUSH_ORDER if t in present] + sorted(present - set(PUSH_ORDER))


def _ignore(event: Event) -> None:
    pass


def find_warming_refs(snapshot: Snapshot, type_url: str, names: Iterable[str]) -> dict[str, set[str]]:
    """type URL -> names that Envoy waits for before it uses the resources `names` of `type_url`
    it has just been sent (added or modified): the endpoints of EDS clusters."""
    if type_url != CLUSTER:
        return {}
    have = snapshot.resources(CLUSTER)
    endpoints = {find_endpoints_name(have[n]) for n in names if n in have}
    endpoints.discard(None)
    return {ENDPOINT: endpoints} if endpoints else {}  # type: ignore[dict-item]


# -- State of the World --------------------------------------------------------------------------
@dataclass
class _SotwType:
    names: frozenset[str]
    wildcard: bool
    version: str | None = None  # last sent
    nonce: str | None = None  # last sent
    sent: dict[str, str] = field(default_factory=dict)  # name -> resource version last sent (CDS only)


class SotwStream:
    """`StreamAggregatedResources`: every response carries the full set for its type."""

    def __init__(self, node_id: str, snapshot: Snapshot | None = None, on_event: EventSink | None = None) -> None:
        self.node_id = node_id
        self.snapshot = snapshot
        self._emit = on_event or _ignore
        self._types: dict[str, _SotwType] = {}
        self._nonce = 0
        self._resend: dict[str, set[str]] = {}  # type URL -> names a warming parent waits for

    def subscriptions(self) -> dict[str, tuple[bool, frozenset[str]]]:
        """type URL -> (wildcard, names)."""
        return {t: (s.wildcard, s.names) for t, s in self._types.items()}

    def on_request(self, request: DiscoveryRequest) -> list[DiscoveryResponse]:
        type_url = request.type_url
        if not type_url:
            return []
        state = self._types.get(type_url)
        nonce = request.response_nonce
        if state is not None and nonce and nonce != state.nonce:
            return []  # stale: answers a response we have since superseded
        if state is not None and nonce:
            if request.HasField("error_detail"):
                self._emit(Nacked(type_url, state.version or "", nonce, request.error_detail.message,
                                  request.version_info))
            else:
                self._emit(Acked(type_url, state.version or "", nonce))
        names = frozenset(request.resource_names)
        wildcard = "*" in names or (type_url in WILDCARD_TYPES and not names)
        names = names - {"*"}
        if state is None:
            state = self._types[type_url] = _SotwType(names, wildcard)
            changed = True
        else:
            changed = (names, wildcard) != (state.names, state.wildcard)
            state.names, state.wildcard = names, wildcard
        if self.snapshot is None:
            return []
        if changed or self._due(type_url, state):
            first = self._respond(type_url, state)
            return [*([first] if first is not None else []), *self._respond_due(self._resend)]
        return []

    def on_snapshot(self, snapshot: Snapshot) -> list[DiscoveryResponse]:
        self.snapshot = snapshot
        return self._respond_due(self._types)

    def _respond_due(self, type_urls: Iterable[str]) -> list[DiscoveryResponse]:
        """Responses for the given types that are due, in push order (a CDS response may make EDS due)."""
        out = []
        for t in push_order(type_urls):
            state = self._types.get(t)
            if state is not None and self._due(t, state):
                response = self._respond(t, state)
                if response is not None:
                    out.append(response)
        return out

    def _due(self, type_url: str, state: _SotwType) -> bool:
        """The type's content changed, or a resource Envoy is warming waits for one of its names."""
        resend = self._resend.get(type_url)
        if resend and (state.wildcard or resend & state.names):
            return True
        return self._version(type_url, state) != state.version

    def _version(self, type_url: str, state: _SotwType) -> str:
        assert self.snapshot is not None
        return self.snapshot.version(type_url, None if state.wildcard else state.names)

    def _respond(self, type_url: str, state: _SotwType) -> DiscoveryResponse | None:
        snapshot = self.snapshot
        assert snapshot is not None
        have = snapshot.resources(type_url)
        names = sorted(have) if state.wildcard else sorted(n for n in state.names if n in have)
        if type_url == EXTENSION_CONFIG and not names:
            return None  # not an empty ECDS response (see the module's notes)
        self._nonce += 1
        state.version, state.nonce = self._version(type_url, state), str(self._nonce)
        response = DiscoveryResponse(version_info=state.version, type_url=type_url, nonce=state.nonce,
                                     resources=[snapshot.packed(type_url, n) for n in names])
        self._resend.pop(type_url, None)  # every subscribed name goes out
        if type_url == CLUSTER:
            versions = {n: snapshot.resource_version(type_url, n) for n in names}
            changed = [n for n, v in versions.items() if state.sent.get(n) != v]
            state.sent = versions
            for ref_type, ref_names in find_warming_refs(snapshot, type_url, changed).items():
                self._resend.setdefault(ref_type, set()).update(ref_names)
        self._emit(Sent(type_url, state.version, state.nonce, tuple(names)))
        return response


# -- Delta ---------------------------------------------------------------------------------------
@dataclass
class _DeltaType:
    wildcard: bool
    names: set[str] = field(default_factory=set)
    sent: dict[str, str | None] = field(default_factory=dict)  # what Envoy has; None: told it is absent
    pending: dict[str, str] = field(default_factory=dict)  # unanswered nonce -> system version, oldest first
    accepted_version: str = ""
    answered: bool = False
    # The type's snapshot version after which nothing was left to send: a snapshot with the same
    # version (same names, same contents) sends nothing either, unless the subscription changed.
    settled: str | None = None


_NEVER_TOLD = object()


class DeltaStream:
    """`DeltaAggregatedResources`: responses carry only changed resources and removed names."""

    def __init__(self, node_id: str, snapshot: Snapshot | None = None, on_event: EventSink | None = None) -> None:
        self.node_id = node_id
        self.snapshot = snapshot
        self._emit = on_event or _ignore
        self._types: dict[str, _DeltaType] = {}
        self._nonce = 0
        self._resend: dict[str, set[str]] = {}  # type URL -> names a warming parent waits for

    def subscriptions(self) -> dict[str, tuple[bool, frozenset[str]]]:
        """type URL -> (wildcard, names)."""
        return {t: (s.wildcard, frozenset(s.names)) for t, s in self._types.items()}

    def on_request(self, request: DeltaDiscoveryRequest) -> list[DeltaDiscoveryResponse]:
        type_url = request.type_url
        if not type_url:
            return []
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            subscribe = list(request.resource_names_subscribe)
            wildcard = "*" in subscribe or (type_url in WILDCARD_TYPES and not subscribe)
            state = self._types[type_url] = _DeltaType(wildcard, sent=dict(request.initial_resource_versions))
        self._answer(type_url, state, request)
        if request.resource_names_subscribe or request.resource_names_unsubscribe:
            state.settled = None
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
                continue
            state.names.add(name)
            if not first:
                state.sent.pop(name, None)  # a (re)subscription asks for the resource again
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
                state.sent = {n: v for n, v in state.sent.items() if n in state.names}
                continue
            state.names.discard(name)
            if not state.wildcard:
                state.sent.pop(name, None)
        if self.snapshot is None:
            return []
        response = self._respond(type_url, state)
        if response is None:
            return []
        return [response, *self._respond_all(t for t in self._resend if t != type_url)]

    def on_snapshot(self, snapshot: Snapshot) -> list[DeltaDiscoveryResponse]:
        self.snapshot = snapshot
        return self._respond_all(self._types)

    def _respond_all(self, type_urls: Iterable[str]) -> list[DeltaDiscoveryResponse]:
        """Responses for the given types that have something to send, in push order."""
        responses = (self._respond(t, self._types[t]) for t in push_order(type_urls) if t in self._types)
        return [r for r in responses if r is not None]

    def _answer(self, type_url: str, state: _DeltaType, request: DeltaDiscoveryRequest) -> None:
        nonce = request.response_nonce
        if not nonce or nonce not in state.pending:
            return
        version = state.pending[nonce]
        for older in list(state.pending):  # this answer settles every response sent before it
            del state.pending[older]
            if older == nonce:
                break
        if request.HasField("error_detail"):
            self._emit(Nacked(type_url, version, nonce, request.error_detail.message, state.accepted_version))
        else:
            state.accepted_version = version
            self._emit(Acked(type_url, version, nonce))

    def _respond(self, type_url: str, state: _DeltaType) -> DeltaDiscoveryResponse | None:
        snapshot = self.snapshot
        assert snapshot is not None
        if state.answered and type_url not in self._resend and state.settled == snapshot.version(type_url):
            return None  # without walking every name: this content was settled already
        for name in self._resend.pop(type_url, ()):  # a warming parent waits for these: send them again
            if state.sent.get(name) is not None:
                del state.sent[name]
        have = snapshot.resources(type_url)
        interest = set(state.names)
        if state.wildcard:
            interest |= set(have) | {n for n, v in state.sent.items() if v is not None}
        updates = [(n, snapshot.resource_version(type_url, n)) for n in sorted(interest) if n in have]
        updates = [(n, v) for n, v in updates if state.sent.get(n) != v]
        removed = [n for n in sorted(interest) if n not in have and state.sent.get(n, _NEVER_TOLD) is not None
                   and not (type_url == EXTENSION_CONFIG and n in state.sent)]
        state.settled = snapshot.version(type_url)
        if not updates and not removed and state.answered:
            return None
        self._nonce += 1
        nonce, version = str(self._nonce), snapshot.version(type_url)
        response = DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=removed,
            resources=[Resource(name=n, version=v, resource=snapshot.packed(type_url, n)) for n, v in updates])
        state.sent.update(updates)
        state.sent.update(dict.fromkeys(removed))
        state.pending[nonce] = version
        state.answered = True
        for ref_type, ref_names in find_warming_refs(snapshot, type_url, [n for n, _ in updates]).items():
            self._resend.setdefault(ref_type, set()).update(ref_names)
        self._emit(Sent(type_url, version, nonce, tuple(n for n, _ in updates), tuple(removed)))
        return response
