"""WasmPlugin on `meshway up --kubernetes`: the waypoint is a pod whose Envoy runs as uid 1337 in
its own network namespace, so it can read no file of the control plane's. The module reaches it
inline in the plugin's ECDS resource; a plugin on Service `reviews` adds a response header that
the curl pod sees through the waypoint, and the waypoint pod's own config dump holds the module's
bytes in its one TypedExtensionConfig (the listener only names it)."""
from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from kube_support import require_binaries, wait_for
from test_kube_mesh_e2e import APPS, WAYPOINT, Shell, meshway, netns_of, pods, ready, require_root
from wasm_support import assemble
from meshway.runtime.netns import cluster_id

# From inside the curl pod: the status and the x-wasm-greeting header of one request, through the waypoint.
GET = r"""
import http.client, json, sys
c = http.client.HTTPConnection("reviews", 9080, timeout=5)
c.request("GET", "/reviews/1")
r = c.getresponse()
r.read()
print(json.dumps([r.status, r.getheader("x-wasm-greeting")]))
"""
PLUGIN = """apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: greeting, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  url: file://{module}
  pluginConfig: {{name: x-wasm-greeting, value: hello}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_root()
    bin_dir = require_binaries("istioctl")
    state = tmp_path_factory.mktemp("kwasm") / "state"
    up = meshway(state, "up", "--kubernetes", *APPS)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield Shell(bin_dir, state / "kubernetes" / "admin.kubeconfig"), cluster_id(state / "kubernetes" / "network")
    finally:
        down = meshway(state, "down")
        assert down.returncode == 0, down.stdout + down.stderr


def get(netns: str) -> list:
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", GET], capture_output=True, text=True,
                         timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else [0, out.stderr.strip()[-200:]]


def test_a_wasm_plugin_adds_a_header_at_the_waypoint_pod(mesh, tmp_path):
    sh, net = mesh
    wait_for("every pod Running and Ready", lambda: (p := pods(sh)) and len(p) == 7 and all(map(ready, p)), 120)
    sh("kubectl label namespace default istio.io/dataplane-mode=ambient")
    sh("istioctl waypoint apply -n default --enroll-namespace --wait")
    curl = netns_of(net, sh, "app=curl")
    wait_for("reviews answering through the waypoint", lambda: get(curl)[0] == 200, 60, 1)

    module = assemble("add_header", tmp_path)  # a file on this host, read by the control plane only
    (tmp_path / "wasm.yaml").write_text(PLUGIN.format(module=module))
    assert "wasmplugin.extensions.istio.io/greeting created" in sh(f"kubectl apply -f {tmp_path / 'wasm.yaml'}")
    wait_for("the header added at the waypoint", lambda: get(curl) == [200, "hello"], 60, 1)

    waypoint = netns_of(net, sh, WAYPOINT)
    dump = json.loads(subprocess.run(["ip", "netns", "exec", waypoint, "curl", "-s", "127.0.0.1:15000/config_dump"],
                                     capture_output=True, text=True, timeout=10).stdout)
    (ecds,) = [c for c in dump["configs"] if c["@type"].endswith("EcdsConfigDump")]
    (resource,) = ecds["ecds_filters"]
    assert resource["ecds_filter"]["name"] == "extensions.istio.io/wasmplugin/default.greeting"
    code = resource["ecds_filter"]["typed_config"]["config"]["vm_config"]["code"]["local"]
    assert base64.b64decode(code["inline_bytes"]) == module.read_bytes()
    listeners = json.dumps([c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")])
    assert "extensions.istio.io/wasmplugin/default.greeting" in listeners and "inline_bytes" not in listeners
    status = json.loads(sh("kubectl get wasmplugin greeting -o json")).get("status") or {}
    assert [c["type"] for c in status.get("conditions") or []] == ["WaypointAccepted"], status  # no Reconciled=False
