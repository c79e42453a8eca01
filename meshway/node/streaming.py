"""The kubelet streaming API of `meshway node`: `kubectl exec` (also `-t`), `kubectl attach` and
`kubectl port-forward` (and so `istioctl proxy-config`, which port-forwards to a proxy's admin port)
through the API server.

The API server reaches `/exec/<ns>/<pod>/<container>?command=…&stdin=1&stdout=1&stderr=1` and
`/portForward/<ns>/<pod>` with an HTTP/1.1 upgrade to SPDY/3.1 (`meshway.node.spdy`), offering
protocol versions in `X-Stream-Protocol-Version`; the agent answers 101 with the one it speaks
(`v4.channel.k8s.io` for exec, `portforward.k8s.io`) and then serves the streams the API server opens:

- **exec**: streams `error`, `stdin`, `stdout`, `stderr` (by the `streamtype` header). Once the
  expected ones are open, the command runs in the pod's network namespace as the container's user
  (`ip netns exec … setpriv …`, the same prefixes the pod's own processes get), stdin copied in,
  stdout/stderr out; at exit the `error` stream gets the v4 status (`Success`, or `Failure` with
  reason `NonZeroExitCode` and the code as the `ExitCode` cause, which kubectl exits with).
  **With a TTY** (`-t`): streams `error`, `stdin`, `stdout` and `resize` (no `stderr`: the terminal
  merges them, as the kubelet's protocol has it); the command gets a pseudo-terminal as its
  controlling terminal, stdin, stdout and stderr (`TERM=xterm`, as container runtimes set it), and each
  `{"Width":W,"Height":H}` message on `resize` (kubectl's terminal size, at start and on SIGWINCH;
  the v5 WebSocket protocol's resize channel, which the API server turns into this stream) sets the
  terminal's size (TIOCSWINSZ), so the program sees SIGWINCH.
- **attach**: the container's output as it is written from now on (its log file: the runtime starts
  containers with stdout and stderr into one file and stdin from /dev/null), on `stdout`, until the
  container's process exits or kubectl leaves. A container has no stdin or terminal to attach to:
  `-i` or `-t` is refused on the error stream, with the reason.
- **portForward**: streams in pairs per `requestid`, `error` and `data`, with the pod `port`. Each data
  stream is one connection to `localhost:<port>` inside the pod's network namespace (a relay process
  started there: this Python cannot enter a namespace itself), bytes copied both ways; a connection
  that fails writes the kubelet's message on the pair's error stream.

One thread per upgraded connection runs a `selectors` loop over the TLS socket and the processes'
pipes, so the TLS object is only ever used from that thread. Decisions (`plan_stream_request`,
`choose_protocol`, `build_exec_status`, `parse_resize_messages`, `plan_attach`) are pure."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import selectors
import shlex
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import spdy as S

log = logging.getLogger("meshway.node.streaming")
EXEC_PROTOCOLS = ("v4.channel.k8s.io",)
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
STREAM_WAIT = 10.0  # seconds for the expected streams of an exec to be opened
CHUNK = 32 * 1024
RELAY = r"""
import os, socket, sys, threading
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
except OSError as exc:
    sys.stderr.write(str(exc)); sys.exit(1)
s.settimeout(None)
def down():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=down, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""


class StreamRequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StreamRequest:
    kind: str  # exec | attach | portForward
    namespace: str
    pod: str
    container: str = ""
    command: tuple[str, ...] = ()
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False


@dataclass(frozen=True)
class StreamTarget:
    """Where a pod's processes run: the network namespace prefix, the container's user prefix and
    environment (for exec)."""

    netns_prefix: tuple[str, ...]
    user_prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None  # the container's output (attach)
    pid: int | None = None  # the container's running process (attach ends when it exits)


FindTarget = Callable[[str, str, str], "StreamTarget | None"]


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    return (query.get(name) or [""])[-1].lower() in ("1", "true")


def plan_stream_request(path: str, query: Mapping[str, list[str]]) -> StreamRequest:
    """`/exec/<ns>/<pod>/<container>`, `/attach/<ns>/<pod>/<container>` or `/portForward/<ns>/<pod>`;
    501 for run."""
    parts = [p for p in path.split("/") if p]
    kind = parts[0] if parts else ""
    if kind == "run":
        raise StreamRequestError(501, "run is not served by meshway's node agent (exec, attach and port-forward are)")
    if kind == "portForward" and len(parts) in (3, 4):
        return StreamRequest("portForward", parts[1], parts[2])
    if kind in ("exec", "attach") and len(parts) in (4, 5):
        command = tuple(query.get("command") or ())
        if kind == "exec" and not command:
            raise StreamRequestError(400, "you must specify at least one command for the container")
        return StreamRequest(kind, parts[1], parts[2], parts[3], command if kind == "exec" else (),
                             _flag(query, "input") or _flag(query, "stdin"),
                             _flag(query, "output") or _flag(query, "stdout"), _flag(query, "error") or _flag(query, "stderr"),
                             _flag(query, "tty"))
    raise StreamRequestError(404, f"not found: {path}")


def plan_attach(request: StreamRequest, target: StreamTarget) -> tuple[list[str], str]:
    """(the command that follows the container's output from now on, or the refusal for the error stream)."""
    if request.stdin or request.tty:
        return [], (f"cannot attach to the {'terminal' if request.tty else 'stdin'} of container "
                    f'"{request.container}": meshway\'s runtime starts containers with stdin from /dev/null and no '
                    "terminal (kubectl attach without -i and -t follows its output)")
    if target.log_path is None or target.pid is None:
        return [], f'container "{request.container}" is not running'
    return ["tail", "-c", "0", f"--pid={target.pid}", "-F", str(target.log_path)], ""


def parse_resize_messages(buffer: bytes) -> tuple[list[tuple[int, int]], bytes]:
    """The terminal sizes (width, height) in the resize stream's bytes so far (JSON objects one after
    another, as kubectl's encoder writes them), and the bytes of an incomplete last one."""
    sizes, text, offset = [], buffer.decode(errors="replace"), 0
    decoder = json.JSONDecoder()
    while True:
        while offset < len(text) and text[offset].isspace():
            offset += 1
        if offset >= len(text):
            return sizes, b""
        try:
            value, offset = decoder.raw_decode(text, offset)
        except json.JSONDecodeError:
            return sizes, text[offset:].encode()
        if isinstance(value, dict):
            width, height = value.get("Width") or value.get("width"), value.get("Height") or value.get("height")
            if isinstance(width, int) and isinstance(height, int) and 0 <= width < 65536 and 0 <= height < 65536:
                sizes.append((width, height))


def choose_protocol(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol the client offers that we speak (headers may repeat or list with commas)."""
    for value in offered:
        for name in (v.strip() for v in value.split(",")):
            if name in supported:
                return name
    return None


def build_exec_status(exit_code: int | None, error: str = "") -> bytes:
    """The v4 status written on the error stream when the command ends (what kubectl reads)."""
    if error:
        return json.dumps({"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError",
                           "code": 500}).encode()
    if exit_code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({"metadata": {}, "status": "Failure",
                       "message": f"command terminated with non-zero exit code: exit status {exit_code}",
                       "reason": "NonZeroExitCode",
                       "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}).encode()


# -- the session ------------------------------------------------------------------------------------
@dataclass
class _Pipe:
    """A process pipe read by the loop: its bytes go out on `stream_id`."""

    stream_id: int
    done: bool = False


class StreamSession:
    """One upgraded connection (see the module's notes) on `sock` (the TLS socket: `recv`, `sendall`,
    `pending`; the API server sends nothing before our 101, so the HTTP reader holds nothing of it)."""

    def __init__(self, sock: Any, request: StreamRequest, target: StreamTarget) -> None:
        self.sock, self.request, self.target = sock, request, target
        self.spdy = S.Session()
        self.selector = selectors.DefaultSelector()
        self.streams: dict[str, int] = {}  # exec: streamtype -> stream id
        self.pairs: dict[str, dict[str, int]] = {}  # portForward: requestid -> {streamtype: stream id}
        self.ports: dict[int, int] = {}  # data stream id -> pod port
        self.procs: dict[int, subprocess.Popen] = {}  # stream id whose input feeds the process -> process
        self.exec_proc: subprocess.Popen | None = None
        self.pty_master: int | None = None  # exec -t: the terminal's master side (stdin goes there)
        self.resize_buffer = b""
        self.size: tuple[int, int] | None = None  # the last terminal size asked for (set on the terminal at start)
        self.open_pipes = 0
        self.closed = False
        self.started = time.monotonic()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- frames from the API server ---------------------------------------------------------------
    def on_frame(self, frame: S.Frame) -> None:
        if isinstance(frame, S.SynStream):
            self.send(self.spdy.build_syn_reply(frame.stream_id))
            self.on_stream(frame)
        elif isinstance(frame, S.Data):
            self.on_data(frame.stream_id, frame.data, frame.fin)
        elif isinstance(frame, S.RstStream):
            proc = self.procs.pop(frame.stream_id, None)
            if proc is not None and proc is not self.exec_proc:
                proc.kill()
        elif isinstance(frame, S.Ping):
            self.send(S.build_ping(frame.ping_id))
        elif isinstance(frame, S.GoAway):
            self.closed = True

    def on_stream(self, frame: S.SynStream) -> None:
        kind = (frame.headers.get("streamtype") or [""])[0]
        if self.request.kind in ("exec", "attach"):
            self.streams[kind] = frame.stream_id
            self.maybe_start_exec()
            return
        request_id = (frame.headers.get("requestid") or ["0"])[0]
        pair = self.pairs.setdefault(request_id, {})
        pair[kind] = frame.stream_id
        if kind == "data":
            try:
                port = int((frame.headers.get("port") or [""])[0])
            except ValueError:
                return self.fail_pair(request_id, "invalid port")
            self.ports[frame.stream_id] = port
            self.start_relay(frame.stream_id, port)

    def on_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        if stream_id == self.streams.get("resize") and self.request.kind == "exec":
            sizes, self.resize_buffer = parse_resize_messages(self.resize_buffer + data)
            for width, height in sizes:
                self.resize(width, height)
            return
        if self.pty_master is not None and stream_id == self.streams.get("stdin"):
            try:
                if data:
                    os.write(self.pty_master, data)
            except OSError:
                pass
            return
        proc = self.procs.get(stream_id)
        if proc is None or proc.stdin is None:
            return
        try:
            if data:
                proc.stdin.write(data)
                proc.stdin.flush()
            if fin:
                proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    # -- exec ---------------------------------------------------------------------------------------
    def expected_streams(self) -> set[str]:
        """The kubelet's: stderr only without a TTY (the terminal carries it), resize only with one."""
        r = self.request
        return {"error"} | ({"stdin"} if r.stdin else set()) | ({"stdout"} if r.stdout else set()) | \
            ({"stderr"} if r.stderr and not r.tty else set()) | ({"resize"} if r.tty else set())

    def maybe_start_exec(self) -> None:
        if self.exec_proc is not None or not self.expected_streams() <= set(self.streams):
            return
        if self.request.kind == "attach":
            return self.start_attach()
        if self.request.tty:
            return self.start_tty()
        argv = [*self.target.netns_prefix, *self.target.user_prefix, *self.request.command]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if self.request.stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(self.target.env),
                                    start_new_session=True)
        except OSError as exc:
            return self.finish_exec(None, f"cannot run {shlex.join(self.request.command)}: {exc}")
        self.exec_proc = proc
        if self.request.stdin:
            self.procs[self.streams["stdin"]] = proc
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            stream = self.streams.get(name)
            self.register(pipe, _Pipe(stream) if stream else _Pipe(0))

    def start_tty(self) -> None:
        """The command on a new pseudo-terminal: its controlling terminal and all three of its stdio."""
        argv = [*self.target.netns_prefix, *self.target.user_prefix, *self.request.command]
        master, slave = pty.openpty()
        if self.size is not None:  # kubectl's first size, sent before the command started
            _set_size(master, *self.size)
        try:
            proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env={**self.target.env, "TERM": "xterm"},
                                    start_new_session=True, preexec_fn=_take_terminal)  # noqa: PLW1509
        except OSError as exc:
            os.close(master)
            return self.finish_exec(None, f"cannot run {shlex.join(self.request.command)}: {exc}")
        finally:
            os.close(slave)
        self.exec_proc, self.pty_master = proc, master
        self.register(os.fdopen(master, "rb", buffering=0, closefd=False), _Pipe(self.streams.get("stdout", 0)))

    def resize(self, width: int, height: int) -> None:
        self.size = (width, height)
        if self.pty_master is not None:
            _set_size(self.pty_master, width, height)

    def start_attach(self) -> None:
        argv, refusal = plan_attach(self.request, self.target)
        if refusal:
            return self.finish_exec(None, refusal)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as exc:
            return self.finish_exec(None, f"cannot follow the container's output: {exc}")
        self.exec_proc = proc
        self.register(proc.stdout, _Pipe(self.streams.get("stdout", 0)))

    def finish_exec(self, code: int | None, error: str = "") -> None:
        for name in ("stdout", "stderr"):
            if name in self.streams:
                self.send(S.build_data(self.streams[name], b"", fin=True))
        self.send(S.build_data(self.streams["error"], build_exec_status(code, error), fin=True))
        self.closed = True

    # -- port-forward -------------------------------------------------------------------------------
    def start_relay(self, stream_id: int, port: int) -> None:
        argv = [*self.target.netns_prefix, sys.executable, "-P", "-c", RELAY, str(port)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        self.procs[stream_id] = proc
        self.register(proc.stdout, _Pipe(stream_id))

    def fail_pair(self, request_id: str, message: str) -> None:
        pair = self.pairs.get(request_id, {})
        if "error" in pair:
            self.send(S.build_data(pair["error"], message.encode(), fin=True))
        if "data" in pair:
            self.send(S.build_data(pair["data"], b"", fin=True))

    def relay_done(self, stream_id: int) -> None:
        proc = self.procs.pop(stream_id, None)
        self.send(S.build_data(stream_id, b"", fin=True))
        if proc is None:
            return
        try:
            code = proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            reason = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
            request_id = next((r for r, p in self.pairs.items() if p.get("data") == stream_id), "")
            r = self.request
            self.fail_pair(request_id, f"error forwarding port {self.ports.get(stream_id)} to pod {r.pod} "
                                       f"(namespace {r.namespace}): {reason or f'exit {code}'}")

    # -- the loop -----------------------------------------------------------------------------------
    def register(self, pipe: Any, data: _Pipe) -> None:
        os.set_blocking(pipe.fileno(), False)
        self.selector.register(pipe, selectors.EVENT_READ, data)
        self.open_pipes += 1

    def on_pipe(self, pipe: Any, info: _Pipe) -> None:
        try:
            data = os.read(pipe.fileno(), CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the terminal's last user closed it (the command exited)
            data = b""
        if data:
            if info.stream_id:
                self.send(S.build_data(info.stream_id, data))
            return
        self.selector.unregister(pipe)
        pipe.close()
        self.open_pipes -= 1
        if self.request.kind == "portForward":
            self.relay_done(info.stream_id)
        elif self.open_pipes == 0 and self.exec_proc is not None:
            code = self.exec_proc.wait()
            self.finish_exec(0 if self.request.kind == "attach" else code)

    def run(self) -> None:
        self.selector.register(self.sock, selectors.EVENT_READ, None)
        try:
            while not self.closed:
                if self.request.kind in ("exec", "attach") and self.exec_proc is None and \
                        time.monotonic() - self.started > STREAM_WAIT:
                    log.warning("exec %s/%s: streams %s never opened", self.request.namespace, self.request.pod,
                                sorted(self.expected_streams() - set(self.streams)))
                    break
                for key, _ in self.selector.select(timeout=1.0):
                    if key.data is None:
                        if not self.read_socket():
                            return
                    else:
                        self.on_pipe(key.fileobj, key.data)
        except (OSError, S.SpdyError) as exc:
            log.info("stream session %s/%s ended: %s", self.request.namespace, self.request.pod, exc)
        finally:
            self.cleanup()

    def read_socket(self) -> bool:
        """Read what the TLS socket has, including records it already decrypted (which `select`
        does not signal); False when the peer closed."""
        while True:
            data = self.sock.recv(CHUNK)
            if not data:
                return False
            for frame in self.spdy.feed(data):
                self.on_frame(frame)
            if not getattr(self.sock, "pending", lambda: 0)():
                return True

    def cleanup(self) -> None:
        for proc in list(self.procs.values()) + ([self.exec_proc] if self.exec_proc else []):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.selector.close()
        if self.pty_master is not None:
            os.close(self.pty_master)
            self.pty_master = None


def _set_size(master: int, width: int, height: int) -> None:
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    except OSError:
        pass


def _take_terminal() -> None:
    """In the child, after setsid: make its stdin (the terminal's slave side) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
