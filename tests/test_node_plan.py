"""The node agent's decisions (meshway/node/plan.py) as tables: the Node and its Lease, which pods
to start, stop and delete, pod addresses, pod status from the runtime's view, and the kubelet API's
log requests. No cluster, no namespaces."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from meshway.node import plan as P

NOW = datetime(2026, 12, 2, 18, 0, 0, tzinfo=timezone.utc)
FACTS = P.NodeFacts("node-2", "127.0.0.1", 10251, cpu=2, memory_kib=24_000_000, kernel="6.1", os_image="Debian",
                    machine_id="m", boot_id="b")


# -- the Node ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,index", [("node-1", 1), ("node-12", 12), ("node-254", 254)])
def test_node_index(name, index):
    assert P.parse_node_index(name) == index


@pytest.mark.parametrize("name", ["node", "node-0", "node-255", "worker-1", "node-x", "node-1-a"])
def test_node_index_refuses(name):
    with pytest.raises(ValueError, match="expected node-N"):
        P.parse_node_index(name)


def test_node_object():
    node = P.build_node(FACTS)
    assert node["metadata"]["name"] == "node-2"
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "node-2" and labels["kubernetes.io/os"] == "linux"
    assert node["spec"] == {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}
    assert "taints" not in node["spec"] and "unschedulable" not in node["spec"]


def test_node_status():
    status = P.build_node_status(FACTS, None, NOW)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"], ready["lastHeartbeatTime"]) == ("True", "KubeletReady", "2026-12-02T18:00:00Z")
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "MemoryPressure": "False", "DiskPressure": "False", "PIDPressure": "False", "Ready": "True"}
    assert status["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"},
                                   {"type": "Hostname", "address": "node-2"}]
    assert status["capacity"] == status["allocatable"]
    assert (status["capacity"]["cpu"], status["capacity"]["memory"], status["capacity"]["pods"]) == \
        ("2", "24000000Ki", "110")
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10251}}
    assert status["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    assert status["nodeInfo"]["operatingSystem"] == "linux"


def test_node_heartbeat_moves_transition_only_on_change():
    first = P.build_node_status(FACTS, None, NOW)
    later = NOW + timedelta(minutes=1)
    again = {c["type"]: c for c in P.build_conditions(first["conditions"], later)}
    assert again["Ready"]["lastHeartbeatTime"] == "2026-12-02T18:01:00Z"
    assert again["Ready"]["lastTransitionTime"] == "2026-12-02T18:00:00Z"
    down = {c["type"]: c for c in P.build_conditions(first["conditions"], later, ready=False)}
    assert (down["Ready"]["status"], down["Ready"]["lastTransitionTime"]) == ("False", "2026-12-02T18:01:00Z")


@pytest.mark.parametrize("existing,rv", [(None, None), ({"metadata": {"resourceVersion": "41"}}, "41")])
def test_lease(existing, rv):
    lease = P.build_lease("node-1", "uid-1", NOW, existing)
    assert lease["metadata"]["namespace"] == "kube-node-lease" and lease["metadata"]["name"] == "node-1"
    assert lease["metadata"].get("resourceVersion") == rv
    assert lease["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "node-1",
                                                     "uid": "uid-1"}]
    assert lease["spec"] == {"holderIdentity": "node-1", "leaseDurationSeconds": 40,
                             "renewTime": "2026-12-02T18:00:00.000000Z"}


# -- which pods to start, stop, delete --------------------------------------------------------------
def pod(name, uid="u", deleting=False, phase=None, ns="default"):
    meta = {"name": name, "namespace": ns, "uid": uid}
    if deleting:
        meta.update(deletionTimestamp="2026-12-02T18:00:00Z", deletionGracePeriodSeconds=30)
    return {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "curl"}]},
            "status": {"phase": phase} if phase else {}}


K = ("default", "a")
K2 = ("default", "b")


@pytest.mark.parametrize("bound,held,expected", [
    # bound and not running: start
    ({K: pod("a")}, {}, P.PodPlan(start=(K,))),
    # running as bound: nothing
    ({K: pod("a")}, {K: P.Held("u", "10.244.1.2")}, P.PodPlan()),
    # deletionTimestamp set: stop first ...
    ({K: pod("a", deleting=True)}, {K: P.Held("u", "10.244.1.2")}, P.PodPlan(stop=(K,))),
    # ... nothing while stopping ...
    ({K: pod("a", deleting=True)}, {K: P.Held("u", "10.244.1.2", stopping=True)}, P.PodPlan()),
    # ... then delete it from the API (uid precondition)
    ({K: pod("a", deleting=True)}, {}, P.PodPlan(delete=((K, "u"),))),
    # gone from the API (force-deleted, or bound elsewhere): stop
    ({}, {K: P.Held("u", "10.244.1.2")}, P.PodPlan(stop=(K,))),
    ({}, {K: P.Held("u", "10.244.1.2", stopping=True)}, P.PodPlan()),
    # the name now belongs to another pod (uid): stop the old one; the new one starts after
    ({K: pod("a", uid="v")}, {K: P.Held("u", "10.244.1.2")}, P.PodPlan(stop=(K,))),
    ({K: pod("a", uid="v")}, {K: P.Held("u", "10.244.1.2", stopping=True)}, P.PodPlan()),
    # a finished pod is not started again
    ({K: pod("a", phase="Succeeded")}, {}, P.PodPlan()),
    ({K: pod("a", phase="Failed")}, {}, P.PodPlan()),
    # several at once, in key order
    ({K2: pod("b"), K: pod("a")}, {}, P.PodPlan(start=(K, K2))),
])
def test_plan_pods(bound, held, expected):
    assert P.plan_pods(bound, held) == expected


@pytest.mark.parametrize("status_ip,in_use,expected", [
    (None, set(), "10.244.1.2"),  # the lowest free address (.1 is the node's)
    (None, {"10.244.1.2", "10.244.1.3"}, "10.244.1.4"),
    ("10.244.1.9", set(), "10.244.1.9"),  # a restarted agent keeps the address the pod has
    ("10.244.1.9", {"10.244.1.9"}, "10.244.1.2"),  # ... unless it is taken
    ("10.244.2.9", set(), "10.244.1.2"),  # another node's address: a new one
    ("10.244.1.1", set(), "10.244.1.2"),  # the node's own
])
def test_allocate_ip(status_ip, in_use, expected):
    body = {"metadata": {"name": "a"}, "status": {"podIP": status_ip} if status_ip else {}}
    assert P.allocate_ip("node-1", body, in_use) == expected


def test_allocate_ip_full():
    with pytest.raises(ValueError, match="no free pod addresses"):
        P.allocate_ip("node-1", {"metadata": {}}, {f"10.244.1.{i}" for i in range(2, 255)})


# -- pod status -------------------------------------------------------------------------------------
START = NOW.timestamp() - 5


def bound_pod(containers=("app",), restart_policy="Always", gates=(), conditions=()):
    return {"metadata": {"name": "p", "namespace": "default", "uid": "uid-p"},
            "spec": {"containers": [{"name": c, "image": f"istio/examples-bookinfo-{c}-v1:1.20.1"} for c in containers],
                     "restartPolicy": restart_policy,
                     **({"readinessGates": [{"conditionType": g} for g in gates]} if gates else {})},
            "status": {"phase": "Pending", "conditions": list(conditions)}}


def running(name="app", ready=True, restarts=0, exit_code=None):
    return P.ContainerRun(name, "running", ready, restarts, START, 42, exit_code)


def conditions(status):
    return {c["type"]: c["status"] for c in status["conditions"]}


@pytest.mark.parametrize("runs,phase,ready", [
    ((running(ready=True),), "Running", "True"),
    ((running(ready=False),), "Running", "False"),
    ((P.ContainerRun("app", "waiting", False, 3, START, None, 1),), "Running", "False"),  # CrashLoopBackOff
])
def test_pod_status(runs, phase, ready):
    status = P.build_pod_status(bound_pod(), P.PodRun("10.244.1.2", START, runs), "127.0.0.1", NOW)
    assert status["phase"] == phase
    assert (status["podIP"], status["podIPs"], status["hostIP"], status["hostIPs"]) == \
        ("10.244.1.2", [{"ip": "10.244.1.2"}], "127.0.0.1", [{"ip": "127.0.0.1"}])
    assert conditions(status) == {"PodReadyToStartContainers": "True", "Initialized": "True", "Ready": ready,
                                  "ContainersReady": ready, "PodScheduled": "True"}
    assert status["startTime"] == "2026-12-02T17:59:55Z"


def test_container_status_running():
    status = P.build_pod_status(bound_pod(), P.PodRun("10.244.1.2", START, (running(restarts=2, exit_code=1),)),
                                "127.0.0.1", NOW)
    (c,) = status["containerStatuses"]
    assert (c["name"], c["image"], c["ready"], c["restartCount"], c["started"]) == \
        ("app", "istio/examples-bookinfo-app-v1:1.20.1", True, 2, True)
    assert c["state"] == {"running": {"startedAt": "2026-12-02T17:59:55Z"}}
    assert c["lastState"] == {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert c["imageID"].startswith("meshway://istio/examples-bookinfo-app-v1@sha256:")
    assert c["containerID"].startswith("meshway://")


def test_container_status_crash_loop():
    run = P.ContainerRun("app", "waiting", False, 3, START, None, 2)
    (c,) = P.build_pod_status(bound_pod(), P.PodRun("10.244.1.2", START, (run,)), "127.0.0.1", NOW)["containerStatuses"]
    assert c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert c["lastState"] == {"terminated": {"exitCode": 2, "reason": "Error"}}
    assert (c["ready"], c["started"], c["restartCount"]) == (False, False, 3)


def test_config_error_is_pending_with_the_reason():
    status = P.build_pod_status(bound_pod(), P.PodRun("10.244.1.2", START, (), "no `command` and image ..."),
                                "127.0.0.1", NOW)
    assert status["phase"] == "Pending"
    (c,) = status["containerStatuses"]
    assert c["state"] == {"waiting": {"reason": "CreateContainerConfigError", "message": "no `command` and image ..."}}
    assert conditions(status)["Ready"] == "False"


@pytest.mark.parametrize("policy,codes,phase", [
    ("Never", (0, 0), "Succeeded"),
    ("OnFailure", (0, 0), "Succeeded"),
    ("Never", (0, 1), "Failed"),
])
def test_finished_pods(policy, codes, phase):
    runs = tuple(P.ContainerRun(f"c{i}", "terminated", False, 0, START, None, code) for i, code in enumerate(codes))
    status = P.build_pod_status(bound_pod(("c0", "c1"), policy), P.PodRun("10.244.1.2", START, runs), "127.0.0.1", NOW)
    assert status["phase"] == phase


def test_ready_reason_names_the_unready_containers():
    runs = (running("a", ready=True), running("b", ready=False))
    status = P.build_pod_status(bound_pod(("a", "b")), P.PodRun("10.244.1.2", START, runs), "127.0.0.1", NOW)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["reason"], ready["message"]) == ("ContainersNotReady", "containers with unready status: [b]")


def test_readiness_gates():
    gate = {"type": "example.com/gate", "status": "False", "lastTransitionTime": "2026-12-02T17:00:00Z"}
    status = P.build_pod_status(bound_pod(gates=("example.com/gate",), conditions=(gate,)),
                                P.PodRun("10.244.1.2", START, (running(),)), "127.0.0.1", NOW)
    assert conditions(status)["ContainersReady"] == "True"
    assert conditions(status)["Ready"] == "False"
    assert gate in status["conditions"]  # someone else's condition is written back as it was
    opened = P.build_pod_status(bound_pod(gates=("example.com/gate",), conditions=({**gate, "status": "True"},)),
                                P.PodRun("10.244.1.2", START, (running(),)), "127.0.0.1", NOW)
    assert conditions(opened)["Ready"] == "True"


def test_transition_times_are_kept_while_a_condition_holds():
    run = P.PodRun("10.244.1.2", START, (running(),))
    first = P.build_pod_status(bound_pod(), run, "127.0.0.1", NOW)
    later = NOW + timedelta(seconds=30)
    again = P.build_pod_status({**bound_pod(), "status": first}, run, "127.0.0.1", later)
    assert again == first  # the same state writes the same body
    assert not P.detect_status_change(first, again)
    unready = P.PodRun("10.244.1.2", START, (running(ready=False),))
    moved = P.build_pod_status({**bound_pod(), "status": first}, unready, "127.0.0.1", later)
    assert P.detect_status_change(first, moved)
    ready = {c["type"]: c for c in moved["conditions"]}["Ready"]
    assert ready["lastTransitionTime"] == "2026-12-02T18:00:30Z"


# -- the kubelet API: containerLogs -------------------------------------------------------------------
@pytest.mark.parametrize("path,query,expected", [
    ("/containerLogs/default/p/app", {}, P.LogRequest("default", "p", "app")),
    ("/containerLogs/default/p/app", {"follow": ["true"], "tailLines": ["10"], "limitBytes": ["500"]},
     P.LogRequest("default", "p", "app", follow=True, tail_lines=10, limit_bytes=500)),
    ("/containerLogs/default/p/app", {"previous": ["true"]}, P.LogRequest("default", "p", "app", previous=True)),
])
def test_log_request(path, query, expected):
    assert P.plan_log_request(path, query) == expected


@pytest.mark.parametrize("path,query,status", [
    ("/containerLogs/default/p", {}, 404),
    ("/containerLogs/default//app", {}, 404),
    ("/logs/", {}, 404),
    ("/containerLogs/default/p/app", {"tailLines": ["x"]}, 400),
    ("/containerLogs/default/p/app", {"limitBytes": ["-1"]}, 400),
])
def test_log_request_refused(path, query, status):
    with pytest.raises(P.LogRequestError) as err:
        P.plan_log_request(path, query)
    assert err.value.status == status


@pytest.mark.parametrize("tail,limit,expected", [
    (None, None, b"a\nb\nc\n"),
    (2, None, b"b\nc\n"),
    (0, None, b""),
    (10, None, b"a\nb\nc\n"),
    (None, 3, b"a\nb"),
    (2, 3, b"b\nc"),  # tail first, then the byte limit
])
def test_select_log(tail, limit, expected):
    assert P.select_log(b"a\nb\nc\n", tail, limit) == expected


# -- the kubelet API's serving certificate request -----------------------------------------------------
def test_serving_certificate_request():
    import base64
    import ipaddress

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from meshway.ca.certs import build_key
    from meshway.node.tls import build_csr

    body = build_csr("node-1", "127.0.0.1", build_key())
    assert body["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
    assert body["spec"]["usages"] == ["digital signature", "server auth"]
    csr = x509.load_pem_x509_csr(base64.b64decode(body["spec"]["request"]))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:node-1"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize("ip,days_later,usable", [
    ("127.0.0.1", 0, True),
    ("127.0.0.2", 0, False),  # the node moved: a new certificate
    ("127.0.0.1", 365, False),  # expiring within a day: a new one
])
def test_kept_serving_certificate(ip, days_later, usable):
    from meshway.ca.certs import cert_to_pem
    from meshway.kube.harness import CertRequest, build_ca, build_signed_cert
    from meshway.node.tls import detect_usable

    ca, key = build_ca(NOW)
    cert, _ = build_signed_cert(CertRequest("k", "system:node:node-1", dns_names=("node-1",),
                                            ip_addresses=("127.0.0.1",), server=True), ca, key, NOW)
    assert detect_usable(cert_to_pem(cert), ip, NOW + timedelta(days=days_later)) is usable
