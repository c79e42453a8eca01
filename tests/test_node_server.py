"""The node agent's kubelet API (meshway/node/server.py) over real TLS on loopback, without a cluster:
client certificates of the cluster CA only, the authorizer's answer, containerLogs with tailLines,
limitBytes and follow, and what is not served yet."""
from __future__ import annotations

import http.client
import ssl
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from meshway.ca.certs import cert_to_pem, key_to_pem
from meshway.kube.harness import CertRequest, build_ca, build_signed_cert
from meshway.node.server import build_tls_context, find_subject, serve

NOW = datetime.now(timezone.utc)


class FakeAuthorizer:
    def __init__(self) -> None:
        self.asked: list[tuple[str, list[str], str]] = []

    def allowed(self, user, groups, verb="get"):
        self.asked.append((user, groups, verb))
        return user == "kube-apiserver-kubelet-client", "no RBAC rule" if user != "kube-apiserver-kubelet-client" else ""


def write_pair(folder: Path, name: str, cert, key) -> tuple[Path, Path]:
    (folder / f"{name}.crt").write_text(cert_to_pem(cert))
    (folder / f"{name}.key").write_text(key_to_pem(key))
    return folder / f"{name}.crt", folder / f"{name}.key"


@pytest.fixture()
def kubelet(tmp_path):
    ca, ca_key = build_ca(NOW)
    (tmp_path / "ca.crt").write_text(cert_to_pem(ca))
    serving = write_pair(tmp_path, "serving", *build_signed_cert(
        CertRequest("s", "system:node:node-1", ("system:nodes",), ("node-1",), ("127.0.0.1",), server=True),
        ca, ca_key, NOW))
    apiserver = write_pair(tmp_path, "apiserver", *build_signed_cert(
        CertRequest("a", "kube-apiserver-kubelet-client", ("system:masters",)), ca, ca_key, NOW))
    someone = write_pair(tmp_path, "someone", *build_signed_cert(CertRequest("x", "alice", ("dev",)), ca, ca_key, NOW))
    other_ca, other_key = build_ca(NOW)
    foreign = write_pair(tmp_path, "foreign", *build_signed_cert(
        CertRequest("f", "kube-apiserver-kubelet-client", ("system:masters",)), other_ca, other_key, NOW))
    logs = tmp_path / "pods" / "default.ratings-1"
    logs.mkdir(parents=True)
    (logs / "ratings.log").write_text("one\ntwo\nthree\n")
    live = {"running": True}

    def find_log(ns, pod, container):
        if (ns, pod, container) == ("default", "ratings-1", "ratings"):
            return logs / "ratings.log", live["running"]
        return None
    stopping = threading.Event()
    auth = FakeAuthorizer()
    server = serve(("127.0.0.1", 0), build_tls_context(*serving, tmp_path / "ca.crt"), find_log, auth, stopping)
    port = server.server_address[1]

    def request(path: str, client=apiserver, method="GET") -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        if client is not None:
            ctx.load_cert_chain(*map(str, client))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
    yield request, {"apiserver": apiserver, "someone": someone, "foreign": foreign}, auth, live, logs
    stopping.set()
    server.shutdown()
    server.server_close()


def test_logs(kubelet):
    request, *_ = kubelet
    assert request("/containerLogs/default/ratings-1/ratings") == (200, b"one\ntwo\nthree\n")
    assert request("/containerLogs/default/ratings-1/ratings?tailLines=2") == (200, b"two\nthree\n")
    assert request("/containerLogs/default/ratings-1/ratings?tailLines=2&limitBytes=5") == (200, b"two\nt")


def test_follow_streams_until_the_pod_stops(kubelet):
    request, _, _, live, logs = kubelet

    def later():
        with open(logs / "ratings.log", "a") as f:
            f.write("four\n")
        threading.Timer(0.5, lambda: live.update(running=False)).start()
    threading.Timer(0.3, later).start()
    status, body = request("/containerLogs/default/ratings-1/ratings?follow=true&tailLines=1")
    assert (status, body) == (200, b"three\nfour\n")


def test_who_may_ask(kubelet):
    request, certs, auth, *_ = kubelet
    status, body = request("/containerLogs/default/ratings-1/ratings", certs["someone"])
    assert status == 403 and b"user=alice" in body and b"no RBAC rule" in body
    assert ("alice", ["dev"], "get") in auth.asked
    for client in (None, certs["foreign"]):  # no certificate, or another CA's: no TLS session at all
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
            request("/containerLogs/default/ratings-1/ratings", client)


@pytest.mark.parametrize("method,path,status,text", [
    ("GET", "/containerLogs/default/ratings-1/nope", 404, b'container "nope" in pod "ratings-1"'),
    ("GET", "/containerLogs/default/ratings-1/ratings?tailLines=x", 400, b"tailLines"),
    ("GET", "/containerLogs/default/ratings-1/ratings?previous=true", 400, b"previous terminated container"),
    ("GET", "/stats/summary", 404, b"/containerLogs/"),
    ("POST", "/exec/default/ratings-1/ratings?command=ls", 400, b"Upgrade request required (SPDY/3.1)"),
    ("POST", "/portForward/default/ratings-1", 400, b"Upgrade request required (SPDY/3.1)"),
    ("POST", "/attach/default/ratings-1/ratings", 400, b"Upgrade request required (SPDY/3.1)"),
    ("POST", "/run/default/ratings-1/ratings", 501, b"run is not served"),
    ("POST", "/exec/default/ratings-1/ratings", 400, b"at least one command"),
])
def test_refusals(kubelet, method, path, status, text):
    request, *_ = kubelet
    got, body = request(path, method=method)
    assert got == status and text in body


def test_subject():
    cert = {"subject": ((("organizationName", "system:nodes"),), (("commonName", "system:node:node-1"),))}
    assert find_subject(cert) == ("system:node:node-1", ["system:nodes"])
