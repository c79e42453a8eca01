"""A restarted control plane or node agent adopts what runs (root, Linux; run in CI): `kill -9` of
the control plane, or of a node agent, under load, then a new one started on the same state.
Nothing is started twice: every pod process, Envoy, namespace and capture rule is the one that ran
before, no request fails, restart counts do not move, and the pods are Ready again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from cluster_support import Mesh, cluster_fixture, via_waypoint
from fault_table import record_fault
from meshway.model import find_kind
from meshway.runtime.daemon import controlplane_pid, node_agent_pid, start_controlplane
from meshway.runtime.netns import cluster_id, node_netns_name
from meshway.runtime.workload import STATE_FILE, read_proc, read_state

mesh = cluster_fixture()


def pod_processes(mesh: Mesh) -> dict[tuple[str, str], tuple[int, int]]:
    """(pod folder, container) -> (pid, /proc start time) of every recorded container process."""
    out = {}
    for path in sorted((mesh.state / "run" / "pods").glob(f"*/{STATE_FILE}")):
        for name, record in read_state(path)[1].items():
            assert record.phase == "running" and record.pid, (path, name, record)
            out[(path.parent.name, name)] = (record.pid, record.start_ticks)
    return out


def envoy_pids(mesh: Mesh) -> dict[str, int]:
    run = mesh.state / "run"
    return {str(p.relative_to(run)): int(p.read_text()) for p in [*run.glob("proxies/*/envoy.pid"),
                                                                  *run.glob("nodes/*/envoy.pid")]}


def restart_counts(mesh: Mesh) -> dict[str, list[int]]:
    return {f"{p['metadata']['namespace']}/{p['metadata']['name']}":
            [c["restartCount"] for c in (p.get("status") or {}).get("containerStatuses") or []]
            for p in mesh.pods(None)}


def netns_processes(mesh: Mesh) -> dict[str, int]:
    """Long-running processes per pod namespace (probe runs come and go)."""
    out = {}
    for pod in mesh.pods(None):
        name = mesh.netns(pod)
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        infos = [read_proc(int(p)) for p in pids]
        out[name] = sum(1 for i in infos if i and not i.zombie and "probe" not in i.cmdline)
    return out


def our_namespaces(mesh: Mesh) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    return sorted(line.split()[0] for line in listed if line.startswith(f"mw{cluster_id(mesh.state)}-"))


def capture_rules(mesh: Mesh) -> dict[str, list[str]]:
    """The nat rules of every node namespace (counters left out)."""
    out = {}
    for n in (1, 2):
        netns = node_netns_name(cluster_id(mesh.state), n)
        dump = subprocess.run(["ip", "netns", "exec", netns, "iptables-save", "-t", "nat"],
                              capture_output=True, text=True, check=True).stdout
        out[netns] = [line for line in dump.splitlines() if line.startswith("-A")]
    return out


def test_control_plane_kill_9_and_restart_adopts_everything_under_load(mesh: Mesh) -> None:
    processes, envoys, counts = pod_processes(mesh), envoy_pids(mesh), restart_counts(mesh)
    in_netns, rules = netns_processes(mesh), capture_rules(mesh)
    namespaces = our_namespaces(mesh)
    assert len(processes) >= 7 and len(envoys) >= 3, (processes, envoys)
    runner = mesh.start_requests("reviews", 16.0)
    try:
        time.sleep(2.0)
        old = controlplane_pid(mesh.state)
        os.kill(old, signal.SIGKILL)
        mesh.wait_until(lambda: controlplane_pid(mesh.state) is None, 10, "the control plane to die")
        time.sleep(2.0)  # the outage: proxies and pods keep serving their last configuration
        new = start_controlplane(mesh.state, cluster=True, metrics_addr="127.0.0.1:0")
        assert new != old
        mesh.wait_ready(60)
        proxy_status = mesh.state / "run" / "proxy-status.json"
        mesh.wait_until(lambda: proxy_status.exists() and all(
            v["connected"] for v in json.loads(proxy_status.read_text()).values()), 30,
            "every proxy connected to the new control plane")
    finally:
        out, err = runner.communicate(timeout=120)
    results = json.loads(out)
    failed = [r for r in results if r[0] != 200]
    restarted = [k for k, v in pod_processes(mesh).items() if processes.get(k) != v]
    record_fault("control plane `kill -9`, 2 s outage, restarted (`controlplane --cluster`)",
                 f"{len(failed)}/{len(results)} failed; {len(restarted)} of {len(processes)} pod processes and "
                 f"{sum(envoy_pids(mesh).get(k) != v for k, v in envoys.items())} of {len(envoys)} Envoys started "
                 "again (the rest adopted)", "0 failed, running pods adopted")
    assert len(results) > 500, f"{len(results)} requests sent; {err[-2000:]}"
    assert not failed, f"{len(failed)}/{len(results)} failed, e.g. {failed[:5]}"
    assert all(via_waypoint(r) for r in results)
    assert pod_processes(mesh) == processes, "a pod process was started again instead of adopted"
    assert all(read_proc(pid) and not read_proc(pid).zombie for pid, _ in processes.values())
    assert envoy_pids(mesh) == envoys, "an Envoy was started again instead of adopted"
    assert netns_processes(mesh) == in_netns, "a second copy runs in some pod"
    assert restart_counts(mesh) == counts
    assert capture_rules(mesh) == rules
    assert our_namespaces(mesh) == namespaces
    logs = [p.read_text(errors="replace") for p in (mesh.state / "run" / "pods").glob("*/*.log")]
    assert not any("Address already in use" in text or "address already in use" in text for text in logs)
    # and the new control plane supervises them: a pod process killed now is restarted and counted
    (folder, container), (pid, _) = next((k, v) for k, v in processes.items() if k[0].startswith("default.reviews-v1"))
    os.kill(pid, signal.SIGKILL)
    pod = folder.split(".", 1)[1]
    mesh.wait_until(lambda: restart_counts(mesh)[f"default/{pod}"] == [counts[f"default/{pod}"][0] + 1], 30,
                    "the adopted container's exit to be noticed and restarted")
    mesh.wait_ready(60)
    table = subprocess.run([sys.executable, "-m", "meshway", "--state-dir", str(mesh.state), "get", "pods"],
                           capture_output=True, text=True, timeout=60).stdout
    header, *rows = table.splitlines()
    restarts = header.split().index("RESTARTS")
    row = next(line.split() for line in rows if line.split()[0] == pod)
    assert row[restarts] == str(counts[f"default/{pod}"][0] + 1), table


EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: extra-%d, namespace: default}
spec: {selector: {app: extra}, ports: [{port: 80}]}
"""


def meshway_up(mesh: Mesh, n: int) -> subprocess.CompletedProcess:
    manifest = mesh.state.parent / f"extra-{n}.yaml"
    manifest.write_text(EXTRA % n)
    return subprocess.run([sys.executable, "-m", "meshway", "--state-dir", str(mesh.state), "up", "-f", str(manifest),
                           "--metrics-addr", "127.0.0.1:0"], capture_output=True, text=True, timeout=300)


def test_up_on_a_running_mesh_starts_nothing(mesh: Mesh) -> None:
    mesh.wait_ready(60)
    cp, processes, envoys = controlplane_pid(mesh.state), pod_processes(mesh), envoy_pids(mesh)
    done = meshway_up(mesh, 1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the mesh is already running" in done.stdout
    assert mesh.store.get(find_kind("svc"), "default", "extra-1")
    assert (controlplane_pid(mesh.state), pod_processes(mesh), envoy_pids(mesh)) == (cp, processes, envoys)


def test_up_after_the_control_plane_was_killed_adopts_everything(mesh: Mesh) -> None:
    mesh.wait_ready(60)
    processes, envoys, counts = pod_processes(mesh), envoy_pids(mesh), restart_counts(mesh)
    runner = mesh.start_requests("reviews", 12.0)
    try:
        time.sleep(1.0)
        os.kill(controlplane_pid(mesh.state), signal.SIGKILL)
        mesh.wait_until(lambda: controlplane_pid(mesh.state) is None, 10, "the control plane to die")
        done = meshway_up(mesh, 2)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert controlplane_pid(mesh.state)
    finally:
        out, err = runner.communicate(timeout=300)
    results = json.loads(out)
    failed = [r for r in results if r[0] != 200]
    same = pod_processes(mesh) == processes and envoy_pids(mesh) == envoys
    record_fault("control plane `kill -9`, then `meshway up`", f"{len(failed)}/{len(results)} failed; "
                 f"pod processes and Envoys {'the same (adopted)' if same else 'STARTED AGAIN'}",
                 "0 failed, running pods adopted")
    assert len(results) > 300 and not failed, f"{len(failed)}/{len(results)} failed, e.g. {failed[:5]}; {err[-1000:]}"
    assert (pod_processes(mesh), envoy_pids(mesh)) == (processes, envoys)
    assert restart_counts(mesh) == counts
    assert mesh.store.get(find_kind("svc"), "default", "extra-2")
    # That control plane is an orphan (`up` exited): killed, it may linger as a zombie nobody reaps,
    # which is not a running control plane: `up` starts a new one again.
    orphan = controlplane_pid(mesh.state)
    os.kill(orphan, signal.SIGKILL)
    mesh.wait_until(lambda: controlplane_pid(mesh.state) is None, 10, "the orphan control plane to be seen dead")
    done = meshway_up(mesh, 3)
    assert done.returncode == 0 and "already running" not in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert controlplane_pid(mesh.state) not in (None, orphan)
    mesh.wait_ready(60)
    assert (pod_processes(mesh), envoy_pids(mesh), restart_counts(mesh)) == (processes, envoys, counts)


def test_node_agent_kill_9_and_restart_adopts_its_pods_and_proxies_under_load(mesh: Mesh) -> None:
    """The one-host mesh's node agents run the pods and proxies (`meshway node --local`): one
    killed under load costs nothing (what it ran keeps serving), and the next one (`meshway up`
    starts the missing agent) adopts every pod process and Envoy of its node, then supervises them."""
    mesh.wait_ready(60)
    node = mesh.pod("curl")["spec"]["nodeName"]
    processes, envoys, counts = pod_processes(mesh), envoy_pids(mesh), restart_counts(mesh)
    old = node_agent_pid(mesh.state, node)
    assert old and node_agent_pid(mesh.state, "node-2" if node == "node-1" else "node-1")
    runner = mesh.start_requests("reviews", 10.0)
    try:
        time.sleep(1.0)
        os.kill(old, signal.SIGKILL)
        mesh.wait_until(lambda: node_agent_pid(mesh.state, node) is None, 10, "the node agent to die")
        time.sleep(2.0)  # nothing supervises that node meanwhile; everything keeps serving
        done = meshway_up(mesh, 4)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert node_agent_pid(mesh.state, node) not in (None, old)
        mesh.wait_ready(60)
    finally:
        out, err = runner.communicate(timeout=300)
    results = json.loads(out)
    failed = [r for r in results if r[0] != 200]
    same = pod_processes(mesh) == processes and envoy_pids(mesh) == envoys
    record_fault(f"node agent of {node} `kill -9`, then `meshway up`", f"{len(failed)}/{len(results)} failed; "
                 f"pod processes and Envoys {'the same (adopted)' if same else 'STARTED AGAIN'}",
                 "0 failed, running pods adopted")
    assert len(results) > 300 and not failed, f"{len(failed)}/{len(results)} failed, e.g. {failed[:5]}; {err[-1000:]}"
    assert all(via_waypoint(r) for r in results)
    assert (pod_processes(mesh), envoy_pids(mesh), restart_counts(mesh)) == (processes, envoys, counts)
    # the new agent supervises what it adopted: its node proxy killed is started again
    node_proxy = mesh.state / "run" / "nodes" / node / "envoy.pid"
    pid = int(node_proxy.read_text())
    os.kill(pid, signal.SIGKILL)
    mesh.wait_until(lambda: node_proxy.exists() and int(node_proxy.read_text()) != pid
                    and all(r[0] == 200 for r in mesh.requests("reviews", 3)), 30, "the node proxy to be restarted")
