"""`meshway controlplane`: follow the store, translate, serve ADS/SDS, run the waypoint replicas,
and write back readiness (a replica is Ready once it has ACKed its clusters and listeners, which
makes its Gateway Programmed and its services WaypointAccepted).

This is the I/O shell; decisions and translation are the pure functions of `meshway.mesh` and
`meshway.xds`. Pushes are debounced and only proxies whose snapshot version changed get one.

Security: the state folder, run folders and sockets are owner-only (`meshway.private`); every Envoy
it starts carries a per-node xDS token in its bootstrap and the ADS server refuses streams without
the token of the node id they claim (`meshway.ca.tokens`); a waypoint's snapshot holds only its
own service account's certificate and ROOTCA, a node proxy's only the identities of the pods on its
node and ROOTCA. Workload certificates live `secret_ttl` (istiod's SECRET_TTL) and are renewed at
half life by the periodic resync, which runs at least every quarter of the lifetime and only
publishes the renewed secrets (it rebuilds no proxy's config).

Event-driven, off the event loop: the asyncio loop serves ADS and keeps the timers; everything else
(reading the store, translation, `envoy --mode validate`, iptables, probes, starting and stopping
processes, status writes) runs in one worker thread, one round at a time (`_round`). A round starts
when a store commit is signalled (`meshway.store.notify`, with a slow safety poll), when an Envoy
exits (a pidfd per process, read by the loop; the processes are also checked every second), when a
timer is due (debounced push, readiness and proxy-status.json every `poll` with pods to probe and
every second without, a restart's backoff, resync, drain deadline), or when a proxy ACKs or NACKs
(readiness, proxy-status.json, node proxies waiting for the waypoints). Store changes are debounced as istiod does (`Debouncer`:
`debounce` of quiet, at most `debounce_max` under a burst), except that a change after a quiet
period is pushed at once.

Failure isolation: one proxy's failed build (any exception of its builder, an `InconsistentSnapshot`)
is logged and shown in its `problems` (proxy-status.json, `meshway proxy-status`); it keeps its last
good snapshot and the others are updated as usual; it is built again with the next change that
touches it or after BUILD_RETRY seconds. A build over `build_budget` seconds is reported
the same way (measured, never killed). A failing round step is logged and retried next round.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from .. import __version__
from .. import labels as L
from ..buildinfo import build_version_info
from ..ca import WORKLOAD_LIFETIME, CertificateAuthority, build_secrets
from ..ca.tokens import ProxyTokens
from ..ca.sds import SDS_DEFAULT, SDS_ROOT, build_certificate_secret, build_root_secret
from ..observe.metrics import Family, Sample
from ..private import make_private, make_private_dir, write_private
from ..xds.build_ztunnel import NodeProxy, build_ztunnel_config
from ..mesh.view import XDS_KINDS, MeshView, expand_kinds
from ..store import Expired, Store
from ..store.informer import ObjectCache
from ..store.notify import CommitListener
from ..xds import protos as P
from ..xds.build_snapshot import WaypointConfig, build_waypoint_config
from .wasm_modules import WasmModules
from ..xds.cache import Snapshot, SnapshotCache
from ..xds.debounce import NEVER, Debouncer
from ..xds.debug import SyncSource
from ..xds.debug_http import SYNCZ_PATH, VERSION_PATH, build_syncz_statuses, build_version_text, write_go_json
from ..xds.dirty import find_change_keys, merge_keys
from ..xds.envoyfilter import build_envoy_filter_condition
from ..node.plan import parse_node_index
from ..xds.proxy import Proxy, build_node_id, build_node_proxy_id
from ..xds.push_scope import (detect_scope_touched, find_changed_namespaces, find_parent_namespaces,
                              find_provider_namespaces)
from ..xds.scope import WaypointScope, find_scope
from ..xds.memo import Memo
from ..xds.protos import MessageCache
from ..xds.ca_service import CertificateService
from ..xds.mtls import build_mtls_listener
from ..xds.server import XdsServer
from ..xds.stream import Acked, Event, Nacked
from ..xds.validate import ValidationCache
from .envoy import EnvoyPaths, detect_restart_count, find_envoy, read_pid, read_starts, start_envoy, stop_envoy
from .monitoring import ControlPlaneMetrics, MetricsServer, fetch_proxy_metrics, find_scrape_targets
from .request_metrics import FILE_NAME as REQUESTS_FILE, RequestMetrics
from .proxy_boot import (build_replica_bootstrap, next_start_delay, node_proxy_paths, read_agent_problems,
                         stop_without_credential)
from ..observe.metrics import merge_families
from .placement import (LoopbackPlacement, PodPlacement, Replica, find_replicas, replica_dir_name,
                        replica_sock_dir, socket_dir)

log = logging.getLogger("meshway.controlplane")
READY_TYPES = (P.CLUSTER, P.LISTENER)
UNBIND_GRACE = 5.0  # seconds a waypoint keeps serving a service that was just unbound from it
NODE_PUSH_WAIT = 1.0  # at most this long, node proxies wait for the waypoints to ACK a change first
MAX_PROBLEM = 600  # characters of an exception's text kept on status
BUILD_RETRY = 5.0  # seconds before a proxy whose build failed is built again without a change
SUPERVISE_POLL = 1.0  # with exit notifications (pidfd), the Envoys are also checked this often
HOUSEKEEPING_IDLE = 1.0  # readiness and proxy-status.json at least this often when no ADS event wakes them
SYNCZ_TIMEOUT = 5.0  # seconds the monitoring port waits for the loop to copy the xDS state (`/debug/syncz`)


@dataclass
class NodeState:
    """A node proxy (ztunnel) this serves: its node's agent runs it (`meshway.runtime.nodeagent`,
    `meshway.node.agent`)."""

    index: int
    node_id: str
    paths: EnvoyPaths
    converter: MessageCache = field(default_factory=MessageCache)
    translation: Memo = field(default_factory=Memo)
    errors: tuple = field(default=())  # (where, message): a failed or slow build


@dataclass
class ReplicaState:
    replica: Replica
    node_id: str
    paths: EnvoyPaths
    failures: int = 0  # starts since it was last ready: the backoff (resets; the restart count does not)
    next_start: float = 0.0
    ready_written: bool | None = None
    problems: tuple = field(default=())
    envoy_filters: tuple = field(default=())  # "<ns>/<name>" of the EnvoyFilters in the pushed config
    bound: dict = field(default_factory=dict)
    # Services that left this waypoint's scope, kept until a deadline so that connections the node
    # proxies still send here (they learn about the change at about the same time) succeed.
    draining: dict = field(default_factory=dict)
    converter: MessageCache = field(default_factory=MessageCache)
    translation: Memo = field(default_factory=Memo)  # what each unit of its config was built from
    errors: tuple = field(default=())  # (where, message): a failed or slow build, kept apart from `problems`
    changed: frozenset | None = None  # keys (`xds.dirty`) changed since its last good build; None: unknown
    bound_services: tuple | None = None  # the scope's services `bound` was computed from


class ControlPlane:
    def __init__(self, state_dir: Path | str, placement=None, delta: bool = True, debounce: float = 0.01,
                 poll: float = 0.05, envoy: str | None = None, resync: float = 60.0, nodes: int = 0,
                 metrics_addr: str | None = None, secret_ttl: timedelta = WORKLOAD_LIFETIME,
                 debounce_max: float = 0.1, safety_poll: float = 1.0, build_budget: float = 2.0,
                 clock=time.monotonic, xds_addr: str | None = None, xds_ips: tuple[str, ...] = (),
                 store=None, run_proxies: bool = True, review_token=None,
                 wasm_insecure_registries: frozenset[str] = frozenset(), scrape_proxies: bool = True):
        """`debounce`/`debounce_max`: quiet period after a store change and the longest a burst waits
        (istiod's PILOT_DEBOUNCE_AFTER/MAX); `poll`: housekeeping period (pod probes, readiness,
        proxy-status.json; at least HOUSEKEEPING_IDLE without pods: ADS events wake it then); `safety_poll`: how often the store is read without a commit
        signal; `build_budget`: seconds one proxy's translation may take before it is reported;
        `clock`: the debouncer's and the round timers' clock; `xds_addr`: HOST:PORT of ADS over TCP +
        mTLS besides the Unix socket (istiod's 15012, `meshway.xds.mtls`), its certificate also naming
        `xds_ips`. `store`: the source of truth (default: the embedded store in `state_dir`; on
        Kubernetes `meshway.kube.backend.KubeBackend`); `run_proxies=False`: the waypoint replicas
        are pods that something else runs (a node agent), which this serves over xDS but never
        starts, probes or reports on; so are the node proxies (ztunnel): one per node that has pods
        (and node-1..`nodes` of the one-host cluster), served over xDS, run with its capture rules by
        that node's agent (`meshway.runtime.nodeagent` on one host, `meshway.node` on Kubernetes). `review_token`: with `xds_addr`, also serve Istio's CA API on
        that port, checking callers' tokens with it (`meshway.xds.ca_service`; on Kubernetes a
        TokenReview). `wasm_insecure_registries`: the registries and servers whose TLS certificate a
        WasmPlugin module is fetched without checking (Istio's WASM_INSECURE_REGISTRIES, `*`: all).
        `scrape_proxies=False`: the metrics endpoint serves the control plane's own series and its
        tally of the proxies' logs, not the proxies' stats (on Kubernetes their admin is inside their
        pods; istiod's monitoring port serves no proxy's stats either)."""
        self.state_dir = Path(state_dir)
        make_private_dir(self.state_dir.resolve())  # the folder itself: a state path may be a link to it
        self.store = store if store is not None else Store(self.state_dir)
        self.run_proxies = run_proxies
        for db_file in self.state_dir.glob("store.db*"):  # SQLite gives its -wal/-shm the db's mode
            make_private(db_file)
        self.ca = CertificateAuthority(self.state_dir, workload_lifetime=secret_ttl)
        self.tokens = ProxyTokens(self.state_dir)
        self.cache = SnapshotCache()
        self.metrics = ControlPlaneMetrics()
        self.requests = RequestMetrics(lambda: self.view, self.cache.get, self.state_dir / "run" / REQUESTS_FILE)
        self.server = XdsServer(self.cache, on_event=self._on_xds_event, authenticate=self.tokens.authenticate,
                                access_logs=self.requests.record)
        self.metrics_addr = metrics_addr  # host:port of the Prometheus endpoint (monitoring), if any
        self.scrape_proxies = scrape_proxies
        self.xds_addr, self.xds_ips = xds_addr, xds_ips
        self.certificates = CertificateService(self.ca, review_token, secret_ttl) if review_token else None
        self.monitor: MetricsServer | None = None
        self.node_count = nodes  # the one-host cluster's nodes (their agents run pods and proxies)
        self.placement = placement or (PodPlacement() if not run_proxies else LoopbackPlacement.for_state(self.state_dir))
        self.nodes: dict[str, NodeState] = {}
        self.delta, self.debounce, self.poll, self.envoy = delta, debounce, poll, envoy
        self.replicas: dict[str, ReplicaState] = {}
        self.view = MeshView()
        self.objects: ObjectCache | None = None  # the store's objects, kept current from its change feed
        self.rv = 0
        self.run_dir = self.state_dir / "run"
        self.ads_socket = socket_dir(self.state_dir) / "xds.sock"
        self.builds = 0
        # Periodic rebuild: renews certificates (at half life) well before they expire.
        self.resync = min(resync, secret_ttl.total_seconds() / 4)
        self._status_text = ""
        self._reported: dict[tuple[str, str, str], str] = {}
        self._filter_status: dict[str, dict] = {}
        self.validation: ValidationCache | None = None
        self.wasm: WasmModules | None = None  # WasmPlugin modules, fetched when a plugin exists
        self.wasm_insecure_registries = wasm_insecure_registries
        self.wasm_modules: dict = {}
        self._next_drain_sync = float("inf")
        self._nodes_due = float("inf")
        self.debounce_max, self.safety_poll, self.build_budget = debounce_max, safety_poll, build_budget
        self.clock = clock
        self.debouncer = Debouncer(debounce, debounce_max)
        self._pending_kinds: set[str] = set()  # kinds changed in the store since the last push
        self._pending_changes: list[tuple[str, str, dict]] = []  # (kind, namespace, body) of those changes
        self._pending_keys: frozenset | None = frozenset()  # what those changes touched (`xds.dirty`)
        # (namespace, name) of each changed HTTPRoute -> the namespaces its parentRefs named before
        # (None: not known, read from the view)
        self._pending_route_parents: dict[tuple[str, str], frozenset[str]] | None = {}
        self._statuses: list[tuple[str, str, str, dict]] = []  # status writes of this round, one transaction
        self._status_inputs: object = None  # what the last status reports were computed from
        self._wake: asyncio.Event | None = None  # set on the loop: run a round now
        self._store_signalled = True  # a commit was signalled since the last round read the store
        self._listening = False  # commit signals arrive (else the store is read every `poll`)
        self._next_store_read = self._next_resync = self._next_housekeeping = 0.0
        self._step_errors: dict[str, str] = {}
        self._failed_builds: set[str] = set()  # node ids whose last build raised: retried every BUILD_RETRY
        self._alive: dict[str, bool] = {}  # node id -> its Envoy ran at this round's supervision
        self._xds_events = 0  # ADS events seen (on the loop): proxy-status.json is rewritten only after some
        self._housekept_events = -1  # `_xds_events` when housekeeping last ran
        self._status_key: object = None
        # Exit notifications: a pidfd per running Envoy, read by the loop (`_on_exit`), so a crash
        # starts a round at once and the processes need no 50 ms polling.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pidfds = hasattr(os, "pidfd_open")
        self._watching: dict[str, int] = {}  # node id -> the pid whose exit is watched
        self._exits = self._exits_seen = 0
        self._exit_fds: set[int] = set()  # pidfds the loop reads (loop thread only)
        self._next_supervise = 0.0
        self._restart_due = NEVER
        self._next_build_retry = NEVER

    # -- translation ------------------------------------------------------------------------------
    def _proxy(self, r: Replica) -> Proxy:
        return Proxy(build_node_id("waypoint", r.pod_ip, r.pod, r.namespace), self.placement.listen_address(r),
                     r.namespace, r.service_account, r.waypoint)

    def _service_account_of(self, node_id: str) -> str | None:
        """The service account of the waypoint pod with this node id: what its mTLS peer must be."""
        state = self.replicas.get(node_id)
        return state.replica.service_account if state is not None else None

    def _publish(self, node_id: str, messages: dict) -> None:
        """Set the proxy's snapshot only if some type's version changed: nothing else is pushed."""
        current = self.cache.get(node_id)
        snapshot = Snapshot(messages, previous=current)
        if current is None or any(current.version(t) != snapshot.version(t) for t in P.TYPE_ORDER):
            self.cache.set_snapshot(node_id, snapshot)
            self.metrics.published(node_id)

    def _push(self, state: ReplicaState) -> None:
        r = state.replica
        secrets = build_secrets(self.ca.issue(r.namespace, r.service_account), self.ca.root_pem())
        scope = self._scope_with_draining(state)
        config = self._accepted_config(lambda skip: build_waypoint_config(
            self.view, self._proxy(r), dial=self.placement.dial, scope=scope, skip_envoy_filters=skip,
            memo=state.translation, changed=state.changed, wasm_modules=self.wasm_modules), secrets)
        state.envoy_filters = config.envoy_filters
        messages = state.converter.messages(config.resources)
        messages[P.SECRET] = dict(secrets)
        self._publish(state.node_id, messages)
        state.changed = frozenset()  # its memo is current
        if config.problems != state.problems:
            for where, message in config.problems:
                log.warning("%s: %s: %s", r.pod, where, message)
            state.problems = config.problems
        self.builds += 1

    def _accepted_config(self, build, secrets: dict) -> WaypointConfig:
        """Never push config Envoy would reject: config that EnvoyFilters patched is checked with
        `envoy --mode validate` (cached by content); if refused, the filters are tried one at a time
        in order, and those Envoy refuses are left out and reported on their status."""
        config = build(frozenset())
        if not config.envoy_filters:
            return config
        if self.validation is None:
            try:
                self.validation = ValidationCache(self.envoy or find_envoy())
            except FileNotFoundError:
                self.validation = ValidationCache("envoy")  # every check then says it cannot run
        statics = {P.SECRET: {name: P.to_dict(m) for name, m in secrets.items()}}
        if self.validation.check({**config.resources, **statics})[0]:
            return config
        every, kept, rejected = frozenset(config.envoy_filters), [], []
        for key in config.envoy_filters:
            ok, reason = self.validation.check({**build(every - {*kept, key}).resources, **statics})
            if ok:
                kept.append(key)
            else:
                rejected.append((f"EnvoyFilter {key}", f"Envoy rejects the patched config, so the waypoint runs "
                                                       f"without this EnvoyFilter: {reason}"))
        final = build(every - set(kept))
        return replace(final, problems=final.problems + tuple(rejected))

    def _scope_with_draining(self, state: ReplicaState) -> WaypointScope:
        """The waypoint's scope plus services unbound from it less than UNBIND_GRACE ago."""
        r = state.replica
        scope = find_scope(self.view, r.namespace, r.waypoint)
        if not state.draining and scope.services is state.bound_services:
            return scope  # the same services as last time: none left
        state.bound_services = scope.services
        now = time.monotonic()
        bound = {(s.kind, s.namespace, s.name): s for s in scope.services}
        for key, svc in state.bound.items():
            if key not in bound:
                state.draining[key] = (svc, now + UNBIND_GRACE)
        state.bound = bound
        state.draining = {k: v for k, v in state.draining.items()
                          if k not in bound and v[1] > now and k in self.view.services}
        if not state.draining:
            return scope
        self._next_drain_sync = min(self._next_drain_sync, *(deadline for _, deadline in state.draining.values()))
        keep = tuple(svc for svc, _ in state.draining.values())
        return WaypointScope(scope.waypoint, scope.services + keep, scope.workloads)

    def sync(self, namespaces: frozenset[str] | None = None, before: MeshView | None = None) -> None:
        """Bring replicas (processes) and their snapshots in line with the current view. With
        `namespaces` (what a change touched, `push_scope`), only the waypoints that read something
        of those namespaces, before (`before`: the previous view) or after the change, are rebuilt."""
        wanted = {build_node_id("waypoint", r.pod_ip, r.pod, r.namespace): r for r in find_replicas(self.view)}
        if self._fetch_wasm_modules():
            namespaces = None  # a module came or went: every waypoint that runs the plugin changes
        for node_id in list(self.replicas):
            if node_id not in wanted:
                paths = self.replicas.pop(node_id).paths
                stop_envoy(paths)
                paths.starts_file.unlink(missing_ok=True)  # a new pod of this name starts from 0
        for node_id, replica in wanted.items():
            state = self.replicas.get(node_id)
            if state is None:
                paths = EnvoyPaths(self.run_dir / "proxies" / replica_dir_name(replica),
                                   replica_sock_dir(self.state_dir, replica))
                state = self.replicas[node_id] = ReplicaState(replica, node_id, paths)
                if self.run_proxies:
                    stop_without_credential(paths, node_id, self.tokens)
            elif not self._touched(state, namespaces, before):
                continue
            self._guarded(state, "waypoint", lambda: self._push(state))
        if self.run_proxies:
            self._stop_strays(set(wanted))
        inputs = (tuple((s.node_id, s.problems, s.envoy_filters) for s in self.replicas.values()),
                  tuple((b["metadata"].get("uid"), b["metadata"].get("resourceVersion"))
                        for b in self.view.config.get("EnvoyFilter", ())))
        if inputs != self._status_inputs:  # recomputed only when a proxy's problems or an EnvoyFilter changed
            self._report_problems()
            self._report_envoy_filters()
            self._status_inputs = inputs
        self._flush_statuses()
        if not self.run_proxies:
            # Node proxies learn about a change only once the waypoints have it: a node proxy that
            # starts sending a service to a waypoint must find the waypoint ready to serve it.
            self._nodes_due = min(self._nodes_due, time.monotonic() + NODE_PUSH_WAIT)

    def _fetch_wasm_modules(self) -> bool:
        """The WasmPlugins' modules (`wasm_modules`); whether any outcome changed since last time."""
        plugins = list(self.view.index.of("WasmPlugin"))
        if plugins and self.wasm is None:
            try:
                envoy = self.envoy or find_envoy()
            except FileNotFoundError:
                envoy = "envoy"  # every module check then says it cannot run
            # imagePullSecrets: from the Kubernetes API (a KubeBackend store); the embedded store keeps no Secrets.
            self.wasm = WasmModules(self.state_dir, envoy, read_secret=getattr(self.store, "read_secret", None),
                                    insecure_registries=self.wasm_insecure_registries)
        modules = self.wasm.fetch_modules(plugins) if plugins else {}
        if modules == self.wasm_modules:
            return False
        self.wasm_modules = modules
        for state in self.replicas.values():
            state.changed = None
        return True

    def _touched(self, state: ReplicaState, namespaces: frozenset[str] | None, before: MeshView | None) -> bool:
        """Whether a change to `namespaces` can change this replica's config (see `push_scope`)."""
        if namespaces is None or before is None or state.draining or state.node_id in self._failed_builds \
                or self.cache.get(state.node_id) is None:
            return True
        key = (state.replica.namespace, state.replica.waypoint)
        if key not in self.view.waypoints or key not in before.waypoints:
            return True
        return any(detect_scope_touched(find_scope(view, *key), namespaces, find_provider_namespaces(view))
                   for view in (before, self.view))

    def _guarded(self, state: ReplicaState | NodeState, proxy_type: str, build) -> None:
        """One proxy's build and publish, isolated: any exception (its builder's, an
        `InconsistentSnapshot`) is logged once and shown in its problems, and it keeps its last good
        snapshot; a build over `build_budget` is reported the same way. Never raises."""
        started = time.perf_counter()
        errors: tuple = ()
        try:
            build()
        except Exception as exc:  # noqa: BLE001: whatever one proxy's build raises, the others go on
            text = f"{type(exc).__name__}: {exc}"
            text = text if len(text) <= MAX_PROBLEM else text[:MAX_PROBLEM] + " ..."
            errors = (("translation", f"build failed, the proxy keeps its last good config: {text}"),)
            if errors != state.errors[:1]:
                log.exception("%s: build failed, keeping its last good config", state.node_id)
            if not self._failed_builds:
                self._next_build_retry = self.clock() + BUILD_RETRY
            self._failed_builds.add(state.node_id)
        else:
            self._failed_builds.discard(state.node_id)
        elapsed = time.perf_counter() - started
        self.metrics.observe_build(proxy_type, elapsed, failed=bool(errors), over_budget=elapsed > self.build_budget)
        if elapsed > self.build_budget:
            log.warning("%s: translation took %.2f s, over its %g s budget", state.node_id, elapsed, self.build_budget)
            errors += (("translation", f"took {elapsed:.2f} s, over the {self.build_budget:g} s budget"),)
        state.errors = errors

    def _waypoints_acked(self) -> bool:
        """Every running waypoint ACKed its listeners and the routes they take over RDS (a listener
        warms until its routes arrive; every route config of a waypoint is named by its listener)."""
        for state in self.replicas.values():
            snapshot = self.cache.get(state.node_id)
            if snapshot is None or read_pid(state.paths) is None:
                continue
            types = self.cache.status.get(state.node_id, {})
            for t in (P.LISTENER, P.ROUTE):
                if (snapshot.resources(t) or t == P.LISTENER) \
                        and types.get(t, {}).get("version") != snapshot.version(t):
                    return False
        return True

    def _maybe_sync_nodes(self) -> None:
        if self.run_proxies or self._nodes_due == float("inf"):
            return
        if self._waypoints_acked() or time.monotonic() >= self._nodes_due:
            self._nodes_due = float("inf")
            self._sync_nodes()

    def _node_indexes(self) -> list[int]:
        """The nodes whose proxies this serves: the one-host cluster's, and every `node-N` some pod is
        bound to."""
        found = set(range(1, self.node_count + 1))
        for node in {p.node for p in self.view.pods.values() if p.node}:
            try:
                found.add(parse_node_index(node))
            except ValueError:
                log.debug("node %s: not a meshway node name (node-N), no node proxy served", node)
        return sorted(found)

    def _sync_nodes(self) -> None:
        for n in self._node_indexes():
            node = f"node-{n}"
            node_id = build_node_proxy_id(n)
            state = self.nodes.get(node_id)
            if state is None:
                state = self.nodes[node_id] = NodeState(n, node_id, node_proxy_paths(self.state_dir, n))
            self._guarded(state, "ztunnel", lambda: self._publish(
                state.node_id, self._node_messages(state.node_id, node, state.converter, state.translation)))

    def _node_messages(self, node_id: str, node: str, converter: MessageCache, memo: Memo | None = None) -> dict:
        """A node proxy's snapshot: its config and, as secrets, only the identities of the mesh pods
        on its node (named by SPIFFE ID) and ROOTCA, nothing for pods elsewhere."""
        resources, identities = build_ztunnel_config(self.view, NodeProxy(node_id, node), memo)
        messages = converter.messages(resources)
        messages[P.SECRET] = {}
        for identity in sorted(identities):
            ns = identity.split("/ns/", 1)[1].split("/", 1)[0]
            sa = identity.rsplit("/sa/", 1)[1]
            secret = build_certificate_secret(self.ca.issue(ns, sa))
            secret.name = identity
            messages[P.SECRET][identity] = secret
        messages[P.SECRET][SDS_ROOT] = build_root_secret(self.ca.root_pem())
        return messages

    def _report_problems(self) -> None:
        """Translation problems (e.g. a route to a missing subset) go on the offending resource's
        status as a `Reconciled=False` condition; the rest of the config is pushed regardless."""
        found: dict[tuple[str, str, str], list[str]] = {}
        for state in self.replicas.values():
            for where, message in state.problems:
                kind, _, rest = where.partition(" ")
                ns, _, name = rest.split(" ")[0].partition("/")
                if kind == "EnvoyFilter":  # see _report_envoy_filters
                    continue
                found.setdefault((kind, ns, name), []).append(f"{where}: {message}")
        for key in set(found) | set(self._reported):
            text = "; ".join(dict.fromkeys(found.get(key, [])))
            if self._reported.get(key, "") == text:
                continue
            kind, ns, name = key
            reason = "ModuleUnavailable" if kind == "WasmPlugin" else "InvalidDestination"
            conditions = [{"type": "Reconciled", "status": "False", "reason": reason, "message": text}] if text else []
            self._queue_status(kind, ns, name, {"conditions": conditions})  # skipped if the resource is gone
            if text:
                self._reported[key] = text
            else:
                self._reported.pop(key, None)

    def _report_envoy_filters(self) -> None:
        """Every EnvoyFilter's status: the waypoints it is applied on, or why it is not."""
        applied: dict[str, set[str]] = {}
        problems: dict[str, list[str]] = {}
        for state in self.replicas.values():
            waypoint = f"{state.replica.namespace}/{state.replica.waypoint}"
            for key in state.envoy_filters:
                applied.setdefault(key, set()).add(waypoint)
            for where, message in state.problems:
                kind, _, key = where.partition(" ")
                if kind == "EnvoyFilter":
                    problems.setdefault(key, []).append(f"waypoint {waypoint}: {message}")
        written = {}
        for body in self.view.config.get("EnvoyFilter", ()):
            ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
            key, uid = f"{ns}/{name}", body["metadata"].get("uid")
            condition = build_envoy_filter_condition(bool(body["spec"].get("targetRefs")), sorted(applied.get(key, ())),
                                                     list(dict.fromkeys(problems.get(key, []))))
            if self._filter_status.get(uid) != condition:
                self._queue_status("EnvoyFilter", ns, name, {"conditions": [condition]})
            written[uid] = condition
        self._filter_status = written

    def _queue_status(self, kind: str, namespace: str, name: str, status: dict) -> None:
        self._statuses.append((kind, namespace, name, status))

    def _flush_statuses(self) -> None:
        """The queued status writes in one store transaction (objects that are gone are skipped)."""
        batch, self._statuses = self._statuses, []
        if not batch:
            return
        try:
            for kind, ns, name in self.store.write_statuses(batch):
                log.debug("cannot report on %s %s/%s: gone", kind, ns, name)
        except Exception as exc:  # noqa: BLE001: e.g. the store busy beyond its timeout; the next round retries
            log.warning("cannot write %d statuses: %s", len(batch), exc)

    def _renew_certificates(self) -> None:
        """The resync: publish the certificates the CA renewed (at half life) in each proxy's
        current snapshot; nothing is rebuilt, and a proxy whose certificates are current gets nothing."""
        for state in self.replicas.values():
            r = state.replica
            self._republish_secrets(state.node_id, lambda name, r=r: build_certificate_secret(
                self.ca.issue(r.namespace, r.service_account)) if name == SDS_DEFAULT else None)
        for state in self.nodes.values():
            self._republish_secrets(state.node_id, self._node_certificate)

    def _node_certificate(self, identity: str):
        if identity == SDS_ROOT:
            return None
        ns = identity.split("/ns/", 1)[1].split("/", 1)[0]
        secret = build_certificate_secret(self.ca.issue(ns, identity.rsplit("/sa/", 1)[1]))
        secret.name = identity
        return secret

    def _republish_secrets(self, node_id: str, current) -> None:
        snapshot = self.cache.get(node_id)
        if snapshot is None:
            return
        have = snapshot.resources(P.SECRET)
        renewed = {name: secret for name in have if (secret := current(name)) is not None and secret != have[name]}
        if renewed:
            messages = {t: dict(snapshot.resources(t)) for t in snapshot}
            messages[P.SECRET] = {**have, **renewed}
            self._publish(node_id, messages)
            log.info("%s: renewed %s", node_id, ", ".join(sorted(renewed)))

    def _stop_strays(self, wanted: set[str]) -> None:
        """Envoys left by an earlier control plane for replicas that no longer exist."""
        folder = self.run_dir / "proxies"
        if not folder.exists():
            return
        names = {replica_dir_name(s.replica) for s in self.replicas.values()}
        for child in folder.iterdir():
            if child.is_dir() and child.name not in names:
                ns, _, pod = child.name.partition(".")
                paths = EnvoyPaths(child, replica_sock_dir(self.state_dir, Replica(ns, pod, "", "", "")))
                stop_envoy(paths)
                paths.starts_file.unlink(missing_ok=True)

    # -- processes and readiness ------------------------------------------------------------------
    def _supervise(self) -> None:
        now = time.monotonic()
        self._restart_due = NEVER
        self._alive = {}
        for state in self.replicas.values():
            pid = read_pid(state.paths)
            self._alive[state.node_id] = pid is not None
            if pid is not None:
                self._watch_exit(state.node_id, pid)
                continue
            # Ready again only once the next process ACKs (else the dead one's ACKs would make it
            # Ready at once and reset the backoff of a replica that crash-loops).
            if self.cache.status.pop(state.node_id, None) is not None:
                self._xds_events += 1
            if state.ready_written:
                self._write_ready(state, False)
                self._flush_statuses()  # NotReady is written before a next process can be seen
            if now < state.next_start:
                self._restart_due = min(self._restart_due, state.next_start)
                continue
            r = state.replica
            bootstrap = build_replica_bootstrap(r, state.node_id, self.tokens.token(state.node_id), self.ads_socket,
                                                state.paths.admin, self.delta)
            self._watch_exit(state.node_id, start_envoy(state.paths, bootstrap, self.placement.command_prefix(r),
                                                        self.envoy))
            state.next_start = now + next_start_delay(state.failures)
            state.failures += 1
            log.info("started waypoint replica %s/%s", r.namespace, r.pod)

    def _watch_exit(self, node_id: str, pid: int) -> None:
        """In the worker: have the loop wake a round when `pid` exits (a pidfd becomes readable, for
        children and adopted processes alike); without pidfds the processes are polled every `poll`."""
        loop = self._loop
        if loop is None or not self._pidfds or self._watching.get(node_id) == pid:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already: the next supervision sees it
            return
        except OSError as exc:  # e.g. a kernel before 5.3
            log.info("no process exit notifications (%s): polling every %g s", exc, self.poll)
            self._pidfds = False
            return
        self._watching[node_id] = pid
        try:
            loop.call_soon_threadsafe(self._add_exit_reader, fd)
        except RuntimeError:  # the loop is closed
            os.close(fd)

    def _add_exit_reader(self, fd: int) -> None:
        try:
            asyncio.get_running_loop().add_reader(fd, self._on_exit, fd)
            self._exit_fds.add(fd)
        except (OSError, ValueError, NotImplementedError):
            os.close(fd)

    def _on_exit(self, fd: int) -> None:
        """On the loop: a watched Envoy exited."""
        self._close_exit_reader(fd)
        self._exits += 1
        if self._wake is not None:
            self._wake.set()

    def _close_exit_reader(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        self._exit_fds.discard(fd)

    def _write_ready(self, state: ReplicaState, ready: bool) -> None:
        """Queued (`_flush_statuses` writes the round's batch); a pod that is gone is skipped."""
        r = state.replica
        status = "True" if ready else "False"
        self._queue_status("Pod", r.namespace, r.pod, {
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": status}],
            "containerStatuses": [{"name": "istio-proxy", "ready": ready,
                                   "restartCount": detect_restart_count(read_starts(state.paths))}],
        })
        state.ready_written = ready

    def _acked(self, node_id: str) -> bool:
        types = self.cache.status.get(node_id, {})
        return all(types.get(t, {}).get("version") for t in READY_TYPES)

    def _readiness(self) -> None:
        """After `_supervise`: its liveness check of each replica is reused (exits wake it at once)."""
        for state in self.replicas.values():
            # a process started since (not alive then) is checked again once it has ACKed
            synced = self._acked(state.node_id) and (self._alive.get(state.node_id)
                                                     or read_pid(state.paths) is not None)
            if synced != bool(state.ready_written):
                self._write_ready(state, synced)
                if synced:
                    state.failures = 0

    def proxy_status(self) -> dict:
        out = {}
        # cache.status is updated on the event loop's thread: copied in one step (dict() holds the GIL)
        for state in list(self.nodes.values()):
            types = dict(self.cache.status.get(state.node_id, {}))
            agent = [tuple(p) for p in read_agent_problems(self.state_dir, state.index)]
            out[state.node_id] = {
                "pod": f"ztunnel-node-{state.index}", "namespace": L.ROOT_NAMESPACE, "type": "ztunnel",
                "connected": state.node_id in self.server.connected, "admin": str(state.paths.admin),
                "version": __version__, "problems": [list(p) for p in (*state.errors, *agent)],
                "xds": {t.rsplit(".", 1)[-1]: dict(v) for t, v in types.items()},
            }
        for state in list(self.replicas.values()):
            types = dict(self.cache.status.get(state.node_id, {}))
            out[state.node_id] = {
                "pod": state.replica.pod, "namespace": state.replica.namespace, "type": "waypoint",
                "connected": state.node_id in self.server.connected, "admin": str(state.paths.admin),
                "version": __version__, "problems": [list(p) for p in state.errors + state.problems],
                "xds": {t.rsplit(".", 1)[-1]: dict(v) for t, v in types.items()},
            }
        return out

    def _write_status_file(self) -> None:
        """Recomputed only when something it shows may have changed: an ADS event, a connection, a
        proxy's problems."""
        key = (self._xds_events, frozenset(self.server.connected),
               tuple((n, s.errors, s.problems) for n, s in self.replicas.items()),
               tuple((n, s.errors, tuple(map(tuple, read_agent_problems(self.state_dir, s.index))))
                     for n, s in self.nodes.items()))
        if key == self._status_key:
            return
        self._status_key = key
        text = json.dumps(self.proxy_status(), indent=1, sort_keys=True)
        if text != self._status_text:
            write_private(self.run_dir / "proxy-status.json", text)
            self._status_text = text

    # -- metrics ----------------------------------------------------------------------------------
    def _collect_metrics(self) -> list:
        """Runs on the metrics server's thread: the proxies come from the status file the loop writes
        (the log tally also keeps those connected now)."""
        path = self.run_dir / "proxy-status.json"
        status = json.loads(path.read_text()) if path.exists() else {}
        proxies = fetch_proxy_metrics(find_scrape_targets(status)) if self.scrape_proxies else []
        denied = Family("meshway_xds_denied", "counter",
                        "ADS streams refused: no valid credential for the node id they claimed.",
                        tuple(Sample("meshway_xds_denied", (("node", node),), n)
                              for node, n in sorted(dict(self.server.denied).items())))
        return self.metrics.families(len(self.server.connected)) + [denied] + merge_families(
            [proxies, self.requests.families(set(status) | set(self.server.connected))])

    def _serve_version(self, query: Mapping[str, list[str]]) -> tuple[int, str, bytes]:
        """istiod's `/version` (`istioctl version`'s control plane line)."""
        return 200, "text/plain; charset=utf-8", build_version_text(build_version_info()).encode()

    def _serve_syncz(self, query: Mapping[str, list[str]]) -> tuple[int, str, bytes]:
        """istiod's `/debug/syncz` (`istioctl version`'s data plane line): the xDS server's state,
        copied on the loop's thread (the metrics server's threads must not read it as it changes)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the control plane is not serving xDS")
        copy = asyncio.run_coroutine_threadsafe(self._copy_sync_source(), loop).result(SYNCZ_TIMEOUT)
        statuses = build_syncz_statuses(copy, __version__, (query.get("namespace") or [""])[0])
        return 200, "application/json", write_go_json(statuses, "pretty" in query)

    async def _copy_sync_source(self) -> SyncSource:
        return self.server.sync_source()

    def _start_metrics_server(self) -> MetricsServer | None:
        if not self.metrics_addr:
            return None
        try:
            monitor = MetricsServer(self.metrics_addr, self._collect_metrics,
                                    {VERSION_PATH: self._serve_version, SYNCZ_PATH: self._serve_syncz})
        except (OSError, ValueError) as exc:
            log.warning("no metrics endpoint on %s: %s", self.metrics_addr, exc)
            return None
        monitor.start()
        write_private(self.run_dir / "metrics-address", f"{monitor.address}\n")
        log.info("metrics on http://%s/metrics", monitor.address)
        return monitor

    # -- main loop --------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve ADS on this loop; every other piece of work runs in one worker thread, a round at a
        time (`_round`), woken by store commits, ACKs awaited by node proxies and the round's timers."""
        make_private_dir(self.run_dir)
        handlers = (self.certificates.handler(),) if self.certificates else ()
        review = self.certificates.review_token if self.certificates else None  # debug callers' tokens too
        tcp = build_mtls_listener(self.xds_addr, self.ca, self._service_account_of, self.xds_ips, handlers, review,
                                  f"{socket.gethostname()}_{os.getpid()}") if self.xds_addr else None
        await self.server.start(self.ads_socket, tcp)  # its folder: socket_dir, private (refused if planted in /tmp)
        if self.server.tcp_address:
            write_private(self.run_dir / "xds-address", f"{self.server.tcp_address}\n")
        write_private(self.run_dir / "controlplane.pid", f"{os.getpid()}\n")
        write_private(self.run_dir / "version.json", json.dumps(build_version_info()))  # `meshway version`
        self.monitor = self._start_metrics_server()
        loop = self._loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _: wake.set())
        listener = self._listen_for_commits(loop)
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshway-controlplane")
        try:
            await loop.run_in_executor(worker, self._start)
            while not stop.is_set():
                if self._store_gone():
                    log.error("the store in %s is gone: the control plane stops", self.state_dir)
                    break
                signalled, self._store_signalled = self._store_signalled, False
                wake.clear()
                try:
                    next_round = await loop.run_in_executor(worker, self._round, signalled)
                except Exception:  # noqa: BLE001: the control plane never exits for one failed round
                    log.exception("control plane round failed; retrying")
                    self._store_signalled = self._store_signalled or signalled
                    next_round = self.clock() + max(self.poll, 0.5)
                delay = next_round - self.clock()
                if delay > 0 and not wake.is_set():
                    try:
                        await asyncio.wait_for(wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
        finally:
            stopping.cancel()
            if listener is not None:
                loop.remove_reader(listener.fileno())
                listener.close()
            worker.shutdown(wait=False)
            self._wake = self._loop = None
            for fd in list(self._exit_fds):
                self._close_exit_reader(fd)
            self._watching.clear()
            await self.server.stop()
            if self.monitor is not None:
                self.monitor.stop()
                (self.run_dir / "metrics-address").unlink(missing_ok=True)
            (self.run_dir / "controlplane.pid").unlink(missing_ok=True)
            (self.run_dir / "version.json").unlink(missing_ok=True)

    def _store_gone(self) -> bool:
        """The embedded store's file was removed (its state folder deleted under a running mesh)."""
        return isinstance(self.store, Store) and not self.store.db.path.exists()

    def _listen_for_commits(self, loop: asyncio.AbstractEventLoop) -> CommitListener | None:
        """Wake a round whenever a store commit is signalled (`meshway.store.notify`)."""
        try:
            listener = self.store if hasattr(self.store, "fileno") else CommitListener(self.store.db.notify)
        except OSError as exc:
            log.warning("no store commit signals (%s): reading the store every %g s", exc, self.poll)
            return None
        try:
            loop.add_reader(listener.fileno(), self._on_commit, listener)
        except NotImplementedError as exc:  # a loop without add_reader
            listener.close()
            log.warning("no store commit signals (%s): reading the store every %g s", exc, self.poll)
            return None
        self._listening = True
        return listener

    def _on_commit(self, listener: CommitListener) -> None:
        listener.drain()
        self._store_signalled = True
        if self._wake is not None:
            self._wake.set()

    def _on_xds_event(self, node_id: str, event: Event) -> None:
        """On the loop: metrics, and a round as soon as a proxy ACKs or NACKs: its readiness and
        proxy-status.json follow (housekeeping), and node proxies that wait for the waypoints to
        have a change go ahead (`_maybe_sync_nodes`)."""
        self.metrics.on_event(node_id, event)
        self._xds_events += 1
        if isinstance(event, (Acked, Nacked)) and self._wake is not None:
            self._wake.set()

    def _start(self) -> None:
        """In the worker: the first full translation."""
        # The view, the memos and the snapshots of a large mesh are millions of objects that live
        # long: every full garbage collection walks them all (0.1-0.3 s each at 1,000 services: a
        # third of a cold translation, a change's p99). So none runs while they are built, and
        # then they are frozen: later collections walk only what was allocated since. (Building
        # them leaves no reference cycles behind: a collection here finds nothing, measured at
        # 1,000 services, and would hold the interpreter lock for 0.3-0.7 s.)
        gc.disable()
        try:
            self.rv, snapshot = self.store.snapshot(XDS_KINDS)
            self.objects = ObjectCache(snapshot)
            self.view = MeshView.build(snapshot)
            self.sync()
        finally:
            gc.freeze()
            gc.enable()
        now = self.clock()
        self._next_resync = now + self.resync
        self._next_store_read = now  # what was committed meanwhile

    def _round(self, store_signalled: bool) -> float:
        """In the worker: one round of work; returns when the next one is due (`clock` time)."""
        now = self.clock()
        if store_signalled or now >= self._next_store_read:
            self._step("store", lambda: self._read_store(now))
            self._next_store_read = now + (self.safety_poll if self._listening else self.poll)
        if self.debouncer.take(self.clock()):
            self._step("push", self._push_pending)
        now = self.clock()
        if now >= self._next_drain_sync:
            self._next_drain_sync = NEVER
            self._step("drain", self.sync)
        if now >= self._next_resync:
            self._step("resync", self._renew_certificates)
            self._next_resync = now + self.resync
        if now >= self._next_build_retry:
            self._next_build_retry = now + BUILD_RETRY
            self._step("retry", self._retry_failed_builds)
        self._step("node proxies", self._maybe_sync_nodes)
        if self.run_proxies and (now >= min(self._next_supervise, self._restart_due) or self._exits != self._exits_seen):
            self._exits_seen = self._exits
            self._step("supervise", self._supervise)
            self._next_supervise = now + (SUPERVISE_POLL if self._pidfds and self._loop is not None else self.poll)
        if now >= self._next_housekeeping or self._xds_events != self._housekept_events:
            self._housekept_events = self._xds_events
            if self.run_proxies:
                self._step("readiness", self._readiness)
            self._step("proxy status", self._write_status_file)
            # The waypoints' readiness follows their ACKs, which wake a round (`_on_xds_event`), so an
            # idle control plane sleeps.
            self._next_housekeeping = now + max(self.poll, HOUSEKEEPING_IDLE)
        self._step("status", self._flush_statuses)
        if not self._failed_builds:
            self._next_build_retry = NEVER
        supervision = min(self._next_supervise, self._restart_due) if self.run_proxies else NEVER
        return min(self.debouncer.due(), self._next_store_read, self._next_drain_sync, self._next_resync,
                   self._next_housekeeping, self._nodes_due, self._next_build_retry, supervision)

    def _step(self, what: str, action) -> None:
        """One step of a round; a failure is logged (once while it repeats) and the round goes on."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001: one failing step never stops the others
            text = f"{type(exc).__name__}: {exc}"
            if self._step_errors.get(what) != text:
                log.exception("%s failed (retried next round)", what)
            self._step_errors[what] = text
        else:
            self._step_errors.pop(what, None)

    def _read_store(self, now: float) -> None:
        """Changes since the last read: their kinds wait for the debouncer."""
        try:
            changes = self.store.db.changes_since(self.rv)
        except Expired:  # fell behind compaction: re-list everything
            self.rv, snapshot = self.store.snapshot(XDS_KINDS)
            self.objects = ObjectCache(snapshot)
            self.view = MeshView.build(snapshot)
            self._pending_kinds.clear()
            self._pending_changes.clear()
            self._pending_keys, self._pending_route_parents = frozenset(), {}
            for state in self.replicas.values():
                state.changed = None  # a new view: every unit is checked
            self.debouncer.take(NEVER)
            self.sync()
            return
        count = 0
        while changes:
            count += len(changes)
            self.rv = changes[-1].rv
            self._pending_kinds |= {c.kind for c in changes} & set(XDS_KINDS)
            self._pending_changes += [(c.kind, c.namespace, c.body) for c in changes if c.kind in XDS_KINDS]
            if self.objects is None:  # started without `_start` (tests): a snapshot now, then the changes
                self.objects = ObjectCache(self.store.snapshot(XDS_KINDS)[1])  # replayed: last one wins
                self._pending_keys = self._pending_route_parents = None
            self._pending_keys = merge_keys(self._pending_keys, find_change_keys(
                (c.kind, self.objects.find(c.kind, c.namespace, c.name), c.body)
                for c in changes if c.kind in XDS_KINDS))
            if self._pending_route_parents is not None:
                for c in changes:
                    if c.kind == "HTTPRoute":  # the first one seen since the last push is what the view holds
                        self._pending_route_parents.setdefault((c.namespace, c.name), find_parent_namespaces(
                            self.objects.find(c.kind, c.namespace, c.name)))
            self.objects.apply(changes)
            changes = self.store.db.changes_since(self.rv) if len(changes) >= 10_000 else []
        if count and self._pending_kinds:
            self.debouncer.add(now, count)

    def _push_pending(self) -> None:
        kinds, self._pending_kinds = self._pending_kinds, set()
        changes, self._pending_changes = self._pending_changes, []
        keys, self._pending_keys = self._pending_keys, frozenset()
        parents, self._pending_route_parents = self._pending_route_parents, {}
        if not kinds:
            return
        for state in self.replicas.values():  # also those this change does not touch: kept until their next build
            state.changed = merge_keys(state.changed, keys)
        before = self.view
        if parents is None:
            parents = {(r.namespace, r.name): frozenset(ref.namespace or r.namespace for ref in r.spec.parentRefs)
                       for r in before.index.of("HTTPRoute")} if "HTTPRoute" in kinds else {}
        namespaces = find_changed_namespaces(changes, parents)
        self.view = self.view.with_changes(self.objects.lists(expand_kinds(kinds)))
        self.sync(namespaces, before)

    def _retry_failed_builds(self) -> None:
        """Proxies whose build raised are built again (a failure may be transient: a validation that
        could not run, a resource the store was still writing)."""
        self._failed_builds &= set(self.replicas) | set(self.nodes)
        for node_id in sorted(self._failed_builds & set(self.replicas)):
            state = self.replicas[node_id]
            self._guarded(state, "waypoint", lambda: self._push(state))
        if self._failed_builds & set(self.nodes):
            self._sync_nodes()

    def stop_proxies(self) -> None:
        for state in self.replicas.values():
            stop_envoy(state.paths)
            if state.ready_written:
                self._write_ready(state, False)
        self._flush_statuses()
