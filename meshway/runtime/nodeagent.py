"""`meshway node --local --name node-N`: the node agent of the one-host mesh, over the SQLite store.

The one-host mesh has the two parts meshway has on Kubernetes: the control plane (`meshway
controlplane --cluster`: watch, select, translate, serve xDS, write the mesh's statuses, deploy
waypoints as objects) and one node agent per node, this module. An agent runs what the store binds
to its node: the pods, in network namespaces with their containers and readiness probes
(`ClusterRuntime`), writing their status; the waypoint pods as Envoy; and the node's proxy
(ztunnel: Envoy in the node's namespace) with the node's capture rules and, in pods outside the
mesh, kube-proxy's service NAT. Every Envoy gets its config from the control plane over its ADS
socket, proving its node id with the xDS token in its bootstrap (`meshway.runtime.proxy_boot`).

A restarted agent adopts what runs (the pods' containers recorded in run/pods/, the Envoys by their
pid files): nothing is started twice. A restarted control plane touches nothing an agent runs.

Wakes: a store commit (its own FIFO, `meshway.store.notify.reader_path`), an Envoy's exit (a pidfd
per Envoy), the pods' probe period. Failures stay local: a failed step is logged and retried next
round; capture rules that fail are shown on the node proxy's problems (run/nodes/node-N/agent.json,
which the control plane puts in proxy-status) and retried every second."""
from __future__ import annotations

import json
import logging
import os
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..ca.tokens import ProxyTokens
from ..mesh.traversal import find_waypoint_addresses
from ..mesh.view import XDS_KINDS, MeshView, expand_kinds
from ..node.plan import parse_node_index
from ..private import make_private_dir, write_private
from ..store import Expired, Store
from ..store.informer import ObjectCache
from ..store.notify import CommitListener, reader_path
from ..xds.build_ztunnel import find_local_pods, find_service_backends
from ..xds.proxy import build_node_id, build_node_proxy_id
from .capture import apply_capture_rules, apply_service_nat
from .cluster import ClusterRuntime
from .envoy import EnvoyPaths, detect_restart_count, read_pid, read_starts, start_envoy, stop_envoy
from .envoy_admin import AdminError, fetch_admin
from .guards import GuardKeeper
from .placement import Replica, find_replicas, replica_dir_name, replica_sock_dir, socket_dir
from .proxy_boot import (NODE_PROXY_DRAIN, build_node_proxy_bootstrap, build_replica_bootstrap, next_start_delay,
                         agent_dir, agent_pid_file, node_proxy_paths, problems_file, stop_without_credential)

log = logging.getLogger("meshway.nodeagent")
POLL = 0.2  # seconds between rounds at most (the pods' probes are due every 0.5 s)
SAFETY_POLL = 1.0  # the store is read this often without a commit signal
RETRY = 1.0  # capture rules that failed are tried again this often
MAX_PROBLEM = 600


@dataclass
class RunningProxy:
    """An Envoy this agent runs: a waypoint replica, or the node proxy (`replica` None)."""
    node_id: str
    paths: EnvoyPaths
    prefix: list[str]
    bootstrap: Callable[[], dict]
    replica: Replica | None = None
    failures: int = 0  # starts since it was last ready: the backoff
    next_start: float = 0.0
    ready: bool | None = None  # what was last found (and, for a replica, written on its pod)


def find_node_replicas(view: MeshView, node: str) -> dict[str, Replica]:
    """node id -> the waypoint replicas whose pods the store binds to `node`."""
    out = {}
    for r in find_replicas(view):
        pod = view.pods.get((r.namespace, r.pod))
        if pod is not None and pod.node == node:
            out[build_node_id("waypoint", r.pod_ip, r.pod, r.namespace)] = r
    return out


def build_replica_pod_status(ready: bool, restart_count: int) -> dict:
    status = "True" if ready else "False"
    return {"phase": "Running" if ready else "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": status}],
            "containerStatuses": [{"name": "istio-proxy", "ready": ready, "restartCount": restart_count}]}


def build_pod_status(ready: bool, extra: dict) -> dict:
    return {"phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "True" if ready else "False"}], **extra}


def probe_envoy_ready(paths: EnvoyPaths) -> bool:
    """Envoy's own readiness (`/ready`: LIVE once its first clusters and listeners are in place,
    as a waypoint's readiness probe checks): the config it got from the control plane serves."""
    try:
        return fetch_admin(paths.admin, "/ready", timeout=1.0).strip() == b"LIVE"
    except AdminError:
        return False


class LocalNodeAgent:
    def __init__(self, state_dir: Path | str, node: str, envoy: str | None = None, delta: bool = True,
                 store: Store | None = None, runtime: ClusterRuntime | None = None, clock=time.monotonic):
        self.state_dir = Path(state_dir)
        self.node, self.index = node, parse_node_index(node)
        self.store = store if store is not None else Store(self.state_dir)
        self.runtime = runtime or ClusterRuntime(self.state_dir, self.store.node_count(), node=self.index)
        self.net = self.runtime.net
        self.tokens = ProxyTokens(self.state_dir)
        self.ads_socket = socket_dir(self.state_dir) / "xds.sock"
        self.envoy, self.delta, self.clock = envoy, delta, clock
        self.view = MeshView()
        self.objects: ObjectCache | None = None
        self.rv = 0
        self.proxies: dict[str, RunningProxy] = {}
        self.captured: tuple | None = None
        self.service_nat: dict[tuple[str, str], tuple] = {}
        self.guards = GuardKeeper(self.net.pod_netns)
        self.capture_error = ""
        self.statuses: list[tuple[str, str, str, dict]] = []
        self.step_errors: dict[str, str] = {}
        self.pidfds: dict[int, int] = {}  # pidfd -> pid of a running Envoy
        self.reported_problems: list | None = None
        self.next_store_read = self.next_retry = 0.0
        self.stop_event = threading.Event()

    # -- the store ---------------------------------------------------------------------------------
    def read_store(self) -> set[str]:
        """The kinds changed since the last read (every kind on the first read or after compaction)."""
        if self.objects is None:
            return self._relist()
        try:
            changes = self.store.db.changes_since(self.rv)
        except Expired:
            return self._relist()
        kinds: set[str] = set()
        while changes:
            self.rv = changes[-1].rv
            kinds |= {c.kind for c in changes} & set(XDS_KINDS)
            self.objects.apply(changes)
            changes = self.store.db.changes_since(self.rv) if len(changes) >= 10_000 else []
        if kinds:
            self.view = self.view.with_changes(self.objects.lists(expand_kinds(kinds)))
        return kinds

    def _relist(self) -> set[str]:
        self.rv, snapshot = self.store.snapshot(XDS_KINDS)
        self.objects = ObjectCache(snapshot)
        self.view = MeshView.build(snapshot)
        return set(XDS_KINDS)

    # -- pods ----------------------------------------------------------------------------------------
    def sync_pods(self) -> None:
        bound = [b for b in self.objects.lists(["Pod"])["Pod"] if b["spec"].get("nodeName") == self.node]
        self.runtime.sync_pods(bound, self.view)

    def report_pods(self) -> None:
        for ns, name, ready, extra in self.runtime.poll():
            self.statuses.append(("Pod", ns, name, build_pod_status(ready, extra)))

    # -- proxies -------------------------------------------------------------------------------------
    def wanted_proxies(self) -> dict[str, RunningProxy]:
        node_id = build_node_proxy_id(self.index)
        paths = node_proxy_paths(self.state_dir, self.index)
        wanted = {node_id: RunningProxy(node_id, paths, ["ip", "netns", "exec", self.net.node_netns(self.index)],
                                        lambda: build_node_proxy_bootstrap(
                                            self.node, node_id, self.tokens.token(node_id), self.ads_socket,
                                            paths.admin, self.delta))}
        for rid, r in find_node_replicas(self.view, self.node).items():
            rpaths = EnvoyPaths(self.state_dir / "run" / "proxies" / replica_dir_name(r),
                                replica_sock_dir(self.state_dir, r))
            wanted[rid] = RunningProxy(rid, rpaths, self.net.exec_prefix(r.namespace, r.pod),
                                       lambda rid=rid, r=r, rpaths=rpaths: build_replica_bootstrap(
                                           r, rid, self.tokens.token(rid), self.ads_socket, rpaths.admin,
                                           self.delta), replica=r)
        return wanted

    def sync_proxies(self) -> None:
        """Stop the Envoys of replicas that left this node, take on new ones (an adopted Envoy
        without a valid xDS credential is stopped, so it starts again with one)."""
        wanted = self.wanted_proxies()
        for node_id in [n for n in self.proxies if n not in wanted]:
            gone = self.proxies.pop(node_id)
            stop_envoy(gone.paths)
            gone.paths.starts_file.unlink(missing_ok=True)  # a new pod of this name starts from 0
            log.info("stopped %s", node_id)
        for node_id, proxy in wanted.items():
            if node_id not in self.proxies:
                stop_without_credential(proxy.paths, node_id, self.tokens)
                self.proxies[node_id] = proxy

    def supervise(self) -> None:
        """Start what is not running (with backoff), mark dead replicas not ready."""
        now = self.clock()
        for proxy in self.proxies.values():
            pid = read_pid(proxy.paths)
            if pid is not None:
                self._watch(pid)
                continue
            if proxy.ready:
                proxy.ready = False
                self._write_replica(proxy)
            if now < proxy.next_start:
                continue
            pid = start_envoy(proxy.paths, proxy.bootstrap(), proxy.prefix, self.envoy,
                              **({} if proxy.replica else {"log_level": "error", "drain_seconds": NODE_PROXY_DRAIN}))
            self._watch(pid)
            proxy.next_start = now + next_start_delay(proxy.failures)
            proxy.failures += 1
            log.info("started %s", proxy.node_id)

    def check_ready(self) -> None:
        """A proxy is ready once its Envoy is LIVE; then its backoff resets and, for a replica, its
        pod is written Ready (which makes its Gateway Programmed). A dead one is reset by `supervise`."""
        for proxy in self.proxies.values():
            if proxy.ready:
                continue
            ready = read_pid(proxy.paths) is not None and probe_envoy_ready(proxy.paths)
            if ready:
                proxy.failures = 0
            if ready != proxy.ready:
                proxy.ready = ready
                self._write_replica(proxy)

    def _write_replica(self, proxy: RunningProxy) -> None:
        if proxy.replica is not None:
            r = proxy.replica
            self.statuses.append(("Pod", r.namespace, r.pod, build_replica_pod_status(
                bool(proxy.ready), detect_restart_count(read_starts(proxy.paths)))))

    def _watch(self, pid: int) -> None:
        if pid in self.pidfds.values() or not hasattr(os, "pidfd_open"):
            return
        try:
            self.pidfds[os.pidfd_open(pid)] = pid
        except OSError:  # gone already, or no pidfds: the next round's check sees it
            pass

    # -- the node's network --------------------------------------------------------------------------
    def sync_network(self) -> None:
        """The node's capture rules and, in each of its pods outside the mesh, kube-proxy's service
        NAT (none in mesh pods). A failure is shown on the node proxy's problems and retried."""
        mesh_ips = tuple(sorted(p.ip for p in find_local_pods(self.view, self.node)))
        try:
            if mesh_ips != self.captured:
                apply_capture_rules(self.net.node_netns(self.index), list(mesh_ips))
                self.captured = mesh_ips
            backends = find_service_backends(self.view)
            for key, pod in list(self.runtime.pods.items()):
                wanted = () if pod.body["status"]["podIP"] in mesh_ips else backends
                if self.service_nat.get(key) != wanted:
                    apply_service_nat(self.net.pod_netns(*key), wanted)
                    self.service_nat[key] = wanted
            self.guards.sync(self.view, list(self.runtime.pods), find_waypoint_addresses(self.view), self.clock())
            self.capture_error = ""
        except Exception as exc:  # noqa: BLE001: OSError, CalledProcessError, or anything else: retried
            error = f"capture rules: {getattr(exc, 'stderr', '') or exc}"[:MAX_PROBLEM]
            if error != self.capture_error:
                log.warning("%s on %s", error, self.node)
            self.capture_error = error
        for key in [k for k in self.service_nat if k not in self.runtime.pods]:
            del self.service_nat[key]

    def write_problems(self) -> None:
        problems = [["capture", self.capture_error]] if self.capture_error else []
        problems += [[f"agent {what}", text] for what, text in sorted(self.step_errors.items())]
        if problems != self.reported_problems:
            path = problems_file(self.state_dir, self.index)
            make_private_dir(path.parent)
            write_private(path, json.dumps({"node": self.node, "problems": problems}))
            self.reported_problems = problems

    def flush(self) -> None:
        batch, self.statuses = self.statuses, []
        if batch:
            try:
                self.store.write_statuses(batch)
            except Exception as exc:  # noqa: BLE001: e.g. the store busy beyond its timeout: written again
                log.warning("cannot write %d statuses: %s", len(batch), exc)
                self.statuses = batch + self.statuses

    # -- the loop ------------------------------------------------------------------------------------
    def round(self, signalled: bool) -> None:
        now = self.clock()
        kinds: set[str] = set()
        if signalled or now >= self.next_store_read or self.objects is None:
            kinds = self._step("store", self.read_store) or set()
            self.next_store_read = now + SAFETY_POLL
        if kinds & {"Pod", "Service", "ServiceEntry"}:
            self._step("pods", self.sync_pods)
        if kinds:
            self._step("proxies", self.sync_proxies)
        self._step("supervise", self.supervise)
        if kinds or (self.capture_error and now >= self.next_retry):
            self.next_retry = now + RETRY
            self._step("network", self.sync_network)
        if self.guards.pending:
            self._step("closes", lambda: self.guards.run_due(self.clock()))
        self._step("readiness", self.check_ready)
        self._step("pod status", self.report_pods)
        self._step("status", self.flush)
        self._step("problems", self.write_problems)

    def _step(self, what: str, action):
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001: one failing step never stops the others
            text = f"{type(exc).__name__}: {exc}"[:MAX_PROBLEM]
            if self.step_errors.get(what) != text:
                log.exception("%s failed (retried next round)", what)
            self.step_errors[what] = text
            return None
        self.step_errors.pop(what, None)
        return result

    def run(self) -> None:
        """Until `stop()`: the rounds, woken by commits, Envoy exits and the probe period. On stop,
        everything keeps running (a next agent adopts it; `meshway down` stops it)."""
        make_private_dir(agent_dir(self.state_dir))
        listener = CommitListener(reader_path(self.store.db.path, self.node))
        write_private(agent_pid_file(self.state_dir, self.node), f"{os.getpid()}\n")
        try:
            self.runtime.up()
            signalled = True
            while not self.stop_event.is_set():
                if not self.store.db.path.exists():  # the mesh's folder was removed under it: nothing to run
                    log.error("the store %s is gone: the node agent stops", self.store.db.path)
                    break
                self.round(signalled)
                ready, _, _ = select.select([listener.fileno(), *self.pidfds], [], [], POLL)
                signalled = listener.fileno() in ready
                if signalled:
                    listener.drain()
                for fd in [fd for fd in ready if fd in self.pidfds]:
                    del self.pidfds[fd]
                    os.close(fd)
        finally:
            listener.close()
            for fd in self.pidfds:
                os.close(fd)
            self.pidfds.clear()
            agent_pid_file(self.state_dir, self.node).unlink(missing_ok=True)

    def stop(self) -> None:
        self.stop_event.set()
