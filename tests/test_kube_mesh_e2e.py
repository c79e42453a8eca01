"""The mesh on Kubernetes, end to end: `meshway up --kubernetes` (the real etcd, kube-apiserver,
kube-controller-manager and kube-scheduler built here, meshway's control plane, two node agents on
one shared network), bookinfo and the curl client applied, then the seed docs' commands verbatim
with the real kubectl and istioctl (KUBECONFIG exported, no flags added):

    kubectl label namespace default istio.io/dataplane-mode=ambient
    istioctl waypoint apply -n default --enroll-namespace --wait
    kubectl get gtw waypoint -n default
    kubectl apply -f reviews-traffic.yaml          (the blog's 90/10 VirtualService)
    kubectl label service reviews istio.io/use-waypoint=none

Requests come from the curl pod's own network namespace (its node proxy captures them); the
waypoint's own stats (its Envoy admin, inside its pod's namespace) count where they went. The
ztunnel DaemonSet's pods are the node proxies, run by each node's agent."""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kube_support import require_binaries, wait_for
from meshway import __version__
from meshway.runtime.netns import cluster_id, pod_netns_name

DEMO = Path(__file__).resolve().parent.parent / "meshway" / "demo"
REVIEWS_STAT = re.compile(r"^cluster\.inbound-vip\|9080\|http/(v\d)\|reviews_default_svc_cluster_local\..*"
                          r"\.upstream_rq_total: (\d+)$", re.M)
# One request per line from inside the curl pod: "<monotonic> <status> <version or ->".
CLIENT = r"""
import http.client, sys, time, re
count, pause, host, method, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
for _ in range(count):
    try:
        c = http.client.HTTPConnection(host, 9080, timeout=5)
        c.request(method, path)
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        m = re.search(r'"version": "(v\d)"', body)
        print(time.monotonic(), r.status, m.group(1) if m else "-", flush=True)
        c.close()
    except Exception as exc:
        print(time.monotonic(), 0, type(exc).__name__, flush=True)
    time.sleep(pause)
"""


def require_root() -> None:
    if os.geteuid() != 0:
        reason = "the node agents need root (network namespaces, iptables)"
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def meshway(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshway", "--state-dir", str(state), *args], capture_output=True,
                          text=True, timeout=timeout, env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})


class Shell:
    """The seed docs' commands as typed: KUBECONFIG exported, kubectl and istioctl on PATH."""

    def __init__(self, bin_dir: Path, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def __call__(self, command: str, timeout: float = 120) -> str:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, env=self.env, timeout=timeout)
        assert done.returncode == 0, f"$ {command}\n{done.stdout}{done.stderr}"
        return done.stdout


APPS = ("-f", str(DEMO / "bookinfo.yaml"), "-f", str(DEMO / "bookinfo-client.yaml"))


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("kmesh") / "state"


@pytest.fixture(scope="module")
def mesh(state):
    require_root()
    bin_dir = require_binaries("istioctl")
    up = meshway(state, "up", "--kubernetes", *APPS)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        sh = Shell(bin_dir, state / "kubernetes" / "admin.kubeconfig")
        net = cluster_id(state / "kubernetes" / "network")
        yield sh, net
    finally:
        down = meshway(state, "down")
        assert down.returncode == 0, down.stdout + down.stderr


def pods(sh: Shell, selector: str = "", namespace: str = "default") -> list[dict]:
    return json.loads(sh(f"kubectl get pods -n {namespace} -o json {selector}".strip()))["items"]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def netns_of(net: str, sh: Shell, selector: str, namespace: str = "default") -> str:
    pod = next(p for p in pods(sh, f"-l {selector}", namespace)
               if ready(p) and not p["metadata"].get("deletionTimestamp"))
    return pod_netns_name(net, namespace, pod["metadata"]["name"])


def requests(netns: str, count: int, pause: float = 0.0, host: str = "reviews", method: str = "GET",
             path: str = "/reviews/1") -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-P", "-c", CLIENT, str(count), str(pause),
                             host, method, path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(proc: subprocess.Popen, timeout: float = 300) -> list[tuple[float, int, str]]:
    out, err = proc.communicate(timeout=timeout)
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert lines, err
    return [(float(t), int(code), version) for t, code, version in lines]


WAYPOINT = "gateway.networking.k8s.io/gateway-name=waypoint"


def waypoint_counts(net: str, sh: Shell, netns: str | None = None) -> dict[str, int]:
    """reviews requests a waypoint replica (the first Ready one, or the one in `netns`) sent upstream,
    by version (its Envoy's own stats)."""
    out = subprocess.run(["ip", "netns", "exec", netns or netns_of(net, sh, WAYPOINT), "curl", "-s",
                          "127.0.0.1:15000/stats?filter=upstream_rq_total"], capture_output=True, text=True,
                         timeout=10).stdout
    return {v: int(n) for v, n in REVIEWS_STAT.findall(out)}


def failed_window(got: list[tuple[float, int, str]]) -> float:
    bad = [t for t, code, _ in got if code != 200]
    return bad[-1] - bad[0] if bad else 0.0


def test_seed_commands_verbatim_route_the_curl_pods_requests_90_10_through_the_waypoint(mesh):
    sh, net = mesh
    wait_for("every pod Running and Ready", lambda: (p := pods(sh)) and len(p) == 7 and all(map(ready, p)), 120)
    wide = sh("kubectl get pods -o wide")
    nodes = {line.split()[6] for line in wide.splitlines()[1:]}
    assert nodes == {"node-1", "node-2"}, wide  # the scheduler spread them: traffic crosses nodes
    assert all(re.search(r"\s10\.244\.[12]\.\d+\s", line) for line in wide.splitlines()[1:]), wide
    assert len(json.loads(sh("kubectl get pods -n istio-system -l app=ztunnel -o json"))["items"]) == 2

    sh("kubectl label namespace default istio.io/dataplane-mode=ambient")
    out = sh("istioctl waypoint apply -n default --enroll-namespace --wait")
    assert "waypoint default/waypoint applied" in out and "is ready!" in out, out
    gtw = sh("kubectl get gtw waypoint -n default")
    assert re.search(r"waypoint\s+istio-waypoint\s+\S+\s+True", gtw), gtw
    sh(f"kubectl apply -f {DEMO / 'reviews-traffic.yaml'}")

    curl = netns_of(net, sh, "app=curl")
    wait_for("the waypoint applying the 90/10 split (v2 answers)",
             lambda: any(v == "v2" for _, _, v in results(requests(curl, 20))), 30, 1)
    # (the Gateway is Programmed once one replica is: both node proxies have the binding by now)
    before = waypoint_counts(net, sh)
    got = results(requests(curl, 1000))
    after = waypoint_counts(net, sh)
    failed = [r for r in got if r[1] != 200]
    assert not failed, failed[:5]
    served = {v: after.get(v, 0) - before.get(v, 0) for v in ("v1", "v2")}
    assert sum(served.values()) == 1000, (served, before, after)  # every request went through the waypoint
    assert 850 <= served["v1"] <= 950 and served["v1"] + served["v2"] == 1000, served
    assert [r[2] for r in got].count("v2") == served["v2"]  # the answers agree with the waypoint's count


def test_a_service_opting_out_of_the_waypoint_goes_direct_within_2s_with_no_failed_request(mesh):
    sh, net = mesh
    curl = netns_of(net, sh, "app=curl")
    wait_for("traffic through the waypoint", lambda: waypoint_counts(net, sh), 60, 1)
    load = requests(curl, 400, 0.02)  # about 12 s of requests across both changes
    time.sleep(2)
    sh("kubectl label service reviews istio.io/use-waypoint=none")
    opted_out = time.monotonic()
    time.sleep(4)
    direct_count = waypoint_counts(net, sh)
    time.sleep(1.5)
    # nothing reaches the waypoint any more: its counters stand still, or it dropped reviews' clusters
    assert waypoint_counts(net, sh) in (direct_count, {})
    sh("kubectl label service reviews istio.io/use-waypoint-")
    back = time.monotonic()
    got = results(load)
    assert [r for r in got if r[1] != 200] == []
    v3 = [t for t, _, v in got if v == "v3" and opted_out <= t < back]  # only without the waypoint's split
    assert v3 and v3[0] - opted_out <= 2.0, (v3[:3], opted_out)
    assert not [t for t, _, v in got if v == "v3" and t >= back + 2.0]  # and back through it within 2 s


def test_kubectl_exec_port_forward_and_istioctl_proxy_config_through_the_kubelet_streaming_api(mesh):
    """The docs' way of sending traffic (`kubectl exec deploy/curl -- curl …`) and of looking at a
    waypoint (`istioctl proxy-config … deploy/…`, which port-forwards to its admin port), verbatim."""
    sh, _ = mesh
    out = sh("kubectl exec deploy/curl -- curl -s http://reviews:9080/reviews/1")
    assert json.loads(out)["id"] == "1"
    failed = subprocess.run(shlex.split("kubectl exec deploy/curl -- sh -c 'exit 3'"), capture_output=True, text=True,
                            env=sh.env, timeout=60)
    assert failed.returncode == 3 and "command terminated with exit code 3" in failed.stderr
    echoed = subprocess.run(shlex.split("kubectl exec -i deploy/curl -- cat"), input="from stdin\n", capture_output=True,
                            text=True, env=sh.env, timeout=60)
    assert echoed.stdout == "from stdin\n"
    assert sh("kubectl exec deploy/curl -- id -u").strip() == "65532"  # the container's user

    listeners = sh("istioctl proxy-config listener deploy/waypoint --waypoint")
    assert re.search(r"envoy://main_internal\s+inbound-vip\|9080\|http\|reviews\.default\.svc\.cluster\.local", listeners)
    routes = sh("istioctl proxy-config routes deploy/waypoint")
    assert re.search(r"inbound-vip\|9080\|http\|reviews\.default\.svc\.cluster\.local\s+.*reviews\.default", routes)
    assert "HEALTHY" in sh("istioctl proxy-config endpoints deploy/waypoint")

    forward = subprocess.Popen(shlex.split("kubectl port-forward deploy/productpage-v1 0:9080"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=sh.env)
    try:
        line = forward.stdout.readline()  # Forwarding from 127.0.0.1:PORT -> 9080
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        for _ in range(3):  # a connection each, one session
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/productpage", timeout=10) as answer:
                assert answer.status == 200 and b"Simple Bookstore App" in answer.read()
    finally:
        forward.terminate()
        forward.wait(10)


def on_terminal(env: dict, argv: list[str], typed: list[tuple[bytes, tuple[int, int] | None]],
                timeout: float = 90) -> tuple[str, int]:
    """Run `argv` on a pseudo-terminal of 100x40 (kubectl -t wants one); once it prints, write each
    `typed` line (after resizing the terminal to the (cols, rows) given with it). (output, exit code)."""
    import fcntl
    import pty
    import select
    import signal
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    out, deadline, pending = b"", time.monotonic() + timeout, list(typed)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        if out and pending:
            time.sleep(1.0)
            line, size = pending.pop(0)
            if size is not None:
                fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
                os.kill(pid, signal.SIGWINCH)
                time.sleep(1.0)
            os.write(fd, line)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return out.decode(errors="replace").replace("\r\n", "\n"), os.waitstatus_to_exitcode(status)


def test_proxy_status_ztunnel_config_exec_tty_and_attach_against_the_cluster(mesh, state):
    """`istioctl proxy-status --xds-address` verbatim against meshway's control plane (the syncz debug
    type, istioctl's own token), plain `istioctl proxy-status` (through the istiod pod's port-forward),
    plain `istioctl version` (the same pod's 15014: `/version`, `/debug/syncz`),
    `meshway --kubeconfig proxy-status`, `ztunnel-config` and `metrics`
    (the proxies' admin through the API server's port-forward), `kubectl exec -it` on a terminal
    with a resize, and `kubectl attach` following a container's output (with -i: refused, saying why)."""
    sh, _ = mesh
    kubeconfig = state / "kubernetes" / "admin.kubeconfig"
    lease = json.loads(sh("kubectl get lease -n istio-system meshway-controlplane -o json"))
    address = lease["metadata"]["annotations"]["meshway.io/xds-address"]
    table = sh(f"istioctl proxy-status --xds-address {address}").splitlines()
    assert table[0].split() == ["NAME", "CLUSTER", "ISTIOD", "VERSION", "SUBSCRIBED", "TYPES"]
    rows = [line.split() for line in table[1:]]
    waypoints = [r for r in rows if r[0].startswith("waypoint~") and "waypoint-" in r[0]]
    assert waypoints and all(r[1] == "Kubernetes" and r[2] == lease["spec"]["holderIdentity"] and
                             r[4:] == ["5", "(CDS,LDS,EDS,RDS,SDS)"] for r in waypoints), table
    assert sorted(r[0].split("~")[2] for r in rows if r[0].startswith("ztunnel~")) == \
        ["ztunnel-node-1.istio-system", "ztunnel-node-2.istio-system"]
    # Plain `istioctl proxy-status`: istioctl finds the Running pod labelled app=istiod in istio-system
    # (`meshway install`'s Deployment), port-forwards to its 15012 (the node agent relays it to the
    # control plane's xDS port) and asks the same question there.
    wait_for("the istiod pod", lambda: [p for p in pods(sh, "-l app=istiod", "istio-system")
                                        if p["status"].get("phase") == "Running"])
    plain = sh("istioctl proxy-status").splitlines()
    assert plain[0].split() == table[0].split(), plain
    assert sorted(line.split()[0] for line in plain[1:]) == sorted(r[0] for r in rows), (plain, table)
    assert all(line.split()[2] == lease["spec"]["holderIdentity"] for line in plain[1:]), plain
    version = sh("istioctl x version")  # the control plane's version over xDS (syncz), through the same pod
    assert re.search(r"^control plane version: meshway-", version, re.M), version
    # Plain `istioctl version`: the same pod's 15014 (relayed to the control plane's monitoring port):
    # `/version` for the control plane's line, `/debug/syncz` for the data plane's; no error line.
    client = sh("istioctl version --remote=false").strip()
    done = subprocess.run(["istioctl", "version"], capture_output=True, text=True, env=sh.env, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    assert done.stdout.splitlines() == [client, f"control plane version: meshway-{__version__}",
                                        f"data plane version: meshway-{__version__} ({len(plain) - 1} proxies)"], \
        done.stdout
    full = json.loads(sh("istioctl version -o json"))
    assert [(m["Component"], m["Info"]["version"], m["Info"]["revision"], m["Info"]["status"])
            for m in full["meshVersion"]] == [("pilot", f"meshway-{__version__}", "unknown", "Clean")], full
    assert sorted((p["ID"], p["Type"]) for p in full["dataPlaneVersion"]) == sorted(
        (line.split()[0], line.split()[0].split("~")[0]) for line in plain[1:]), full

    env = {k: v for k, v in sh.env.items() if k not in ("KUBECONFIG", "MESHWAY_STATE_DIR")}

    def meshway_kube(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "meshway", "--kubeconfig", str(kubeconfig), *args],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout
    ours = [line.split() for line in meshway_kube("proxy-status").splitlines()]
    assert ours[0] == ["NAME", "TYPE", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "SDS", "VERSION"]
    assert any(r[1] == "waypoint" and r[3:8] == ["SYNCED"] * 5 for r in ours[1:]), ours
    workloads = meshway_kube("ztunnel-config", "workloads", "--node", "node-1")
    assert re.search(r"^default\s+reviews-v1-\S+\s+10\.244\.\d+\.\d+\s+node-\d\s", workloads, re.M), workloads
    assert "spiffe://cluster.local/ns/default/sa/bookinfo-reviews" in meshway_kube("zc", "certificates", "ds/ztunnel")
    sh("kubectl exec deploy/curl -- sh -c 'for i in 1 2 3 4 5; do curl -s -o /dev/null http://reviews:9080/reviews/1; done'")
    http = meshway_kube("metrics", "svc/reviews").split("\n\n")[0].splitlines()  # the control plane's tally
    assert http[0].split()[:3] == ["DESTINATION", "VERSION", "REQUESTS"]
    assert sum(int(r.split()[2]) for r in http[1:] if r.startswith("reviews.default.svc.cluster.local")) >= 5, http

    out, code = on_terminal(sh.env, ["kubectl", "exec", "-it", "deploy/curl", "--", "sh"],
                            [(b"echo typed-$((6*7))\r", None), (b"tty; stty size; exit 5\r", (132, 50))])
    assert code == 5 and "typed-42" in out and "/dev/pts/" in out, out
    assert "50 132" in out and "command terminated with exit code 5" in out, out

    attach = subprocess.Popen(["kubectl", "attach", "deploy/reviews-v1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=sh.env)
    try:
        time.sleep(3)
        pod = next(p for p in pods(sh, "-l app=reviews,version=v1") if ready(p))
        sh(f"kubectl exec deploy/curl -- curl -s -o /dev/null {pod['status']['podIP']}:9080/reviews/7")
        line = ""
        deadline = time.monotonic() + 30
        while "/reviews/7" not in line and time.monotonic() < deadline:
            line = attach.stdout.readline()
        assert '"GET /reviews/7 HTTP/1.1" 200' in line
    finally:
        attach.terminate()
        attach.wait(10)
    refused = subprocess.run(["kubectl", "attach", "-i", "deploy/reviews-v1"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, env=sh.env, timeout=60)
    assert refused.returncode == 1
    assert 'cannot attach to the stdin of container "reviews"' in refused.stderr and "/dev/null" in refused.stderr


CALLERS = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: shared}
""" + "".join(f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, version: {version}}}}}
    spec:
      serviceAccountName: shared
      containers: [{{name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}}]
""" for name, version in (("caller-a", "v1"), ("caller-b", "v2")))


def test_metrics_name_each_source_workload_of_one_service_account(mesh, state, tmp_path):
    """`meshway --kubeconfig metrics` reads the control plane's tally from its monitoring port (the
    address on its Lease): two Deployments on one service account are each their own source workload
    at the waypoint (reporter="waypoint") and on the client's node proxy (reporter="source")."""
    from prometheus_client.parser import text_string_to_metric_families

    sh, net = mesh
    sh("kubectl label namespace default istio.io/dataplane-mode=ambient --overwrite")
    sh("istioctl waypoint apply -n default --enroll-namespace --wait")
    lease = json.loads(sh("kubectl get lease -n istio-system meshway-controlplane -o json"))
    assert re.fullmatch(r"127\.0\.0\.1:\d+", lease["metadata"]["annotations"]["meshway.io/metrics-address"])
    (tmp_path / "callers.yaml").write_text(CALLERS)
    sh(f"kubectl apply -f {tmp_path / 'callers.yaml'}")
    kubeconfig = state / "kubernetes" / "admin.kubeconfig"
    env = {k: v for k, v in sh.env.items() if k not in ("KUBECONFIG", "MESHWAY_STATE_DIR")}

    def metrics(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "meshway", "--kubeconfig", str(kubeconfig), "metrics", *args],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0 and not done.stderr, done.stdout + done.stderr
        return done.stdout

    def counts(text: str, name: str, **match: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in text_string_to_metric_families(text):
            for s in f.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                    out[s.labels["source_workload"]] = out.get(s.labels["source_workload"], 0) + int(s.value)
        return out
    try:
        wait_for("both callers Running and Ready", lambda: len([p for p in pods(sh, "-l 'app in (caller-a,caller-b)'")
                                                                if ready(p)]) == 2, 120)
        shared = dict(source_principal="spiffe://cluster.local/ns/default/sa/shared",
                      destination_service="reviews.default.svc.cluster.local")
        waypoint = dict(reporter="waypoint", response_code="200", **shared)
        source = dict(reporter="source", **shared)
        for caller in ("caller-a", "caller-b"):  # in the mesh once its node proxy has its chains
            wait_for(f"{caller} through the waypoint", lambda: results(requests(netns_of(net, sh, f"app={caller}"),
                                                                                1))[0][1] == 200, 60, 1)
        before = metrics("-o", "prometheus")
        sent = {"caller-a": 3, "caller-b": 4}
        for caller, n in sent.items():
            assert [r[1] for r in results(requests(netns_of(net, sh, f"app={caller}"), n))] == [200] * n
        for name, match in (("istio_requests_total", waypoint), ("istio_tcp_connections_opened_total", source),
                            ("istio_tcp_connections_closed_total", source)):
            wait_for(f"{name} of each caller", lambda: {w: n - counts(before, name, **match).get(w, 0) for w, n in
                                                        counts(metrics("-o", "prometheus"), name, **match).items()}
                     == sent, 30, 1)
        after = metrics("-o", "prometheus")
        line = next(line for line in after.splitlines() if line.startswith("istio_requests_total{")
                    and 'source_workload="caller-b"' in line)
        for label in ('source_app="caller-b"', 'source_version="v2"', 'source_workload_namespace="default"',
                      'connection_security_policy="mutual_tls"', 'reporter="waypoint"'):
            assert label in line, line
        table = [line.split() for line in metrics("svc/reviews").splitlines()]
        assert any(r[:3] == ["source", "caller-a.default", "reviews.default.svc.cluster.local"] for r in table), table
    finally:
        sh(f"kubectl delete -f {tmp_path / 'callers.yaml'} --wait=true", timeout=120)
        wait_for("the callers' pods gone", lambda: not pods(sh, "-l 'app in (caller-a,caller-b)'"), 120, 1)


def test_kubectl_logs_and_a_deleted_pod_replaced_through_its_replicaset(mesh):
    sh, _ = mesh
    assert sh("kubectl logs deploy/reviews-v2").strip()  # the app's own output, through the kubelet API
    old = next(p for p in pods(sh, "-l app=reviews,version=v1"))["metadata"]["name"]
    sh(f"kubectl delete pod {old}")
    wait_for("a new reviews-v1 pod Running and Ready", lambda: [
        p for p in pods(sh, "-l app=reviews,version=v1") if p["metadata"]["name"] != old and ready(p)], 60)


def test_the_waypoint_scaled_to_two_serves_from_both_and_a_replica_killed_costs_under_1_percent(mesh):
    sh, net = mesh
    curl = netns_of(net, sh, "app=curl")
    sh("kubectl scale deploy/waypoint --replicas 2")
    replicas = wait_for("two waypoint replicas Ready", lambda: (r := [p for p in pods(sh, f"-l {WAYPOINT}")
                                                                     if ready(p)]) and len(r) == 2 and r, 90)
    spaces = [pod_netns_name(net, "default", p["metadata"]["name"]) for p in replicas]
    wait_for("both replicas with reviews' config", lambda: all(waypoint_counts(net, sh, ns) for ns in spaces), 30, 1)
    # Settled first: right after a scale-up a few requests have been seen to fail (2 of 300 with 503 in one
    # CI run, from the new replica's first upstream connections; README "Known gaps"), so the serving
    # check starts once a batch passes whole.
    wait_for("a batch of requests all answered with both replicas up", lambda: all(
        r[1] == 200 for r in results(requests(curl, 50))), 30, 0.5)
    before = [sum(waypoint_counts(net, sh, ns).values()) for ns in spaces]
    got = results(requests(curl, 300))
    served = [sum(waypoint_counts(net, sh, ns).values()) - b for ns, b in zip(spaces, before)]
    assert [r for r in got if r[1] != 200] == [] and sum(served) == 300 and min(served) > 0, served

    load = requests(curl, 600, 0.01)
    time.sleep(2)
    victim = replicas[0]["metadata"]["name"]
    subprocess.run(["pkill", "-9", "-f", f"{pod_netns_name(net, 'default', victim)}/istio-proxy/envoy-rev.json"],
                   check=True)
    got = results(load)
    failed = [r for r in got if r[1] != 200]
    assert len(failed) <= len(got) // 100 and failed_window(got) <= 2.0, failed
    wait_for("the killed replica restarted and Ready again", lambda: any(
        p["metadata"]["name"] == victim and ready(p) and p["status"]["containerStatuses"][0]["restartCount"] >= 1
        for p in pods(sh, f"-l {WAYPOINT}")), 60)
    sh("kubectl scale deploy/waypoint --replicas 1")
    wait_for("one waypoint replica left", lambda: len(pods(sh, f"-l {WAYPOINT}")) == 1, 60)


def test_a_node_agent_killed_and_restarted_adopts_its_running_pods(mesh, state):
    sh, net = mesh
    curl = netns_of(net, sh, "app=curl")
    record = json.loads((state / "kubernetes" / "run" / "node-1.pid").read_text())
    on_node = {p["metadata"]["name"]: p for p in pods(sh) if p["spec"].get("nodeName") == "node-1"}
    assert on_node
    started = {name: [(c["restartCount"], c["state"]["running"]["startedAt"]) for c in p["status"]["containerStatuses"]]
               for name, p in on_node.items()}
    processes = {name: sorted(netns_pids(pod_netns_name(net, "default", name))) for name in on_node}
    load = requests(curl, 400, 0.01)
    time.sleep(1)
    os.kill(record["pid"], 9)
    time.sleep(2)
    again = meshway(state, "up", "--kubernetes", *APPS)  # starts what is not running: the node agent
    assert again.returncode == 0 and "started node-1" in again.stdout, again.stdout + again.stderr
    got = results(load)
    assert [r for r in got if r[1] != 200] == []  # the data plane never noticed
    time.sleep(3)  # the restarted agent has looked at its pods a few times
    now = {p["metadata"]["name"]: p for p in pods(sh) if p["spec"].get("nodeName") == "node-1"}
    assert set(now) == set(on_node) and all(map(ready, now.values()))
    assert {name: [(c["restartCount"], c["state"]["running"]["startedAt"]) for c in p["status"]["containerStatuses"]]
            for name, p in now.items()} == started  # adopted, not started again
    assert {name: sorted(netns_pids(pod_netns_name(net, "default", name))) for name in now} == processes
    assert results(requests(curl, 50)) and all(code == 200 for _, code, _ in results(requests(curl, 50)))


def outside_client(sh: Shell, net: str) -> str:
    """The network namespace of a curl pod in namespace `outside` (not in the mesh), made once."""
    if "outside" not in sh("kubectl get namespaces -o name"):
        sh("kubectl create namespace outside")
        sh(f"kubectl apply -n outside -f {DEMO / 'bookinfo-client.yaml'}")
    wait_for("the outside curl pod Ready", lambda: any(map(ready, pods(sh, "-l app=curl", "outside"))), 90)
    return netns_of(net, sh, "app=curl", "outside")


# istio.io/latest/docs/ambient/getting-started/enforce-auth-policies (L4 updated for the waypoint, as
# the page says), applied unchanged with kubectl
POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-ztunnel
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-gateway-istio
        - cluster.local/ns/default/sa/waypoint
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/curl
    to:
    - operation:
        methods: ["GET"]
"""


def test_authorization_policies_l7_at_the_waypoint_and_l4_at_the_destinations_node_proxy(mesh, tmp_path):
    sh, net = mesh
    curl, outside = netns_of(net, sh, "app=curl"), outside_client(sh, net)
    (tmp_path / "policies.yaml").write_text(POLICIES)
    sh(f"kubectl apply -f {tmp_path / 'policies.yaml'}")

    def codes(netns: str, method: str, host: str = "productpage") -> list[int]:
        return [code for _, code, _ in results(requests(netns, 5, host=host, method=method, path="/productpage"))]
    wait_for("POST refused by the waypoint", lambda: codes(curl, "POST") == [403] * 5, 30, 0.5)
    assert codes(curl, "GET") == [200] * 5  # the caller's identity from HBONE, GET allowed
    # outside the mesh: plaintext, no identity, straight to the pod: its node proxy refuses it (L4)
    assert set(codes(outside, "GET", "productpage.default")) == {0}
    statuses = json.loads(sh("kubectl get authorizationpolicies -n default -o json"))["items"]
    conditions = {p["metadata"]["name"]: {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
                  for p in statuses}
    assert conditions["productpage-viewer"].get("WaypointAccepted") == "True", conditions
    assert conditions["productpage-ztunnel"].get("ZtunnelAccepted") == "True", conditions
    sh(f"kubectl delete -f {tmp_path / 'policies.yaml'}")


def test_peer_authentication_strict_refuses_plaintext_and_admits_hbone(mesh, tmp_path):
    sh, net = mesh
    curl, outside = netns_of(net, sh, "app=curl"), outside_client(sh, net)
    host = "reviews.default.svc.cluster.local"
    assert {code for _, code, _ in results(requests(outside, 5, host=host))} == {200}  # PERMISSIVE: both
    (tmp_path / "strict.yaml").write_text("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                                          "metadata: {name: default, namespace: default}\n"
                                          "spec: {mtls: {mode: STRICT}}\n")
    sh(f"kubectl apply -f {tmp_path / 'strict.yaml'}")
    wait_for("plaintext from outside the mesh refused", lambda: {
        code for _, code, _ in results(requests(outside, 5, host=host))} == {0}, 30, 0.5)
    assert {code for _, code, _ in results(requests(curl, 20))} == {200}  # HBONE from the mesh
    sh(f"kubectl delete -f {tmp_path / 'strict.yaml'}")
    wait_for("plaintext admitted again", lambda: {
        code for _, code, _ in results(requests(outside, 5, host=host))} == {200}, 30, 0.5)


def test_the_mesh_ca_lives_in_its_secret_and_the_root_in_every_namespace(mesh, state, tmp_path):
    """As istiod: the root's key and certificate in istio-system/istio-ca-secret, the certificate in
    each namespace's istio-ca-root-cert (the node agents read it there: `up` passes no root file);
    a second control plane with an empty state folder signs with the same root."""
    sh, _ = mesh
    secret = json.loads(sh("kubectl get secret istio-ca-secret -n istio-system -o json"))
    assert secret["type"] == "istio.io/ca-root"
    root = base64.b64decode(secret["data"]["ca-cert.pem"]).decode()
    assert (state / "kubernetes" / "controlplane" / "ca" / "root-cert.pem").read_text() == root
    sh("kubectl create namespace fresh")
    for ns in ("default", "istio-system", "fresh"):
        wait_for(f"istio-ca-root-cert in {ns}", lambda ns=ns: "istio-ca-root-cert" in sh(
            f"kubectl get configmaps -n {ns} -o name"), 30, 0.5)
        assert json.loads(sh(f"kubectl get configmap istio-ca-root-cert -n {ns} -o json"))["data"] == \
            {"root-cert.pem": root}
    other = tmp_path / "other-controlplane"
    proc = subprocess.Popen([sys.executable, "-m", "meshway", "controlplane", "--kubeconfig",
                             str(state / "kubernetes" / "admin.kubeconfig"), "--xds-addr", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MESHWAY_STATE_DIR": str(other)}, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # its banner, then what its CA did
        assert any("using the CA root of secret istio-system/istio-ca-secret" in line for line in lines), lines
        wait_for("the second control plane's CA folder", lambda: (other / "ca" / "root-cert.pem").exists(), 30)
        assert (other / "ca" / "root-cert.pem").read_text() == root
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def netns_pids(name: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_a_pod_outside_the_mesh_reaches_a_service_through_the_node_agents_kube_proxy_rules(mesh):
    """Not captured (its namespace is not ambient): the ClusterIP is DNATed in its own namespace to a
    ready endpoint from the EndpointSlices, so it bypasses the waypoint (no VirtualService: v3 too)."""
    sh, net = mesh
    got = results(requests(outside_client(sh, net), 60, host="reviews.default.svc.cluster.local"))
    assert [r for r in got if r[1] != 200] == []
    assert {v for _, _, v in got} == {"v1", "v2", "v3"}  # every endpoint, no 90/10 split: no waypoint
