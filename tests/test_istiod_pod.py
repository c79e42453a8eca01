"""The `istiod` pod that plain `istioctl proxy-status` finds (meshway.node.istiod, the Deployment
`meshway install` writes, the node agent's relay): what istioctl's `queryEachShard` needs of it
(a Running pod labelled app=istiod in istio-system, port 15012, `istioctl/pkg/multixds/gather.go`),
which containers become the relay and on which ports (istioctl version's 15014 too,
`pkg/kube/client.go`), and bytes through the relay program both ways."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meshway.kube.install import build_istiod_deployment, build_meshway_objects
from meshway.node.istiod import (RelayPort, build_relay_container, detect_istiod_container, find_istiod_containers,
                                  find_monitoring_port, plan_istiod_relays)
from meshway.runtime.runas import find_run_as


def test_the_deployment_is_what_istioctl_looks_for() -> None:
    deployment = build_istiod_deployment()
    template = deployment["spec"]["template"]
    assert (deployment["metadata"]["namespace"], deployment["metadata"]["name"]) == ("istio-system", "istiod")
    assert template["metadata"]["labels"]["app"] == "istiod"  # istioctl's default --xds-label
    assert template["metadata"]["labels"]["istio.io/rev"] == "default"
    assert set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(template["metadata"]["labels"].items())
    (container,) = template["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [15012, 15014]  # --xds-port; the monitoring port
    assert find_monitoring_port(template) == 15014  # `prometheus.io/port`, as Istio's chart annotates istiod
    assert detect_istiod_container(container)
    assert find_run_as(container, template).uid == 1337  # as Istio's istiod: never root
    assert deployment in build_meshway_objects()


@pytest.mark.parametrize("image, args, relayed", [
    ("meshway/pilot", [], True),
    ("docker.io/istio/pilot:1.28.0", ["discovery", "--monitoringAddr=:15014"], True),  # Istio's chart
    ("gcr.io/istio-release/pilot:1.28.0-distroless", [], True),
    ("istio/proxyv2:1.28.0", ["proxy", "waypoint"], False),
    ("meshway/ztunnel", [], False),
    ("docker.io/istio/examples-bookinfo-reviews-v1:1.20.1", [], False),
])
def test_which_containers_relay_to_the_control_plane(image: str, args: list, relayed: bool) -> None:
    pod = {"spec": {"containers": [{"name": "c", "image": image, "args": args}]}}
    assert bool(find_istiod_containers(pod)) is relayed


def test_the_relay_container_replaces_pilot_discovery() -> None:
    container = {"name": "discovery", "image": "istio/pilot:1.28.0", "args": ["discovery"],
                 "securityContext": {"runAsUser": 1337}}
    got = build_relay_container(container, "/venv/bin/python", [("0.0.0.0:15012", "/run/meshway/xds-1.sock"),
                                                                ("127.0.0.1:15014", "/run/meshway/xds-2.sock")])
    assert got["command"] == ["/venv/bin/python", "-P", "-u", "-m", "meshway.node.relay", "0.0.0.0:15012",
                              "/run/meshway/xds-1.sock", "127.0.0.1:15014", "/run/meshway/xds-2.sock"]
    assert got["args"] == [] and got["securityContext"] == container["securityContext"]


@pytest.mark.parametrize("annotations, monitoring, relays", [
    ({}, "127.0.0.1:9000", [RelayPort("0.0.0.0:15012", "127.0.0.1:7000"), RelayPort("127.0.0.1:15014", "127.0.0.1:9000")]),
    ({"prometheus.io/port": "15099"}, "127.0.0.1:9000",  # istioctl asks the annotated port
     [RelayPort("0.0.0.0:15012", "127.0.0.1:7000"), RelayPort("127.0.0.1:15099", "127.0.0.1:9000")]),
    ({"prometheus.io/port": "x"}, "127.0.0.1:9000",  # not a number: istioctl's default
     [RelayPort("0.0.0.0:15012", "127.0.0.1:7000"), RelayPort("127.0.0.1:15014", "127.0.0.1:9000")]),
    ({}, None, [RelayPort("0.0.0.0:15012", "127.0.0.1:7000")]),  # no --monitoring-address: 15014 not served
])
def test_the_relay_plan_xds_everywhere_the_monitoring_port_on_loopback(annotations, monitoring, relays) -> None:
    pod = {"metadata": {"annotations": annotations}, "spec": {"containers": []}}
    assert plan_istiod_relays(pod, "127.0.0.1:7000", monitoring) == relays


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _echo_server(path: Path, prefix: bytes) -> socket.socket:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.bind(str(path))
    upstream.listen()

    def echo() -> None:
        while True:
            try:
                conn, _ = upstream.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: (c.sendall(prefix + c.recv(100)), c.close()), daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()
    return upstream


def test_the_relay_program_copies_both_ways(tmp_path: Path) -> None:
    """`python -m meshway.node.relay HOST:PORT SOCKET HOST:PORT SOCKET` as the pod runs it (15012 and
    15014): a TCP client's bytes reach its port's socket's server and its answer comes back, for two
    connections at once."""
    paths = tmp_path / "xds.sock", tmp_path / "monitoring.sock"
    upstreams = [_echo_server(paths[0], b"xds:"), _echo_server(paths[1], b"monitoring:")]
    ports = _free_port(), _free_port()
    relay = subprocess.Popen([sys.executable, "-m", "meshway.node.relay", f"127.0.0.1:{ports[0]}", str(paths[0]),
                              f"127.0.0.1:{ports[1]}", str(paths[1])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                first, second, third = (socket.create_connection(("127.0.0.1", ports[0])),
                                        socket.create_connection(("127.0.0.1", ports[0])),
                                        socket.create_connection(("127.0.0.1", ports[1])))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and relay.poll() is None, relay.communicate()
                time.sleep(0.05)
        with first, second, third:
            second.sendall(b"two")
            first.sendall(b"one")
            third.sendall(b"three")
            assert (first.recv(100), second.recv(100), third.recv(100)) == (b"xds:one", b"xds:two",
                                                                            b"monitoring:three")
    finally:
        relay.terminate()
        out, _ = relay.communicate(timeout=10)
        for upstream in upstreams:
            upstream.close()
    assert out == f"relaying 127.0.0.1:{ports[0]} to {paths[0]}\nrelaying 127.0.0.1:{ports[1]} to {paths[1]}\n"


def test_the_relay_program_refuses_an_odd_argument_list() -> None:
    done = subprocess.run([sys.executable, "-m", "meshway.node.relay", "127.0.0.1:1"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("usage: python -m meshway.node.relay HOST:PORT SOCKET")


def test_the_node_agent_makes_the_istiod_container_its_relay(tmp_path: Path) -> None:
    """`NodeAgent.prepare_istiod`: the pod's container relays to the agent's socket for the control
    plane at `--xds-address`; without that flag it refuses (the pod is tried again, the reason logged)."""
    from types import SimpleNamespace

    from meshway.node.agent import NodeAgent

    relays: list[str] = []
    agent = NodeAgent.__new__(NodeAgent)  # no API server or network: only what prepare_istiod reads
    agent.start_relay = lambda address: relays.append(address) or SimpleNamespace(path=tmp_path / "xds-1.sock")
    pod = build_istiod_deployment()["spec"]["template"]
    other = {"spec": {"containers": [{"name": "app", "image": "istio/examples-bookinfo-reviews-v1:1.20.1"}]}}

    agent.xds_address, agent.monitoring_address = "127.0.0.1:15012", None
    got = agent.prepare_istiod(json_copy(pod))
    (container,) = got["spec"]["containers"]
    assert container["command"][-3:] == ["meshway.node.relay", "0.0.0.0:15012", str(tmp_path / "xds-1.sock")]
    assert relays == ["127.0.0.1:15012"]
    assert agent.prepare_istiod(json_copy(other)) == other and relays == ["127.0.0.1:15012"]

    agent.monitoring_address = "127.0.0.1:15014"  # `meshway up --kubernetes` passes the control plane's
    (container,) = agent.prepare_istiod(json_copy(pod))["spec"]["containers"]
    assert container["command"][-4:] == ["0.0.0.0:15012", str(tmp_path / "xds-1.sock"),
                                         "127.0.0.1:15014", str(tmp_path / "xds-1.sock")]
    assert relays[1:] == ["127.0.0.1:15012", "127.0.0.1:15014"]

    agent.xds_address = None
    with pytest.raises(ValueError, match="start it with --xds-address HOST:PORT"):
        agent.prepare_istiod(json_copy(pod))


def json_copy(body: dict) -> dict:
    import json
    return json.loads(json.dumps(body))
