"""The kubelet streaming API (`meshway.node.spdy`, `meshway.node.streaming`): SPDY/3.1 frames and
header compression, the request and protocol decisions as tables, and whole sessions over a socket
pair with the test playing the API server's side (exec with stdin, exit codes; port-forward to a
local TCP server, two connections on one session). The namespace prefix is empty here: the processes
run in the test's own namespace (the cluster e2e, tests/test_kube_mesh_e2e.py, runs them in pods)."""
from __future__ import annotations

import hashlib
import json
import socket
import threading

import pytest

from meshway.node import spdy as S
from meshway.node.streaming import (StreamRequest, StreamRequestError, StreamSession, StreamTarget,
                                    build_exec_status, choose_protocol, plan_stream_request)


def test_the_dictionary_is_spdy3s():
    assert len(S.DICTIONARY) == 1423
    assert S.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert hashlib.sha256(S.DICTIONARY).hexdigest() == \
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


def test_frames_round_trip_through_one_compression_context_per_direction():
    client, server = S.Session(), S.Session()
    wire = b"".join([
        client.build_syn_stream(1, {"streamtype": ["error"], "port": ["15000"], "requestid": ["0"]}),
        client.build_syn_stream(3, {"streamtype": ["data"], "port": ["15000"], "requestid": ["0"]}),
        S.build_data(3, b"GET / HTTP/1.0\r\n\r\n"), S.build_data(3, b"", fin=True),
        S.build_ping(7), S.build_rst_stream(1), S.build_goaway(3)])
    frames = [f for i in range(0, len(wire), 5) for f in server.feed(wire[i:i + 5])]  # any split
    assert frames == [
        S.SynStream(1, {"streamtype": ["error"], "port": ["15000"], "requestid": ["0"]}, False),
        S.SynStream(3, {"streamtype": ["data"], "port": ["15000"], "requestid": ["0"]}, False),
        S.Data(3, b"GET / HTTP/1.0\r\n\r\n", False), S.Data(3, b"", True), S.Ping(7), S.RstStream(1, S.RST_CANCEL),
        S.GoAway(3)]
    reply = server.build_syn_reply(3, {"x": ["a", "b"]})
    assert reply[:4] == b"\x80\x03\x00\x02"
    assert client.parse_syn_reply(reply[8:]) == {"x": ["a", "b"]}


def test_a_frame_of_another_version_ends_the_session():
    with pytest.raises(S.SpdyError, match="version 2"):
        S.Session().feed(b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01")


@pytest.mark.parametrize("path, query, expected", [
    ("/exec/default/curl-1/curl", {"command": ["curl", "-s", "http://reviews:9080/"], "output": ["1"], "error": ["1"]},
     StreamRequest("exec", "default", "curl-1", "curl", ("curl", "-s", "http://reviews:9080/"), False, True, True)),
    ("/exec/default/curl-1/curl", {"command": ["cat"], "stdin": ["true"], "stdout": ["true"], "tty": ["1"]},
     StreamRequest("exec", "default", "curl-1", "curl", ("cat",), True, True, False, True)),
    ("/portForward/istio-system/ztunnel-x", {}, StreamRequest("portForward", "istio-system", "ztunnel-x")),
    ("/portForward/default/waypoint-1/0a1b", {}, StreamRequest("portForward", "default", "waypoint-1")),
])
def test_stream_requests(path, query, expected):
    assert plan_stream_request(path, query) == expected


@pytest.mark.parametrize("path, query, status", [
    ("/exec/default/curl-1/curl", {}, 400),
    ("/attach/default/curl-1/curl", {}, 501),
    ("/run/default/curl-1/curl", {}, 501),
    ("/exec/default", {"command": ["x"]}, 404),
])
def test_stream_requests_refused(path, query, status):
    with pytest.raises(StreamRequestError) as exc:
        plan_stream_request(path, query)
    assert exc.value.status == status


@pytest.mark.parametrize("offered, chosen", [
    (["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io"], "v4.channel.k8s.io"),
    (["v5.channel.k8s.io, v4.channel.k8s.io"], "v4.channel.k8s.io"),
    (["channel.k8s.io"], None),
    ([], None),
])
def test_protocol_choice(offered, chosen):
    assert choose_protocol(offered, ("v4.channel.k8s.io",)) == chosen


def test_exec_status_as_kubectl_reads_it():
    assert json.loads(build_exec_status(0)) == {"metadata": {}, "status": "Success"}
    failure = json.loads(build_exec_status(3))
    assert (failure["status"], failure["reason"], failure["details"]["causes"]) == \
        ("Failure", "NonZeroExitCode", [{"reason": "ExitCode", "message": "3"}])
    assert json.loads(build_exec_status(None, "no TTY"))["reason"] == "InternalError"


class ApiServerSide:
    """The API server's end of an upgraded connection: opens streams, sends data, collects what comes back."""

    def __init__(self, request: StreamRequest, target: StreamTarget) -> None:
        self.ours, theirs = socket.socketpair()
        self.session = S.Session()
        self.thread = threading.Thread(target=StreamSession(theirs, request, target).run, daemon=True)
        self.thread.start()
        self.received: dict[int, bytes] = {}
        self.finished: set[int] = set()

    def open(self, stream_id: int, **headers: str) -> None:
        self.ours.sendall(self.session.build_syn_stream(stream_id, {k: [v] for k, v in headers.items()}))

    def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        self.ours.sendall(S.build_data(stream_id, data, fin))

    def read_until(self, done) -> None:
        self.ours.settimeout(10)
        while not done():
            data = self.ours.recv(65536)
            assert data, "the session closed early"
            for frame in self.session.feed(data):
                if isinstance(frame, S.Data):
                    self.received[frame.stream_id] = self.received.get(frame.stream_id, b"") + frame.data
                    if frame.fin:
                        self.finished.add(frame.stream_id)


def test_exec_with_stdin_stdout_stderr_and_the_exit_code():
    request = StreamRequest("exec", "default", "curl-1", "curl", ("sh", "-c", "cat; echo oops >&2; exit 3"),
                            True, True, True)
    api = ApiServerSide(request, StreamTarget(()))
    for stream_id, kind in ((1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")):
        api.open(stream_id, streamtype=kind)
    api.send(3, b"hello\n")
    api.send(3, b"", fin=True)
    api.read_until(lambda: 1 in api.finished)
    assert api.received[5] == b"hello\n" and api.received[7] == b"oops\n" and {5, 7} <= api.finished
    assert json.loads(api.received[1])["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_exec_with_a_tty_is_refused_on_the_error_stream():
    api = ApiServerSide(StreamRequest("exec", "default", "p", "c", ("sh",), False, True, False, True), StreamTarget(()))
    api.open(1, streamtype="error")
    api.open(3, streamtype="stdout")
    api.read_until(lambda: 1 in api.finished)
    assert "TTY is not supported" in json.loads(api.received[1])["message"]


def test_port_forward_carries_two_connections_and_reports_a_refused_one():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    data += conn.recv(100)
                conn.sendall(b"echo " + data)
    threading.Thread(target=serve, daemon=True).start()
    api = ApiServerSide(StreamRequest("portForward", "default", "p"), StreamTarget(()))
    for request_id, (error, data) in enumerate(((1, 3), (5, 7))):
        api.open(error, streamtype="error", port=str(port), requestid=str(request_id))
        api.open(data, streamtype="data", port=str(port), requestid=str(request_id))
        api.send(data, f"ping {request_id}\n".encode(), fin=True)
    api.read_until(lambda: {3, 7} <= api.finished)
    assert (api.received[3], api.received[7]) == (b"echo ping 0\n", b"echo ping 1\n")
    server.close()
    api.open(9, streamtype="error", port=str(port), requestid="2")
    api.open(11, streamtype="data", port=str(port), requestid="2")
    api.read_until(lambda: 9 in api.finished)
    assert api.received[9].startswith(f"error forwarding port {port} to pod p (namespace default):".encode())
