"""WasmPlugin end to end through a real waypoint Envoy, on loopback (no root needed; the harness of
test_waypoint_e2e): proxy-wasm modules assembled here from tests/data/wasm/*.wat, one read from a
file:// URL and one downloaded by the control plane over http:// (both sha256-checked), act on the
reviews Service's traffic at its waypoint: a response header whose name and value come from
pluginConfig, 403 for a path prefix; a module that cannot start follows failStrategy as Istio's
agent does (FAIL_OPEN: served without it; FAIL_CLOSE: 403), and so does a wrong sha256; a module
that traps while serving follows Envoy's failure policy (FAIL_CLOSE: 503 every time; FAIL_OPEN:
served without it after the failure). Modules in OCI images pulled from a real registry
(go-containerregistry's, tests/registry_support.py: an OCI artifact by oci:// URL, a Docker image by
bare reference) act the same, and a wrong sha256 (the image digest) or a missing tag is reported on
the plugin's status."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from registry_support import Registry
from test_waypoint_e2e import Mesh
from wasm_support import assemble

from meshway.model import find_kind, load_yaml
from meshway.runtime.envoy_admin import fetch_admin
from meshway.xds import protos as P

SERVICE = "targetRefs: [{kind: Service, group: '', name: reviews}]"


def plugin(name: str, url: str, spec: str = "", config: str = "") -> str:
    return f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: default}}
spec:
  {SERVICE}
  url: {url}
  {spec}
  {f"pluginConfig: {config}" if config else ""}
"""


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


@pytest.fixture
def mesh(tmp_path: Path):
    folder = tmp_path / "modules"
    folder.mkdir()
    modules = {name: assemble(name, folder) for name in ("add_header", "deny_path", "fail_start", "crash")}
    Modules.files = {f"/{name}.wasm": path.read_bytes() for name, path in modules.items()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Modules)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    m = Mesh(tmp_path)
    m.modules, m.module_url = modules, f"http://127.0.0.1:{server.server_port}"
    try:
        m.wait_programmed()
        yield m
    finally:
        m.close()
        server.shutdown()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def call(mesh: Mesh, path: str = "/"):
    conn = mesh.client("sleep")
    try:
        return conn.open(f"{mesh.vip()}:9080").request("GET", path, None, host="reviews")
    finally:
        conn.close()


def wait_for(mesh: Mesh, check, path: str = "/", timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        r = call(mesh, path)
        if check(r):
            return r
        assert time.monotonic() < deadline, f"still {r.status} {r.headers} {r.body[:200]!r}"
        time.sleep(0.1)


def conditions(mesh: Mesh, name: str, wanted: str = "Reconciled", timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = {c["type"]: c for c in (mesh.store.get(find_kind("wasmplugin"), "default", name).get("status")
                                        or {}).get("conditions") or []}
        if wanted in found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_header_added_and_a_path_denied(mesh: Mesh) -> None:
    add, deny = mesh.modules["add_header"], mesh.modules["deny_path"]
    mesh.store.apply(load_yaml(plugin("greeting", f"file://{add}", f"sha256: {sha256(add)}",
                                      "{name: x-wasm-greeting, value: hello}") + "---\n"
                               + plugin("deny-admin", f"{mesh.module_url}/deny_path.wasm",
                                        f"sha256: {sha256(deny)}\n  phase: AUTHZ", "{prefix: /admin}"), "wp.yaml"))
    r = wait_for(mesh, lambda r: r.status == 403, "/admin/users")
    assert r.body == b"denied by wasm plugin\n"
    r = wait_for(mesh, lambda r: r.headers.get("x-wasm-greeting") == "hello")
    assert r.status == 200 and b"\"version\"" in r.body  # served by a reviews backend
    assert call(mesh, "/adm").status == 200
    # AUTHZ comes before the UNSPECIFIED phase: its local reply never passes the header plugin.
    assert "x-wasm-greeting" not in call(mesh, "/admin").headers
    for name in ("greeting", "deny-admin"):
        accepted = conditions(mesh, name, "WaypointAccepted")["WaypointAccepted"]
        assert (accepted["status"], accepted["reason"]) == ("True", "Accepted")
        assert "Reconciled" not in conditions(mesh, name, timeout=0)
    cached = mesh.state / "wasm" / f"{sha256(deny)}.wasm"
    assert cached.read_bytes() == deny.read_bytes()  # downloaded once by the control plane, kept by sha256


def test_a_module_that_cannot_start_follows_fail_strategy(mesh: Mesh) -> None:
    failing = mesh.modules["fail_start"]
    mesh.store.apply(load_yaml(plugin("broken", f"file://{failing}", "failStrategy: FAIL_OPEN"), "wp.yaml"))
    found = conditions(mesh, "broken")
    assert found["Reconciled"]["reason"] == "ModuleUnavailable"
    assert "Failed to start base Wasm" in found["Reconciled"]["message"]
    assert "FAIL_OPEN: the chains it applies to run without it" in found["Reconciled"]["message"]
    assert call(mesh).status == 200
    mesh.store.apply(load_yaml(plugin("broken", f"file://{failing}", "failStrategy: FAIL_CLOSE"), "wp.yaml"))
    r = wait_for(mesh, lambda r: r.status == 403)
    assert r.body == b"RBAC: access denied"  # istio-agent's wasm-default-deny stand-in
    assert "FAIL_CLOSE: requests on the chains it applies to are denied (403)" in \
        conditions(mesh, "broken")["Reconciled"]["message"]
    mesh.store.delete([(find_kind("wasmplugin"), "default", "broken")])
    wait_for(mesh, lambda r: r.status == 200)


def test_a_wrong_sha256_is_refused(mesh: Mesh) -> None:
    add = mesh.modules["add_header"]
    mesh.store.apply(load_yaml(plugin("greeting", f"{mesh.module_url}/add_header.wasm", f"sha256: '{'0' * 64}'",
                                      "{name: x-wasm-greeting, value: hello}"), "wp.yaml"))
    r = wait_for(mesh, lambda r: r.status == 403)
    assert "x-wasm-greeting" not in r.headers
    message = conditions(mesh, "greeting")["Reconciled"]["message"]
    assert f"sha256 mismatch: the module's is {sha256(add)}, the plugin expects {'0' * 64}" in message


def test_a_module_that_fails_while_serving_follows_envoys_failure_policy(mesh: Mesh) -> None:
    crash = mesh.modules["crash"]
    mesh.store.apply(load_yaml(plugin("crash", f"file://{crash}", "failStrategy: FAIL_CLOSE"), "wp.yaml"))
    wait_for(mesh, lambda r: r.status == 503)
    assert [call(mesh).status for _ in range(6)] == [503] * 6
    mesh.store.apply(load_yaml(plugin("crash", f"file://{crash}", "failStrategy: FAIL_OPEN"), "wp.yaml"))
    wait_for(mesh, lambda r: r.status == 200)  # after the failure, without the plugin
    assert [call(mesh).status for _ in range(6)] == [200] * 6
    assert "Reconciled" not in conditions(mesh, "crash", timeout=0)  # Envoy accepted it: the failure is at run time


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    r = Registry(tmp_path_factory.mktemp("registry"))
    yield r
    r.close()


def test_modules_from_oci_images_act_at_the_waypoint(mesh: Mesh, registry: Registry) -> None:
    add, deny = mesh.modules["add_header"], mesh.modules["deny_path"]
    add_digest = registry.push_artifact("wasm/add-header", "v1", add.read_bytes())
    deny_digest = registry.push_docker_image("wasm/deny-path", "v1", deny.read_bytes())
    mesh.store.apply(load_yaml(plugin("greeting", f"oci://{registry.host}/wasm/add-header:v1", f"sha256: {add_digest}",
                                      "{name: x-wasm-greeting, value: hello}") + "---\n"
                               + plugin("deny-admin", f"{registry.host}/wasm/deny-path:v1", "phase: AUTHZ",
                                        "{prefix: /admin}"), "wp.yaml"))
    r = wait_for(mesh, lambda r: r.status == 403, "/admin/users")
    assert r.body == b"denied by wasm plugin\n"
    r = wait_for(mesh, lambda r: r.headers.get("x-wasm-greeting") == "hello")
    assert r.status == 200 and b"\"version\"" in r.body
    for name in ("greeting", "deny-admin"):
        assert "Reconciled" not in conditions(mesh, name, timeout=0)
    for digest, module in ((add_digest, add), (deny_digest, deny)):  # kept by image digest
        assert (mesh.state / "wasm" / f"{digest}.wasm").read_bytes() == module.read_bytes()


def test_a_wrong_image_digest_and_a_missing_tag_are_reported(mesh: Mesh, registry: Registry) -> None:
    digest = registry.push_artifact("wasm/greeting", "v1", mesh.modules["add_header"].read_bytes())
    url = f"oci://{registry.host}/wasm/greeting"
    mesh.store.apply(load_yaml(plugin("greeting", f"{url}:v1", f"sha256: '{'0' * 64}'",
                                      "{name: x-wasm-greeting, value: hello}") + "---\n"
                               + plugin("missing", f"{url}:v2", "failStrategy: FAIL_OPEN"), "wp.yaml"))
    r = wait_for(mesh, lambda r: r.status == 403)  # FAIL_CLOSE: the stand-in denies
    assert r.body == b"RBAC: access denied"
    message = conditions(mesh, "greeting")["Reconciled"]["message"]
    assert f"sha256 mismatch: the image's digest is {digest}, the plugin expects {'0' * 64}" in message
    found = conditions(mesh, "missing")["Reconciled"]
    assert found["reason"] == "ModuleUnavailable"
    assert f"manifests/v2: MANIFEST_UNKNOWN: Unknown manifest; FAIL_OPEN: the chains it applies to run" \
        in found["message"]
    mesh.store.apply(load_yaml(plugin("greeting", f"{url}:v1", f"sha256: {digest}",
                                      "{name: x-wasm-greeting, value: hello}"), "wp.yaml"))
    wait_for(mesh, lambda r: r.status == 200 and r.headers.get("x-wasm-greeting") == "hello")
    assert "Reconciled" not in conditions(mesh, "greeting", timeout=2)


def wait_until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def pad(module: bytes, size: int) -> bytes:
    """The module with a custom section of `size` bytes (ignored by the VM): a large, valid module."""
    name = b"padding"
    body = bytes([len(name)]) + name + bytes(size)
    length, leb = len(body), b""
    while True:
        byte, length = length & 0x7F, length >> 7
        leb += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return module + b"\x00" + leb + body


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_the_module_reaches_envoy_over_ecds_inline_and_follows_changes(tmp_path: Path, delta: bool) -> None:
    """The chain names the plugin; its one TypedExtensionConfig carries the module's bytes (no file
    the proxy must read); a new configuration changes ECDS only; a deleted plugin goes without a
    NACK (Delta and state-of-the-world ADS both)."""
    folder = tmp_path / "modules"
    folder.mkdir()
    add = assemble("add_header", folder)
    mesh = Mesh(tmp_path, delta=delta)
    try:
        mesh.wait_programmed()
        mesh.store.apply(load_yaml(plugin("greeting", f"file://{add}", config="{name: x-wasm-greeting, value: hello}"),
                                   "wp.yaml"))
        wait_for(mesh, lambda r: r.headers.get("x-wasm-greeting") == "hello")
        replicas = {n: r for n, r in mesh.cp.replicas.items() if r.replica.namespace == "default"}
        statuses = {n: mesh.cp.cache.status[n] for n in replicas}  # the replicas of default/waypoint
        for node_id, replica in replicas.items():
            admin = replica.paths.admin
            dump = json.loads(fetch_admin(admin, "/config_dump"))
            (section,) = [c for c in dump["configs"] if c["@type"].endswith("EcdsConfigDump")]
            (ecds,) = section["ecds_filters"]
            assert ecds["ecds_filter"]["name"] == "extensions.istio.io/wasmplugin/default.greeting", node_id
            code = ecds["ecds_filter"]["typed_config"]["config"]["vm_config"]["code"]["local"]
            assert base64.b64decode(code["inline_bytes"]) == add.read_bytes()
            listeners = fetch_admin(admin, "/config_dump?resource=dynamic_listeners").decode()
            assert '"config_discovery"' in listeners and "inline_bytes" not in listeners and "filename" not in listeners
        lds_versions = {n: s[P.LISTENER]["version"] for n, s in statuses.items()}
        mesh.store.apply(load_yaml(plugin("greeting", f"file://{add}", config="{name: x-wasm-greeting, value: again}"),
                                   "wp.yaml"))
        wait_for(mesh, lambda r: r.headers.get("x-wasm-greeting") == "again")
        wait_until(lambda: all(s[P.EXTENSION_CONFIG]["state"] == "SYNCED" for s in statuses.values()))
        assert {n: s[P.LISTENER]["version"] for n, s in statuses.items()} == lds_versions  # only ECDS changed

        big = folder / "big.wasm"  # 8 MiB: more than gRPC's default 4 MiB message size
        big.write_bytes(pad(add.read_bytes(), 8 << 20))
        mesh.store.apply(load_yaml(plugin("greeting", f"file://{big}", config="{name: x-wasm-greeting, value: big}"),
                                   "wp.yaml"))
        wait_for(mesh, lambda r: r.headers.get("x-wasm-greeting") == "big", timeout=30)

        mesh.store.delete([(find_kind("wasmplugin"), "default", "greeting")])
        r = wait_for(mesh, lambda r: "x-wasm-greeting" not in r.headers)
        assert r.status == 200
        time.sleep(1)
        assert [(t, s["error"]) for status in statuses.values() for t, s in status.items()
                if s["state"] == "NACKED"] == []
    finally:
        mesh.close()
