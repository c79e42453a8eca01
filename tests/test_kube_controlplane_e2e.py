"""`meshway controlplane --kubeconfig` against the real kube-apiserver, etcd, kube-controller-manager
and kube-scheduler built here (tests/kube_support.py: fails under MESHWAY_REQUIRE_E2E=1 without
them), driven with the real kubectl:

- Istio's bookinfo and a waypoint Gateway: the waypoint ServiceAccount/Deployment/Service are
  server-side applied by `istio.io/gateway-controller`, owned by the Gateway, and the real garbage
  collector removes them with it;
- `kubectl get gtw` shows the Programmed condition the embedded store computes for the same
  objects, and Service status carries the same `istio.io/WaypointBound` as the embedded store
  through namespace labels, an opt-out and label removal;
- faults: kill -9 and restart adopts (no write, no duplicate), kube-apiserver restart (watches
  resume), an expired watch relists with no lost delete, two control planes (one leads, the other
  takes over after the leader is killed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meshway.kube.client import ApiError, KubeClient, kind_path
from meshway.kube.harness import Harness
from meshway.kube.reflector import Reflector, Watched
from meshway.model import load_yaml
from meshway.store import Store
from kube_support import kubectl, require_binaries, run, wait_for

ROOT = Path(__file__).resolve().parent.parent
BOOKINFO = ROOT / "meshway" / "demo" / "bookinfo.yaml"
WAYPOINT = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: default
  labels:
    istio.io/waypoint-for: service
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"""


@pytest.fixture(scope="module")
def cluster():
    bin_dir = require_binaries()
    h = Harness.create(bin_dir, uncached=("configmaps",))  # configmaps: watches straight from etcd
    h.start()
    try:
        out = subprocess.run([sys.executable, "-m", "meshway", "install", "--kubeconfig", str(h.kubeconfig)],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        kubectl(bin_dir, h.kubeconfig, "apply", "-n", "default", "-f", str(BOOKINFO))
        yield h, bin_dir
    finally:
        h.stop()


class ControlPlaneProcess:
    def __init__(self, kubeconfig: Path, log: Path):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshway", "controlplane", "--kubeconfig", str(kubeconfig), "-v"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MESHWAY_STATE_DIR": str(log.parent / "unused-state")})

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


def get_json(h: Harness, bin_dir: Path, *args: str) -> dict:
    return json.loads(kubectl(bin_dir, h.kubeconfig, "get", *args, "-o", "json"))


def try_get(h: Harness, bin_dir: Path, *args: str) -> dict | None:
    out = run(bin_dir, "kubectl", h.kubeconfig, "get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def bound(h: Harness, bin_dir: Path, svc: str) -> dict | None:
    body = get_json(h, bin_dir, "svc", svc, "-n", "default")
    found = [c for c in (body.get("status") or {}).get("conditions") or () if c["type"] == "istio.io/WaypointBound"]
    return {k: found[0][k] for k in ("status", "reason", "message")} if found else None


def embedded_bound(tmp_path: Path, steps: list[str], svc: str) -> dict | None:
    """What the embedded store says about `svc` after the same steps (YAML applies / label changes)."""
    store = Store(tmp_path / f"embedded-{len(steps)}")
    store.apply(load_yaml(BOOKINFO.read_text(), "bookinfo.yaml", namespace="default"))
    store.apply(load_yaml(WAYPOINT, "waypoint.yaml"))
    for step in steps:
        store.apply(load_yaml(step, "step.yaml"))
    body = store.get(store_kind("svc"), "default", svc)
    found = [c for c in (body.get("status") or {}).get("conditions") or () if c["type"] == "istio.io/WaypointBound"]
    store.close()
    return {k: found[0][k] for k in ("status", "reason", "message")} if found else None


def store_kind(name: str):
    from meshway.model import find_kind

    return find_kind(name)


NS_LABELLED = """\
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/use-waypoint: waypoint
"""


def test_waypoint_objects_status_and_garbage_collection(cluster, tmp_path):
    h, bin_dir = cluster
    cp = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp.log")
    try:
        kubectl(bin_dir, h.kubeconfig, "apply", "-n", "default", "-f", str(BOOKINFO))
        (tmp_path / "waypoint.yaml").write_text(WAYPOINT)
        kubectl(bin_dir, h.kubeconfig, "apply", "-f", str(tmp_path / "waypoint.yaml"))
        gw = get_json(h, bin_dir, "gtw", "waypoint", "-n", "default")

        # istiod's objects, SSA by istio.io/gateway-controller, owned by the Gateway
        for kind in ("serviceaccount", "deployment", "service"):
            body = wait_for(f"{kind}/waypoint", lambda kind=kind: try_get(h, bin_dir, kind, "waypoint", "-n", "default"),
                            timeout=60)
            assert body["metadata"]["ownerReferences"] == [{"apiVersion": "gateway.networking.k8s.io/v1",
                                                            "kind": "Gateway", "name": "waypoint",
                                                            "uid": gw["metadata"]["uid"]}], cp.tail()
            managers = json.loads(kubectl(bin_dir, h.kubeconfig, "get", kind, "waypoint", "-n", "default",
                                          "--show-managed-fields", "-o", "json"))["metadata"]["managedFields"]
            assert ("istio.io/gateway-controller", "Apply") in {(m["manager"], m["operation"]) for m in managers}
        deploy = get_json(h, bin_dir, "deploy", "waypoint", "-n", "default")
        assert deploy["metadata"]["labels"]["gateway.istio.io/managed"] == "istio.io-mesh-controller"

        # Gateway status as the embedded store computes it: Accepted, and Programmed=False while no
        # replica runs (this cluster has no nodes yet)
        def programmed():
            conds = (get_json(h, bin_dir, "gtw", "waypoint", "-n", "default").get("status") or {}).get("conditions")
            return {c["type"]: (c["status"], c["reason"]) for c in conds or ()} or None
        conds = wait_for("Gateway status", programmed, timeout=30)
        assert conds["Accepted"] == ("True", "Accepted") and conds["Programmed"] == ("False", "AddressNotAssigned")
        row = kubectl(bin_dir, h.kubeconfig, "get", "gtw", "waypoint", "-n", "default").splitlines()
        assert row[0].split() == ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
        assert row[1].split()[:2] == ["waypoint", "istio-waypoint"] and row[1].split()[-2] == "False"
        gc = get_json(h, bin_dir, "gatewayclass", "istio-waypoint")
        assert [(c["type"], c["status"], c["message"]) for c in gc["status"]["conditions"]] == \
            [("Accepted", "True", "Handled by Istio controller")]

        # WaypointBound as in the embedded store, step by step
        steps: list[str] = []
        assert bound(h, bin_dir, "reviews") == embedded_bound(tmp_path, steps, "reviews") is None
        kubectl(bin_dir, h.kubeconfig, "label", "namespace", "default", "istio.io/use-waypoint=waypoint")
        steps.append(NS_LABELLED)
        expected = embedded_bound(tmp_path, steps, "reviews")
        assert expected is not None
        wait_for("WaypointBound after the namespace label", lambda: bound(h, bin_dir, "reviews") == expected, 30)
        kubectl(bin_dir, h.kubeconfig, "label", "service", "reviews", "-n", "default", "istio.io/use-waypoint=none")
        opt_out = embedded_bound(tmp_path, steps + [_labelled_service("reviews", "none")], "reviews")
        wait_for("WaypointBound after the opt-out", lambda: bound(h, bin_dir, "reviews") == opt_out, 30)
        kubectl(bin_dir, h.kubeconfig, "label", "namespace", "default", "istio.io/use-waypoint-")
        kubectl(bin_dir, h.kubeconfig, "label", "service", "reviews", "-n", "default", "istio.io/use-waypoint-")
        wait_for("WaypointBound removed with the labels", lambda: bound(h, bin_dir, "reviews") is None, 30)

        # the real garbage collector removes the waypoint objects with their Gateway
        kubectl(bin_dir, h.kubeconfig, "delete", "gtw", "waypoint", "-n", "default")
        for kind in ("serviceaccount", "deployment", "service"):
            wait_for(f"{kind}/waypoint deleted", lambda kind=kind: try_get(h, bin_dir, kind, "waypoint", "-n",
                                                                           "default") is None, 60)
        assert cp.proc.poll() is None, cp.tail()
    finally:
        cp.kill(signal.SIGTERM)


def _labelled_service(name: str, waypoint: str) -> str:
    body = json.loads(json.dumps(next(m.body for m in load_yaml(BOOKINFO.read_text(), "b.yaml", namespace="default")
                                      if m.body["kind"] == "Service" and m.body["metadata"]["name"] == name)))
    body["metadata"].setdefault("labels", {})["istio.io/use-waypoint"] = waypoint
    return json.dumps(body)


def test_an_expired_watch_relists_without_losing_a_delete(cluster):
    """410 Gone (the watch's resourceVersion was compacted away in etcd) relists; an object deleted
    while the watch was away comes out as DELETED, one that stayed does not."""
    h, bin_dir = cluster
    client = KubeClient.connect(str(h.kubeconfig))
    kubectl(bin_dir, h.kubeconfig, "create", "namespace", "relist")
    for name in ("gone", "kept"):
        kubectl(bin_dir, h.kubeconfig, "create", "configmap", name, "-n", "relist", "--from-literal=k=v")
    seen: list[tuple[str, str]] = []
    watched = Watched("ConfigMap", "/api/v1/namespaces/relist/configmaps", "v1", {})
    stop = threading.Event()
    r = Reflector(client, watched, lambda kind, t, body: seen.append((t, body["metadata"]["name"])), stop)
    r.relist()
    assert ("ADDED", "gone") in seen and ("ADDED", "kept") in seen
    kubectl(bin_dir, h.kubeconfig, "delete", "configmap", "gone", "-n", "relist")
    kubectl(bin_dir, h.kubeconfig, "create", "configmap", "new", "-n", "relist", "--from-literal=k=v")
    seen.clear()
    compact_etcd(h, bin_dir)  # the list's resourceVersion is now older than etcd keeps
    with pytest.raises(ApiError) as expired:
        next(iter(client.watch(watched.path, r.resource_version, 5)))
    assert expired.value.gone, expired.value
    thread = threading.Thread(target=r.run, daemon=True)
    thread.start()
    try:
        wait_for("the relist after 410", lambda: r.relists >= 2, 30)
        assert sorted(seen) == [("ADDED", "new"), ("DELETED", "gone")]
    finally:
        stop.set()
        client.close()


def compact_etcd(h: Harness, bin_dir: Path) -> int:
    endpoint = f"--endpoints=http://127.0.0.1:{h.config.ports.etcd_client}"
    status = json.loads(subprocess.run([str(bin_dir / "etcdctl"), endpoint, "endpoint", "status", "-w", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    revision = int(status[0]["Status"]["header"]["revision"])
    subprocess.run([str(bin_dir / "etcdctl"), endpoint, "compact", str(revision)], capture_output=True, check=True)
    return revision


def test_restart_adopts_apiserver_restart_resumes_and_leader_handover(cluster, tmp_path):
    h, bin_dir = cluster
    (tmp_path / "waypoint.yaml").write_text(WAYPOINT.replace("name: waypoint", "name: wp2", 1))
    kubectl(bin_dir, h.kubeconfig, "apply", "-f", str(tmp_path / "waypoint.yaml"))
    first = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp1.log")
    second = None
    try:
        wait_for("deploy/wp2", lambda: try_get(h, bin_dir, "deploy", "wp2", "-n", "default"), 60)
        wait_for("wp2 status", lambda: (try_get(h, bin_dir, "gtw", "wp2", "-n", "default") or {}).get("status", {})
                 .get("conditions"), 30)
        before = {k: get_json(h, bin_dir, k, "wp2", "-n", "default")["metadata"]["resourceVersion"]
                  for k in ("deploy", "svc", "sa", "gtw")}

        # kill -9, restart: it adopts what exists (nothing is rewritten, nothing duplicated)
        first.kill()
        first = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp1b.log")
        wait_for("the restarted control plane to lead", lambda: "acquired the lease" in first.log.read_text(), 40)
        time.sleep(2.0)
        after = {k: get_json(h, bin_dir, k, "wp2", "-n", "default")["metadata"]["resourceVersion"]
                 for k in ("deploy", "svc", "sa", "gtw")}
        assert after == before, first.tail()
        assert len(json.loads(kubectl(bin_dir, h.kubeconfig, "get", "deploy", "-n", "default", "-l",
                                      "gateway.networking.k8s.io/gateway-name=wp2", "-o", "json"))["items"]) == 1

        # kube-apiserver restart: the watches resume and a change made after it is acted on
        h.restart_apiserver(down=1.0)
        kubectl(bin_dir, h.kubeconfig, "label", "namespace", "default", "istio.io/use-waypoint=wp2")
        wait_for("WaypointBound after the API server restart", lambda: bound(h, bin_dir, "reviews") is not None, 60)
        kubectl(bin_dir, h.kubeconfig, "label", "namespace", "default", "istio.io/use-waypoint-")
        wait_for("WaypointBound removed", lambda: bound(h, bin_dir, "reviews") is None, 60)

        # a second control plane follows; killing the leader hands over within the lease duration
        second = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp2.log")
        time.sleep(3.0)
        lease = get_json(h, bin_dir, "lease", "meshway-controlplane", "-n", "istio-system")
        leader_pid = int(lease["spec"]["holderIdentity"].rsplit("_", 1)[1])
        assert leader_pid == first.proc.pid, lease
        first.kill()
        killed = time.monotonic()
        wait_for("the follower to take the lease", lambda: get_json(
            h, bin_dir, "lease", "meshway-controlplane", "-n", "istio-system")["spec"]["holderIdentity"]
            .endswith(f"_{second.proc.pid}"), 30)
        assert time.monotonic() - killed < 15 + 2 + 2  # lease duration + one retry period + slack
        kubectl(bin_dir, h.kubeconfig, "delete", "deploy", "wp2", "-n", "default")
        wait_for("the new leader to re-apply deploy/wp2", lambda: try_get(h, bin_dir, "deploy", "wp2", "-n", "default"),
                 30)
        second.kill(signal.SIGTERM)  # a clean stop releases the Lease (no 15 s wait for a successor)
        assert get_json(h, bin_dir, "lease", "meshway-controlplane", "-n", "istio-system")["spec"].get(
            "holderIdentity", "") == ""
    finally:
        first.kill(signal.SIGTERM)
        if second is not None:
            second.kill(signal.SIGTERM)
        kubectl(bin_dir, h.kubeconfig, "delete", "-f", str(tmp_path / "waypoint.yaml"), "--ignore-not-found")


def test_istioctl_waypoint_commands(cluster, tmp_path):
    """The real istioctl built here, against this API server and meshway's control plane."""
    h, bin_dir = cluster
    bin_dir = require_binaries("istioctl")
    kubectl(bin_dir, h.kubeconfig, "create", "namespace", "shop")
    cp = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp.log")

    def istioctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(bin_dir, "istioctl", h.kubeconfig, *args, check=check, timeout=120)
    try:
        generated = istioctl("waypoint", "generate", "-n", "shop", "--for", "service").stdout
        assert "gatewayClassName: istio-waypoint" in generated and "protocol: HBONE" in generated
        out = istioctl("waypoint", "apply", "-n", "shop", "--enroll-namespace").stdout
        assert "✅ waypoint shop/waypoint applied" in out
        assert '✅ namespace shop labeled with "istio.io/use-waypoint: waypoint"' in out
        wait_for("the waypoint Deployment", lambda: try_get(h, bin_dir, "deploy", "waypoint", "-n", "shop"), 60)
        wait_for("the Gateway's Programmed condition", lambda: "Programmed" in json.dumps(
            (try_get(h, bin_dir, "gtw", "waypoint", "-n", "shop") or {}).get("status", {})), 30)
        listed = istioctl("waypoint", "list", "-A").stdout.splitlines()
        assert listed[0].split() == ["NAMESPACE", "NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED"]
        assert ["shop", "waypoint", "default", "none", "False"] in [line.split() for line in listed[1:]]
        status = istioctl("waypoint", "status", "-n", "shop", "--wait=false").stdout.splitlines()
        assert status[0].split() == ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
        assert status[1].split()[:4] == ["waypoint", "False", "Programmed", "AddressNotAssigned"]
        deleted = istioctl("waypoint", "delete", "--all", "-n", "shop").stdout
        assert "waypoint shop/waypoint deleted" in deleted
        wait_for("the waypoint objects collected", lambda: try_get(h, bin_dir, "deploy", "waypoint", "-n", "shop")
                 is None, 60)
        assert istioctl("waypoint", "list", "-n", "shop").stdout.strip() == "No waypoints found."
        (tmp_path / "istioctl-output.txt").write_text("\n".join([generated, out, *listed, *status, deleted]))
    finally:
        cp.kill(signal.SIGTERM)


BAD_GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bad-waypoint
  namespace: default
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: http
    port: 8080
    protocol: HTTP
"""


def conditions_of(body: dict) -> dict:
    status = body.get("status") or {}
    out = {c["type"]: (c["status"], c["reason"], c["message"]) for c in status.get("conditions") or ()}
    for li in status.get("listeners") or ():
        out |= {f"{li['name']}/{c['type']}": (c["status"], c["reason"], c["message"]) for c in li["conditions"]}
    return out


def test_bad_input_gets_the_embedded_stores_conditions(cluster, tmp_path):
    h, bin_dir = cluster
    cp = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp.log")
    try:
        (tmp_path / "bad.yaml").write_text(BAD_GATEWAY)
        kubectl(bin_dir, h.kubeconfig, "apply", "-f", str(tmp_path / "bad.yaml"))
        store = Store(tmp_path / "embedded")
        store.apply(load_yaml(BAD_GATEWAY, "bad.yaml"))
        expected = conditions_of(store.get(store_kind("gtw"), "default", "bad-waypoint"))
        store.close()
        assert expected["Accepted"][:2] == ("False", "ListenersNotValid")
        # (the CRD's default status says Unknown/Pending "Waiting for controller" until it is written)
        wait_for("the bad Gateway's status", lambda: conditions_of(
            get_json(h, bin_dir, "gtw", "bad-waypoint", "-n", "default")) == expected, 30)
        # the API server's own schema check refuses what the CRD forbids, before meshway sees it
        (tmp_path / "vs.yaml").write_text(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: default}\n"
            "spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: notanumber}]}]}\n")
        refused = run(bin_dir, "kubectl", h.kubeconfig, "apply", "-f", str(tmp_path / "vs.yaml"), check=False)
        assert refused.returncode != 0 and "weight" in refused.stderr
        assert cp.proc.poll() is None, cp.tail()
    finally:
        cp.kill(signal.SIGTERM)
        kubectl(bin_dir, h.kubeconfig, "delete", "-f", str(tmp_path / "bad.yaml"), "--ignore-not-found")


def test_a_waypoint_pod_gets_its_config_over_tcp_mtls(cluster, tmp_path):
    """`--xds-addr`: the translation runs on the same watches, and a waypoint pod's Envoy that
    dials the control plane over TCP + mTLS with its workload certificate gets its config and ACKs.
    This cluster has no kubelet yet (issue "Kubernetes nodes"), so the test does the kubelet's one
    step the control plane reads: it writes the pod's IP and phase on its status."""
    from meshway.ca import CertificateAuthority
    from meshway.runtime.envoy_admin import AdminError
    from meshway.xds.proxy import build_node_id
    from test_xds_mtls import Proxy, require_envoy

    h, bin_dir = cluster
    envoy = require_envoy()
    state = tmp_path / "state"
    log = tmp_path / "cp.log"
    proc = subprocess.Popen([sys.executable, "-m", "meshway", "controlplane", "--kubeconfig", str(h.kubeconfig),
                             "--xds-addr", "127.0.0.1:0", "-v"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "MESHWAY_STATE_DIR": str(state)})
    proxy = None
    try:
        kubectl(bin_dir, h.kubeconfig, "create", "namespace", "xds")
        (tmp_path / "wp.yaml").write_text(WAYPOINT.replace("namespace: default", "namespace: xds"))
        kubectl(bin_dir, h.kubeconfig, "apply", "-f", str(tmp_path / "wp.yaml"))
        pod = wait_for("the waypoint pod", lambda: (json.loads(kubectl(
            bin_dir, h.kubeconfig, "get", "pods", "-n", "xds", "-l", "gateway.networking.k8s.io/gateway-name=waypoint",
            "-o", "json"))["items"] or [None])[0], 60)
        name, ip = pod["metadata"]["name"], "10.244.1.10"
        kubectl(bin_dir, h.kubeconfig, "patch", "pod", name, "-n", "xds", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}))
        address = wait_for("run/xds-address", lambda: (state / "run" / "xds-address").exists()
                           and (state / "run" / "xds-address").read_text().strip(), 60)
        ca = CertificateAuthority(state)
        node_id = build_node_id("waypoint", ip, name, "xds")
        proxy = Proxy(tmp_path, "wp", node_id, ca.issue("xds", "waypoint"), ca.root_pem(), address, envoy)
        def configured() -> bool:
            try:
                return bool(proxy.dynamic("listeners") and proxy.dynamic("clusters"))
            except AdminError:  # the admin socket is not there yet
                return False
        try:
            wait_for("the waypoint's listeners and clusters over TCP + mTLS", configured, 90)
        except BaseException:
            print(proxy.log(), log.read_text()[-4000:])
            raise
        stats = proxy.stats()
        assert stats.get("cluster_manager.cds.update_rejected", 0) == 0
        assert stats.get("listener_manager.lds.update_rejected", 0) == 0
        status = json.loads((state / "run" / "proxy-status.json").read_text())[node_id]
        assert status["connected"] and {t: status["xds"][t]["state"] for t in ("Cluster", "Listener", "Secret")} == \
            {"Cluster": "SYNCED", "Listener": "SYNCED", "Secret": "SYNCED"}, status
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        if proxy is not None:
            proxy.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        kubectl(bin_dir, h.kubeconfig, "delete", "namespace", "xds", "--wait=false")


CROSS_NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: common-infrastructure
---
apiVersion: v1
kind: Namespace
metadata:
  name: cross-namespace-waypoint-consumer
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: egress-gateway
  namespace: common-infrastructure
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels:
            kubernetes.io/metadata.name: cross-namespace-waypoint-consumer
---
apiVersion: v1
kind: Service
metadata:
  name: consumer
  namespace: {ns}
  labels:
    istio.io/use-waypoint: egress-gateway
    istio.io/use-waypoint-namespace: common-infrastructure
spec:
  selector: {{app: consumer}}
  ports:
  - name: http
    port: 80
"""


def test_cross_namespace_allowed_routes_selector_matches_the_embedded_store(cluster, tmp_path):
    """The docs' cross-namespace waypoint: a Service in the admitted namespace is bound (the
    embedded store's condition), one in another namespace gets the embedded store's
    AttachmentDenied-style condition, both read back through the real API server."""
    h, bin_dir = cluster
    cp = ControlPlaneProcess(h.kubeconfig, tmp_path / "cp.log")
    try:
        for ns in ("cross-namespace-waypoint-consumer", "elsewhere"):
            text = CROSS_NAMESPACE.format(ns=ns)
            if ns == "elsewhere":
                text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: elsewhere\n---\n" + text
            (tmp_path / f"{ns}.yaml").write_text(text)
            kubectl(bin_dir, h.kubeconfig, "apply", "-f", str(tmp_path / f"{ns}.yaml"))
        store = Store(tmp_path / "embedded")
        for ns in ("cross-namespace-waypoint-consumer", "elsewhere"):
            store.apply(load_yaml((tmp_path / f"{ns}.yaml").read_text(), f"{ns}.yaml"))
        expected = {}
        for ns in ("cross-namespace-waypoint-consumer", "elsewhere"):
            body = store.get(store_kind("svc"), ns, "consumer")
            (cond,) = [c for c in body["status"]["conditions"] if c["type"] == "istio.io/WaypointBound"]
            expected[ns] = {k: cond[k] for k in ("status", "reason", "message")}
        store.close()
        assert expected["cross-namespace-waypoint-consumer"] != expected["elsewhere"]

        def bound_in(ns: str) -> dict | None:
            body = get_json(h, bin_dir, "svc", "consumer", "-n", ns)
            found = [c for c in (body.get("status") or {}).get("conditions") or ()
                     if c["type"] == "istio.io/WaypointBound"]
            return {k: found[0][k] for k in ("status", "reason", "message")} if found else None
        for ns, want in expected.items():
            wait_for(f"WaypointBound of {ns}/consumer", lambda ns=ns, want=want: bound_in(ns) == want, 30)
    finally:
        cp.kill(signal.SIGTERM)
