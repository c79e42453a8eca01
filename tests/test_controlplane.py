"""The control plane as a process manager: replicas restarted with backoff after a crash, stopped
when their Gateway goes, and still serving when the control plane itself dies."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from xds_support import ENVOY

from meshway.runtime.envoy_admin import fetch_admin
from meshway.model import find_kind, load_yaml
from meshway.runtime.controlplane import ControlPlane
from meshway.runtime.daemon import controlplane_pid, start_controlplane, stop_all
from meshway.runtime.envoy import read_pid
from meshway.store import Store

WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, annotations: {meshway.io/replicas: "2"}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"""


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def programmed(store: Store) -> bool:
    try:
        gw = store.get(find_kind("gtw"), "default", "waypoint")
    except Exception:
        return False
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in gw["status"]["conditions"])


def live(admin: str) -> bool:
    try:
        return fetch_admin(admin, "/ready").strip() == b"LIVE"
    except Exception:
        return False


def restart_count(store: Store, pod: str) -> int:
    status = store.get(find_kind("pod"), "default", pod).get("status") or {}
    return sum(c["restartCount"] for c in status.get("containerStatuses") or [])


def ready_replicas(store: Store) -> int:
    dep = store.get(find_kind("deploy"), "default", "waypoint")
    return (dep.get("status") or {}).get("readyReplicas", 0)


@pytest.fixture
def running(tmp_path: Path):
    store = Store(tmp_path / "state")
    store.apply(load_yaml(WAYPOINT, "waypoint.yaml"))
    cp = ControlPlane(tmp_path / "state", envoy=ENVOY)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(cp.run(stop),), daemon=True)
    thread.start()
    try:
        wait_for(lambda: ready_replicas(store) == 2, what="2 ready waypoint replicas")
        yield store, cp
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        cp.stop_proxies()


def test_two_replicas_restart_after_crash_and_stop_with_their_gateway(running) -> None:
    store, cp = running
    assert programmed(store)
    states = list(cp.replicas.values())
    assert len(states) == 2 and len({s.replica.pod_ip for s in states}) == 2
    victim = states[0]
    kills = 3
    for _ in range(kills):  # restartCount counts every restart, as Kubernetes does; readiness never resets it
        old_pid = read_pid(victim.paths)
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: (read_pid(victim.paths) or old_pid) != old_pid, what="the crashed replica to restart")
        wait_for(lambda: ready_replicas(store) == 2, what="the restarted replica to be ready again")
    wait_for(lambda: restart_count(store, victim.replica.pod) == kills, what=f"restartCount {kills}")
    assert restart_count(store, states[1].replica.pod) == 0
    store.delete([(find_kind("gtw"), "default", "waypoint")])
    wait_for(lambda: all(read_pid(s.paths) is None for s in states), what="replicas to stop with their Gateway")
    assert not cp.replicas


def test_a_crash_looping_replica_backs_off_and_is_not_ready_until_it_acks(running) -> None:
    """Killed whenever it appears, a replica is restarted after 0.5 s, 1 s, 2 s ... (what the dead
    process ACKed neither makes the next one Ready nor resets the backoff); restartCount counts
    every restart, and once it runs again it is Ready and the backoff starts over."""
    store, cp = running
    victim = list(cp.replicas.values())[0]
    kills, seen, end = 0, set(), time.monotonic() + 4.0
    while time.monotonic() < end:
        pid = read_pid(victim.paths)
        if pid and pid not in seen:
            seen.add(pid)
            conditions = store.get(find_kind("pod"), "default", victim.replica.pod)["status"]["conditions"]
            os.kill(pid, signal.SIGKILL)
            kills += 1
            if kills > 1:  # a process that has just started has not ACKed anything yet
                assert not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions), \
                    "Ready before its ACK"
        time.sleep(0.01)
    assert 3 <= kills <= 5, f"{kills} starts in 4 s: the backoff did not grow"
    wait_for(lambda: ready_replicas(store) == 2, what="the replica to be ready once left alone")
    wait_for(lambda: restart_count(store, victim.replica.pod) == kills, what=f"restartCount {kills}")
    assert victim.failures == 0


def test_envoy_keeps_serving_when_the_control_plane_dies(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store(state)
    store.apply(load_yaml(WAYPOINT.replace('"2"', '"1"'), "waypoint.yaml"))
    try:
        pid = start_controlplane(state)
        wait_for(lambda: programmed(store), what="the waypoint to be Programmed")
        pod = next(p["metadata"]["name"] for p in store.list(find_kind("pod"), "default"))
        first = int(next((state / "run" / "proxies").glob("*/envoy.pid")).read_text())
        os.kill(first, signal.SIGKILL)  # one restart, which the next control plane must still count
        wait_for(lambda: restart_count(store, pod) == 1 and ready_replicas(store) == 1, what="restartCount 1")
        status = json.loads((state / "run" / "proxy-status.json").read_text())
        admin = next(iter(status.values()))["admin"]
        envoy_pid = int(next((state / "run" / "proxies").glob("*/envoy.pid")).read_text())
        wait_for(lambda: live(admin), what="the restarted replica to be LIVE")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: controlplane_pid(state) is None, what="the control plane to die")
        time.sleep(1.0)
        os.kill(envoy_pid, 0)  # still running
        assert fetch_admin(admin, "/ready").strip() == b"LIVE"
        listeners = json.loads(fetch_admin(admin, "/config_dump?resource=dynamic_listeners"))
        names = {c["name"] for c in listeners["configs"]}
        assert {"connect_terminate", "main_internal", "connect_originate"} <= names
        (state / "run" / "controlplane.pid").unlink(missing_ok=True)
        start_controlplane(state)  # a new control plane adopts the running replica
        time.sleep(1.5)
        assert int(next((state / "run" / "proxies").glob("*/envoy.pid")).read_text()) == envoy_pid
        wait_for(lambda: programmed(store), what="the waypoint to stay Programmed")
        assert restart_count(store, pod) == 1, "adopting is not restarting, and the count survives"
    finally:
        stopped = stop_all(state)
    assert any(s.startswith("proxy waypoint-") for s in stopped)
