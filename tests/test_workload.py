"""Pods as local processes: command/args/env building and image mapping as tables; restart
backoff, readiness probes and stopping against real processes (prefix `[]`, or `["env"]` to take
the path a pod namespace's `ip netns exec` prefix takes)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshway.apps.images import AppCommand, find_repository, resolve_image
from meshway.runtime.workload import (STATE_FILE, Adoption, Backoff, ContainerConfigError, ProcInfo, ProcessRecord,
                                      Probe, Readiness, PodProcesses, build_container_command, build_probe,
                                      build_state, decide_adoption, detect_probe_due, detect_restart,
                                      detect_started_process, expand_vars, next_readiness, parse_proc_stat,
                                      parse_state, read_proc, read_state, run_probe, write_state)

BOOKINFO_YAML = Path("/work/shared/data/istio-samples/bookinfo.yaml")
PY = sys.executable
PARENT = {"PATH": "/usr/bin:/bin", "HOME": "/root", "SECRET": "not copied"}


def make_pod(*containers: dict[str, Any], name: str = "web-1", ip: str = "10.244.1.5", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                         "annotations": {"team": "a"}},
            "spec": {"serviceAccountName": "web-sa", "nodeName": "node-0", "containers": list(containers), **spec},
            "status": {"podIP": ip}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def echo_container(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "meshway/echo", "env": [{"name": "HOST", "value": "127.0.0.1"},
                                                           {"name": "PORT", "value": str(port)}],
            "ports": [{"name": "http", "containerPort": port}], **extra}


@pytest.fixture
def pods():
    started: list[PodProcesses] = []
    yield started
    for pod in started:
        pod.stop(grace=1)


# -- $(VAR) expansion ------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("$(A)", "1"), ("x$(A)y$(B)z", "x1y2z"), ("$(MISSING)", "$(MISSING)"), ("$$(A)", "$(A)"),
    ("$$", "$"), ("$A", "$A"), ("$(A", "$(A"), ("$$$(A)", "$1"), ("plain", "plain"), ("$()", "$()"),
])
def test_expand_vars(text: str, expected: str) -> None:
    assert expand_vars(text, {"A": "1", "B": "2"}) == expected


# -- command and args ------------------------------------------------------------------------
@pytest.mark.parametrize("container,argv", [
    ({"command": ["/bin/app", "--port", "$(PORT)"], "env": [{"name": "PORT", "value": "80"}]},
     ["/bin/app", "--port", "80"]),
    ({"command": ["sh", "-c"], "args": ["echo $(POD_NAME) $$(POD_NAME)"]}, ["sh", "-c", "echo web-1 $(POD_NAME)"]),
    ({"image": "docker.io/istio/examples-bookinfo-ratings-v1:1.20.1"}, [PY, "-P", "-u", "-m", "meshway.apps.bookinfo"]),
    ({"image": "istio/examples-bookinfo-ratings-v1", "args": ["9081"]}, [PY, "-P", "-u", "-m", "meshway.apps.bookinfo", "9081"]),
    ({"image": "curlimages/curl", "command": ["/bin/sleep", "infinity"]}, ["/bin/sleep", "infinity"]),
    ({"image": "unknown/thing:1", "command": ["run"], "args": ["$(POD_IP)"]}, ["run", "10.244.1.5"]),
    ({"image": "hashicorp/http-echo", "args": ["-text=hi"]}, [PY, "-P", "-u", "-m", "meshway.apps.echo", "-text=hi"]),
    ({"image": "curlimages/curl"}, [PY, "-P", "-u", "-m", "meshway.apps.sleep"]),
])
def test_build_command(container: dict[str, Any], argv: list[str]) -> None:
    got, _ = build_container_command({"name": "c", **container}, make_pod(), PARENT)
    assert got == argv


def test_unknown_image_without_command_is_a_clear_error() -> None:
    container = {"name": "db", "image": "postgres:16", "args": ["-c", "x"]}
    with pytest.raises(ContainerConfigError, match=r"pod shop/web-1 container 'db'.*postgres:16.*`command`"):
        build_container_command(container, make_pod(), PARENT)


# -- environment -----------------------------------------------------------------------------
def test_env_identity_parent_and_container_values() -> None:
    container = {"name": "c", "command": ["x"], "env": [
        {"name": "GREETING", "value": "hello $(POD_NAME)"}, {"name": "EMPTY"},
        {"name": "CHAINED", "value": "$(GREETING)!"}, {"name": "LATER_REF", "value": "$(DEFINED_LATER)"},
        {"name": "DEFINED_LATER", "value": "x"}]}
    _, env = build_container_command(container, make_pod(), PARENT)
    assert env == {"PATH": "/usr/bin:/bin", "HOME": "/root", "POD_NAME": "web-1", "POD_NAMESPACE": "shop",
                   "POD_IP": "10.244.1.5", "SERVICE_ACCOUNT": "web-sa", "HOSTNAME": "web-1",
                   "GREETING": "hello web-1", "EMPTY": "", "CHAINED": "hello web-1!",
                   "LATER_REF": "$(DEFINED_LATER)", "DEFINED_LATER": "x"}


@pytest.mark.parametrize("field_path,value", [
    ("metadata.name", "web-1"), ("metadata.namespace", "shop"), ("status.podIP", "10.244.1.5"),
    ("spec.serviceAccountName", "web-sa"), ("spec.nodeName", "node-0"), ("metadata.uid", "u-1"),
    ("metadata.labels['app']", "web"), ("metadata.annotations['team']", "a"), ("metadata.labels['none']", ""),
])
def test_env_field_ref(field_path: str, value: str) -> None:
    container = {"name": "c", "command": ["x"],
                 "env": [{"name": "V", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}]}
    assert build_container_command(container, make_pod(), PARENT)[1]["V"] == value


def test_env_field_ref_used_in_args() -> None:
    container = {"name": "c", "command": ["app"], "args": ["--ns=$(MY_NS)"],
                 "env": [{"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}
    assert build_container_command(container, make_pod(), PARENT)[0] == ["app", "--ns=shop"]


@pytest.mark.parametrize("value_from,message", [
    ({"fieldRef": {"fieldPath": "spec.schedulerName"}}, "fieldRef 'spec.schedulerName' is not supported"),
    ({"secretKeyRef": {"name": "s", "key": "k"}}, "valueFrom.secretKeyRef is not supported"),
    ({"resourceFieldRef": {"resource": "limits.cpu"}}, "valueFrom.resourceFieldRef is not supported"),
])
def test_env_unsupported_sources_are_errors(value_from: dict[str, Any], message: str) -> None:
    container = {"name": "c", "command": ["x"], "env": [{"name": "V", "valueFrom": value_from}]}
    with pytest.raises(ContainerConfigError, match=message):
        build_container_command(container, make_pod(), PARENT)


def test_env_optional_reference_is_skipped() -> None:
    ref = {"configMapKeyRef": {"name": "m", "key": "k", "optional": True}}
    container = {"name": "c", "command": ["x"], "env": [{"name": "V", "valueFrom": ref}]}
    assert "V" not in build_container_command(container, make_pod(), PARENT)[1]


def test_env_defaults_without_service_account_or_ip() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": []}}
    _, env = build_container_command({"name": "c", "command": ["x"]}, pod, {})
    assert (env["POD_NAMESPACE"], env["SERVICE_ACCOUNT"], env["POD_IP"]) == ("default", "default", "")


def test_container_env_overrides_image_settings() -> None:
    container = {"name": "c", "image": "hashicorp/http-echo", "env": [{"name": "PORT", "value": "9999"}]}
    assert build_container_command(container, make_pod(), PARENT)[1]["PORT"] == "9999"
    plain = {"name": "c", "image": "hashicorp/http-echo"}
    assert build_container_command(plain, make_pod(), PARENT)[1]["PORT"] == "5678"


# -- images ----------------------------------------------------------------------------------
def bookinfo_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for doc in yaml.safe_load_all(BOOKINFO_YAML.read_text()):
        if doc and doc["kind"] == "Deployment":
            template = doc["spec"]["template"]
            pod = {"metadata": {"name": f"{doc['metadata']['name']}-x", "namespace": "default",
                                "labels": template["metadata"]["labels"]},
                   "spec": template["spec"], "status": {"podIP": "10.244.0.9"}}
            out += [(pod, c) for c in template["spec"]["containers"]]
    return out


def test_every_bookinfo_image_maps_to_the_stand_in() -> None:
    seen = set()
    for pod, container in bookinfo_containers():
        argv, env = build_container_command(container, pod, PARENT)
        labels = pod["metadata"]["labels"]
        assert argv == [PY, "-P", "-u", "-m", "meshway.apps.bookinfo"], container["image"]
        assert (env["BOOKINFO_SERVICE"], env["BOOKINFO_VERSION"]) == (labels["app"], labels["version"])
        assert env["SERVICE_ACCOUNT"] == f"bookinfo-{labels['app']}" and env["POD_IP"] == "10.244.0.9"
        if labels["app"] == "reviews":
            assert env["LOG_DIR"] == "/tmp/logs"
        seen.add((labels["app"], labels["version"]))
    assert seen == {("details", "v1"), ("ratings", "v1"), ("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3"),
                    ("productpage", "v1")}


@pytest.mark.parametrize("image,repository", [
    ("docker.io/istio/examples-bookinfo-details-v1:1.20.1", "istio/examples-bookinfo-details-v1"),
    ("istio/examples-bookinfo-reviews-v3", "istio/examples-bookinfo-reviews-v3"),
    ("localhost:5000/echo:dev", "echo"), ("docker.io/library/curl:8.1", "curl"),
    ("curlimages/curl@sha256:0123abcd", "curlimages/curl"), ("gcr.io/proj/app:1", "proj/app"),
    ("registry:5000/team/app", "team/app"),
])
def test_find_repository(image: str, repository: str) -> None:
    assert find_repository(image) == repository


@pytest.mark.parametrize("image,module,env", [
    ("docker.io/istio/examples-bookinfo-productpage-v1:1.20.1", "bookinfo",
     {"BOOKINFO_SERVICE": "productpage", "BOOKINFO_VERSION": "v1"}),
    ("istio/examples-bookinfo-ratings-v2:1.20.1", "bookinfo",
     {"BOOKINFO_SERVICE": "ratings", "BOOKINFO_VERSION": "v2"}),
    ("echo", "echo", {"PORT": "8080"}), ("meshway/echo:latest", "echo", {"PORT": "8080"}),
    ("hashicorp/http-echo:1.0", "echo", {"PORT": "5678"}), ("kennethreitz/httpbin", "echo", {"PORT": "80"}),
    ("docker.io/istio/examples-helloworld-v2", "echo", {"PORT": "5000", "VERSION": "v2"}),
    ("curlimages/curl:8.8.0", "sleep", {}), ("curl", "sleep", {}), ("sleep", "sleep", {}),
])
def test_resolve_image(image: str, module: str, env: dict[str, str]) -> None:
    assert resolve_image(image) == AppCommand((PY, "-P", "-u", "-m", f"meshway.apps.{module}"),
                                              {"PYTHONUNBUFFERED": "1", **env})


@pytest.mark.parametrize("image", ["postgres:16", "busybox", "istio/examples-bookinfo-mongodb", "", None,
                                   "examples-bookinfo-details"])
def test_resolve_unknown_image(image: str | None) -> None:
    assert resolve_image(image) is None


# -- backoff and restart policy (pure) -------------------------------------------------------
@pytest.mark.parametrize("failures,delay", [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (20, 30), (0, 1)])
def test_backoff_delay(failures: int, delay: float) -> None:
    assert Backoff().delay(failures) == delay


@pytest.mark.parametrize("policy,code,restart", [("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False),
                                                 ("OnFailure", 2, True), ("Never", 1, False)])
def test_detect_restart(policy: str, code: int, restart: bool) -> None:
    assert detect_restart(policy, code) is restart


# -- probes (pure) ---------------------------------------------------------------------------
@pytest.mark.parametrize("container,probe", [
    ({"ports": [{"name": "http", "containerPort": 9080}],
      "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "initialDelaySeconds": 2,
                         "periodSeconds": 3, "timeoutSeconds": 4, "failureThreshold": 5, "successThreshold": 2}},
     Probe("http", port=9080, path="/health", initial_delay=2, period=3, timeout=4, failure_threshold=5,
           success_threshold=2)),
    ({"readinessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS",
                                     "httpHeaders": [{"name": "X-A", "value": "1"}]}}},
     Probe("http", port=8443, scheme="HTTPS", headers=(("X-A", "1"),))),
    ({"readinessProbe": {"tcpSocket": {"port": "9090"}}}, Probe("tcp", port=9090)),
    ({"readinessProbe": {"grpc": {"port": 50051}}}, Probe("tcp", port=50051)),
    ({"readinessProbe": {"exec": {"command": ["cat", "/ready"]}}}, Probe("exec", command=("cat", "/ready"))),
    ({"ports": [{"containerPort": 8080}, {"containerPort": 9090}]},
     Probe("tcp", port=8080, initial_delay=0.5, period=0.5, failure_threshold=1, sticky=True)),
    ({}, Probe("none", initial_delay=0.5, period=0.5, failure_threshold=1, sticky=True)),
])
def test_build_probe(container: dict[str, Any], probe: Probe) -> None:
    assert build_probe({"name": "c", **container}, make_pod()) == probe


def test_build_probe_unknown_named_port() -> None:
    container = {"name": "c", "readinessProbe": {"tcpSocket": {"port": "admin"}}}
    with pytest.raises(ContainerConfigError, match="port 'admin' names no port"):
        build_probe(container, make_pod())


def test_readiness_thresholds() -> None:
    probe = Probe("http", success_threshold=2, failure_threshold=2)
    states = [Readiness()]
    for passed in (True, True, False, True, False, False, True):
        states.append(next_readiness(probe, states[-1], passed, 0.0))
    assert [s.ready for s in states[1:]] == [False, True, True, True, True, False, False]


@pytest.mark.parametrize("state,now,due", [
    (Readiness(), 0.9, False),  # within initialDelaySeconds (started at 0, delay 1)
    (Readiness(), 1.0, True),
    (Readiness(last_probe=1.0), 2.9, False),  # within periodSeconds
    (Readiness(last_probe=1.0), 3.0, True),
])
def test_detect_probe_due(state: Readiness, now: float, due: bool) -> None:
    assert detect_probe_due(Probe("tcp", initial_delay=1, period=2), state, 0.0, now) is due


def test_sticky_probe_stops_once_ready() -> None:
    probe = Probe("tcp", period=0.5, sticky=True)
    assert not detect_probe_due(probe, Readiness(ready=True, last_probe=0.0), 0.0, 100.0)


# -- processes: restarts ---------------------------------------------------------------------
def test_exited_process_restarts_with_backoff(tmp_path: Path, pods: list[PodProcesses]) -> None:
    script = "import sys; print('run', flush=True); sys.exit(3)"
    pod = PodProcesses(make_pod({"name": "crash", "command": [PY, "-c", script]}), [], tmp_path)
    pods.append(pod)
    pod.start()
    began = time.monotonic()
    restarts_at: list[float] = []
    while time.monotonic() - began < 3.6:
        if pod.poll():
            restarts_at.append(time.monotonic() - began)
        time.sleep(0.01)
    status = pod.statuses()[0]
    assert status.restart_count == len(restarts_at) == 2
    assert restarts_at[0] >= 1.0 and restarts_at[1] - restarts_at[0] >= 2.0  # 1 s, then 2 s
    assert status.last_exit_code == 3 and status.state in ("waiting", "running")
    assert (tmp_path / "crash.log").read_text().count("run") >= 2  # appended across restarts


def test_backoff_on_an_injected_clock(tmp_path: Path, pods: list[PodProcesses]) -> None:
    """Never sooner than the backoff: 1 s after a short run, then 2 s; 1 s again after a long run."""
    now = [0.0]
    pod = PodProcesses(make_pod({"name": "c", "command": ["true"]}), [], tmp_path, clock=lambda: now[0])
    pods.append(pod)
    pod.start()
    proc = pod.containers[0]

    def exit_then(at: float) -> None:
        assert proc.proc is not None
        proc.proc.wait(timeout=5)
        now[0] = at
        assert pod.poll() == []  # notices the exit, schedules the restart

    exit_then(100.0)  # ran 100 s: a healthy run, the backoff starts over
    assert proc.next_start_at == 101.0
    now[0] = 100.99
    assert pod.poll() == []
    now[0] = 101.0
    assert pod.poll() == ["c"]
    exit_then(101.1)  # a short run: the second failure in a row waits 2 s
    assert proc.next_start_at == pytest.approx(103.1)
    now[0] = 103.0
    assert pod.poll() == []
    now[0] = 103.2
    assert pod.poll() == ["c"] and pod.statuses()[0].restart_count == 2


def test_restart_policy_never_leaves_it_terminated(tmp_path: Path, pods: list[PodProcesses]) -> None:
    pod = PodProcesses(make_pod({"name": "once", "command": ["true"]}, restartPolicy="Never"), [], tmp_path,
                       backoff=Backoff(initial=0.05))
    pods.append(pod)
    pod.start()
    assert wait_for(lambda: (pod.poll(), pod.statuses()[0].state == "terminated")[1], 3)
    time.sleep(0.2)
    assert pod.poll() == [] and pod.statuses()[0].restart_count == 0 and pod.statuses()[0].last_exit_code == 0


def test_missing_command_backs_off_like_a_crash(tmp_path: Path, pods: list[PodProcesses]) -> None:
    pod = PodProcesses(make_pod({"name": "ghost", "command": ["/nonexistent/bin"]}), [], tmp_path,
                       backoff=Backoff(initial=0.1))
    pods.append(pod)
    pod.start()
    status = pod.statuses()[0]
    assert status.state == "waiting" and "cannot start '/nonexistent/bin'" in (status.last_error or "")
    assert "cannot start" in (tmp_path / "ghost.log").read_text()
    assert wait_for(lambda: pod.poll() == ["ghost"], 2)


def test_exit_kills_what_the_process_left_in_its_group(tmp_path: Path, pods: list[PodProcesses]) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; exit 1"
    pod = PodProcesses(make_pod({"name": "leaky", "command": ["sh", "-c", script]}), [], tmp_path)
    pods.append(pod)
    pod.start()
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 3)
    child = int(pidfile.read_text())
    assert wait_for(lambda: (pod.poll(), pod.statuses()[0].state == "waiting")[1], 3)
    assert wait_for(lambda: pid_gone(child), 2)


# -- processes: readiness --------------------------------------------------------------------
def test_http_readiness_against_echo(tmp_path: Path, pods: list[PodProcesses]) -> None:
    good, bad = free_port(), free_port()
    probe = {"periodSeconds": 1, "failureThreshold": 1}
    pod = PodProcesses(make_pod(
        echo_container("good", good, readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}, **probe}),
        echo_container("bad", bad, readinessProbe={"httpGet": {"path": "/status/503", "port": bad}, **probe}),
        ip="127.0.0.1"), [], tmp_path)
    pods.append(pod)
    pod.start()
    assert wait_for(lambda: (pod.check_ready(), pod.statuses()[0].ready)[1], 8)
    time.sleep(1.1)
    assert not pod.check_ready()
    ready = {s.name: s.ready for s in pod.statuses()}
    assert ready == {"good": True, "bad": False}
    assert "GET /healthz" in (tmp_path / "good.log").read_text()  # the probe reached the app


def test_tcp_readiness_through_a_prefix(tmp_path: Path, pods: list[PodProcesses]) -> None:
    """With a prefix the probe runs as `prefix + python -m meshway.runtime.workload probe ...`."""
    port, closed = free_port(), free_port()
    opened = PodProcesses(make_pod(echo_container("app", port, readinessProbe={"tcpSocket": {"port": "http"},
                                                                               "periodSeconds": 1}), ip="127.0.0.1"),
                          ["env"], tmp_path / "a")
    shut = PodProcesses(make_pod({"name": "idle", "image": "curlimages/curl",
                                  "readinessProbe": {"tcpSocket": {"port": closed}, "periodSeconds": 1}},
                                 name="web-2"), ["env"], tmp_path / "b", probe_host=lambda: "127.0.0.1")
    pods += [opened, shut]
    opened.start()
    shut.start()
    assert wait_for(opened.check_ready, 8)
    assert opened.statuses()[0].state == "running" and opened.statuses()[0].pid
    assert shut.statuses()[0].state == "running"
    assert not shut.check_ready()


def test_probe_result_in_and_out_of_process(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert run_probe(Probe("tcp", port=port), "127.0.0.1")
    assert not run_probe(Probe("tcp", port=port, timeout=0.5), "127.0.0.1")
    env = {"X": "1", "PATH": os.environ["PATH"]}
    assert run_probe(Probe("exec", command=("sh", "-c", 'test "$X" = 1')), "", env)
    assert not run_probe(Probe("exec", command=("false",)), "", {"PATH": os.environ["PATH"]})


def test_no_probe_ready_after_start_and_port_open(tmp_path: Path, pods: list[PodProcesses]) -> None:
    port = free_port()
    pod = PodProcesses(make_pod(echo_container("web", port),
                                {"name": "idle", "image": "curlimages/curl"}, ip="127.0.0.1"), [], tmp_path)
    pods.append(pod)
    pod.start()
    assert not pod.check_ready()  # not yet 0.5 s
    began = time.monotonic()
    assert wait_for(pod.check_ready, 8)
    assert time.monotonic() - began >= 0.4


# -- processes: stop -------------------------------------------------------------------------
def test_stop_terminates_gracefully(tmp_path: Path) -> None:
    pod = PodProcesses(make_pod(echo_container("web", free_port()), ip="127.0.0.1"), [], tmp_path)
    pod.start()
    assert wait_for(pod.check_ready, 8)
    began = time.monotonic()
    pod.stop(grace=5)
    assert time.monotonic() - began < 2
    assert pod.statuses()[0].state == "terminated" and pod.poll() == []
    assert "echo stopping" in (tmp_path / "web.log").read_text()  # it saw SIGTERM


def test_stop_kills_the_process_group_after_the_grace(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait"
    pod = PodProcesses(make_pod({"name": "stubborn", "command": ["sh", "-c", script]},
                                terminationGracePeriodSeconds=0.5), [], tmp_path)
    pod.start()
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 3)
    leader, child = pod.statuses()[0].pid, int(pidfile.read_text())
    began = time.monotonic()
    pod.stop()  # the pod's terminationGracePeriodSeconds
    assert time.monotonic() - began >= 0.5
    assert wait_for(lambda: pid_gone(child), 2) and pid_gone(leader)
    assert pod.statuses()[0].state == "terminated"


# -- adoption: decisions (pure) --------------------------------------------------------------
ARGV = ("ip", "netns", "exec", "mw1-shop-web", "sleep", "30")
LIVE = ProcInfo(start_ticks=500, cmdline=ARGV[4:], zombie=False)  # after `ip netns exec` exec'd


def rec(phase: str = "running", pid: int | None = 42, ticks: int | None = 500, argv: tuple = ARGV,
        restarts: int = 3, **extra: Any) -> ProcessRecord:
    return ProcessRecord(phase, pid, ticks, argv, restarts, started_at=1000.0, **extra)


@pytest.mark.parametrize("record,info,policy,same_pod,expected", [
    (None, None, "Always", True, ("start", 0, "nothing recorded")),
    (rec(), LIVE, "Always", True, ("adopt", 3, "pid 42 still runs")),
    (rec(), ProcInfo(500, ARGV, False), "Always", True, ("adopt", 3, "pid 42 still runs")),  # before the exec
    (rec(), None, "Always", True, ("start", 4, "pid 42 exited while unsupervised")),
    (rec(), ProcInfo(500, (), True), "Always", True, ("start", 4, "pid 42 exited while unsupervised")),
    (rec(), ProcInfo(501, ARGV[4:], False), "Always", True, ("start", 4, "pid 42 now belongs to another process")),
    (rec(), ProcInfo(500, ("bash",), False), "Always", True, ("start", 4, "pid 42 now runs another command")),
    (rec(), None, "Never", True, ("leave", 3, "pid 42 exited while unsupervised; restartPolicy Never does not "
                                              "restart it")),
    (rec(), None, "OnFailure", True, ("start", 4, "pid 42 exited while unsupervised")),  # exit code unknown
    (rec(argv=ARGV[:4] + ("sleep", "60")), ProcInfo(500, ("sleep", "60"), False), "Always", True,
     ("replace", 4, "pid 42 runs a command the pod no longer has")),
    (rec(), LIVE, "Always", False, ("replace", 0, "pid 42 belongs to an earlier pod of this name")),
    (rec(), None, "Always", False, ("start", 0, "the record belongs to an earlier pod of this name")),
    (rec("starting", pid=None, ticks=None), None, "Always", True,
     ("start", 3, "the previous supervisor stopped before recording the start")),
    (rec("exited", pid=None, ticks=None, exit_code=1, restart_due=True), None, "Always", True,
     ("start", 4, "exited with 1, restart was due")),
    (rec("exited", pid=None, ticks=None, exit_code=0), None, "OnFailure", True,
     ("leave", 3, "exited with 0; restartPolicy OnFailure does not restart it")),
    (rec("stopped", pid=None, ticks=None), None, "Always", True, ("start", 4, "stopped by the previous supervisor")),
])
def test_decide_adoption(record, info, policy: str, same_pod: bool, expected: tuple) -> None:
    assert decide_adoption(record, info, ARGV, 4, policy, same_pod) == Adoption(*expected)


def test_parse_proc_stat_with_a_name_holding_spaces_and_parens() -> None:
    text = "77 (we ird) (x) S 1 77 77 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 200 rest"
    assert parse_proc_stat(text) == ("S", 123456)


def test_state_round_trip_and_foreign_files(tmp_path: Path) -> None:
    records = {"web": rec(ready=True), "side": rec("exited", pid=None, ticks=None, exit_code=2, restart_due=True)}
    assert parse_state(build_state("u-1", records)) == ("u-1", records)
    assert parse_state({"version": 99, "containers": {}}) == ("", {})
    assert parse_state({"version": 1, "containers": {"x": {"unknown": 1}}}) == ("", {})
    write_state(tmp_path / STATE_FILE, build_state("u-1", records))
    assert read_state(tmp_path / STATE_FILE) == ("u-1", records)
    (tmp_path / "bad.json").write_text("{not json")
    assert read_state(tmp_path / "bad.json") == ("", {}) and read_state(tmp_path / "none.json") == ("", {})


def test_read_proc_of_this_process_and_of_no_process() -> None:
    info = read_proc(os.getpid())
    raw = Path("/proc/self/cmdline").read_bytes()
    assert info is not None and not info.zombie and info.start_ticks > 0
    assert info.cmdline == tuple(os.fsdecode(a) for a in raw.removesuffix(b"\0").split(b"\0"))
    assert read_proc(2 ** 22 + 1) is None


# -- adoption: real processes ----------------------------------------------------------------
SLEEPER = {"name": "app", "command": ["sleep", "300"]}


def sleeper_pod(uid: str = "u-1", **spec: Any) -> dict[str, Any]:
    pod = make_pod(SLEEPER, **spec)
    pod["metadata"]["uid"] = uid
    return pod


def test_a_new_supervisor_adopts_a_live_process_instead_of_starting_it_twice(tmp_path: Path) -> None:
    first = PodProcesses(sleeper_pod(), ["env"], tmp_path, backoff=Backoff(initial=0.05))
    first.start()
    pid = first.statuses()[0].pid
    assert pid and json.loads((tmp_path / STATE_FILE).read_text())["containers"]["app"]["pid"] == pid
    os.kill(pid, 9)  # one restart, so that the count has something to carry over
    assert wait_for(lambda: first.poll() == ["app"], 3)
    pid = first.statuses()[0].pid
    assert first.statuses()[0].restart_count == 1 and pid
    second = PodProcesses(sleeper_pod(), ["env"], tmp_path, backoff=Backoff(initial=0.05))
    try:
        second.start()
        status = second.statuses()[0]
        assert second.decisions["app"].action == "adopt"
        assert (status.pid, status.restart_count, status.adopted, status.state) == (pid, 1, True, "running")
        assert not pid_gone(pid) and sleepers() == [pid]  # no second copy
        assert second.poll() == []
    finally:
        second.stop(grace=1)
    assert pid_gone(pid), "stop() must reach an adopted process"
    assert second.statuses()[0].state == "terminated"


def test_an_adopted_process_that_dies_has_an_unknown_exit_code_and_restarts(tmp_path: Path) -> None:
    first = PodProcesses(sleeper_pod(), [], tmp_path)
    first.start()
    pid = first.statuses()[0].pid
    second = PodProcesses(sleeper_pod(), [], tmp_path, backoff=Backoff(initial=0.05))
    try:
        second.start()
        os.kill(pid, 9)
        first.containers[0].proc.wait()  # reap it here, as init would for the real orphan
        assert wait_for(lambda: second.poll() == ["app"], 3)
        status = second.statuses()[0]
        assert status.restart_count == 1 and status.pid != pid and not status.adopted
        assert status.last_exit_code is None and "exit code unknown" in (status.last_error or "")
        recorded = json.loads((tmp_path / STATE_FILE).read_text())["containers"]["app"]
        assert (recorded["pid"], recorded["restarts"], recorded["phase"]) == (status.pid, 1, "running")
    finally:
        second.stop(grace=1)


def test_restart_counts_and_readiness_survive_the_supervisor(tmp_path: Path) -> None:
    port = free_port()
    pod = make_pod(echo_container("web", port), ip="127.0.0.1")
    first = PodProcesses(pod, [], tmp_path)
    first.start()
    assert wait_for(first.check_ready, 8)
    second = PodProcesses(pod, [], tmp_path)
    try:
        second.start()
        assert second.decisions["web"].action == "adopt"
        assert second.check_ready(), "ready at once: an adopted ready container does not go through NotReady"
    finally:
        second.stop(grace=2)


def test_a_reused_pid_is_not_adopted_and_not_touched(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        info = read_proc(stranger.pid)
        forged = ProcessRecord("running", stranger.pid, info.start_ticks + 1, ("sleep", "300"), 2, time.time())
        write_state(tmp_path / STATE_FILE, build_state("u-1", {"app": forged}))
        pod = PodProcesses(sleeper_pod(), [], tmp_path)
        pod.start()
        status = pod.statuses()[0]
        assert pod.decisions["app"].action == "start" and status.pid != stranger.pid and status.restart_count == 3
        pod.stop(grace=1)
        assert stranger.poll() is None, "a process that only shares the pid must survive"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_process_of_an_earlier_pod_with_the_same_name_is_replaced(tmp_path: Path) -> None:
    first = PodProcesses(sleeper_pod("u-1"), [], tmp_path)
    first.start()
    old = first.statuses()[0].pid
    second = PodProcesses(sleeper_pod("u-2"), [], tmp_path)
    try:
        second.start()
        status = second.statuses()[0]
        assert second.decisions["app"].action == "replace" and status.restart_count == 0
        assert wait_for(lambda: first.containers[0].proc.poll() is not None, 3) and status.pid != old
        assert json.loads((tmp_path / STATE_FILE).read_text())["podUID"] == "u-2"
    finally:
        second.stop(grace=1)


def sleepers() -> list[int]:
    """Pids of this test process's `sleep 300` children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getpid() and cmdline == b"sleep\x00300\x00":
                found.append(int(entry.name))
    return sorted(found)


LOG_FILE = "/state/run/pods/shop.web-1/app.log"


@pytest.mark.parametrize("info,session,stdout,expected", [
    (LIVE, 42, LOG_FILE, True),
    (LIVE, 7, LOG_FILE, False),  # not a session of its own: not started by a supervisor
    (LIVE, 42, "/state/run/pods/shop.web-2/app.log", False),  # another replica, same command
    (LIVE, 42, "/other-state/run/pods/shop.web-1/app.log", False),  # the same pod in another cluster
    (ProcInfo(500, ("sleep", "60"), False), 42, LOG_FILE, False),
    (ProcInfo(500, (), True), 42, LOG_FILE, False),
    (None, 42, LOG_FILE, False),
])
def test_detect_started_process(info, session: int, stdout: str, expected: bool) -> None:
    assert detect_started_process(info, session, 42, stdout, ARGV, 4, LOG_FILE) is expected


def test_a_process_started_but_not_recorded_is_found_and_adopted(tmp_path: Path) -> None:
    """The supervisor died between starting a container and recording its pid."""
    (tmp_path / "other").mkdir()
    with open(tmp_path / "app.log", "ab") as log, open(tmp_path / "other" / "app.log", "ab") as other_log:
        other = subprocess.Popen(["sleep", "300"], stdout=other_log, start_new_session=True)
        orphan = subprocess.Popen(["sleep", "300"], stdout=log, start_new_session=True)
    try:
        write_state(tmp_path / STATE_FILE, build_state("u-1", {"app": ProcessRecord("starting", restarts=2)}))
        pods = PodProcesses(sleeper_pod(), [], tmp_path)
        pods.start()
        status = pods.statuses()[0]
        assert pods.decisions["app"].action == "adopt"
        assert (status.pid, status.restart_count, status.adopted) == (orphan.pid, 2, True)
        pods.stop(grace=1)
        assert orphan.wait(timeout=3) is not None and other.poll() is None
    finally:
        for proc in (other, orphan):
            proc.kill()
            proc.wait()


def test_a_recorded_container_the_pod_no_longer_has_is_stopped(tmp_path: Path) -> None:
    two = make_pod(SLEEPER, {"name": "side", "command": ["sleep", "301"]})
    first = PodProcesses(two, [], tmp_path)
    first.start()
    side = first.statuses()[1].pid
    second = PodProcesses(sleeper_pod("u-2"), [], tmp_path)  # a new pod of that name, without "side"
    try:
        second.start()
        assert wait_for(lambda: first.containers[1].proc.poll() is not None, 3), "the leftover must be stopped"
        assert [c.name for c in second.containers] == ["app"] and second.statuses()[0].pid not in (None, side)
        assert set(read_state(tmp_path / STATE_FILE)[1]) == {"app"}
    finally:
        second.stop(grace=1)
        first.stop(grace=1)
