"""WasmPlugin on the network-namespace cluster (`meshway up`'s, root): requests from the curl pod to
reviews go through the waypoint, where a plugin read from file:// adds a response header (name and
value from pluginConfig), a plugin the control plane downloads over http:// (sha256-checked)
answers 403 for /admin, and a module that cannot start follows failStrategy (FAIL_OPEN: served
without it; FAIL_CLOSE: 403 from the stand-in RBAC filter). A module in a Docker image, pushed to a
real registry on the host (tests/registry_support.py) and named by a bare reference, acts the same."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cluster_support import cluster_fixture
from registry_support import Registry
from wasm_support import assemble

from meshway.model import find_kind, load_yaml

mesh = cluster_fixture()
GET = ("import http.client, json, sys\n"
       "c = http.client.HTTPConnection(sys.argv[1], 9080, timeout=5)\n"
       "c.request('GET', sys.argv[2])\n"
       "r = c.getresponse()\n"
       "print(json.dumps([r.status, r.getheader('x-wasm-greeting'), r.read().decode(errors='replace')]))\n")


class Modules(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modules")
    built = {name: assemble(name, folder) for name in ("add_header", "deny_path", "fail_start")}
    Modules.files = {f"/{name}.wasm": path.read_bytes() for name, path in built.items()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Modules)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield built, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def get(mesh, path: str = "/reviews/0") -> list:
    """[status, x-wasm-greeting, body] of one request from the curl pod to reviews."""
    cmd = ["ip", "netns", "exec", mesh.netns(mesh.pod("curl")), sys.executable, "-c", GET, "reviews", path]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(mesh, check, path: str = "/reviews/0", timeout: float = 20) -> list:
    deadline = time.monotonic() + timeout
    while not check(got := get(mesh, path)):
        assert time.monotonic() < deadline, f"still {got}"
        time.sleep(0.2)
    return got


def plugin(name: str, url: str, spec: str) -> str:
    return f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  url: {url}
  {spec}
"""


def test_header_added_and_path_denied_at_the_waypoint(mesh, modules) -> None:
    built, base = modules
    deny_sha = hashlib.sha256(built["deny_path"].read_bytes()).hexdigest()
    mesh.store.apply(load_yaml(
        plugin("greeting", f"file://{built['add_header']}", "pluginConfig: {name: x-wasm-greeting, value: hello}")
        + "---\n" + plugin("deny-admin", f"{base}/deny_path.wasm",
                           f"sha256: '{deny_sha}'\n  phase: AUTHZ\n  pluginConfig: {{prefix: /admin}}"), "wp.yaml"))
    status, greeting, body = wait_for(mesh, lambda r: r[1] == "hello")
    assert status == 200 and '"version"' in body
    assert get(mesh, "/admin/users") == [403, None, "denied by wasm plugin\n"]
    assert mesh.waypoint_requests() > 0  # the requests went through the waypoint


def test_a_module_that_cannot_start_follows_fail_strategy(mesh, modules) -> None:
    built, _ = modules
    url = f"file://{built['fail_start']}"
    mesh.store.apply(load_yaml(plugin("broken", url, "failStrategy: FAIL_OPEN"), "wp.yaml"))
    deadline = time.monotonic() + 20
    while True:
        conditions = {c["type"]: c for c in (mesh.store.get(find_kind("wasmplugin"), "default", "broken")
                                             .get("status") or {}).get("conditions") or []}
        if "Reconciled" in conditions or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert conditions["Reconciled"]["reason"] == "ModuleUnavailable"
    assert "Failed to start base Wasm" in conditions["Reconciled"]["message"]
    assert get(mesh)[0] == 200
    mesh.store.apply(load_yaml(plugin("broken", url, "failStrategy: FAIL_CLOSE"), "wp.yaml"))
    assert wait_for(mesh, lambda r: r[0] == 403)[2] == "RBAC: access denied"
    mesh.store.delete([(find_kind("wasmplugin"), "default", "broken")])
    wait_for(mesh, lambda r: r[0] == 200)


def test_a_module_from_an_image_acts_at_the_waypoint(mesh, modules, tmp_path) -> None:
    built, _ = modules
    registry = Registry(tmp_path)
    try:
        digest = registry.push_docker_image("wasm/add-header", "1.0", built["add_header"].read_bytes())
        mesh.store.apply(load_yaml(plugin("greeting", f"{registry.host}/wasm/add-header:1.0",
                                          f"sha256: '{digest}'\n  pluginConfig: {{name: x-wasm-greeting, value: oci}}"),
                                   "wp.yaml"))
        status, _, body = wait_for(mesh, lambda r: r[1] == "oci")
        assert status == 200 and '"version"' in body
    finally:
        mesh.store.delete([(find_kind("wasmplugin"), "default", "greeting")])
        registry.close()
