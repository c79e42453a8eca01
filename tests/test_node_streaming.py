"""The kubelet streaming API (`meshway.node.spdy`, `meshway.node.streaming`): SPDY/3.1 frames and
header compression, the request and protocol decisions as tables, and whole sessions over a socket
pair with the test playing the API server's side (exec with stdin, exit codes; exec on a terminal
with resizes; attach following a container's output, stdin refused; port-forward to a local TCP
server, two connections on one session); the port-forward client's framing against the session. The namespace prefix is empty here: the processes
run in the test's own namespace (the cluster e2e, tests/test_kube_mesh_e2e.py, runs them in pods)."""
from __future__ import annotations

import hashlib
import json
import socket
import threading

import pytest

from meshway.node import spdy as S
from meshway.node.streaming import (StreamRequest, StreamRequestError, StreamSession, StreamTarget, build_exec_status,
                                    choose_protocol, parse_resize_messages, plan_attach, plan_stream_request)


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
    ("/attach/default/curl-1/curl", {"output": ["1"], "error": ["1"]},
     StreamRequest("attach", "default", "curl-1", "curl", (), False, True, True)),
    ("/portForward/istio-system/ztunnel-x", {}, StreamRequest("portForward", "istio-system", "ztunnel-x")),
    ("/portForward/default/waypoint-1/0a1b", {}, StreamRequest("portForward", "default", "waypoint-1")),
])
def test_stream_requests(path, query, expected):
    assert plan_stream_request(path, query) == expected


@pytest.mark.parametrize("path, query, status", [
    ("/exec/default/curl-1/curl", {}, 400),
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


@pytest.mark.parametrize("data, sizes, rest", [
    (b'{"Width":80,"Height":24}', [(80, 24)], b""),
    (b'{"Width":80,"Height":24}\n{"Width":120,"Height":40}{"Wid', [(80, 24), (120, 40)], b'{"Wid'),
    (b'{"Width":-1,"Height":24}{"Width":"x"}[1]', [], b""),  # not sizes: skipped
    (b"", [], b""),
])
def test_resize_messages(data, sizes, rest):
    assert parse_resize_messages(data) == (sizes, rest)


def test_exec_on_a_terminal_with_resizes():
    """`kubectl exec -it`: error, stdin, stdout and resize streams (no stderr); the command's stdio is
    a terminal of the size kubectl sent, resized while it runs; what it prints comes back on stdout."""
    script = ("import os,sys,signal,time\n"
              # os.write, not print: the signal may come while the print below is still flushing
              # (the buffered writer refuses a reentrant call)
              "signal.signal(signal.SIGWINCH, lambda *a: os.write(1, f'winch {os.get_terminal_size(0)}\\n'.encode()))\n"
              "print('tty', os.isatty(0), os.isatty(1), os.isatty(2), os.get_terminal_size(0), os.environ['TERM'],"
              " flush=True)\n"
              "line = sys.stdin.readline()\n"
              "time.sleep(0.3)\n"
              "print('got', line.strip(), flush=True)\n"
              "sys.exit(4)\n")
    import sys
    request = StreamRequest("exec", "default", "p", "c", (sys.executable, "-c", script), True, True, True, True)
    api = ApiServerSide(request, StreamTarget(()))
    for stream_id, kind in ((1, "error"), (3, "stdin"), (7, "resize")):
        api.open(stream_id, streamtype=kind)
    api.send(7, b'{"Width":100,"Height":30}')  # kubectl's first size, before the last stream opens
    api.open(5, streamtype="stdout")
    api.read_until(lambda: b"xterm" in api.received.get(5, b""))
    assert b"tty True True True os.terminal_size(columns=100, lines=30) xterm" in api.received[5]
    api.send(7, b'{"Width":132,"Height":43}\n')
    api.read_until(lambda: b"winch" in api.received.get(5, b""))
    api.send(3, b"hello\r")
    api.read_until(lambda: 1 in api.finished)
    out = api.received[5].replace(b"\r\n", b"\n")
    assert b"winch os.terminal_size(columns=132, lines=43)" in out
    assert b"hello\n" in out  # the terminal echoes what was typed
    assert b"got hello" in out
    assert json.loads(api.received[1])["details"]["causes"] == [{"reason": "ExitCode", "message": "4"}]


def test_attach_follows_the_containers_output_until_it_exits(tmp_path):
    import subprocess
    import time

    log = tmp_path / "c.log"
    log.write_bytes(b"before attach\n")
    container = subprocess.Popen(["sh", "-c", f"sleep 0.5; echo one >> {log}; echo two >> {log}; sleep 0.5"])
    threading.Thread(target=container.wait, daemon=True).start()  # reaped, as the runtime reaps (tail --pid sees a zombie)
    request = StreamRequest("attach", "default", "p", "c", (), False, True, True)
    api = ApiServerSide(request, StreamTarget((), log_path=log, pid=container.pid))
    for stream_id, kind in ((1, "error"), (3, "stdout"), (5, "stderr")):
        api.open(stream_id, streamtype=kind)
    started = time.monotonic()
    api.read_until(lambda: 1 in api.finished)
    assert api.received[3] == b"one\ntwo\n"  # from now on: not what was written before
    assert json.loads(api.received[1]) == {"metadata": {}, "status": "Success"}
    assert time.monotonic() - started < 8


@pytest.mark.parametrize("stdin, tty, says", [(True, False, "cannot attach to the stdin"),
                                              (True, True, "cannot attach to the terminal")])
def test_attach_to_stdin_or_a_terminal_is_refused(tmp_path, stdin, tty, says):
    request = StreamRequest("attach", "default", "p", "c", (), stdin, True, not tty, tty)
    assert says in plan_attach(request, StreamTarget((), log_path=tmp_path, pid=1))[1]
    api = ApiServerSide(request, StreamTarget((), log_path=tmp_path / "c.log", pid=1))
    kinds = ["error", "stdin", "stdout"] + (["resize"] if tty else ["stderr"])
    for i, kind in enumerate(kinds):
        api.open(2 * i + 1, streamtype=kind)
    api.read_until(lambda: 1 in api.finished)
    message = json.loads(api.received[1])["message"]
    assert says in message and "/dev/null" in message


def test_attach_to_a_container_not_running():
    request = StreamRequest("attach", "default", "p", "c", (), False, True, False)
    assert plan_attach(request, StreamTarget((), log_path=None, pid=None)) == ([], 'container "c" is not running')


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


# -- the port-forward client (meshway.kube.portforward) against the session -----------------------------
def test_the_port_forward_client_reads_an_http_answer_through_the_session():
    """The client's frames (error + data streams, the request on data) against the node agent's
    session, to a local HTTP server answering chunked, as Envoy's admin does over HTTP/1.1."""
    from meshway.kube.portforward import (ForwardState, build_stream_headers, build_upgrade_request,
                                          parse_http_response, read_portforward)

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(100)
            assert data.startswith(b"GET /config_dump HTTP/1.1\r\n")
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n")
    threading.Thread(target=serve, daemon=True).start()
    ours, theirs = socket.socketpair()
    threading.Thread(target=StreamSession(theirs, StreamRequest("portForward", "istio-system", "ztunnel-x"),
                                          StreamTarget(())).run, daemon=True).start()
    client, state = S.Session(), ForwardState()
    ours.sendall(client.build_syn_stream(1, build_stream_headers("error", port)) +
                 client.build_syn_stream(3, build_stream_headers("data", port)) +
                 S.build_data(3, b"GET /config_dump HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
    ours.settimeout(10)
    while not state.done:
        read_portforward(state, client.feed(ours.recv(65536)), 1, 3)
    assert parse_http_response(bytes(state.data)) == (200, b'{"a":1}')
    assert not state.error
    request = build_upgrade_request("127.0.0.1:6443", "istio-system", "ztunnel-x", "Bearer t")
    assert request.startswith(b"POST /api/v1/namespaces/istio-system/pods/ztunnel-x/portforward HTTP/1.1\r\n")
    assert b"Upgrade: SPDY/3.1\r\n" in request and b"X-Stream-Protocol-Version: portforward.k8s.io\r\n" in request
    assert request.endswith(b"Authorization: Bearer t\r\n\r\n")
