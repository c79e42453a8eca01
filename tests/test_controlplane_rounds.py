"""The control plane's rounds without Envoy: the resync republishes only renewed certificates (no
proxy is rebuilt), a raising build is isolated, and status writes go in one transaction."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone


from conftest import apply
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.private import make_private_dir
from meshway.runtime import controlplane as cp_module
from meshway.runtime.controlplane import ControlPlane
from meshway.xds import protos as P

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
"""


def started(state_dir, store, **kwargs) -> ControlPlane:
    apply(store, MANIFESTS)
    cp = ControlPlane(state_dir, **kwargs)
    cp.view = MeshView.build(cp.store.snapshot(XDS_KINDS)[1])
    cp.sync()
    return cp


def test_the_resync_republishes_renewed_certificates_and_rebuilds_nothing(state_dir, store, monkeypatch):
    cp = started(state_dir, store, secret_ttl=timedelta(minutes=2))
    now = [datetime.now(timezone.utc)]  # after the first certificates were issued (a slow start must not
    # leave "past half life" below short of their real issue time)
    cp.ca._clock = lambda: now[0]
    [node_id] = cp.replicas
    before, builds = cp.cache.get(node_id), cp.builds
    calls = []
    monkeypatch.setattr(cp_module, "build_waypoint_config", lambda *a, **k: calls.append(1))
    cp._renew_certificates()  # nothing due: nothing published
    assert cp.cache.get(node_id) is before
    now[0] += timedelta(minutes=1, seconds=5)  # past half life
    cp._renew_certificates()
    after = cp.cache.get(node_id)
    assert after is not before and not calls and cp.builds == builds
    assert after.version(P.SECRET) != before.version(P.SECRET)
    for t in (P.CLUSTER, P.LISTENER, P.ENDPOINT):
        assert after.version(t) == before.version(t)
        assert all(after.resources(t)[n] is m for n, m in before.resources(t).items())  # the same messages
    cp._renew_certificates()
    assert cp.cache.get(node_id) is after


def test_a_raising_build_keeps_the_last_snapshot_and_is_reported(state_dir, store, monkeypatch):
    cp = started(state_dir, store)
    [state] = cp.replicas.values()
    kept = cp.cache.get(state.node_id)

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(cp_module, "build_waypoint_config", broken)
    cp.sync()
    assert cp.cache.get(state.node_id) is kept
    [(where, message)] = cp.proxy_status()[state.node_id]["problems"]
    assert where == "translation" and "KeyError: 'boom'" in message
    assert cp._failed_builds == {state.node_id} and cp._next_build_retry < float("inf")
    monkeypatch.undo()  # a transient failure: retried without any change
    cp._retry_failed_builds()
    assert cp.proxy_status()[state.node_id]["problems"] == [] and not cp._failed_builds


def test_an_inconsistent_snapshot_is_isolated_too(state_dir, store):
    cp = started(state_dir, store)
    [state] = cp.replicas.values()
    kept = cp.cache.get(state.node_id)
    real_check = cp.cache._check

    def refuse(snapshot):
        from meshway.xds.cache import InconsistentSnapshot
        raise InconsistentSnapshot(["Cluster 'x' (referenced by Route 'y')"])

    cp.cache._check = refuse
    apply(store, MANIFESTS.replace("reviews", "ratings"))  # a change, so a new snapshot is set
    cp.view = MeshView.build(cp.store.snapshot(XDS_KINDS)[1])
    cp.sync()
    assert cp.cache.get(state.node_id) is kept
    assert "InconsistentSnapshot" in cp.proxy_status()[state.node_id]["problems"][0][1]
    cp.cache._check = real_check


def test_status_writes_of_a_round_are_one_transaction(state_dir, store):
    cp = started(state_dir, store)
    rv = store.db.current_rv()
    cp._queue_status("Service", "default", "reviews", {"conditions": []})
    cp._queue_status("Service", "default", "gone", {"conditions": []})
    cp._queue_status("Gateway", "default", "waypoint", {"addresses": []})
    commits, original = [], cp.store.write_statuses

    def counted(batch):
        commits.append(len(batch))
        return original(batch)

    cp.store.write_statuses = counted
    cp._flush_statuses()
    assert commits == [3] and not cp._statuses
    assert {c.name for c in store.db.changes_since(rv)} <= {"reviews", "waypoint"}


def test_an_idle_control_plane_serving_node_agents_sleeps_between_rounds(state_dir, store):
    """Nothing due: the next round is the housekeeping period away when node agents run the
    proxies (`run_proxies=False`: the one-host cluster, Kubernetes), where nothing is supervised: a
    supervision timer that never advanced made every round due at once (a busy loop, 10-30% CPU)."""
    apply(store, MANIFESTS)
    cp = ControlPlane(state_dir, debounce=0.0, poll=0.05, store=store, run_proxies=False, nodes=1)
    make_private_dir(cp.run_dir)  # as `run` makes it
    cp._listening = True  # commit signals arrive (`run` listens): the store is read on them
    cp._start()
    cp._round(True)
    cp._round(False)  # the first rounds read, push and write status; then nothing is due
    now = cp.clock()
    assert cp._round(False) - now >= 0.5
