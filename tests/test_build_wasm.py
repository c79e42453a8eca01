"""WasmPlugin on waypoints: the model's validation, which chains a plugin applies to, its place
by phase and priority, the ECDS filter and resource istiod builds (the module inline), what runs in
place of a module that is not available (failStrategy), the status, the module fetcher, and Envoy
accepting the result."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from wasm_support import assemble
from xds_support import ENVOY, build_store, plain, translate

from meshway.ca import CertificateAuthority, build_secrets
from meshway.model import InputError, find_kind, load_yaml
from meshway.model.extensions import WasmPlugin, parse_plugin_url
from meshway.runtime.wasm_modules import WasmModules
from meshway.store import Store
from meshway.xds import protos as P
from meshway.xds.build_snapshot import build_waypoint_config
from meshway.xds.build_wasm import WasmModule, build_extension_configs, build_wasm_filters, \
    find_waypoint_wasm_plugins
from meshway.xds.proxy import Proxy
from meshway.xds.validate import run_validate
from xds_support import view_of

BASE = """
apiVersion: v1
kind: Namespace
metadata:
  name: foo
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec:
  ports: [{name: http, port: 8000, targetPort: 8080}, {name: tcp, port: 9000}]
  selector: {app: httpbin}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: foo}
spec:
  ports: [{name: http, port: 8000}]
  selector: {app: other}
---
apiVersion: v1
kind: Namespace
metadata: {name: bar}
"""
HTTPBIN = "inbound-vip|8000|http|httpbin.foo.svc.cluster.local"
OTHER = "inbound-vip|8000|http|other.foo.svc.cluster.local"
SVC = "targetRefs: [{kind: Service, group: '', name: httpbin}]"
GATEWAY = "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"
POLICIES = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: "", name: httpbin}]
  action: DENY
  rules: [{to: [{operation: {paths: [/deny]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: "", name: httpbin}]
  jwtRules:
  - issuer: a
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"1"}]}'
"""


def wp(name: str, spec: str, namespace: str = "foo") -> str:
    header = name.replace("_", "-")
    return f"""---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  url: file:///plugins/{name}.wasm
  pluginConfig: {{name: x-{header}, value: "on"}}
  {spec}
"""


def model(spec: str, name: str = "p") -> WasmPlugin:
    return WasmPlugin.model_validate(load_yaml(wp(name, spec), "wp.yaml")[0].body, strict=False)


def chain_filters(config: dict, name: str) -> list[str]:
    chain = next(c for c in config["Listener"]["main_internal"]["filter_chains"] if c["name"] == name)
    return [f["name"] for f in chain["filters"][-1]["typed_config"].get("http_filters", chain["filters"])]


PLUGINS = "".join([
    wp("authn-low", f"phase: AUTHN\n  priority: 10\n  {SVC}"),
    wp("authn-high", f"phase: AUTHN\n  priority: 20\n  {GATEWAY}"),
    wp("authz", f"phase: AUTHZ\n  {SVC}"),
    wp("stats", f"phase: STATS\n  {SVC}"),
    wp("plain", GATEWAY),
    wp("client-only", f"match: [{{mode: CLIENT}}]\n  {SVC}"),
    wp("on-a-port", f"match: [{{ports: [{{number: 8000}}]}}]\n  {SVC}"),
    wp("network", f"type: NETWORK\n  {SVC}"),
    wp("selector", "selector: {matchLabels: {app: httpbin}}"),
    wp("elsewhere", "targetRefs: [{kind: Service, group: '', name: httpbin}]", namespace="bar"),
])
W = "extensions.istio.io/wasmplugin/foo."


def translated(tmp_path: Path, text: str, modules: dict | None = None, secrets: dict | None = None) -> dict:
    (tmp_path / "in.yaml").write_text(text)
    store = build_store(tmp_path / "s", [tmp_path / "in.yaml"])
    proxy = Proxy("waypoint~127.0.0.2~waypoint-0.foo~foo.svc.cluster.local", "127.0.0.2", "foo", "waypoint",
                  "waypoint")
    return build_waypoint_config(view_of(store), proxy, secrets, wasm_modules=modules)


def good_modules(path: str) -> dict:
    code = Path(path).read_bytes() if Path(path).exists() else b"\0asm"
    return {("foo", n): WasmModule(path, "0" * 64, None, code)
            for n in ("authn-low", "authn-high", "authz", "stats", "plain")}


def test_phases_and_priorities_around_jwt_and_rbac(tmp_path: Path) -> None:
    config = plain(translated(tmp_path, BASE + POLICIES + PLUGINS, good_modules("/m.wasm")))
    assert chain_filters(config, HTTPBIN) == [
        W + "authn-high", W + "authn-low", "envoy.filters.http.jwt_authn", W + "authz", "envoy.filters.http.rbac",
        "envoy.filters.http.fault", "envoy.filters.http.cors", W + "stats", W + "plain", "envoy.filters.http.router"]
    # A service no plugin names gets the waypoint's (Gateway) plugins only; so do pod-addressed chains.
    assert chain_filters(config, OTHER) == [W + "authn-high", "envoy.filters.http.fault", "envoy.filters.http.cors",
                                            W + "plain", "envoy.filters.http.router"]
    assert chain_filters(config, "direct-http") == chain_filters(config, OTHER)
    assert not any("wasm" in n for n in chain_filters(config, "inbound-vip|9000|tcp|httpbin.foo.svc.cluster.local"))


def test_same_priority_oldest_first_then_by_name() -> None:
    def at(name: str, priority: int, created: str) -> WasmPlugin:
        p = model(f"{SVC}\n  priority: {priority}", name)
        return p.model_copy(update={"metadata": p.metadata.model_copy(update={"creationTimestamp": created})})

    def order(*plugins: WasmPlugin) -> list[str]:
        return [p.name for p in find_waypoint_wasm_plugins(plugins, "foo", "waypoint", "foo", "httpbin")]

    assert order(at("b", 5, "2021"), at("a", 5, "2021")) == ["a", "b"]
    assert order(at("a", 5, "2021"), at("b", 5, "2020")) == ["b", "a"]
    assert order(at("z", -1, "2020"), at("b", 0, "2021"), at("a", 7, "2022")) == ["a", "b", "z"]


RBAC_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
WASM_URL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
DENY = {"@type": RBAC_URL, "rules": {}, "rules_stat_prefix": "wasm-default-deny"}
ALLOW = {"@type": RBAC_URL, "rules_stat_prefix": "wasm-default-allow"}


def test_the_ecds_filter_and_resource_istiod_builds() -> None:
    plugin = model(f"{SVC}\n  pluginName: my_root\n  failStrategy: FAIL_OPEN\n"
                   "  vmConfig: {env: [{name: A, value: b}, {name: HOME, valueFrom: HOST}]}")
    modules = {("foo", "p"): WasmModule("/cache/abc.wasm", "abc", None, b"\0asm\1\0\0\0")}
    phases, problems = build_wasm_filters([plugin], modules)
    assert problems == []
    (f,) = phases["UNSPECIFIED_PHASE"]
    # The chain names the resource only: the stand-in is its default, Wasm and RBAC its types.
    assert f == {"name": "extensions.istio.io/wasmplugin/foo.p", "config_discovery": {
        "config_source": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "10s"},
        "default_config": ALLOW, "type_urls": [WASM_URL, RBAC_URL]}}
    assert build_extension_configs([plugin], modules) == {"extensions.istio.io/wasmplugin/foo.p": {
        "name": "extensions.istio.io/wasmplugin/foo.p", "typed_config": {"@type": WASM_URL, "config": {
            "name": "foo.p", "root_id": "my_root", "failure_policy": "FAIL_OPEN",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": '{"name":"x-p","value":"on"}'},
            "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"inline_bytes": b"\0asm\1\0\0\0"}},
                          "environment_variables": {"key_values": {"A": "b"}, "host_env_keys": ["HOME"]}}}}}}
    P.to_message(P.LISTENER, {"name": "l", "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": P.typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            stat_prefix="s", http_filters=[f])}]}]})
    (resource,) = build_extension_configs([plugin], modules).values()
    msg = P.to_message(P.EXTENSION_CONFIG, resource)  # the raw bytes are set as they are (no base64 round trip)
    assert P.to_dict(msg)["typed_config"]["config"]["vm_config"]["code"]["local"] == {"inline_bytes": "AGFzbQEAAAA="}


@pytest.mark.parametrize("strategy, policy", [("FAIL_CLOSE", "FAIL_CLOSED"), ("FAIL_OPEN", "FAIL_OPEN"),
                                              ("FAIL_RELOAD", "FAIL_RELOAD"), (None, "FAIL_CLOSED")])
def test_fail_strategy_is_envoys_failure_policy(strategy: str | None, policy: str) -> None:
    plugin = model(SVC + (f"\n  failStrategy: {strategy}" if strategy else ""))
    (resource,) = build_extension_configs([plugin], {("foo", "p"): WasmModule("/m.wasm", "abc", None, b"m")}).values()
    assert resource["typed_config"]["config"]["failure_policy"] == policy


@pytest.mark.parametrize("strategy, stand_in", [("FAIL_CLOSE", DENY), ("FAIL_RELOAD", DENY), ("FAIL_OPEN", ALLOW)])
def test_a_module_not_available_is_replaced_as_istios_agent_does(strategy: str, stand_in: dict) -> None:
    plugin = model(f"{SVC}\n  phase: AUTHZ\n  failStrategy: {strategy}")
    for modules in ({("foo", "p"): WasmModule(error="sha256 mismatch")}, {}):
        phases, problems = build_wasm_filters([plugin], modules)
        assert phases["AUTHZ"][0]["config_discovery"]["default_config"] == stand_in
        assert build_extension_configs([plugin], modules) == {"extensions.istio.io/wasmplugin/foo.p": {
            "name": "extensions.istio.io/wasmplugin/foo.p", "typed_config": stand_in}}
        ((where, message),) = problems
        assert where == "WasmPlugin foo/p" and message.startswith("module file:///plugins/p.wasm not available: ")
        assert ("run without it" in message) == (strategy == "FAIL_OPEN")


def test_one_ecds_resource_per_plugin_however_many_chains_name_it(tmp_path: Path) -> None:
    module = str(assemble("add_header", tmp_path))
    config = translated(tmp_path, BASE + PLUGINS, good_modules(module))
    # `plain` is on the Gateway: every HTTP chain names it; the module is in its one resource.
    chains = [c for c in config.resources[P.LISTENER]["main_internal"]["filter_chains"]
              if W + "plain" in str(c)]
    assert len(chains) >= 3
    assert sorted(config.resources[P.EXTENSION_CONFIG]) == [W + n for n in
                                                            ("authn-high", "authn-low", "authz", "plain", "stats")]
    assert "inline_bytes" not in repr(config.resources[P.LISTENER]) and "filename" not in repr(config.resources)
    code = config.resources[P.EXTENSION_CONFIG][W + "plain"]["typed_config"]["config"]["vm_config"]["code"]
    assert code == {"local": {"inline_bytes": Path(module).read_bytes()}}
    (tmp_path / "bare").mkdir()
    assert P.EXTENSION_CONFIG not in translated(tmp_path / "bare", BASE).resources  # no plugin: no ECDS


def test_envoy_validates_the_waypoint_with_real_modules_and_stand_ins(tmp_path: Path) -> None:
    module = str(assemble("add_header", tmp_path))
    modules = {**good_modules(module), ("foo", "authz"): WasmModule(error="cannot fetch")}
    ca = CertificateAuthority(tmp_path / "ca")
    secrets = {n: P.to_dict(m) for n, m in build_secrets(ca.issue("foo", "waypoint"), ca.root_pem()).items()}
    config = translated(tmp_path, BASE + POLICIES + PLUGINS,
                        modules, secrets)
    assert [w for w, _ in config.problems if w.startswith("WasmPlugin")] == ["WasmPlugin foo/authz"]
    ok, output = run_validate(config.resources, ENVOY)
    assert ok, output


@pytest.mark.parametrize("spec, message", [
    ("sha256: ABC", "sha256 must be 64 lowercase hexadecimal characters"),
    ("priority: 3000000000", "priority must be a 32-bit integer"),
    ("phase: LATE", "Input should be 'UNSPECIFIED_PHASE', 'AUTHN', 'AUTHZ' or 'STATS'"),
    ("failStrategy: RETRY", "Input should be 'FAIL_CLOSE', 'FAIL_OPEN' or 'FAIL_RELOAD'"),
    (f"{SVC}\n  selector: {{matchLabels: {{a: b}}}}", "only one of targetRefs or selector can be set"),
    ("vmConfig: {env: [{name: ISTIO_META_X, value: y}]}", "names starting with ISTIO_META_ are reserved"),
])
def test_validation_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("*", r"\*")):
        load_yaml(wp("p", spec), "wp.yaml")
    with pytest.raises(InputError, match="url"):
        load_yaml(wp("p", SVC).replace("  url: file:///plugins/p.wasm\n", ""), "wp.yaml")


def test_urls_as_istiod_parses_them() -> None:
    assert parse_plugin_url("file:///a.wasm") == ("file", "file:///a.wasm")
    assert parse_plugin_url("https://h/a.wasm") == ("https", "https://h/a.wasm")
    assert parse_plugin_url("ghcr.io/org/p:1.0") == ("oci", "oci://ghcr.io/org/p:1.0")
    assert parse_plugin_url("localhost:5000/p:1") == ("oci", "oci://localhost:5000/p:1")


@pytest.mark.parametrize("spec, expected", [
    (SVC, ("True", "Accepted", "bound to foo/waypoint")),
    (GATEWAY, ("True", "Accepted", "bound to foo/waypoint")),
    ("targetRefs: [{kind: Service, group: '', name: ghost}]", ("False", "TargetNotFound", "Service foo/ghost")),
    ("selector: {matchLabels: {app: httpbin}}", ("False", "Ignored", "WasmPlugin without targetRefs")),
    (f"type: NETWORK\n  {SVC}", ("False", "Unsupported", "type NETWORK is not supported on waypoints")),
    (f"match: [{{mode: CLIENT}}]\n  {SVC}", ("False", "Unsupported", "match selects no waypoint traffic")),
])
def test_status(tmp_path: Path, spec: str, expected: tuple) -> None:
    store = Store(tmp_path / "s")
    store.apply(load_yaml(BASE + wp("p", spec), "wp.yaml"))
    (cond,) = store.get(find_kind("wasmplugin"), "foo", "p")["status"]["conditions"]
    assert cond["type"] == "WaypointAccepted"
    assert (cond["status"], cond["reason"]) == expected[:2] and cond["message"].startswith(expected[2]), cond


def test_kind_names() -> None:
    info = find_kind("wasmplugins")
    assert (info.kind, info.api_versions()) == ("WasmPlugin", ("extensions.istio.io/v1alpha1",))
    assert find_kind("wasmplugin.extensions.istio.io") is info


def located(url: str, spec: str = "") -> WasmPlugin:
    return WasmPlugin.model_validate(load_yaml(wp("p", SVC + spec).replace("file:///plugins/p.wasm", url),
                                               "wp.yaml")[0].body, strict=False)


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.hits.append(self.path)
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args) -> None:
        pass


def test_fetcher_file_http_sha256_cache_and_envoys_verdict(tmp_path: Path) -> None:
    good, failing = assemble("add_header", tmp_path), assemble("fail_start", tmp_path)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    _Files.files = {"/add_header.wasm": good.read_bytes()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    now = [0.0]
    fetcher = WasmModules(tmp_path / "state", ENVOY, timeout=2, retry_after=10, clock=lambda: now[0])
    try:
        got = fetcher.fetch_module(located("127.0.0.1:1/org/plugin:1.0"))  # an OCI reference, no registry there
        assert got.error == ("cannot fetch oci://127.0.0.1:1/org/plugin:1.0: GET https://127.0.0.1:1/v2/: [Errno 111] "
                             "Connection refused; GET http://127.0.0.1:1/v2/: [Errno 111] Connection refused")
        http_plugin = located(f"{url}/add_header.wasm", f"\n  sha256: {digest}")
        got = fetcher.fetch_module(http_plugin)
        assert got == WasmModule(str(tmp_path / "state" / "wasm" / f"{digest}.wasm"), digest, None)
        assert Path(got.path).read_bytes() == good.read_bytes() and (Path(got.path).stat().st_mode & 0o777) == 0o600
        assert fetcher.fetch_module(http_plugin) == got and _Files.hits == ["/add_header.wasm"]  # cached by sha256
        wrong = http_plugin.model_copy(update={"spec": http_plugin.spec.model_copy(update={"sha256": "1" * 64})})
        assert f"sha256 mismatch: the module's is {digest}, the plugin expects {'1' * 64}" in fetcher.fetch_module(
            wrong).error
        missing = http_plugin.model_copy(update={"spec": http_plugin.spec.model_copy(update={
            "sha256": None, "url": f"{url}/missing.wasm"})})
        assert "HTTP Error 404" in fetcher.fetch_module(missing).error
        _Files.files["/missing.wasm"] = good.read_bytes()
        assert "HTTP Error 404" in fetcher.fetch_module(missing).error  # not before retry_after
        now[0] = 11
        assert fetcher.fetch_module(missing).error is None
    finally:
        server.shutdown()
    (module,) = fetcher.fetch_modules([located(f"file://{good}")]).values()
    assert module.code == good.read_bytes() and module.code is fetcher.fetch_module(located(f"file://{good}")).code
    assert fetcher.fetch_modules([]) == {} and fetcher._code == {}  # the bytes of no plugin are not kept
    got = fetcher.fetch_module(located(f"file://{failing}"))
    assert got.path and got.error == \
        "Envoy cannot run it: Unable to create Wasm plugin foo.p (Failed to start base Wasm)"
    bad_config = located(f"file://{good}")
    bad_config = bad_config.model_copy(update={"spec": bad_config.spec.model_copy(update={"pluginConfig": {"a": 1}})})
    assert "Failed to configure base Wasm plugin" in fetcher.fetch_module(bad_config).error
